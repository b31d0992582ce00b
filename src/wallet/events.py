"""The event feed (spec/API.md, v1.1 "Events and webhooks"): every change as an event, read in commit order.

A position in the feed is (xid, source, id): the writing transaction's id, then the source (0: a transaction row,
which is its own `transaction.posted` event; 1: a row of `events`), then the row's id. Only what lies below the
oldest transaction still running is read (see migration 0008), so a reader that follows `next_cursor` sees every
event once and never skips one that commits later. Webhooks and the NATS sink read the feed the same way.
"""

import re
from dataclasses import dataclass
from typing import get_args

import asyncpg
import orjson

from wallet.errors import ValidationFailed
from wallet.ledger import view
from wallet.models import EventType
from wallet.render import public_id, timestamp

EVENT_TYPES: tuple[str, ...] = get_args(EventType)  # the types, named once (models.EventType)
_TYPE = "(" + "|".join(re.escape(t) for t in EVENT_TYPES) + ")"
TYPES_PATTERN = f"^{_TYPE}(,{_TYPE})*$"
TRANSACTION_SOURCE, EVENT_SOURCE = 0, 1
ID_MAX = 2**63 - 1
CURSOR_PATTERN = r"^ev_([0-9]{1,19})_([01])_([0-9]{1,18})$"  # every such cursor is in range: xid8 < 2^64, id < 2^63
CURSOR = re.compile(CURSOR_PATTERN)


STORED_COLUMNS = "position_xid::text AS xid, position_source, position_id"  # read back by Position.of_stored


@dataclass(frozen=True, slots=True, order=True)
class Position:
    """Where a reader is: the feed's events after this one come next."""

    xid: int
    source: int
    id: int

    @property
    def cursor(self) -> str:
        return f"ev_{self.xid}_{self.source}_{self.id}"

    @classmethod
    def parse(cls, cursor: str | None) -> "Position":
        """The position a cursor names (the start of the feed for None); anything else is a 422."""
        if cursor is None:
            return START
        match = CURSOR.fullmatch(cursor)
        if match is None:
            raise ValidationFailed(
                "after is not a cursor this service handed out (next_cursor of a page of /v1/events).",
                [{"loc": ["query", "after"], "msg": "not a cursor of the feed", "type": "cursor"}],
            )
        return cls(int(match.group(1)), int(match.group(2)), int(match.group(3)))

    @property
    def stored(self) -> tuple[str, int, int]:
        """As the tables that keep a reader's position (event_sinks, webhook_endpoints) store it: position_xid
        (passed as text, cast to xid8 by the SQL: asyncpg has no codec for it), position_source, position_id."""
        return str(self.xid), self.source, self.id

    @classmethod
    def of_stored(cls, row: asyncpg.Record) -> "Position":
        """The position in a row read with STORED_COLUMNS."""
        return cls(int(row["xid"]), row["position_source"], row["position_id"])

    def after_in(self, source: int) -> int:
        """The id after which rows of `source` with this position's xid come next."""
        if source == self.source:
            return self.id
        return ID_MAX if source < self.source else 0


START = Position(0, 0, 0)


def parse_types(types: str | None) -> list[str] | None:
    """`?types=a,b`: the event types asked for (None: all); an unknown one is a 422 that names those there are."""
    if types is None:
        return None
    asked = [t.strip() for t in types.split(",") if t.strip()]
    unknown = [t for t in asked if t not in EVENT_TYPES]
    if unknown or not asked:
        raise ValidationFailed(
            f"types names no event type or an unknown one ({', '.join(unknown)}); the types are: "
            + ", ".join(EVENT_TYPES)
            + ".",
            [{"loc": ["query", "types"], "msg": "unknown event type", "type": "enum"}],
        )
    return asked


_FEED_SQL = """
WITH horizon AS (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin)
SELECT u.xid::text AS xid, u.source, u.id, u.type, u.created_at, u.data
  FROM ((SELECT t.xid, 0 AS source, t.id, 'transaction.posted' AS type, t.created_at, NULL::text AS data
           FROM transactions t, horizon h
          WHERE (t.xid, t.id) > ($1::text::xid8, $2) AND t.xid < h.xmin
            AND ($5::text[] IS NULL OR 'transaction.posted' = ANY ($5))
          ORDER BY t.xid, t.id LIMIT $4)
        UNION ALL
        (SELECT e.xid, 1, e.id, e.type, e.created_at, e.data::text
           FROM events e, horizon h
          WHERE (e.xid, e.id) > ($1::text::xid8, $3) AND e.xid < h.xmin AND ($5::text[] IS NULL OR e.type = ANY ($5))
          ORDER BY e.xid, e.id LIMIT $4)) u
 ORDER BY u.xid, u.source, u.id
 LIMIT $4
"""

_HORIZON_SQL = "SELECT (pg_snapshot_xmin(pg_current_snapshot())::text::numeric - 1)::text"


@dataclass(frozen=True, slots=True)
class Page:
    events: list[tuple[Position, str, bytes]]  # (position, type, the event's JSON)
    next: Position


def event_id(source: int, internal_id: int) -> str:
    """The public id of an event: a transaction's event is named after it, the others after their row."""
    return "evt_" + (public_id(internal_id) if source == TRANSACTION_SOURCE else f"{internal_id:016x}")


async def read(conn: asyncpg.Connection, after: Position, limit: int, types: list[str] | None = None) -> Page:
    """The next events after `after`, in commit order, rendered; and where to read from next (`after` itself
    when there is nothing new yet)."""
    rows = await conn.fetch(
        _FEED_SQL,
        str(after.xid),
        after.after_in(TRANSACTION_SOURCE),
        after.after_in(EVENT_SOURCE),
        limit,
        types,
    )
    transactions = [row["id"] for row in rows if row["source"] == TRANSACTION_SOURCE]
    rendered: dict[int, bytes] = {}
    if transactions:
        for row in await conn.fetch("SELECT * FROM wallet_transactions($1)", transactions):
            rendered[row["id"]] = view(row).render()
    events = []
    for row in rows:
        position = Position(int(row["xid"]), row["source"], row["id"])
        data = rendered[row["id"]] if row["source"] == TRANSACTION_SOURCE else row["data"].encode()
        document = {
            "id": event_id(row["source"], row["id"]),
            "type": row["type"],
            "created_at": timestamp(row["created_at"]),
            "data": orjson.Fragment(data),
        }
        events.append((position, row["type"], orjson.dumps(document)))
    return Page(events, events[-1][0] if events else after)


async def head(conn: asyncpg.Connection) -> Position:
    """The feed's head: a position before every event that a transaction still running, or any later one, writes.
    (It may come before a few events that have committed already: delivery is at least once.)"""
    xid = int(await conn.fetchval(_HORIZON_SQL))
    return Position(xid, EVENT_SOURCE, ID_MAX)


def page_document(page: Page) -> bytes:
    items = b",".join(document for _, _, document in page.events)
    return b'{"items":[' + items + b'],"next_cursor":' + orjson.dumps(page.next.cursor) + b"}"
