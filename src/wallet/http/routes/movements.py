"""Money-moving requests: one route per posting kind of the registry, and batches of them."""

import uuid
from typing import Any

import orjson
from fastapi import APIRouter, Depends, Request, Response
from fastapi.security import HTTPAuthorizationCredentials

from wallet import ledger
from wallet.errors import PROBLEM_MEDIA_TYPE, Forbidden, ValidationFailed
from wallet.http import body, openapi, problems
from wallet.http.auth import authenticate, bearer, require
from wallet.http.envelope import context
from wallet.http.openapi import responses
from wallet.http.services import database, services
from wallet.keys import ApiKey
from wallet.kinds import KINDS, KINDS_BY_PATH
from wallet.ledger import Caller, Movement
from wallet.models import BatchRequest, BatchResponse, MovementRequest, Transaction
from wallet.render import public_id

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


async def create(request: Request, key: ApiKey = Depends(kind_key)) -> Response:
    """POST of any kind: the kind is the route's."""
    kind = KINDS_BY_PATH[request.scope["route"].path]
    idempotency_key = body.idempotency_key(request)
    sent = await body.read(request, MovementRequest)
    movement = Movement(kind, sent.user_id, sent.asset, sent.amount, sent.description, sent.metadata)
    caller = Caller(key.id, key.name, uuid.uuid4())  # the attempt id is the same across the service's retries
    outcome = await services(request).group_commit.post(ledger.Request(caller, idempotency_key, movement))
    headers = {"Idempotent-Replayed": "true"} if outcome.kind == "replayed" else {}
    if outcome.transaction is None:
        failure = problems.of_outcome(outcome, idempotency_key, kind.endpoint, movement.request())
        return Response(orjson.dumps(failure), failure["status"], headers, media_type=PROBLEM_MEDIA_TYPE)
    context(request.scope).transaction_id = public_id(outcome.transaction.id)
    return Response(outcome.transaction.render(), 201, headers, media_type=JSON)


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
        openapi_extra={**openapi.body(MovementRequest), "parameters": [openapi.IDEMPOTENCY_KEY_HEADER]},
        responses=with_link(responses(201, Transaction, "Posted.", *POSTING_CODES, *_kind.codes)),
    )


def _repeated_keys(request: BatchRequest) -> None:
    seen: dict[str, int] = {}
    for index, operation in enumerate(request.operations):
        first = seen.setdefault(operation.idempotency_key, index)
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


@router.post(
    "/v1/batch",
    response_model=BatchResponse,
    summary="Many movements, one transaction",
    openapi_extra=openapi.body(BatchRequest),
    responses=responses(
        200, BatchResponse, "One result per operation, in request order.", "validation_error", "payload_too_large"
    ),
)
async def batch(request: Request, key: ApiKey = Depends(require(*(kind.scope for kind in KINDS.values())))) -> Response:
    sent = await body.read(request, BatchRequest)
    missing = sorted({KINDS[op.type].scope for op in sent.operations if not key.allows(KINDS[op.type].scope)})
    if missing:
        raise Forbidden(f"The key {key.name} lacks the {', '.join(missing)} scope(s) this batch needs.")
    _repeated_keys(sent)
    caller = Caller(key.id, key.name, uuid.uuid4())
    items = [
        ledger.Request(
            caller,
            op.idempotency_key,
            Movement(KINDS[op.type], op.user_id, op.asset, op.amount, op.description, op.metadata),
        )
        for op in sent.operations
    ]
    outcomes = await ledger.post_batch(database(request), sent.atomic, items)
    results: list[dict[str, Any]] = []
    for item, outcome in zip(items, outcomes, strict=True):
        if outcome.transaction is not None:
            result: dict[str, Any] = {"status": 201, "transaction": orjson.Fragment(outcome.transaction.render())}
        else:
            movement = item.movement
            failure = problems.of_outcome(outcome, item.idempotency_key, movement.kind.endpoint, movement.request())
            result = {"status": failure["status"], "problem": failure}
        if outcome.kind == "replayed":
            result["replayed"] = True
        results.append(result)
    return Response(orjson.dumps({"results": results}), media_type=JSON)
