"""GET /health: whether the service can reach its database. GET /metrics: Prometheus metrics."""

from fastapi import APIRouter, Request, Response
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from wallet import metrics
from wallet.errors import NotFound
from wallet.http.documents import Health
from wallet.http.services import database, services

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


@router.get(
    "/metrics",
    summary="Prometheus metrics of every worker (no key; WALLET_METRICS=off turns it off)",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "The text exposition format."}},
)
async def get_metrics(request: Request) -> Response:
    if not services(request).settings.metrics:
        raise NotFound("No such route.")
    body = metrics.exposition(await metrics.database_gauges(database(request).pool))
    return Response(body, media_type=CONTENT_TYPE_PLAIN_0_0_4)  # the format every Prometheus reads
