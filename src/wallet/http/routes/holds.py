"""Holds: create, capture (a purchase of what the hold reserved), void, read, and a user's holds."""

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request, Response

from wallet import holds
from wallet.http import answers, body, openapi
from wallet.http.auth import require
from wallet.http.documents import Hold, HoldPage, Transaction
from wallet.http.openapi import responses
from wallet.http.routes.movements import POSTING_CODES, with_link
from wallet.http.routes.params import LimitQuery, UserIdPath
from wallet.http.services import database
from wallet.keys import ApiKey
from wallet.ledger import Capture
from wallet.models import HOLD_ID_PATTERN, PAGE_LIMIT_DEFAULT, CaptureRequest, EmptyRequest, HoldRequest

router = APIRouter(tags=["holds"])
JSON = "application/json"
read = [Depends(require("read"))]
HOLD_CODES = ("idempotency_key_missing", "idempotency_key_invalid", "idempotency_key_reused", "validation_error")


@router.post(
    "/v1/holds",
    response_model=Hold,
    status_code=201,
    summary="Reserve part of a user's available balance until it is captured, voided, or expires",
    openapi_extra={**openapi.body(HoldRequest), "parameters": [openapi.IDEMPOTENCY_KEY_HEADER]},
    responses=responses(
        201,
        Hold,
        "Held.",
        *HOLD_CODES,
        "payload_too_large",
        "user_not_found",
        "asset_not_found",
        "insufficient_funds",
        "account_frozen",
    ),
)
async def create(request: Request, key: ApiKey = Depends(require("purchase"))) -> Response:
    sent = await body.read(request, HoldRequest)
    idempotency_key = body.idempotency_key(request)
    new = holds.NewHold(sent.user_id, sent.asset, sent.amount, sent.expires_in_s, sent.description, sent.metadata)
    outcome = await holds.create(database(request), answers.caller(key), idempotency_key, new)
    return answers.hold(outcome, idempotency_key, new.endpoint, new.request(), 201)


@router.post(
    "/v1/holds/{hold_id}/capture",
    response_model=Transaction,
    status_code=201,
    summary="Capture a hold, whole or in part (a purchase); the rest is released",
    openapi_extra={**openapi.body(CaptureRequest, required=False), "parameters": [openapi.IDEMPOTENCY_KEY_HEADER]},
    responses=with_link(
        responses(
            201,
            Transaction,
            "Captured: the purchase, with its `hold_id`.",
            *POSTING_CODES,
            "hold_not_found",
            "hold_not_active",
            "hold_expired",
            "account_frozen",
        )
    ),
)
async def capture(request: Request, hold_id: str, key: ApiKey = Depends(require("purchase"))) -> Response:
    internal_id = holds.parse_hold_id(hold_id)
    sent = await body.read_optional(request, CaptureRequest)
    return await answers.posting(request, key, Capture(internal_id, sent.amount, sent.description, sent.metadata))


@router.post(
    "/v1/holds/{hold_id}/void",
    response_model=Hold,
    summary="Release a hold",
    openapi_extra={**openapi.body(EmptyRequest, required=False), "parameters": [openapi.IDEMPOTENCY_KEY_HEADER]},
    responses=responses(200, Hold, "Voided.", *HOLD_CODES, "hold_not_found", "hold_not_active"),
)
async def void(request: Request, hold_id: str, key: ApiKey = Depends(require("purchase"))) -> Response:
    internal_id = holds.parse_hold_id(hold_id)
    await body.read_optional(request, EmptyRequest)
    idempotency_key = body.idempotency_key(request)
    outcome = await holds.void(database(request), answers.caller(key), idempotency_key, internal_id)
    return answers.hold(outcome, idempotency_key, holds.Void(internal_id).endpoint, {}, 200)


@router.get(
    "/v1/holds/{hold_id}",
    response_model=Hold,
    responses=responses(200, Hold, "The hold as it is now.", "hold_not_found"),
    dependencies=read,
)
async def get(request: Request, hold_id: str) -> Response:
    return Response(await holds.get(database(request), hold_id), media_type=JSON)


@router.get(
    "/v1/users/{user_id}/holds",
    response_model=HoldPage,
    tags=["users"],
    responses=responses(
        200, HoldPage, "A page of the user's holds, newest first.", "user_not_found", "validation_error"
    ),
    dependencies=read,
)
async def list_for_user(
    request: Request,
    user_id: UserIdPath,
    status: Annotated[Literal["held", "captured", "voided", "expired"] | None, Query()] = None,
    limit: LimitQuery = PAGE_LIMIT_DEFAULT,
    cursor: Annotated[
        str | None, Query(pattern=HOLD_ID_PATTERN, description="`next_cursor` of the previous page.")
    ] = None,
) -> Response:
    page = await holds.list_for_user(database(request), user_id, status, limit, cursor)
    return Response(page, media_type=JSON)
