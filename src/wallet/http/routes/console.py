"""GET /console: the operator console, a page of plain HTML, one script and one stylesheet (src/wallet/console/).
It calls the API like any client, with the key the operator pastes; its CSP allows this origin only (envelope.py).
Nothing here is in the OpenAPI document."""

from importlib import resources

from fastapi import APIRouter, Response

from wallet.errors import NotFound

router = APIRouter(include_in_schema=False)
FILES = resources.files("wallet") / "console"
INDEX = (FILES / "index.html").read_bytes()
ASSETS = {
    name: (media_type, (FILES / name).read_bytes())
    for name, media_type in (("console.js", "text/javascript"), ("console.css", "text/css"))
}


@router.get("/console")
async def page() -> Response:
    return Response(INDEX, media_type="text/html")


@router.get("/console/{name}")
async def asset(name: str) -> Response:
    if name not in ASSETS:
        raise NotFound("No such console file.")
    media_type, content = ASSETS[name]
    return Response(content, media_type=media_type)
