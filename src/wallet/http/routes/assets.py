"""GET /v1/assets."""

from fastapi import APIRouter, Depends, Request, Response

from wallet import reads
from wallet.http.auth import require
from wallet.http.documents import AssetList
from wallet.http.openapi import responses
from wallet.http.services import database

router = APIRouter(tags=["assets"])


@router.get(
    "/v1/assets",
    response_model=AssetList,
    responses=responses(200, AssetList, "Every asset."),
    dependencies=[Depends(require("read"))],
)
async def list_assets(request: Request) -> Response:
    return Response(await reads.list_assets(database(request)), media_type="application/json")
