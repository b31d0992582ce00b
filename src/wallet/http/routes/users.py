"""Users and what belongs to them: PUT/GET a user, freeze and unfreeze, balances (now or as of an instant),
history."""

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response

from wallet import reads
from wallet.http import body, openapi
from wallet.http.auth import require
from wallet.http.documents import Balance, Balances, TransactionPage, User, UserPage
from wallet.http.openapi import responses
from wallet.http.routes.params import AssetPath, AssetQuery, LimitQuery, UserIdPath, as_of
from wallet.http.services import database
from wallet.models import (
    CURSOR_PATTERN,
    PAGE_LIMIT_DEFAULT,
    USER_ID_PATTERN,
    EmptyRequest,
    FreezeRequest,
    UserRequest,
)

router = APIRouter()
JSON = "application/json"
read = [Depends(require("read"))]


@router.get(
    "/v1/users",
    response_model=UserPage,
    tags=["users"],
    summary="Find users by the start of their id",
    responses=responses(200, UserPage, "A page of users, by id.", "validation_error"),
    dependencies=read,
)
async def list_users(
    request: Request,
    prefix: Annotated[
        str, Query(pattern=r"^[A-Za-z0-9_.:@-]{0,64}$", description="What their ids start with (default: any).")
    ] = "",
    limit: LimitQuery = PAGE_LIMIT_DEFAULT,
    cursor: Annotated[
        str | None, Query(pattern=USER_ID_PATTERN, max_length=64, description="`next_cursor` of the previous page.")
    ] = None,
) -> Response:
    return Response(await reads.list_users(database(request), prefix, limit, cursor), media_type=JSON)


@router.put(
    "/v1/users/{user_id}",
    response_model=User,
    tags=["users"],
    openapi_extra=openapi.body(UserRequest, required=False),
    responses={
        **responses(201, User, "Created; its accounts appear with their first credits.", "validation_error"),
        200: {
            "model": User,
            "description": "The user was already there. A `display_name` in the body is set (null clears it); "
            "without one the user is left as it was. The answer is the user as it is now.",
        },
    },
    dependencies=[Depends(require("admin"))],
)
async def put_user(request: Request, user_id: UserIdPath) -> Response:
    sent = await body.read_optional(request, UserRequest)
    rename = "display_name" in sent.model_fields_set
    created, representation = await reads.put_user(database(request), user_id, sent.display_name, rename)
    return Response(representation, 201 if created else 200, media_type=JSON)


@router.get(
    "/v1/users/{user_id}",
    response_model=User,
    tags=["users"],
    responses=responses(200, User, "The user.", "user_not_found", "validation_error"),
    dependencies=read,
)
async def get_user(request: Request, user_id: UserIdPath) -> Response:
    return Response(await reads.get_user(database(request), user_id), media_type=JSON)


@router.post(
    "/v1/users/{user_id}/freeze",
    response_model=User,
    tags=["users"],
    summary="Freeze a user: nothing can be taken from them (credits still apply)",
    openapi_extra=openapi.body(FreezeRequest),
    responses=responses(200, User, "The user, frozen.", "user_not_found", "validation_error"),
    dependencies=[Depends(require("admin"))],
)
async def freeze(request: Request, user_id: UserIdPath) -> Response:
    sent = await body.read(request, FreezeRequest)
    return Response(await reads.set_frozen(database(request), user_id, True, sent.reason), media_type=JSON)


@router.post(
    "/v1/users/{user_id}/unfreeze",
    response_model=User,
    tags=["users"],
    summary="Unfreeze a user",
    openapi_extra=openapi.body(EmptyRequest, required=False),
    responses=responses(200, User, "The user, active.", "user_not_found", "validation_error"),
    dependencies=[Depends(require("admin"))],
)
async def unfreeze(request: Request, user_id: UserIdPath) -> Response:
    await body.read_optional(request, EmptyRequest)
    return Response(await reads.set_frozen(database(request), user_id, False, None), media_type=JSON)


@router.get(
    "/v1/users/{user_id}/balances",
    response_model=Balances,
    tags=["balances"],
    responses=responses(
        200,
        Balances,
        "Every asset's balance, 0 included; with `as_of`, as it was then.",
        "user_not_found",
        "validation_error",
    ),
    dependencies=read,
)
async def get_balances(
    request: Request, user_id: UserIdPath, at: Annotated[datetime | None, Depends(as_of)]
) -> Response:
    return Response(await reads.get_balances(database(request), user_id, at), media_type=JSON)


@router.get(
    "/v1/users/{user_id}/balances/{asset}",
    response_model=Balance,
    tags=["balances"],
    responses=responses(
        200,
        Balance,
        "The balance; with `as_of`, as it was then.",
        "user_not_found",
        "asset_not_found",
        "validation_error",
    ),
    dependencies=read,
)
async def get_balance(
    request: Request, user_id: UserIdPath, asset: AssetPath, at: Annotated[datetime | None, Depends(as_of)]
) -> Response:
    return Response(await reads.get_balance(database(request), user_id, asset, at), media_type=JSON)


@router.get(
    "/v1/users/{user_id}/transactions",
    response_model=TransactionPage,
    tags=["transactions"],
    responses=responses(
        200,
        TransactionPage,
        "A page of transactions, newest first.",
        "user_not_found",
        "asset_not_found",
        "validation_error",
    ),
    dependencies=read,
)
async def get_history(
    request: Request,
    user_id: UserIdPath,
    asset: AssetQuery = None,
    limit: LimitQuery = PAGE_LIMIT_DEFAULT,
    cursor: Annotated[
        str | None, Query(pattern=CURSOR_PATTERN, description="`next_cursor` of the previous page.")
    ] = None,
) -> Response:
    page = await reads.get_history(database(request), user_id, asset, limit, cursor)
    return Response(page, media_type=JSON)
