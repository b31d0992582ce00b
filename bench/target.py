"""What a benchmark runs against: its own database (on a PostgreSQL server or a fresh embedded one), and a
`wallet serve` process started on it."""

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psutil  # type: ignore[import-untyped]  # no stubs in the dev extra
import psycopg

DEFAULT_SERVER_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
WALLET = str(Path(sys.executable).with_name("wallet"))
# Variables of the caller's environment that would point the service elsewhere than the bench database.
SCRUBBED_ENV = ("WALLET_DATABASE_URL", "WALLET_DATA_DIR", "WALLET_BOOTSTRAP_KEY", "WALLET_LOG_LEVEL")


@dataclass
class Target:
    """The bench database: `url` for our own SQL, `env` for `wallet` commands (serve, verify, seed)."""

    url: str
    env: dict[str, str]
    description: str

    @property
    def database(self) -> str:
        return urlsplit(self.url).path.lstrip("/")

    def connect(self) -> psycopg.Connection:
        return psycopg.connect(self.url, autocommit=True)

    def wallet_env(self, **extra: str) -> dict[str, str]:
        env = {name: value for name, value in os.environ.items() if name not in SCRUBBED_ENV}
        return {**env, **self.env, **extra}

    def wallet(self, *args: str, timeout_s: float = 3600, **env: str) -> subprocess.CompletedProcess[str]:
        """Runs a `wallet` command on the bench database; its output is returned, not printed."""
        return subprocess.run(
            [WALLET, *args], env=self.wallet_env(**env), capture_output=True, text=True, timeout=timeout_s, check=False
        )

    def verify(self) -> subprocess.CompletedProcess[str]:
        """`wallet verify`, without the service's 5 s statement timeout (its checks scan the whole ledger)."""
        return self.wallet("verify", WALLET_STATEMENT_TIMEOUT_MS="600000")


def _with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


@contextmanager
def bench_database(embedded: bool, keep: bool) -> Iterator[Target]:
    """A new, empty database: `wallet_bench_<random>` on WALLET_BENCH_DATABASE_URL's server, or the database of a
    fresh embedded server in a temporary directory (which `wallet serve` then finds through WALLET_DATA_DIR)."""
    if embedded:
        from wallet.embedded import embedded_server

        # Outside /root: when we are root the embedded server runs as an unprivileged user.
        data_dir = Path(tempfile.mkdtemp(prefix="wallet-bench-", dir="/tmp"))
        try:
            # Shared with the `wallet serve` that finds it through WALLET_DATA_DIR; the last of us stops it.
            with embedded_server(data_dir) as url:
                yield Target(url, {"WALLET_DATA_DIR": str(data_dir)}, f"embedded in {data_dir}")
        finally:
            if keep:
                print(f"kept the embedded server's data in {data_dir}")
            else:
                shutil.rmtree(data_dir, ignore_errors=True)
        return

    server_url = os.environ.get("WALLET_BENCH_DATABASE_URL", DEFAULT_SERVER_URL)
    name = f"wallet_bench_{secrets.token_hex(4)}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = _with_database(server_url, name)
    try:
        yield Target(url, {"WALLET_DATABASE_URL": url}, f"database {name} on {urlsplit(server_url).netloc}")
    finally:
        if keep:
            print(f"kept the database: {url}")
        else:
            with psycopg.connect(server_url, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class WalletServer:
    """`wallet serve --workers N` on a free port of 127.0.0.1, with a bootstrap admin key for the bench."""

    target: Target
    workers: int = 2
    port: int = field(default_factory=free_port)
    api_key: str = field(default_factory=lambda: "wk_bench_" + secrets.token_urlsafe(24))
    log_path: Path = field(
        default_factory=lambda: Path(tempfile.mkstemp(prefix="wallet-bench-serve-", suffix=".log")[1])
    )
    process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 180) -> None:
        env = self.target.wallet_env(WALLET_BOOTSTRAP_KEY=self.api_key, WALLET_LOG_LEVEL="WARNING")
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [WALLET, "serve", "--workers", str(self.workers), "--port", str(self.port)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, so that stop() can end all of it
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"wallet serve exited with {self.process.returncode}:\n{self.log_tail()}")
            if self.healthy() and len(self.worker_processes()) == self.workers:
                return
            time.sleep(0.2)
        raise RuntimeError(f"wallet serve not healthy after {timeout_s:.0f} s:\n{self.log_tail()}")

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.base_url + "/health", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def get(self, path: str) -> bytes:
        request = urllib.request.Request(self.base_url + path, headers={"Authorization": f"Bearer {self.api_key}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return bytes(response.read())

    def worker_processes(self) -> list[psutil.Process]:
        """uvicorn's worker processes: the children of `wallet serve` that run the app."""
        if self.process is None:
            return []
        try:
            children = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        workers = []
        for child in children:
            try:
                cmdline = " ".join(child.cmdline())
            except psutil.Error:
                continue
            if "multiprocessing" in cmdline and "resource_tracker" not in cmdline and "postgres" not in cmdline:
                workers.append(child)
        return workers

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout_s: float = 30) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)  # uvicorn shuts its workers down gracefully
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)


@contextmanager
def running_server(target: Target, workers: int) -> Iterator[WalletServer]:
    server = WalletServer(target, workers)
    try:
        server.start()
        yield server
    finally:
        server.stop()
    server.log_path.unlink()  # kept when something failed
