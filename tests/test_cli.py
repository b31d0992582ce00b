"""The command line on the embedded PostgreSQL: serve, and every other command beside a running server."""

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import WALLET, _free_port


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([WALLET, *args], env=env, capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture
def embedded_env() -> Iterator[dict[str, str]]:
    """An environment with no database URL: the commands start (or join) an embedded server in a temp dir."""
    data_dir = Path(tempfile.mkdtemp(prefix="wallet-cli-", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("WALLET_")}
    env.update(WALLET_DATA_DIR=str(data_dir), WALLET_API_KEY_CACHE_TTL_MS="0", WALLET_LOG_LEVEL="WARNING")
    yield env
    shutil.rmtree(data_dir, ignore_errors=True)


def postmasters(data_dir: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["name", "cmdline"]):
        cmdline = process.info["cmdline"] or []
        if process.info["name"] == "postgres" and any(data_dir in part for part in cmdline):
            found.append(process)
    return found


def test_serve_prints_a_first_key_and_the_other_commands_share_its_database(embedded_env: dict[str, str]) -> None:
    port = _free_port()
    server = subprocess.Popen(
        [WALLET, "serve", "--port", str(port), "--workers", "1"],
        env=embedded_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        output = ""
        deadline = time.monotonic() + 60
        while "export WALLET_KEY=" not in output:
            assert server.stdout is not None and time.monotonic() < deadline, output
            output += server.stdout.readline()
        admin = output.split("export WALLET_KEY=", 1)[1].split()[0]
        while True:
            try:
                if httpx.get(base + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                assert time.monotonic() < deadline
                time.sleep(0.2)
        seeded = httpx.get(base + "/v1/users/alice/balances/GOLD", headers={"Authorization": f"Bearer {admin}"})
        assert seeded.status_code == 200 and seeded.json()["balance"] == 1000

        # Beside the running server, on the same data directory.
        created = run(embedded_env, "keys", "create", "--name", "reader", "--scopes", "read")
        assert created.returncode == 0, created.stderr
        reader = created.stdout.strip().splitlines()[-1]
        assert httpx.get(base + "/v1/assets", headers={"Authorization": f"Bearer {reader}"}).status_code == 200
        assert "reader" in run(embedded_env, "keys", "list").stdout
        assert run(embedded_env, "seed").returncode == 0  # a second seed changes nothing
        verified = run(embedded_env, "verify")
        assert verified.returncode == 0, verified.stdout
        assert "7 transactions" in verified.stdout and "ledger is consistent" in verified.stdout
        assert run(embedded_env, "keys", "revoke", "reader").returncode == 0
        revoked = httpx.get(base + "/v1/assets", headers={"Authorization": f"Bearer {reader}"})
        assert revoked.status_code == 401
        assert run(embedded_env, "keys", "revoke", "reader").returncode == 1
        # The server still runs after the other commands let go of the database.
        assert httpx.get(base + "/health", timeout=2).status_code == 200
        assert postmasters(embedded_env["WALLET_DATA_DIR"])
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    assert server.returncode == 0
    deadline = time.monotonic() + 10
    while postmasters(embedded_env["WALLET_DATA_DIR"]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not postmasters(embedded_env["WALLET_DATA_DIR"]), "the embedded PostgreSQL outlived the server"


def test_keys_create_refuses_unknown_scopes_and_names(embedded_env: dict[str, str]) -> None:
    assert run(embedded_env, "keys", "create", "--name", "x", "--scopes", "read,steal").returncode == 2
    assert run(embedded_env, "keys", "create", "--name", "bad name", "--scopes", "read").returncode == 2
