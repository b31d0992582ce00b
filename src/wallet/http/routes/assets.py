"""Assets: GET the list; PUT one, to create it (with its system accounts) or change its policies."""

from fastapi import APIRouter, Depends, Request, Response

from wallet import reads
from wallet.http import body, openapi
from wallet.http.auth import require
from wallet.http.documents import Asset, AssetList
from wallet.http.openapi import responses
from wallet.http.routes.params import AssetPath
from wallet.http.services import database
from wallet.kinds import SYSTEM_ACCOUNTS
from wallet.models import AssetRequest

router = APIRouter(tags=["assets"])
JSON = "application/json"


@router.get(
    "/v1/assets",
    response_model=AssetList,
    responses=responses(200, AssetList, "Every asset."),
    dependencies=[Depends(require("read"))],
)
async def list_assets(request: Request) -> Response:
    return Response(await reads.list_assets(database(request)), media_type=JSON)


@router.put(
    "/v1/assets/{code}",
    response_model=Asset,
    summary="Create an asset, or change its name and policies",
    description=f"Created with its system accounts ({', '.join(SYSTEM_ACCOUNTS)}); user accounts appear with their"
    " first credit. On creation a field left out takes its default (scale 0, not transferable, no expiry); on a"
    " change it stays as it is, and `expiry_days: null` removes the expiry. The scale cannot change: another scale"
    " than the asset's is a 409 `asset_scale_immutable`.",
    openapi_extra=openapi.body(AssetRequest),
    responses={
        **responses(201, Asset, "Created, with its system accounts.", "asset_scale_immutable", "validation_error"),
        200: {"model": Asset, "description": "The asset was there: its name and policies as they now are."},
    },
    dependencies=[Depends(require("admin"))],
)
async def put_asset(request: Request, code: AssetPath) -> Response:
    sent = await body.read(request, AssetRequest)
    given = sent.model_fields_set
    created, representation = await reads.put_asset(
        database(request),
        code,
        sent.name,
        sent.scale if "scale" in given else None,
        sent.transferable if "transferable" in given else None,
        sent.expiry_days,
        "expiry_days" in given,
    )
    return Response(representation, 201 if created else 200, media_type=JSON)
