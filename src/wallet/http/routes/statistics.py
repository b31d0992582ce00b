"""A user's statistics over a window, and statements as CSV."""

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import StreamingResponse

from wallet import statistics
from wallet.http.auth import require
from wallet.http.documents import Statistics
from wallet.http.openapi import problems, responses
from wallet.http.routes.params import AssetQuery, UserIdPath, Window, window
from wallet.http.services import database

router = APIRouter()
JSON = "application/json"
CSV = "text/csv"
read = [Depends(require("read"))]


@router.get(
    "/v1/users/{user_id}/statistics",
    response_model=Statistics,
    tags=["statistics"],
    summary="A user's credits, debits and net change by type over a window, per asset",
    responses=responses(
        200,
        Statistics,
        "Every asset (or `asset`), over `[from, to)`; `balance` is the balance at the end of the window.",
        "user_not_found",
        "asset_not_found",
        "validation_error",
    ),
    dependencies=read,
)
async def get_statistics(
    request: Request, user_id: UserIdPath, between: Annotated[Window, Depends(window)], asset: AssetQuery = None
) -> Response:
    document = await statistics.get_statistics(database(request), user_id, asset, between.start, between.end)
    return Response(document, media_type=JSON)


@router.get(
    "/v1/users/{user_id}/statement.csv",
    tags=["statistics"],
    summary="Every entry of a user's accounts over a window, oldest first, as CSV (streamed)",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "`created_at,transaction_id,type,asset,amount,balance_after,description`, one row per "
            "entry: its signed amount on the user's account and that account's balance after it. A description "
            "that a spreadsheet would take for a formula (starting with `=`, `+`, `-`, `@`, tab or CR) is "
            "prefixed with `'`.",
            "content": {CSV: {"schema": {"type": "string"}}},
        },
        **problems("unauthenticated", "forbidden", "rate_limited", "unavailable"),
        **problems("user_not_found", "asset_not_found", "validation_error"),
    },
    dependencies=read,
)
async def get_statement(
    request: Request, user_id: UserIdPath, between: Annotated[Window, Depends(window)], asset: AssetQuery = None
) -> StreamingResponse:
    statement = await statistics.open_statement(database(request), user_id, asset, between.start, between.end)
    disposition = f'attachment; filename="{user_id}-statement.csv"'
    return StreamingResponse(
        statement.stream(), media_type=CSV + "; charset=utf-8", headers={"Content-Disposition": disposition}
    )
