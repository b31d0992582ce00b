"""Webhook endpoints (admin): register, list, read, delete, rotate the secret, the delivery log; and balance
monitors, whose crossings are events like any other."""

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response

from wallet import monitors, webhooks
from wallet.http import body, openapi
from wallet.http.auth import require
from wallet.http.documents import DeliveryPage, Monitor, MonitorList, Webhook, WebhookList
from wallet.http.openapi import problems, responses
from wallet.http.routes.params import LimitQuery
from wallet.http.services import database, services
from wallet.models import PAGE_LIMIT_DEFAULT, MonitorRequest, WebhookRequest

router = APIRouter(tags=["webhooks"], dependencies=[Depends(require("admin"))])
JSON = "application/json"


@router.post(
    "/v1/webhooks",
    response_model=Webhook,
    status_code=201,
    summary="Register an endpoint: events of its types are POSTed to it, signed with its secret (shown once)",
    openapi_extra=openapi.body(WebhookRequest),
    responses=responses(201, Webhook, "Registered; `secret` is in this answer only.", "validation_error"),
)
async def create(request: Request) -> Response:
    sent = await body.read(request, WebhookRequest)
    webhooks.check_url(sent.url, services(request).settings.webhook_allowed_hosts)
    types: list[str] = list(dict.fromkeys(sent.types))
    return Response(await webhooks.create(database(request), sent.url, types, sent.description), 201, media_type=JSON)


@router.get("/v1/webhooks", response_model=WebhookList, responses=responses(200, WebhookList, "Every endpoint."))
async def list_webhooks(request: Request) -> Response:
    return Response(await webhooks.list_all(database(request)), media_type=JSON)


@router.get(
    "/v1/webhooks/{webhook_id}",
    response_model=Webhook,
    responses=responses(200, Webhook, "The endpoint (without its secret).", "webhook_not_found"),
)
async def get(request: Request, webhook_id: str) -> Response:
    return Response(await webhooks.get(database(request), webhook_id), media_type=JSON)


@router.delete(
    "/v1/webhooks/{webhook_id}",
    status_code=204,
    response_class=Response,
    responses={
        204: {"description": "Deleted: nothing more is delivered to it."},
        **problems("unauthenticated", "forbidden", "rate_limited", "unavailable", "webhook_not_found"),
    },
)
async def delete(request: Request, webhook_id: str) -> Response:
    await webhooks.delete(database(request), webhook_id)
    return Response(status_code=204)


@router.post(
    "/v1/webhooks/{webhook_id}/rotate-secret",
    response_model=Webhook,
    summary="A new secret, shown once; the previous one signs beside it for 24 hours",
    responses=responses(200, Webhook, "The endpoint with its new `secret`.", "webhook_not_found"),
)
async def rotate_secret(request: Request, webhook_id: str) -> Response:
    return Response(await webhooks.rotate_secret(database(request), webhook_id), media_type=JSON)


@router.get(
    "/v1/webhooks/{webhook_id}/deliveries",
    response_model=DeliveryPage,
    summary="The delivery log: each event sent to the endpoint, with every attempt, newest first",
    responses=responses(200, DeliveryPage, "A page of deliveries.", "webhook_not_found", "validation_error"),
)
async def list_deliveries(
    request: Request,
    webhook_id: str,
    limit: LimitQuery = PAGE_LIMIT_DEFAULT,
    cursor: Annotated[
        str | None, Query(pattern="^whd_[0-7][0-9a-f]{15}$", description="`next_cursor` of the previous page.")
    ] = None,
) -> Response:
    return Response(await webhooks.deliveries(database(request), webhook_id, limit, cursor), media_type=JSON)


@router.post(
    "/v1/monitors",
    response_model=Monitor,
    status_code=201,
    tags=["monitors"],
    summary="Watch a balance: a posting that takes it across the threshold emits balance.threshold_crossed",
    openapi_extra=openapi.body(MonitorRequest),
    responses=responses(201, Monitor, "Watching.", "user_not_found", "asset_not_found", "validation_error"),
)
async def create_monitor(request: Request) -> Response:
    sent = await body.read(request, MonitorRequest)
    document = await monitors.create(database(request), sent.asset, sent.user_id, sent.condition, sent.threshold)
    return Response(document, 201, media_type=JSON)


@router.get(
    "/v1/monitors",
    response_model=MonitorList,
    tags=["monitors"],
    responses=responses(200, MonitorList, "Every monitor."),
)
async def list_monitors(request: Request) -> Response:
    return Response(await monitors.list_all(database(request)), media_type=JSON)
