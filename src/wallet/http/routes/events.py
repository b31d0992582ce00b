"""The event feed: every change, in commit order."""

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response

from wallet import events
from wallet.http.auth import require
from wallet.http.documents import EventPage
from wallet.http.openapi import responses
from wallet.http.routes.params import LimitQuery
from wallet.http.services import database
from wallet.models import PAGE_LIMIT_DEFAULT

router = APIRouter(tags=["events"])
JSON = "application/json"


@router.get(
    "/v1/events",
    response_model=EventPage,
    summary="Events in commit order, after a cursor",
    description="Every change as an event, in the order of the transactions that wrote them. `next_cursor` is never"
    " null: follow it to see every event exactly once, including those that commit later than a page was read.",
    responses=responses(
        200, EventPage, "A page of events (maybe empty) and where to read from next.", "validation_error"
    ),
    dependencies=[Depends(require("read"))],
)
async def list_events(
    request: Request,
    after: Annotated[
        str | None,
        Query(
            pattern=events.CURSOR_PATTERN,
            description="`next_cursor` of the previous page; left out: from the start.",
        ),
    ] = None,
    types: Annotated[
        str | None,
        Query(max_length=1000, pattern=events.TYPES_PATTERN, description="Comma-separated event types; left out: all."),
    ] = None,
    limit: LimitQuery = PAGE_LIMIT_DEFAULT,
) -> Response:
    position = events.Position.parse(after)
    wanted = events.parse_types(types)
    page = await database(request).run(lambda conn: events.read(conn, position, limit, wanted))
    return Response(events.page_document(page), media_type=JSON)
