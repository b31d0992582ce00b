"""What every worker does in the background, beside the requests: idempotency keys past their retention are
purged, holds past their expiry are marked expired (readers and writers treat them as expired at once; this
only tidies up and releases what they held on the account), what is left of expired lots of credits is moved to
`system:expired`, and new entries are rolled up for statistics (which are exact without it, only slower)."""

import asyncio
import logging
from datetime import datetime

import asyncpg

from wallet import sink, statistics, webhooks
from wallet.clock import Clock, database_clock
from wallet.config import Settings
from wallet.database import Database
from wallet.errors import WalletError

log = logging.getLogger("wallet.maintenance")

PURGE_INTERVAL_S = 3600
EXPIRY_BATCH_MAX = 1000  # holds marked per transaction
LOT_EXPIRY_BATCH_MAX = 100  # accounts whose expired lots one transaction sweeps (it holds their locks until commit)


RETRY_S = 60


async def purge_idempotency_keys(conn: asyncpg.Connection, retention_days: int) -> int:
    status = await conn.execute(
        "DELETE FROM idempotency_keys WHERE created_at < now() - make_interval(days => $1)", retention_days
    )
    return int(status.split()[-1])


async def expire_holds(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT wallet_expire_holds($1)", EXPIRY_BATCH_MAX))


async def expire_lots(conn: asyncpg.Connection, now: datetime | None) -> int:
    """Posts the expiry transactions of up to LOT_EXPIRY_BATCH_MAX accounts, in one transaction."""
    return int(await conn.fetchval("SELECT wallet_expire_lots(coalesce($1, now()), $2)", now, LOT_EXPIRY_BATCH_MAX))


async def purge_loop(database: Database, settings: Settings) -> None:
    """Purges idempotency keys past their retention, hourly. Survives outages: a round that fails is tried again a
    minute later."""
    while True:
        try:
            await database.run(lambda conn: purge_idempotency_keys(conn, settings.idempotency_retention_days))
            await asyncio.sleep(PURGE_INTERVAL_S)
        except WalletError as exc:
            log.warning("purge skipped: %s", exc.detail)
            await asyncio.sleep(RETRY_S)


async def expiry_loop(database: Database, interval_s: float, clock: Clock) -> None:
    """Marks due holds expired and sweeps expired lots, every interval (at once again while there are more)."""
    while True:
        try:
            marked = await database.run(expire_holds)
            swept = await database.run(lambda conn: expire_lots(conn, clock()))
            more = marked >= EXPIRY_BATCH_MAX or swept >= LOT_EXPIRY_BATCH_MAX
            await asyncio.sleep(0 if more else interval_s)
        except WalletError as exc:
            log.warning("expiry skipped: %s", exc.detail)
            await asyncio.sleep(RETRY_S)


async def statistics_loop(database: Database, interval_s: float) -> None:
    """Rolls up new entries for statistics, every interval (at once again while behind). One worker at a time does
    the work; the others find the rollup taken and wait for the next interval."""
    while True:
        try:
            looked_at = await database.run(statistics.rollup)
            await asyncio.sleep(0 if looked_at >= statistics.ROLLUP_IDS_MAX else interval_s)
        except WalletError as exc:
            log.warning("statistics rollup skipped: %s", exc.detail)
            await asyncio.sleep(RETRY_S)


async def maintain(database: Database, settings: Settings, clock: Clock = database_clock) -> None:
    """Every loop, and the webhook dispatcher (WALLET_WEBHOOK_DISPATCH) and the NATS sink (WALLET_NATS_URL)."""
    extra = []
    if settings.webhook_dispatch:
        extra.append(webhooks.Dispatcher(database, settings, clock).run())
    if settings.nats_url:
        extra.append(sink.run(database, settings.nats_url))
    await asyncio.gather(
        *extra,
        purge_loop(database, settings),
        expiry_loop(database, settings.hold_expiry_interval_ms / 1000, clock),
        statistics_loop(database, settings.statistics_rollup_interval_ms / 1000),
    )
