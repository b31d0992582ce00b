"""GET /health: whether the service can reach its database."""

from fastapi import APIRouter, Request, Response

from wallet.http.documents import Health
from wallet.http.services import database

router = APIRouter(tags=["operations"])
HEALTH_TIMEOUT_S = 1.0


@router.get(
    "/health",
    response_model=Health,
    responses={503: {"model": Health, "description": "The database cannot be reached."}},
)
async def health(request: Request) -> Response:
    if await database(request).ping(HEALTH_TIMEOUT_S):
        return Response(b'{"status":"ok","database":"ok"}', media_type="application/json")
    return Response(b'{"status":"unavailable","database":"unavailable"}', 503, media_type="application/json")
