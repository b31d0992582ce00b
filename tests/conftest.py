"""Fixtures: a real PostgreSQL database per test session (the embedded server, or WALLET_TEST_DATABASE_URL),
the app in-process over ASGI, a real `wallet serve` process for parallel HTTP tests, and API keys.

Tests share one database and stay independent by using their own users (see `new_user`). At the end of the
session, `wallet verify` must report a clean ledger.
"""

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import asyncpg
import httpx
import psutil
import pytest
from fastapi import FastAPI

from tests.support import WALLET, create_user, free_port, own_database, wallet_verify
from wallet import keys
from wallet.config import Settings
from wallet.database import connect, migrate
from wallet.embedded import embedded_server
from wallet.http.app import create_app
from wallet.seed import seed

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    """A PostgreSQL server: WALLET_TEST_DATABASE_URL, or an embedded one in a temporary directory."""
    external = os.environ.get("WALLET_TEST_DATABASE_URL")
    if external:
        yield external
        return
    # Outside /root: the embedded server runs as an unprivileged user when we are root.
    data_dir = Path(tempfile.mkdtemp(prefix="wallet-test-pg-", dir="/tmp"))
    try:
        with embedded_server(data_dir) as url:
            yield url
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def database_url(server_url: str) -> Iterator[str]:
    """A fresh database, migrated and seeded, dropped at the end of the session."""
    with own_database(server_url) as url:
        migrate(url)
        yield url


@pytest.fixture(scope="session")
def settings(database_url: str) -> Settings:
    return Settings(database_url=database_url, api_key_cache_ttl_ms=0)


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
    result = wallet_verify(database_url)
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
    """A client of `app` over ASGI, with the app's lifespan (pool, maintenance) running."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://wallet.test") as http:
            yield http


@pytest.fixture(scope="session")
async def client(settings: Settings, db: asyncpg.Connection) -> AsyncIterator[httpx.AsyncClient]:
    """The app in-process."""
    async with in_process(create_app(settings)) as http:
        yield http


@contextlib.contextmanager
def serving(database_url: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """A real `wallet serve` process (two workers) on `database_url`, with `env` added to its environment; yields its
    base URL, stops it after."""
    port = free_port()
    log = tempfile.NamedTemporaryFile(prefix="wallet-serve-", suffix=".log", delete=False)  # noqa: SIM115
    process = subprocess.Popen(
        [WALLET, "serve", "--port", str(port), "--workers", "2"],
        env={
            **os.environ,
            "WALLET_DATABASE_URL": database_url,
            "WALLET_LOG_LEVEL": "WARNING",
            "WALLET_API_KEY_CACHE_TTL_MS": "0",
            # One group of requests on its way to the database per worker: concurrent requests always coalesce,
            # so every test through this server exercises group commit.
            "WALLET_GROUP_COMMIT_GROUPS_MAX": "1",
            **(env or {}),
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
    try:
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        Path(log.name).unlink(missing_ok=True)


@pytest.fixture(scope="session")
def server(database_url: str, db: asyncpg.Connection) -> Iterator[str]:
    """A real `wallet serve` process (two workers) on the test database; yields its base URL."""
    with serving(database_url) as base:
        yield base


@pytest.fixture
def embedded_env() -> Iterator[dict[str, str]]:
    """An environment with no database URL: `wallet` commands start (or join) an embedded server in a temp dir."""
    data_dir = Path(tempfile.mkdtemp(prefix="wallet-cli-", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("WALLET_")}
    env.update(WALLET_DATA_DIR=str(data_dir), WALLET_API_KEY_CACHE_TTL_MS="0", WALLET_LOG_LEVEL="WARNING")
    yield env
    shutil.rmtree(data_dir, ignore_errors=True)


def postmasters(data_dir: str | Path) -> list[psutil.Process]:
    """Running postmasters of the embedded server in `data_dir` (found by the data directory on their command line)."""
    found = []
    for process in psutil.process_iter(["name", "cmdline"]):
        cmdline = process.info["cmdline"] or []
        if process.info["name"] == "postgres" and any(str(data_dir) in part for part in cmdline):
            found.append(process)
    return found


class ServeProcess:
    """`wallet serve` in a process group of its own, so that SIGKILL of the group takes its workers too, as an OOM kill
    or a container kill does; its output goes to `log_path`."""

    def __init__(self, env: dict[str, str], log_path: Path, workers: int = 2) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.env = {**env, "PYTHONUNBUFFERED": "1"}  # a SIGKILL must not eat the log lines before it
        self.log_path = log_path
        self.workers = workers
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [WALLET, "serve", "--port", str(self.port), "--workers", str(self.workers)],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def kill(self, together_with: Sequence[psutil.Process] = ()) -> None:
        """SIGKILL to the group and, back to back, to `together_with` (a postmaster, say); waits for the group."""
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        for process in together_with:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        self.process.wait(timeout=10)

    def stop(self, timeout_s: float = 30) -> int | None:
        """SIGTERM to the group, as a container stop does; the exit status, or None if it had to be killed."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def log_tail(self, size_max: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-size_max:] if self.log_path.exists() else ""


async def wait_healthy(base_url: str, timeout_s: float) -> float | None:
    """Seconds until /health answers 200, or None if it did not within `timeout_s`."""
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=base_url, timeout=1.0) as http:
        while time.monotonic() - started < timeout_s:
            with contextlib.suppress(httpx.TransportError):
                if (await http.get("/health")).status_code == 200:
                    return time.monotonic() - started
            await asyncio.sleep(0.1)
    return None


@pytest.fixture
async def http(server: str) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the real server with enough connections to really run requests side by side."""
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=server, limits=limits, timeout=60) as client:
        yield client


@pytest.fixture
async def new_user(client: httpx.AsyncClient, api_keys: Keys) -> str:
    """A user of this test only, with a zero balance in every asset."""
    return await create_user(client, api_keys)
