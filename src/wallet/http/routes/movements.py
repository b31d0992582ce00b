"""Money-moving requests: one route per posting kind of the registry (purchases with their rewards), transfers
between users, adjustments, and batches of them (captures, refunds and transfers included)."""

from typing import Any

import orjson
from fastapi import APIRouter, Depends, Request, Response
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import ValidationError as PydanticValidationError

from wallet import ledger
from wallet.errors import Forbidden, ValidationFailed
from wallet.http import answers, body, openapi, problems
from wallet.http.auth import authenticate, bearer, require
from wallet.http.documents import BatchResponse, Transaction
from wallet.http.openapi import responses
from wallet.http.services import database
from wallet.keys import ApiKey
from wallet.kinds import KINDS, KINDS_BY_PATH, POSTING_SCOPES, TRANSFER
from wallet.ledger import Adjustment, Capture, Movement, Posting, Refund, Reward, Transfer
from wallet.models import (
    AdjustmentRequest,
    BatchBody,
    BatchCapture,
    BatchItem,
    BatchRefund,
    BatchRequest,
    BatchTransfer,
    MovementRequest,
    PurchaseRequest,
    TransferRequest,
    operation,
)
from wallet.render import parse_public_id

router = APIRouter(tags=["movements"])
JSON = "application/json"
POSTING_CODES = (
    "idempotency_key_missing",
    "idempotency_key_invalid",
    "user_not_found",
    "asset_not_found",
    "validation_error",
    "idempotency_key_reused",
    "payload_too_large",
    "balance_limit_exceeded",
)


async def kind_key(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> ApiKey:
    """The key of a posting, which needs the scope of the route's kind."""
    kind = KINDS_BY_PATH[request.scope["route"].path]
    key = await authenticate(request, credentials)
    if not key.allows(kind.scope):
        raise Forbidden(f"The key {key.name} lacks the {kind.scope} scope.")
    return key


def movement(kind_type: str, sent: MovementRequest) -> Movement:
    rewards = tuple(Reward(r.asset, r.amount) for r in getattr(sent, "rewards", ()))
    return Movement(KINDS[kind_type], sent.user_id, sent.asset, sent.amount, sent.description, sent.metadata, rewards)


async def create(request: Request, key: ApiKey = Depends(kind_key)) -> Response:
    """POST of any kind: the kind is the route's."""
    kind = KINDS_BY_PATH[request.scope["route"].path]
    sent = await body.read(request, PurchaseRequest if kind.rewards else MovementRequest)
    return await answers.posting(request, key, movement(kind.type, sent))


def with_link(documented: dict[int | str, dict[str, Any]]) -> dict[int | str, dict[str, Any]]:
    """The 201 links to GET /v1/transactions/{id}: clients (and fuzzers) learn where the transaction reads back."""
    documented[201]["links"] = {
        "GetTransaction": {
            "operationRef": "#/paths/~1v1~1transactions~1{transaction_id}/get",
            "parameters": {"transaction_id": "$response.body#/id"},
        }
    }
    return documented


for _kind in KINDS.values():
    router.add_api_route(
        _kind.path,
        create,
        methods=["POST"],
        response_model=Transaction,
        status_code=201,
        summary=_kind.summary,
        name=f"create_{_kind.type}",
        openapi_extra={
            **openapi.body(PurchaseRequest if _kind.rewards else MovementRequest),
            "parameters": [openapi.IDEMPOTENCY_KEY_HEADER],
        },
        responses=with_link(responses(201, Transaction, "Posted.", *POSTING_CODES, *_kind.codes)),
    )


def transfer_of(sent: TransferRequest) -> Transfer:
    return Transfer(sent.from_user_id, sent.to_user_id, sent.asset, sent.amount, sent.description, sent.metadata)


@router.post(
    TRANSFER.path,
    response_model=Transaction,
    status_code=201,
    summary=TRANSFER.summary,
    description="The transaction is the sender's: `user_id` and `balance_after` are the sender's, `to_user_id` and"
    " `to_balance_after` the receiver's. The receiver may be frozen (a credit); the sender may not.",
    openapi_extra={**openapi.body(TransferRequest), "parameters": [openapi.IDEMPOTENCY_KEY_HEADER]},
    responses=with_link(responses(201, Transaction, "Posted.", *POSTING_CODES, *TRANSFER.codes)),
)
async def transfer(request: Request, key: ApiKey = Depends(require(TRANSFER.scope))) -> Response:
    sent = await body.read(request, TransferRequest)
    return await answers.posting(request, key, transfer_of(sent))


@router.post(
    "/v1/adjustments",
    response_model=Transaction,
    status_code=201,
    summary="An operator's correction: signed entries summing to 0 per asset",
    openapi_extra={**openapi.body(AdjustmentRequest), "parameters": [openapi.IDEMPOTENCY_KEY_HEADER]},
    responses=with_link(
        responses(201, Transaction, "Posted.", *POSTING_CODES, "insufficient_funds", "supply_limit_exceeded")
    ),
)
async def adjust(request: Request, key: ApiKey = Depends(require("admin"))) -> Response:
    sent = await body.read(request, AdjustmentRequest)
    entries = tuple((e.account, e.asset, e.amount) for e in sent.entries)
    return await answers.posting(request, key, Adjustment(sent.reason, entries, sent.metadata))


def _posting_of(op: BatchItem) -> tuple[str, Posting]:
    """The scope an item needs, and its posting."""
    if isinstance(op, BatchTransfer):
        return TRANSFER.scope, transfer_of(op)
    if isinstance(op, BatchCapture):
        hold_id = parse_public_id(op.hold_id, "hold")
        assert hold_id is not None  # the pattern admits only ids this service hands out
        return "purchase", Capture(hold_id, op.amount, op.description, op.metadata)
    if isinstance(op, BatchRefund):
        transaction_id = parse_public_id(op.transaction_id)
        assert transaction_id is not None
        return "purchase", Refund(transaction_id, op.amount, op.reason)
    return KINDS[op.type].scope, movement(op.type, op)


def _operations(sent: BatchBody) -> list[BatchItem]:
    """Each item validated by its type; a problem names the item's fields (operations.3.amount)."""
    parsed: list[BatchItem] = []
    errors: list[Any] = []
    for index, data in enumerate(sent.operations):
        try:
            parsed.append(operation(data))
        except PydanticValidationError as exc:
            errors += [
                {**e, "loc": ("operations", index, *e["loc"])}
                for e in exc.errors(include_url=False, include_input=False)
            ]
    if errors:
        raise problems.validation_failed(errors)
    seen: dict[str, int] = {}
    for index, op in enumerate(parsed):
        first = seen.setdefault(op.idempotency_key, index)
        if first != index:
            raise ValidationFailed(
                f"operations.{index}.idempotency_key repeats operations.{first}'s.",
                [
                    {
                        "loc": ["operations", index, "idempotency_key"],
                        "msg": f"repeats item {first}",
                        "type": "duplicate",
                    }
                ],
            )
    return parsed


@router.post(
    "/v1/batch",
    response_model=BatchResponse,
    summary="Many movements, one transaction",
    openapi_extra=openapi.body(BatchRequest),
    responses=responses(
        200, BatchResponse, "One result per operation, in request order.", "validation_error", "payload_too_large"
    ),
)
async def batch(request: Request, key: ApiKey = Depends(require(*POSTING_SCOPES))) -> Response:
    sent = await body.read(request, BatchBody)
    operations = _operations(sent)
    scoped = [_posting_of(op) for op in operations]
    missing = sorted({scope for scope, _ in scoped if not key.allows(scope)})
    if missing:
        raise Forbidden(f"The key {key.name} lacks the {', '.join(missing)} scope(s) this batch needs.")
    caller = answers.caller(key)
    items = [
        ledger.Request(caller, op.idempotency_key, posting) for op, (_, posting) in zip(operations, scoped, strict=True)
    ]
    outcomes = await ledger.post_batch(database(request), sent.atomic, items)
    results: list[dict[str, Any]] = []
    for item, outcome in zip(items, outcomes, strict=True):
        if outcome.transaction is not None:
            result: dict[str, Any] = {"status": 201, "transaction": orjson.Fragment(outcome.transaction.render())}
        else:
            posting = item.posting
            failure = problems.of_outcome(outcome, item.idempotency_key, posting.endpoint, posting.request())
            result = {"status": failure["status"], "problem": failure}
        if outcome.kind == "replayed":
            result["replayed"] = True
        results.append(result)
    return Response(orjson.dumps({"results": results}), media_type=JSON)
