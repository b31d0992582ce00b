"""The NATS JetStream sink (WALLET_NATS_URL): every event of the feed is also published to the stream WALLET_EVENTS,
subject `wallet.events.<type>`, with JetStream's message id set to the event id, so that a publish retried (after a
crash, or a NATS restart) within the stream's duplicate window is stored once.

One publisher across workers and servers: the one holding a session advisory lock (no transaction stays open,
so the feed's horizon is never held back). It reads the feed from the sink's position (table event_sinks, which
starts at the feed's head when the sink first runs), publishes each event and waits for JetStream's
acknowledgement, then moves the position past what was acknowledged. Delivery is at least once; the message id
makes it exactly once in the stream for retries within the duplicate window (two minutes by default).
"""

import asyncio
import contextlib
import logging
from typing import cast

import asyncpg
import nats
from nats.js.errors import NotFoundError

from wallet import events
from wallet.database import Database
from wallet.errors import DATABASE_ERRORS, WalletError

log = logging.getLogger("wallet.sink")

NAME = "nats"
STREAM = "WALLET_EVENTS"
SUBJECTS = "wallet.events.>"
LOCK_KEY = 0x77616C6C6574  # pg_try_advisory_lock: the publisher
PAGE = 200
POLL_S = 0.2
RETRY_S = 2.0


def subject(event_type: str) -> str:
    return "wallet.events." + event_type


async def _position(conn: asyncpg.Connection) -> events.Position:
    row = await conn.fetchrow(f"SELECT {events.STORED_COLUMNS} FROM event_sinks WHERE name = $1", NAME)
    if row is None:
        head = await events.head(conn)
        await conn.execute(
            """INSERT INTO event_sinks (name, position_xid, position_source, position_id)
               VALUES ($1, $2::text::xid8, $3, $4) ON CONFLICT (name) DO NOTHING""",
            NAME,
            *head.stored,
        )
        return await _position(conn)
    return events.Position.of_stored(row)


async def publish_once(conn: asyncpg.Connection, js: nats.js.JetStreamContext) -> int:
    """One page of the feed from the sink's position, published and acknowledged, and the position moved."""
    position = await _position(conn)
    page = await events.read(conn, position, PAGE)
    for pos, kind, document in page.events:
        await js.publish(subject(kind), document, headers={"Nats-Msg-Id": events.event_id(pos.source, pos.id)})
    if page.events:
        await conn.execute(
            """UPDATE event_sinks SET position_xid = $2::text::xid8, position_source = $3, position_id = $4
                WHERE name = $1""",
            NAME,
            *page.next.stored,
        )
    return len(page.events)


async def ensure_stream(js: nats.js.JetStreamContext) -> None:
    try:
        await js.stream_info(STREAM)
    except NotFoundError:
        await js.add_stream(name=STREAM, subjects=[SUBJECTS])


async def run(database: Database, url: str) -> None:
    """Publishes the feed for as long as the service runs, when this process holds the publisher's lock."""
    while True:
        try:
            await _lead(database, url)
        except asyncio.CancelledError:
            raise
        except (*DATABASE_ERRORS, WalletError, nats.errors.Error) as exc:
            log.warning("NATS sink paused: %s", exc)
        except Exception:  # the sink must outlive any one failure: logged, then on after a pause
            log.exception("NATS sink failed")
        await asyncio.sleep(RETRY_S)


async def _lead(database: Database, url: str) -> None:
    async with database.pool.acquire() as conn:
        if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", LOCK_KEY):
            return
        try:
            client = await nats.connect(url, max_reconnect_attempts=-1, reconnect_time_wait=0.5)
            try:
                js = client.jetstream(timeout=5)
                await ensure_stream(js)
                while True:
                    published = await publish_once(cast(asyncpg.Connection, conn), js)
                    await asyncio.sleep(0 if published >= PAGE else POLL_S)
            finally:
                with contextlib.suppress(Exception):
                    await client.close()
        finally:
            with contextlib.suppress(Exception):
                await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)
