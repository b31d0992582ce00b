"""What an operator looks at beside users: system accounts, volume over recent hours, verify reports."""

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response

from wallet import reads, verify
from wallet.http.auth import require
from wallet.http.documents import SystemAccountList, VerifyReportPage, Volume
from wallet.http.openapi import responses
from wallet.http.routes.params import AssetQuery, LimitQuery
from wallet.http.services import database
from wallet.models import PAGE_LIMIT_DEFAULT

router = APIRouter(tags=["operations"], dependencies=[Depends(require("read"))])
JSON = "application/json"
VOLUME_HOURS_MAX = 168


@router.get(
    "/v1/system-accounts",
    response_model=SystemAccountList,
    summary="System accounts and their balances",
    responses=responses(
        200, SystemAccountList, "Every system account, by asset and name.", "asset_not_found", "validation_error"
    ),
)
async def list_system_accounts(request: Request, asset: AssetQuery = None) -> Response:
    return Response(await reads.list_system_accounts(database(request), asset), media_type=JSON)


@router.get(
    "/v1/volume",
    response_model=Volume,
    summary="Transactions per asset, hour and type over the last hours",
    responses=responses(200, Volume, "Counts and amounts by the hour, the current one included.", "validation_error"),
)
async def volume(
    request: Request,
    hours: Annotated[int, Query(ge=1, le=VOLUME_HOURS_MAX, description="Hours back, the current one included.")] = 24,
    asset: AssetQuery = None,
) -> Response:
    return Response(await reads.volume(database(request), hours, asset), media_type=JSON)


@router.get(
    "/v1/verify-reports",
    response_model=VerifyReportPage,
    summary="What `wallet verify` found, newest first",
    responses=responses(200, VerifyReportPage, "A page of reports (none before the first run).", "validation_error"),
)
async def list_verify_reports(
    request: Request,
    limit: LimitQuery = PAGE_LIMIT_DEFAULT,
    cursor: Annotated[str | None, Query(pattern=r"^vr_[1-9][0-9]{0,17}$", description="`next_cursor`.")] = None,
) -> Response:
    before = None if cursor is None else int(cursor.removeprefix("vr_"))
    return Response(await verify.list_reports(database(request), limit, before), media_type=JSON)
