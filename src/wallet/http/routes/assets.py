"""GET /v1/assets."""

from fastapi import APIRouter, Depends, Request, Response

from wallet import ledger
from wallet.http.auth import require
from wallet.http.openapi import responses
from wallet.http.services import database
from wallet.models import AssetList

router = APIRouter(tags=["assets"])


@router.get(
    "/v1/assets",
    response_model=AssetList,
    responses=responses(200, AssetList, "Every asset."),
    dependencies=[Depends(require("read"))],
)
async def list_assets(request: Request) -> Response:
    return Response(await ledger.list_assets(database(request)), media_type="application/json")
