"""The command line on the embedded PostgreSQL: serve, and every other command beside a running server."""

import asyncio
import os
import signal
import subprocess
import time

import httpx
import pytest

from tests.conftest import WALLET, postmasters
from tests.support import free_port
from wallet.models import BATCH_OPERATIONS_MAX


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([WALLET, *args], env=env, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.own_postgres
def test_serve_prints_a_first_key_and_the_other_commands_share_its_database(embedded_env: dict[str, str]) -> None:
    port = free_port()
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


@pytest.mark.own_postgres
def test_keys_create_refuses_unknown_scopes_and_names(embedded_env: dict[str, str]) -> None:
    assert run(embedded_env, "keys", "create", "--name", "x", "--scopes", "read,steal").returncode == 2
    assert run(embedded_env, "keys", "create", "--name", "bad name", "--scopes", "read").returncode == 2


async def test_sigterm_drains_requests_in_flight(database_url: str, db: object) -> None:
    """SIGTERM while batches are being written: each one still gets its answer, then the server exits 0."""
    port = free_port()
    env = {
        **os.environ,
        "WALLET_DATABASE_URL": database_url,
        "WALLET_BOOTSTRAP_KEY": "drain-secret",
        "WALLET_LOG_LEVEL": "WARNING",
    }
    server = subprocess.Popen(  # noqa: ASYNC220 - started once, not awaited
        [WALLET, "serve", "--port", str(port), "--workers", "1"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    headers = {"Authorization": "Bearer drain-secret"}
    try:
        async with httpx.AsyncClient(base_url=base, timeout=60) as http:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if (await http.get("/health")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline and server.poll() is None
                await asyncio.sleep(0.2)
            run = os.urandom(4).hex()
            # A purchase nobody can afford, then top-ups of the same account: the batch goes item by item
            # (the slow path), so the three are still being written when the signal comes.
            batches = [
                {
                    "operations": [
                        {
                            "type": "purchase" if i == 0 else "topup",
                            "user_id": "alice",
                            "asset": "LOYALTY",
                            "amount": 10**15 if i == 0 else 1,
                            "idempotency_key": f"drain-{run}-{b}-{i}",
                        }
                        for i in range(BATCH_OPERATIONS_MAX)
                    ]
                }
                for b in range(3)
            ]

            async def post(batch: dict[str, object]) -> tuple[httpx.Response, float]:
                response = await http.post("/v1/batch", json=batch, headers=headers)
                return response, time.monotonic()

            in_flight = [asyncio.create_task(post(batch)) for batch in batches]
            await asyncio.sleep(0.1)
            server.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            answered = await asyncio.gather(*in_flight)
        assert [response.status_code for response, _ in answered] == [200, 200, 200]
        # At least one was still being written when the signal came.
        assert max(at for _, at in answered) > signalled
        for response, _ in answered:
            statuses = [result["status"] for result in response.json()["results"]]
            assert statuses == [409] + [201] * (BATCH_OPERATIONS_MAX - 1)
        assert server.wait(timeout=30) == 0
    finally:
        if server.poll() is None:
            server.kill()


@pytest.mark.parametrize("command", [[], ["serve"], ["migrate"], ["seed"], ["verify"], ["keys"], ["keys", "create"]])
def test_help_reads_naturally(command: list[str]) -> None:
    """Options show what they take (`--port PORT`), flags nothing: no `--help <bool>` or `<str>` placeholders."""
    shown = subprocess.run([WALLET, *command, "--help"], capture_output=True, text=True, timeout=30, check=True).stdout
    assert "Usage: wallet" in shown
    assert "<bool>" not in shown and "<str>" not in shown and "<int" not in shown, shown
    for option, metavar in {"--port": "PORT", "--workers": "N", "--name": "NAME", "--scopes": "SCOPES"}.items():
        if option in shown:
            assert f"{option} {metavar}" in shown, shown
