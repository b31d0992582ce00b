"""The `wallet` command: serve, migrate, seed, verify, keys, dispatch, events."""

import asyncio
import contextlib
import logging
import os
import re
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Annotated, TypeVar

import asyncpg
import psutil
import typer
import uvicorn
from sqlalchemy.exc import OperationalError

from wallet import events as feed
from wallet import keys as api_keys
from wallet import metrics, webhooks
from wallet import seed as seeding
from wallet import verify as verification
from wallet.clock import database_clock
from wallet.config import get_settings
from wallet.database import Database, connect, database_url, describe, migrate, set_database_url_for_children
from wallet.errors import DATABASE_ERRORS
from wallet.logs import configure

T = TypeVar("T")
log = logging.getLogger("wallet.cli")

# Plain help (rich_markup_mode=None): Typer's rich panels print every option with a type placeholder, `--help <bool>`.
app = typer.Typer(
    help="Wallet service: a double-entry ledger for virtual credits.",
    no_args_is_help=True,
    rich_markup_mode=None,
    add_completion=False,
    pretty_exceptions_enable=False,
)
keys_app = typer.Typer(help="Manage API keys.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(keys_app, name="keys")
events_app = typer.Typer(help="The event feed.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(events_app, name="events")

KEY_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def _with_connection(url: str, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    async def run() -> T:
        conn = await connect(url, get_settings())
        try:
            return await work(conn)
        finally:
            await conn.close()

    return asyncio.run(run())


def _prepare(url: str) -> None:
    """Migrations, seed and the first key: what every start does, idempotently."""
    migrate(url)
    secret = _with_connection(url, _seed_and_bootstrap)
    if secret is not None:
        typer.echo(
            "\nNo API key existed, so an admin key named 'admin' was created. Its secret is shown once:\n\n"
            f"    {secret}\n\nexport WALLET_KEY={secret}\n",
            err=True,
        )


async def _seed_and_bootstrap(conn: asyncpg.Connection) -> str | None:
    await seeding.seed(conn)
    bootstrap = get_settings().bootstrap_key
    return await api_keys.ensure_bootstrap(conn, bootstrap.get_secret_value() if bootstrap else None)


def _prepare_when_reachable(url: str, interval_s: float = 1.0) -> None:
    while True:
        time.sleep(interval_s)
        try:
            _prepare(url)
        except (OperationalError, *DATABASE_ERRORS):
            continue
        log.warning("database reachable again: migrations and seed applied")
        return


def _exit_quietly(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


@app.callback()
def _every_command() -> None:
    # SIGTERM (a supervisor, `docker stop`, `kill`) ends any command with an orderly exit, so that the embedded
    # PostgreSQL it started is stopped on the way out; by default SIGTERM ends a process on the spot. `wallet serve`
    # hands it to uvicorn, which drains requests in flight first (with one worker it then re-raises the signal to
    # this handler; with several it returns).
    signal.signal(signal.SIGTERM, _exit_quietly)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.", metavar="ADDRESS")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", metavar="PORT")] = 8000,
    workers: Annotated[
        int, typer.Option(help="Worker processes, 1 to 64; 0 = one per core.", min=0, max=64, metavar="N")
    ] = 0,
) -> None:
    """Apply migrations, seed, and serve the API (on an embedded PostgreSQL unless WALLET_DATABASE_URL is set)."""
    settings = get_settings()
    configure(settings.log_level)
    workers = workers or os.cpu_count() or 1
    with contextlib.ExitStack() as stack, database_url(settings) as url:
        try:
            _prepare(url)
        except (OperationalError, *DATABASE_ERRORS) as exc:
            # Serve anyway: requests answer 503 until the database is back, then migrations and seed run.
            log.warning(
                "database unreachable at start; preparing it in the background",
                extra={"fields": {"error": type(exc).__name__}},
            )
            threading.Thread(target=_prepare_when_reachable, args=(url,), daemon=True).start()
        set_database_url_for_children(url)
        _metrics_across_workers(workers, settings.metrics, stack)
        typer.echo(
            f"wallet: serving on http://{host}:{port} with {workers} worker(s), database {describe(url)}", err=True
        )
        uvicorn.run(
            "wallet.http.app:app_from_env",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            access_log=False,
            log_config=None,
            timeout_graceful_shutdown=10,
            server_header=False,
            proxy_headers=False,  # X-Forwarded-* are not trusted: the service reads no client address from them
        )


def _metrics_across_workers(workers: int, enabled: bool, stack: contextlib.ExitStack) -> None:
    """With several workers, each keeps its metrics in files of a directory of this run (made empty, removed at the
    end), so that a scrape answered by any of them reports them all (wallet.metrics)."""
    if workers > 1 and enabled:
        for stale in Path(tempfile.gettempdir()).glob("wallet-metrics-*-*"):  # left by a run that was killed
            pid = stale.name.split("-")[2]
            if pid.isdigit() and not psutil.pid_exists(int(pid)):
                shutil.rmtree(stale, ignore_errors=True)
        directory = stack.enter_context(tempfile.TemporaryDirectory(prefix=f"wallet-metrics-{os.getpid()}-"))
        os.environ[metrics.MULTIPROCESS_DIR_VARIABLE] = directory


@app.command("migrate")
def migrate_command() -> None:
    """Apply database migrations."""
    with database_url(get_settings()) as url:
        migrate(url)
    typer.echo("migrations applied")


@app.command()
def seed() -> None:
    """Seed assets, system accounts and the demo users (idempotent)."""
    with database_url(get_settings()) as url:
        migrate(url)
        _with_connection(url, seeding.seed)
    typer.echo("seed applied")


@app.command()
def verify() -> None:
    """Check every invariant of the ledger and keep the report; exit status 1 on any violation."""

    async def run(conn: asyncpg.Connection) -> tuple[list[verification.CheckResult], dict[str, int]]:
        started_at = datetime.now(UTC)
        results = await verification.verify(conn)
        totals = await verification.ledger_totals(conn)
        await verification.record(conn, started_at, results, totals)
        return results, totals

    with database_url(get_settings()) as url:
        results, totals = _with_connection(url, run)
    typer.echo(", ".join(f"{count} {name}" for name, count in totals.items()))
    failed = 0
    for result in results:
        mark = "ok  " if result.violations == 0 else "FAIL"
        typer.echo(f"{mark} {result.name}" + (f": {result.violations} violation(s)" if result.violations else ""))
        for sample in result.sample:
            typer.echo(f"       {sample}")
        failed += result.violations > 0
    typer.echo("ledger is consistent" if not failed else f"{failed} check(s) failed")
    raise typer.Exit(1 if failed else 0)


@keys_app.command("create")
def keys_create(
    name: Annotated[
        str, typer.Option(help="A unique name; recorded on every transaction the key creates.", metavar="NAME")
    ],
    scopes: Annotated[
        str, typer.Option(help="Comma-separated, among " + ",".join(api_keys.SCOPES) + ".", metavar="SCOPES")
    ] = "read",
    rate_limit_per_s: Annotated[
        int | None,
        typer.Option(help="Requests per second for this key (default: WALLET_RATE_LIMIT_PER_S).", min=1, metavar="N"),
    ] = None,
) -> None:
    """Create an API key and print its secret (shown once)."""
    wanted = [scope.strip() for scope in scopes.split(",") if scope.strip()]
    unknown = sorted(set(wanted) - set(api_keys.SCOPES))
    if not wanted or unknown:
        raise typer.BadParameter(f"scopes must be among {', '.join(api_keys.SCOPES)}", param_hint="--scopes")
    if not KEY_NAME_PATTERN.fullmatch(name):
        raise typer.BadParameter("1 to 64 of letters, digits, '_', '.', '-'", param_hint="--name")
    with database_url(get_settings()) as url:
        migrate(url)
        try:
            secret = _with_connection(url, lambda conn: api_keys.create(conn, name, wanted, rate_limit_per_s))
        except asyncpg.UniqueViolationError:
            typer.echo(f"a key named {name} exists already", err=True)
            raise typer.Exit(1) from None
    typer.echo(secret)


@keys_app.command("list")
def keys_list() -> None:
    """List API keys (names and scopes; secrets are never stored)."""
    with database_url(get_settings()) as url:
        rows = _with_connection(url, api_keys.list_all)
    for row in rows:
        state = f"revoked {row['revoked_at']}" if row["revoked_at"] else "active"
        rate = f"{row['rate_limit_per_s']}/s" if row["rate_limit_per_s"] else "default rate"
        typer.echo(f"{row['name']:<24} {','.join(row['scopes']):<32} {rate:<14} created {row['created_at']}  {state}")


@keys_app.command("revoke")
def keys_revoke(name: Annotated[str, typer.Argument(help="The key's name.", metavar="NAME")]) -> None:
    """Revoke an API key by name. Running servers stop accepting it within the key cache's TTL."""
    with database_url(get_settings()) as url:
        revoked = _with_connection(url, lambda conn: api_keys.revoke(conn, name))
    if not revoked:
        typer.echo(f"no active key named {name}", err=True)
        raise typer.Exit(1)
    typer.echo(f"revoked {name}")


@app.command()
def dispatch() -> None:
    """Deliver webhooks, as every `wallet serve` worker does (WALLET_WEBHOOK_DISPATCH), until stopped. Any number
    of dispatchers share the work through the database."""
    settings = get_settings()
    with database_url(settings) as url:
        migrate(url)

        async def run() -> None:
            database = Database(url, settings)
            await database.open()
            try:
                await webhooks.Dispatcher(database, settings, database_clock).run()
            finally:
                await database.close()

        asyncio.run(run())


@events_app.command("tail")
def events_tail(
    after: Annotated[
        str | None, typer.Option(help="A cursor to start after (default: the events from now on).", metavar="CURSOR")
    ] = None,
    from_start: Annotated[bool, typer.Option("--from-start", help="Every event since the first.")] = False,
    types: Annotated[str | None, typer.Option(help="Comma-separated event types.", metavar="TYPES")] = None,
) -> None:
    """Follow the event feed in commit order: one JSON line per event, until stopped."""
    wanted = feed.parse_types(types)
    with database_url(get_settings()) as url:

        async def follow(conn: asyncpg.Connection) -> None:
            position = feed.START if from_start else feed.Position.parse(after) if after else await feed.head(conn)
            while True:
                page = await feed.read(conn, position, 200, wanted)
                for _, _, document in page.events:
                    typer.echo(document.decode())
                position = page.next
                if not page.events:
                    await asyncio.sleep(0.5)

        _with_connection(url, follow)
