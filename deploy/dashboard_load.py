"""A mixed, bounded load against a local wallet service: the traffic docs/dashboard.png was made from.

It only talks to a service on the loopback interface, stops by itself after about 7.5 minutes (times scaled by
--time-scale), and never sends more than a few hundred requests per second. What it does:

- creates --users users and tops each up (GOLD, DIAMOND), through the bootstrap admin key;
- registers a webhook endpoint at a closed port on 127.0.0.1, so its deliveries stay pending;
- creates a read-only key limited to 5 requests/s (`wallet keys create`) and hammers it twice, to get 429s;
- then sends a mix of reads, top-ups, bonuses, purchases (some too large: 409 insufficient_funds, some with a
  LOYALTY reward), holds (some voided, some captured, some left to expire) and idempotent replays (the same key
  and body sent again), at a rate that rises, falls and peaks again so the graphs are not flat;
- runs `wallet verify` once, midway, so the verify panels have data.

It prints the totals (requests by kind and status) as JSON at the end.

Run it beside a service started on its own database (WALLET_DATABASE_URL must name that database too, for
`wallet keys create` and `wallet verify`):

    WALLET_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/wallet_dash \\
        .venv/bin/python deploy/dashboard_load.py --admin-key dash-admin-secret-0123456789
"""

import argparse
import asyncio
import collections
import ipaddress
import json
import os
import random
import socket
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

# (phase, seconds, requests/s at its start, requests/s at its end): rises, peaks, dips, bursts, winds down.
PHASES = (
    ("warm-up", 60, 20, 60),
    ("ramp", 90, 60, 160),
    ("peak", 60, 160, 160),
    ("dip", 60, 40, 40),
    ("burst", 45, 200, 200),
    ("settle", 75, 100, 60),
    ("tail", 60, 30, 10),
)
HAMMER_WINDOWS = ((100, 120), (300, 315))  # seconds into the mixed load when the limited key sends 40 requests/s
VERIFY_AT = 0.5  # fraction of the mixed load after which `wallet verify` runs
MAX_IN_FLIGHT = 64  # beyond this, the scheduler skips requests rather than queueing them
TICK_S = 0.1
# The mix: kind and weight.
MIX = {
    "balances": 28,
    "transactions": 8,
    "holds_list": 3,
    "topup": 9,
    "bonus": 7,
    "purchase": 22,
    "purchase_too_large": 4,
    "replay": 7,
    "hold": 8,
    "hold_void": 3,
    "hold_capture": 1,
}


class Load:
    def __init__(self, http: httpx.AsyncClient, users: list[str], run: str) -> None:
        self.http, self.users, self.run = http, users, run
        self.counts: collections.Counter[tuple[str, int]] = collections.Counter()
        self.sent: collections.deque[tuple[str, str, dict[str, Any]]] = collections.deque(maxlen=500)
        self.holds: list[str] = []
        self.in_flight = 0
        self.skipped = 0

    async def request(self, kind: str, method: str, path: str, body: Any = None, key: str | None = None) -> Any:
        headers = {"Idempotency-Key": key} if key else {}
        try:
            response = await self.http.request(method, path, json=body, headers=headers)
        except httpx.HTTPError:
            self.counts[(kind, 0)] += 1
            return None
        self.counts[(kind, response.status_code)] += 1
        return response.json() if response.headers.get("content-type", "").endswith("json") else None

    async def post_money(self, kind: str, path: str, body: dict[str, Any]) -> Any:
        key = f"{self.run}-{uuid.uuid4().hex[:12]}"
        self.sent.append((path, key, body))
        return await self.request(kind, "POST", path, body, key)

    async def one(self, kind: str) -> None:
        user = random.choice(self.users)
        asset = random.choices(("GOLD", "DIAMOND"), (4, 1))[0]
        if kind == "balances":
            await self.request(kind, "GET", f"/v1/users/{user}/balances")
        elif kind == "transactions":
            await self.request(kind, "GET", f"/v1/users/{user}/transactions?limit=20")
        elif kind == "holds_list":
            await self.request(kind, "GET", f"/v1/users/{user}/holds")
        elif kind in ("topup", "bonus"):
            asset = "LOYALTY" if kind == "bonus" and random.random() < 0.5 else asset
            amount = random.randint(50, 500) if kind == "topup" else random.randint(5, 50)
            await self.post_money(
                kind,
                {"topup": "/v1/topups", "bonus": "/v1/bonuses"}[kind],
                {"user_id": user, "asset": asset, "amount": amount},
            )
        elif kind in ("purchase", "purchase_too_large"):
            body: dict[str, Any] = {"user_id": user, "asset": asset, "amount": random.randint(5, 120)}
            if kind == "purchase_too_large":
                body["amount"] = random.randint(10**7, 10**8)
            elif random.random() < 0.2:
                body["rewards"] = [{"asset": "LOYALTY", "amount": random.randint(1, 10)}]
            await self.post_money(kind, "/v1/purchases", body)
        elif kind == "replay" and self.sent:
            path, key, body = random.choice(self.sent)
            await self.request(kind, "POST", path, body, key)
        elif kind == "hold":
            body = {"user_id": user, "asset": "GOLD", "amount": random.randint(5, 60)}
            body["expires_in_s"] = random.randint(20, 240)
            hold = await self.post_money(kind, "/v1/holds", body)
            if isinstance(hold, dict) and "id" in hold:
                self.holds.append(hold["id"])
        elif kind in ("hold_void", "hold_capture") and self.holds:
            hold_id = self.holds.pop(random.randrange(len(self.holds)))
            action = "void" if kind == "hold_void" else "capture"
            await self.post_money(kind, f"/v1/holds/{hold_id}/{action}", {})

    async def tracked(self, kind: str) -> None:
        self.in_flight += 1
        try:
            await self.one(kind)
        finally:
            self.in_flight -= 1

    async def paced(
        self, seconds: float, start_rate: float, end_rate: float, pick: Callable[[], Coroutine[Any, Any, Any]]
    ) -> None:
        """Starts requests at a rate going linearly from start_rate to end_rate; never more than MAX_IN_FLIGHT."""
        began, owed, tasks = time.monotonic(), 0.0, set()
        while (elapsed := time.monotonic() - began) < seconds:
            owed += (start_rate + (end_rate - start_rate) * elapsed / seconds) * TICK_S
            while owed >= 1:
                owed -= 1
                if self.in_flight >= MAX_IN_FLIGHT:
                    self.skipped += 1
                    continue
                task = asyncio.create_task(pick())
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            await asyncio.sleep(TICK_S)
        await asyncio.gather(*tasks)


def loopback_only(url: str) -> None:
    host = urlsplit(url).hostname or ""
    if host != "localhost" and not ipaddress.ip_address(host).is_loopback:
        sys.exit(f"refusing to send load to {host}: loopback addresses only")


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def each(items: list[Any], send: Callable[[Any], Awaitable[Any]], concurrency: int = 8) -> None:
    """Sends one request per item, a few at a time (the set-up)."""
    gate = asyncio.Semaphore(concurrency)

    async def one(item: Any) -> None:
        async with gate:
            await send(item)

    await asyncio.gather(*(one(item) for item in items))


async def wallet_cli(*args: str) -> tuple[int, str]:
    wallet = str(Path(sys.executable).with_name("wallet"))
    process = await asyncio.create_subprocess_exec(wallet, *args, stdout=asyncio.subprocess.PIPE)
    out, _ = await process.communicate()
    return process.returncode or 0, out.decode()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8000")
    parser.add_argument("--admin-key", required=True, help="the service's WALLET_BOOTSTRAP_KEY")
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--time-scale", type=float, default=1.0, help="e.g. 0.1 for a 45-second smoke run")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    loopback_only(args.base_url)
    if not os.environ.get("WALLET_DATABASE_URL"):
        sys.exit("set WALLET_DATABASE_URL to the service's database (for wallet keys create and wallet verify)")
    random.seed(args.seed)
    run, started = f"load{int(time.time())}", time.monotonic()
    status, secret = await wallet_cli("keys", "create", "--name", f"limited-{run}", "--rate-limit-per-s", "5")
    if status:
        sys.exit("wallet keys create failed")
    limits = httpx.Limits(max_connections=MAX_IN_FLIGHT)
    admin = {"Authorization": f"Bearer {args.admin_key}"}
    async with (
        httpx.AsyncClient(base_url=args.base_url, headers=admin, limits=limits, timeout=15) as http,
        httpx.AsyncClient(base_url=args.base_url, headers={"Authorization": f"Bearer {secret.split()[-1]}"}) as lim,
    ):
        users = [f"dash-{run}-{i:03d}" for i in range(args.users)]
        load = Load(http, users, run)
        hook = {"url": f"http://127.0.0.1:{closed_port()}/wallet-hook", "types": ["user.created", "hold.created"]}
        await load.request("webhook", "POST", "/v1/webhooks", hook)
        await each(users, lambda user: load.request("user", "PUT", f"/v1/users/{user}"))
        for asset, amount in (("GOLD", 3000), ("DIAMOND", 300)):
            bodies = [{"user_id": user, "asset": asset, "amount": amount} for user in users]
            await each(bodies, lambda body: load.post_money("topup", "/v1/topups", body))

        total = sum(seconds for _, seconds, _, _ in PHASES) * args.time_scale
        kinds, weights = list(MIX), list(MIX.values())
        mixed_started = time.monotonic()

        async def phases() -> None:
            for _, seconds, start_rate, end_rate in PHASES:
                pick = lambda: load.tracked(random.choices(kinds, weights)[0])  # noqa: E731
                await load.paced(seconds * args.time_scale, start_rate, end_rate, pick)

        limited = Load(lim, users, run)

        async def hammer() -> None:
            for begin, end in HAMMER_WINDOWS:
                await asyncio.sleep(max(0.0, mixed_started + begin * args.time_scale - time.monotonic()))
                await limited.paced((end - begin) * args.time_scale, 40, 40, lambda: limited.one("balances"))

        async def verify() -> None:
            await asyncio.sleep(total * VERIFY_AT)
            code, out = await wallet_cli("verify")
            load.counts[("wallet_verify", code)] += 1
            print(out.strip().splitlines()[-1], file=sys.stderr)

        await asyncio.gather(phases(), hammer(), verify())

    for (_, code), count in limited.counts.items():
        load.counts[("limited_key_read", code)] += count
    by_kind: dict[str, dict[str, int]] = collections.defaultdict(dict)
    for (kind, code), count in sorted(load.counts.items()):
        by_kind[kind][str(code)] = count
    requests = sum(count for (kind, _), count in load.counts.items() if kind != "wallet_verify")
    elapsed = time.monotonic() - started
    summary = {"run": run, "seconds": round(elapsed, 1), "requests": requests, "skipped": load.skipped}
    print(json.dumps({**summary, "by_kind": by_kind}, indent=1))


if __name__ == "__main__":
    asyncio.run(main())
