"""The application: middleware, problem rendering, the routers, and the lifespan of the database pool and the
maintenance loop."""

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator

from fastapi import FastAPI

from wallet import __version__, ledger, maintenance, tracing
from wallet.clock import Clock, database_clock
from wallet.config import Settings, get_settings
from wallet.http import openapi, problems
from wallet.http.envelope import Envelope
from wallet.http.routes import (
    assets,
    console,
    docs,
    events,
    health,
    holds,
    movements,
    operations,
    statistics,
    transactions,
    users,
    webhooks,
)
from wallet.http.services import Services

ROUTERS = (
    health.router,
    assets.router,
    users.router,
    statistics.router,
    movements.router,
    holds.router,
    transactions.router,
    events.router,
    webhooks.router,
    operations.router,
    docs.router,
    console.router,
)


def create_app(
    settings: Settings | None = None,
    database_url: str | None = None,
    clock: Clock = database_clock,
) -> FastAPI:
    """The service. `clock` is the time the expiry of lots goes by (the database's unless a test moves it)."""
    settings = settings or get_settings()
    url = database_url or settings.database_url
    if not url:
        raise RuntimeError("create_app needs a database URL (WALLET_DATABASE_URL); `wallet serve` sets it.")
    shared = Services.create(settings, url)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await shared.database.open()
        background = [
            asyncio.create_task(maintenance.maintain(shared.database, settings, clock)),
            # Behind a transaction pooler no statement stays prepared: nothing to warm; the role's settings checked.
            asyncio.create_task(
                shared.database.check_pooled_settings()
                if settings.transaction_pooler
                else shared.database.warm(settings.pool_size_max, ledger.HOT_STATEMENTS)
            ),
        ]
        try:
            yield
        finally:
            for task in background:
                task.cancel()
            for task in background:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await shared.database.close()

    app = FastAPI(
        title="Wallet service",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,  # served by routes/docs.py, from this origin rather than a CDN
        redoc_url=None,
        description="Double-entry wallet for virtual credits. Errors are RFC 9457 problem documents.",
    )
    app.state.services = shared
    app.router.redirect_slashes = False  # a trailing slash is an ordinary 404, never a redirect
    problems.install(app)
    for router in ROUTERS:  # the routes themselves, not include_router's lazy wrapper: tests and tools list them
        app.router.routes.extend(router.routes)
    openapi.install(app)
    # 1,000 operations do not fit in 64 KiB: batches get their own limit.
    by_path = {"/v1/batch": settings.batch_body_size_max_bytes}
    traced = tracing.enabled()
    if traced:
        app.add_middleware(tracing.RequestIdAttribute)  # added first: runs innermost
    app.add_middleware(Envelope, body_size_max_bytes=settings.body_size_max_bytes, body_size_max_bytes_by_path=by_path)
    if traced:
        app.add_middleware(tracing.RequestSpans)
    return app


# A request allocates a few thousand objects, nearly all gone when it is answered; with the default threshold (700)
# the collector ran every few requests and took 9% of a worker's time (py-spy, top-ups at 64 connections).
GC_GENERATION0_THRESHOLD = 50_000


def app_from_env() -> FastAPI:
    """Factory for uvicorn workers: reads WALLET_DATABASE_URL, which `wallet serve` sets."""
    from wallet.logs import configure

    settings = Settings()  # not the cached instance: `wallet serve` set the URL after reading its own
    configure(settings.log_level)
    app = create_app(settings)
    gc.freeze()  # what the worker has imported and built lives as long as it does: no collection need scan it
    gc.set_threshold(GC_GENERATION0_THRESHOLD, *gc.get_threshold()[1:])
    return app
