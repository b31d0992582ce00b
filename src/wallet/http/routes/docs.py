"""GET /docs: Swagger UI from the swagger-ui-bundle-v2 package, not from a CDN, so that the page works offline and
under a CSP that allows this origin only (envelope.py). Nothing here is in the OpenAPI document."""

from importlib import resources

from fastapi import APIRouter, Response
from fastapi.responses import FileResponse
from swagger_ui_bundle import swagger_ui_path

from wallet.errors import NotFound

router = APIRouter(include_in_schema=False)
PAGE = resources.files("wallet") / "docs"
INDEX = (PAGE / "index.html").read_bytes()
INIT = (PAGE / "init.js").read_bytes()
# What the page loads of the distribution, by name; nothing else of it is served.
ASSETS = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "favicon-32x32.png": "image/png",
}


@router.get("/docs")
async def page() -> Response:
    return Response(INDEX, media_type="text/html")


@router.get("/docs/init.js")
async def init() -> Response:
    return Response(INIT, media_type="text/javascript")


@router.get("/docs/assets/{name}")
async def asset(name: str) -> Response:
    media_type = ASSETS.get(name)
    if media_type is None:
        raise NotFound("No such docs asset.")
    return FileResponse(swagger_ui_path / name, media_type=media_type)
