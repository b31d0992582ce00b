"""Database access: the embedded PostgreSQL, migrations, the connection pool and the unit of work (bounded
retries, the reconnect window, outcomes that stay unknown)."""

import asyncio
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from importlib.resources import files
from typing import Any, TypeVar, cast

import asyncpg
import orjson
from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from wallet import metrics
from wallet.config import Settings
from wallet.errors import (
    DATABASE_ERRORS,
    InternalError,
    NotSent,
    OutcomeUnknown,
    WalletError,
    from_database,
    is_conflict,
    is_outcome_unknown,
)

log = logging.getLogger("wallet.database")

T = TypeVar("T")

MIGRATION_LOCK_ID = 0x77A11E7  # advisory lock id that serializes concurrent `wallet migrate` runs


@contextmanager
def database_url(settings: Settings) -> Iterator[str]:
    """Yields the URL to use: WALLET_DATABASE_URL, or an embedded server in the data directory.

    The embedded server is shared by every process that opens the same data directory (a running `wallet serve`
    and a `wallet verify` beside it); the last process to let go of it stops it. After a crash it starts again,
    with PostgreSQL's crash recovery (see wallet.embedded).
    """
    if settings.database_url:
        yield settings.database_url
        return
    from wallet.embedded import embedded_server  # imported late: the server package is slow to import

    data_dir = settings.data_dir.expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    with embedded_server(data_dir) as url:
        yield url


def _check_scheme(url: str) -> None:
    scheme = url.partition("://")[0]
    if scheme not in ("postgres", "postgresql"):
        raise ValueError(f"not a PostgreSQL URL: scheme {scheme!r}")


def migrate(url: str, revision: str = "head") -> None:
    """Brings the schema to `revision` (the newest by default); concurrent callers wait for each other."""
    _check_scheme(url)
    # libpq reads the URL itself (SQLAlchemy's parser knows one host): several hosts with target_session_attrs, as
    # asyncpg does for the pool, reach whichever is the primary now.
    import psycopg  # here: the workers, which never migrate, need not carry it (9 MB of RSS)

    engine = create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(url), poolclass=NullPool)
    try:
        with engine.connect() as conn:
            # Every revision runs in this one transaction (env.py's per-migration transactions are part of it), and so
            # does the lock: it ends with the transaction, whatever happens, also behind a transaction pooler, which
            # keeps no session to hold a lock in.
            conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": MIGRATION_LOCK_ID})
            config = Config()
            config.set_main_option("script_location", str(files("wallet") / "migrations"))
            config.attributes["connection"] = conn
            command.upgrade(config, revision)
            conn.commit()
    finally:
        engine.dispose()


JSONB_VERSION = b"\x01"  # jsonb's binary format: a version byte, then the text


async def _init_connection(conn: asyncpg.Connection) -> None:
    # json arrives as text, passed through to clients untouched; jsonb goes both ways through orjson. Binary
    # codecs: composite types (wallet_item) can only hold elements with binary codecs.
    await conn.set_type_codec(
        "jsonb",
        encoder=lambda v: JSONB_VERSION + orjson.dumps(v),
        decoder=lambda b: orjson.loads(b[1:]),
        schema="pg_catalog",
        format="binary",
    )
    await conn.set_type_codec(
        "json", encoder=orjson.dumps, decoder=lambda b: b.decode(), schema="pg_catalog", format="binary"
    )


# What a pooler in transaction mode lets a client set at connect (PgBouncer tracks these per client).
POOLER_SETTINGS = ("application_name", "timezone")
# What the service expects of its sessions; behind a transaction pooler, the role must have them (checked at start).
EXPECTED_SETTINGS = ("statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout", "jit")


def _server_settings(settings: Settings) -> dict[str, str]:
    every = session_settings(settings)
    return {k: v for k, v in every.items() if k in POOLER_SETTINGS} if settings.transaction_pooler else every


def session_settings(settings: Settings) -> dict[str, str]:
    """The settings of the service's sessions, as pg_settings shows them (durations in milliseconds)."""
    return {
        "application_name": "wallet",
        "statement_timeout": str(settings.statement_timeout_ms),
        "lock_timeout": str(settings.lock_timeout_ms),
        "idle_in_transaction_session_timeout": str(settings.statement_timeout_ms * 2),
        "jit": "off",
        "timezone": "UTC",
    }


async def _reset_connection(conn: asyncpg.Connection) -> None:
    """Between requests: the service keeps no session state (no SET, LISTEN, cursors or session-level advisory
    locks), so asyncpg's default reset (four statements, one more round trip per request) buys nothing. Only a
    transaction left open by a cancelled request needs closing."""
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


async def connect(url: str, settings: Settings) -> asyncpg.Connection:
    conn = await asyncpg.connect(
        url,
        timeout=settings.connect_timeout_ms / 1000,
        server_settings=_server_settings(settings),
        statement_cache_size=_statement_cache_size(settings),
    )
    await _init_connection(conn)
    return conn


def _statement_cache_size(settings: Settings) -> int:
    """asyncpg keeps the statements it prepared on each connection (its default, 100); behind a transaction pooler the
    next transaction may run on another server connection, which never saw them."""
    return 0 if settings.transaction_pooler else 100


async def create_pool(url: str, settings: Settings) -> asyncpg.Pool:
    """A pool that opens lazily, so the service starts (and answers 503) while the database is down."""
    pool = asyncpg.create_pool(
        url,
        min_size=0,
        max_size=settings.pool_size_max,
        timeout=settings.connect_timeout_ms / 1000,
        command_timeout=settings.statement_timeout_ms / 1000 + 1,
        server_settings=_server_settings(settings),
        statement_cache_size=_statement_cache_size(settings),
        init=_init_connection,
        reset=_reset_connection,
        max_inactive_connection_lifetime=300,
    )
    await pool
    return pool


async def with_retries(attempts_max: int, reconnect_window_s: float, operation: Callable[[], Awaitable[T]]) -> T:
    """Runs `operation` again after a conflict (at most `attempts_max` runs, with jitter). After a connection
    broke with the work sent, its outcome is unknown: it is run again for up to `reconnect_window_s`, which
    resolves it (the idempotency key replays what committed), so a database restart costs the caller a delay,
    not an unknown outcome. When the database cannot be reached at all, fails at once: nothing was sent."""
    unknown_since: float | None = None
    conflicts = 0
    while True:
        try:
            return await operation()
        except NotSent as exc:
            metrics.DATABASE_ERRORS.labels(metrics.error_class(exc.cause)).inc()
            if unknown_since is None:
                raise
            if time.monotonic() - unknown_since >= reconnect_window_s:
                raise OutcomeUnknown() from None
        except DATABASE_ERRORS as exc:
            metrics.DATABASE_ERRORS.labels(metrics.error_class(exc)).inc()
            if is_conflict(exc):
                conflicts += 1
                if conflicts >= attempts_max:
                    raise
            elif is_outcome_unknown(exc):
                unknown_since = unknown_since or time.monotonic()
                if time.monotonic() - unknown_since >= reconnect_window_s:
                    raise OutcomeUnknown() from None
            else:
                raise
        delay_s = random.uniform(0, 0.005 * 2**conflicts) if unknown_since is None else random.uniform(0.05, 0.25)
        await asyncio.sleep(delay_s)


class Database:
    """The unit of work: a lazily opened pool, and `run`, which runs one unit of work on a pooled connection,
    retried on conflicts and across broken connections, with database failures turned into public errors."""

    def __init__(self, url: str, settings: Settings) -> None:
        self.url = url
        self.settings = settings
        self._pool: asyncpg.Pool | None = None
        self._pool_size = 0  # what metrics.POOL_SIZE was last set to

    async def open(self) -> None:
        self._pool = await create_pool(self.url, self.settings)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()

    @property
    def pool(self) -> asyncpg.Pool:
        assert self._pool is not None, "the database is not open"
        return self._pool

    async def run(self, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        async def attempt() -> T:
            metrics.POOL_WAITING.inc()
            try:
                conn = await self.pool.acquire(timeout=self.settings.pool_acquire_timeout_ms / 1000)
            except DATABASE_ERRORS as exc:
                raise NotSent(exc) from exc
            finally:
                metrics.POOL_WAITING.dec()
            metrics.POOL_IN_USE.inc()
            if (size := self.pool.get_size()) != self._pool_size:  # it changes rarely: no write per request
                self._pool_size = size
                metrics.POOL_SIZE.set(size)
            try:
                return await work(cast(asyncpg.Connection, conn))
            finally:
                metrics.POOL_IN_USE.dec()
                await self.pool.release(conn)

        try:
            settings = self.settings
            return await with_retries(settings.retry_attempts_max, settings.reconnect_window_ms / 1000, attempt)
        except WalletError:
            raise
        except (NotSent, *DATABASE_ERRORS) as exc:
            error = from_database(exc)
            if isinstance(error, InternalError):
                log.error("database error", extra={"fields": {"sqlstate": getattr(exc, "sqlstate", None)}})
            raise error from None

    async def fetchval(self, sql: str, *args: Any) -> Any:
        """One statement, one transaction: its first value."""
        return await self.run(lambda conn: conn.fetchval(sql, *args))

    async def fetchrow(self, sql: str, *args: Any) -> asyncpg.Record | None:
        return await self.run(lambda conn: conn.fetchrow(sql, *args))

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        return await self.run(lambda conn: conn.fetch(sql, *args))

    async def warm(self, connections: int, statements: tuple[str, ...]) -> None:
        """Opens `connections` of the pool and prepares `statements` on each, in the background after start: the
        first requests of a burst would otherwise pay for connecting, for asyncpg's look at the types of the
        statements, and for PostgreSQL's first plan (p99 of a cold open-loop run at 500/s: 57 ms; warm: 4 ms).
        Gives up quietly when the database is not there: the pool opens lazily all the same."""

        async def one() -> None:
            async with self.pool.acquire(timeout=self.settings.pool_acquire_timeout_ms / 1000) as conn:
                for statement in statements:
                    await conn.prepare(statement)

        try:
            await asyncio.gather(*(one() for _ in range(connections)))
        except (*DATABASE_ERRORS, asyncpg.PostgresError) as exc:
            log.info("pool not warmed: %s", type(exc).__name__)

    async def check_pooled_settings(self) -> list[str]:
        """Behind a transaction pooler, the settings the service would have sent must be the role's or the database's:
        those that are not, logged as a warning (the service runs, with the server's timeouts)."""
        expected = {k: v for k, v in session_settings(self.settings).items() if k in EXPECTED_SETTINGS}
        try:  # pg_settings shows each in its base unit, as the service sends them
            rows = await self.fetch("SELECT name, setting FROM pg_settings WHERE name = ANY($1)", list(expected))
        except WalletError:
            return []  # the database is not there yet; the first requests will say so
        server = {row["name"]: row["setting"] for row in rows}
        differing = [name for name, value in expected.items() if server.get(name) != value]
        if differing:
            log.warning(
                "behind the transaction pooler, these settings are not the role's: set them with ALTER ROLE",
                extra={
                    "fields": {name: {"expected": expected[name], "server": server.get(name)} for name in differing}
                },
            )
        return differing

    async def ping(self, timeout_s: float) -> bool:
        """Whether the database answers within `timeout_s`, without retries: for /health."""
        try:
            async with asyncio.timeout(timeout_s):
                async with self.pool.acquire() as conn:
                    await conn.fetchval("SELECT 1")
        except DATABASE_ERRORS:
            return False
        return True


def set_database_url_for_children(url: str) -> None:
    """Workers spawned by `wallet serve` read the resolved URL instead of starting their own server."""
    os.environ["WALLET_DATABASE_URL"] = url


def describe(url: str) -> str:
    """The URL without its password, for logs."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not at:
        return url
    user = creds.split(":", 1)[0]
    return f"{scheme}{sep}{user}@{host}"
