"""Webhooks (spec/API.md, v1.1 "Events and webhooks"): endpoints registered through the API get every event of
their types POSTed, signed (`Wallet-Signature: t=...,v1=<HMAC-SHA256 of "<t>.<body>">`, checked here with
Python's hmac, not the service's code), retried with growing delays until a 2xx comes within 10 s; an endpoint
that has failed for 72 hours is disabled and a `webhook.disabled` event says so.

Real HTTP receivers on 127.0.0.1: slow (11 s), 500s then 200, connection refused, killed mid-delivery; and the
dispatcher (`wallet dispatch`) killed mid-delivery. Every event is delivered at least once, none lost. These tests
run on a database of their own, with dispatchers whose clock they move forward (create_app(clock=...)), so that a
retry due in an hour comes at once and nothing waits 72 hours."""

import asyncio
import contextlib
import hashlib
import hmac
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import orjson
import pytest

from tests.conftest import in_process
from tests.support import WALLET, assert_validation_error, free_port, idem, own_database
from wallet import keys
from wallet.config import Settings
from wallet.database import connect, migrate
from wallet.http.app import create_app
from wallet.seed import seed

SECRET = "wk_hooks_" + "x" * 24
HEADERS = {"Authorization": f"Bearer {SECRET}"}


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """An HTTP receiver on 127.0.0.1: `plan(n)` says how to answer its n-th request (0-based): (delay_s, status)."""

    plan: Callable[[int], tuple[float, int]] = lambda _: (0.0, 200)
    port: int = field(default_factory=free_port)
    received: list[Received] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    @contextlib.contextmanager
    def running(self) -> Iterator["Receiver"]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                index = len(receiver.received)
                receiver.received.append(Received(dict(self.headers.items()), body))
                delay, status = receiver.plan(index)
                time.sleep(delay)
                with contextlib.suppress(OSError):
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            server.shutdown()
            server.server_close()

    def events(self) -> list[dict[str, Any]]:
        return [orjson.loads(r.body) for r in self.received]


def verify_signature(secret: str, received: Received) -> None:
    """The receiver's check, written from the spec: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">."""
    parts = [p.split("=", 1) for p in received.headers["Wallet-Signature"].split(",")]
    at = next(v for k, v in parts if k == "t")
    expected = hmac.new(secret.encode(), f"{at}.".encode() + received.body, hashlib.sha256).hexdigest()
    assert any(k == "v1" and hmac.compare_digest(v, expected) for k, v in parts), received.headers
    assert abs(int(at) - time.time()) < 300


class Clock:
    """A clock the test moves forward; the dispatcher reads it."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def advance(self, **delta: float) -> None:
        self.offset += timedelta(**delta)


@pytest.fixture(scope="module")
def hooks_url(server_url: str) -> Iterator[str]:
    with own_database(server_url, "wallet_hooks") as url:
        migrate(url)

        async def prepare() -> None:
            conn = await connect(url, Settings(database_url=url))
            try:
                await seed(conn)
                await keys.ensure_bootstrap(conn, SECRET)
            finally:
                await conn.close()

        asyncio.run(prepare())
        yield url


@contextlib.asynccontextmanager
async def service(
    url: str, clock: Callable[[], datetime | None] | None = None, **knobs: Any
) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(database_url=url, api_key_cache_ttl_ms=0, **knobs)
    app = create_app(settings, clock=clock) if clock else create_app(settings)
    async with in_process(app) as http:
        yield http


async def register(http: httpx.AsyncClient, url: str, types: list[str] | None = None) -> dict[str, Any]:
    response = await http.post(
        "/v1/webhooks", json={"url": url, "types": types or ["transaction.posted"]}, headers=HEADERS
    )
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def topup(http: httpx.AsyncClient, user_id: str, amount: int) -> dict[str, Any]:
    response = await http.post(
        "/v1/topups",
        json={"user_id": user_id, "asset": "GOLD", "amount": amount},
        headers={**HEADERS, "Idempotency-Key": idem()},
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def until(condition: Callable[[], bool], what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout_s} s: {what}"
        await asyncio.sleep(0.05)


async def deliveries(http: httpx.AsyncClient, webhook_id: str) -> list[dict[str, Any]]:
    response = await http.get(f"/v1/webhooks/{webhook_id}/deliveries", params={"limit": 200}, headers=HEADERS)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def delete(http: httpx.AsyncClient, webhook_id: str) -> None:
    assert (await http.delete(f"/v1/webhooks/{webhook_id}", headers=HEADERS)).status_code == 204


async def test_register_read_rotate_delete(hooks_url: str) -> None:
    async with service(hooks_url, webhook_dispatch=False) as http:
        created = await register(http, "https://hooks.example.com/wallet", ["transaction.posted", "hold.created"])
        assert created["secret"].startswith("whsec_") and len(created["secret"]) > 40
        assert (created["status"], created["types"], created["failing_since"]) == (
            "active",
            ["transaction.posted", "hold.created"],
            None,
        )
        got = await http.get(f"/v1/webhooks/{created['id']}", headers=HEADERS)
        assert got.json() == {k: v for k, v in created.items() if k != "secret"}
        listed = await http.get("/v1/webhooks", headers=HEADERS)
        assert got.json() in listed.json()["items"]
        rotated = await http.post(f"/v1/webhooks/{created['id']}/rotate-secret", headers=HEADERS)
        assert rotated.status_code == 200 and rotated.json()["secret"] not in (None, created["secret"])
        await delete(http, created["id"])
        for response in (
            await http.get(f"/v1/webhooks/{created['id']}", headers=HEADERS),
            await http.delete(f"/v1/webhooks/{created['id']}", headers=HEADERS),
            await http.get("/v1/webhooks/wh_nope", headers=HEADERS),
        ):
            assert (response.status_code, response.json()["code"]) == (404, "webhook_not_found")
        read_only = await http.get("/v1/webhooks", headers={"Authorization": "Bearer nope"})
        assert read_only.status_code == 401


@pytest.mark.parametrize(
    "body",
    [
        {"url": "ftp://hooks.example.com/x", "types": ["transaction.posted"]},
        {"url": "http:///nohost", "types": ["transaction.posted"]},
        {"url": "https://user:pw@hooks.example.com/x", "types": ["transaction.posted"]},
        {"url": 'https://\u023a"W(m)lvk]', "types": ["user.created"]},  # schemathesis: urlsplit raised, a 500
        {"url": "https://hooks.example.com:99999/x", "types": ["user.created"]},
        {"url": "https://hooks.example.com/a\u0000b", "types": ["user.created"]},
        {"url": "https://hooks.example.com/x", "types": []},
        {"url": "https://hooks.example.com/x", "types": ["transaction.deleted"]},
        {"url": "https://hooks.example.com/x"},
    ],
)
async def test_bad_registrations_are_422(hooks_url: str, body: dict[str, Any]) -> None:
    async with service(hooks_url, webhook_dispatch=False) as http:
        assert_validation_error(await http.post("/v1/webhooks", json=body, headers=HEADERS))


async def test_the_allow_list_keeps_receivers_to_its_hosts(hooks_url: str) -> None:
    async with service(hooks_url, webhook_dispatch=False, webhook_allowed_hosts="*.example.com") as http:
        refused = await http.post(
            "/v1/webhooks", json={"url": "http://127.0.0.1:9/x", "types": ["user.created"]}, headers=HEADERS
        )
        assert_validation_error(refused, "url")
        created = await register(http, "https://hooks.example.com/x")
        await delete(http, created["id"])


async def test_events_are_delivered_signed_with_their_id(hooks_url: str) -> None:
    with Receiver().running() as receiver:
        async with service(hooks_url) as http:
            hook = await register(http, receiver.url, ["transaction.posted", "user.created"])
            user = f"hook-{idem()[-8:]}"
            assert (await http.put(f"/v1/users/{user}", headers=HEADERS)).status_code == 201
            tx = await topup(http, user, 25)
            await until(lambda: len(receiver.received) >= 2, "two deliveries")
            await delete(http, hook["id"])
    first, second = receiver.received[:2]
    for received in (first, second):
        verify_signature(hook["secret"], received)
        assert received.headers["Content-Type"] == "application/json"
        assert received.headers["Wallet-Event-Id"] == orjson.loads(received.body)["id"]
    # Deliveries are sent side by side: they may arrive in any order (the feed is the ordered view).
    by_type = {e["type"]: e for e in receiver.events()[:2]}
    assert set(by_type) == {"user.created", "transaction.posted"}
    assert by_type["transaction.posted"]["data"] == tx and by_type["transaction.posted"]["id"] == "evt_" + tx["id"]
    assert by_type["user.created"]["data"]["user_id"] == user


async def test_500s_then_200_is_retried_with_growing_delays(hooks_url: str) -> None:
    clock = Clock()
    with Receiver(plan=lambda n: (0.0, 500 if n < 3 else 200)).running() as receiver:
        async with service(hooks_url, clock=clock) as http:
            hook = await register(http, receiver.url)
            await topup(http, "alice", 1)
            for attempt in range(1, 4):
                await until(lambda a=attempt: len(receiver.received) >= a, f"attempt {attempt}")
                await asyncio.sleep(0.3)
                clock.advance(hours=1)
            await until(lambda: len(receiver.received) >= 4, "the fourth attempt")
            await asyncio.sleep(0.5)
            log = await deliveries(http, hook["id"])
            await delete(http, hook["id"])
    assert len({e["id"] for e in receiver.events()}) == 1, "one event, sent four times"
    (delivery,) = log
    assert delivery["status"] == "delivered"
    assert [a["status_code"] for a in delivery["attempts"]] == [500, 500, 500, 200]
    for received in receiver.received:
        verify_signature(hook["secret"], received)


async def test_a_slow_receiver_times_out_and_is_retried(hooks_url: str) -> None:
    clock = Clock()
    with Receiver(plan=lambda n: (11.0 if n == 0 else 0.0, 200)).running() as receiver:
        async with service(hooks_url, clock=clock) as http:
            hook = await register(http, receiver.url)
            await topup(http, "alice", 2)
            await until(lambda: len(receiver.received) >= 1, "the first attempt")
            await asyncio.sleep(10.5)  # the dispatcher gives up at 10 s
            clock.advance(hours=1)
            await until(lambda: len(receiver.received) >= 2, "the retry", 20)
            await asyncio.sleep(0.5)
            (delivery,) = await deliveries(http, hook["id"])
            await delete(http, hook["id"])
    assert delivery["status"] == "delivered"
    assert delivery["attempts"][0]["status_code"] is None and "10 s" in delivery["attempts"][0]["error"]
    assert delivery["attempts"][0]["duration_ms"] >= 9_900
    assert delivery["attempts"][1]["status_code"] == 200


async def test_connection_refused_then_a_receiver_comes_up(hooks_url: str) -> None:
    clock = Clock()
    receiver = Receiver()
    async with service(hooks_url, clock=clock) as http:
        hook = await register(http, receiver.url)
        tx = await topup(http, "alice", 3)
        await asyncio.sleep(2)
        (pending,) = await deliveries(http, hook["id"])
        assert pending["status"] == "pending" and pending["attempts"][0]["status_code"] is None
        assert "Connect" in pending["attempts"][0]["error"], pending
        failing = (await http.get(f"/v1/webhooks/{hook['id']}", headers=HEADERS)).json()
        assert failing["failing_since"] is not None
        with receiver.running():
            clock.advance(hours=1)
            await until(lambda: len(receiver.received) >= 1, "the retry")
            await asyncio.sleep(0.5)
        healed = (await http.get(f"/v1/webhooks/{hook['id']}", headers=HEADERS)).json()
        await delete(http, hook["id"])
    assert receiver.events()[0]["data"] == tx
    assert healed["failing_since"] is None


def spawn(args: list[str], **options: Any) -> "subprocess.Popen[str]":
    return subprocess.Popen(args, text=True, **options)


RECEIVER_SCRIPT = """
import sys, time
from http.server import BaseHTTPRequestHandler, HTTPServer
class H(BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        print("got", self.headers["Wallet-Event-Id"], flush=True)
        time.sleep(float(sys.argv[2]))
        self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
    def log_message(self, *a): pass
HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


async def test_a_receiver_killed_mid_delivery_gets_the_event_again(hooks_url: str) -> None:
    clock = Clock()
    port = free_port()
    dying = spawn([sys.executable, "-c", RECEIVER_SCRIPT, str(port), "30"], stdout=subprocess.PIPE)
    try:
        async with service(hooks_url, clock=clock) as http:
            hook = await register(http, f"http://127.0.0.1:{port}/hook")
            tx = await topup(http, "alice", 4)
            assert dying.stdout is not None
            line = await asyncio.to_thread(dying.stdout.readline)
            assert line.strip() == f"got evt_{tx['id']}"
            dying.kill()  # mid-delivery: the request is read, no answer sent
            dying.wait()
            with Receiver(port=port).running() as receiver:
                clock.advance(hours=1)
                await until(lambda: len(receiver.received) >= 1, "the event again")
                await asyncio.sleep(0.5)
            (delivery,) = await deliveries(http, hook["id"])
            await delete(http, hook["id"])
    finally:
        dying.kill()
    assert receiver.events()[0]["id"] == f"evt_{tx['id']}"
    assert delivery["status"] == "delivered" and delivery["attempts"][0]["status_code"] is None


async def test_a_dispatcher_killed_mid_delivery_leaves_it_to_another(hooks_url: str) -> None:
    """`wallet dispatch` sends an event to a receiver that holds the request; it is killed (SIGKILL) meanwhile. A
    second `wallet dispatch` sends the event again once the first one's lease (timeout + 5 s) has run out."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("WALLET_")},
        "WALLET_DATABASE_URL": hooks_url,
        "WALLET_WEBHOOK_TIMEOUT_MS": "3000",
        "WALLET_LOG_LEVEL": "WARNING",
    }
    with Receiver(plan=lambda n: (2.5 if n == 0 else 0.0, 200)).running() as receiver:
        async with service(hooks_url, webhook_dispatch=False) as http:
            hook = await register(http, receiver.url)
            first = spawn([WALLET, "dispatch"], env=env)
            second = None
            try:
                tx = await topup(http, "alice", 5)
                await until(lambda: len(receiver.received) >= 1, "the first dispatcher's attempt")
                first.send_signal(signal.SIGKILL)
                first.wait()
                second = spawn([WALLET, "dispatch"], env=env)
                started = time.monotonic()
                await until(lambda: len(receiver.received) >= 2, "the second dispatcher's attempt", 30)
                waited_s = time.monotonic() - started
                await asyncio.sleep(0.5)
                (delivery,) = await deliveries(http, hook["id"])
            finally:
                for process in (first, second):
                    if process is not None:
                        process.kill()
                        process.wait()
            await delete(http, hook["id"])
    assert [e["id"] for e in receiver.events()] == [f"evt_{tx['id']}"] * 2
    assert delivery["status"] == "delivered"
    for received in receiver.received:
        verify_signature(hook["secret"], received)
    print(f"\nsent again {waited_s:.1f} s after the first dispatcher was killed")


async def test_an_endpoint_failing_for_72_hours_is_disabled_and_an_event_says_so(hooks_url: str) -> None:
    clock = Clock()
    receiver = Receiver()  # never running: connection refused
    async with service(hooks_url, clock=clock) as http:
        hook = await register(http, receiver.url)
        await topup(http, "alice", 6)
        await asyncio.sleep(1.5)
        (pending,) = await deliveries(http, hook["id"])
        assert len(pending["attempts"]) == 1
        schedule = [datetime.fromisoformat(pending["next_attempt_at"])]
        for _ in range(4):  # the retries come later and later
            clock.advance(hours=1)
            await asyncio.sleep(1.0)
            (pending,) = await deliveries(http, hook["id"])
            schedule.append(datetime.fromisoformat(pending["next_attempt_at"]))
        assert len(pending["attempts"]) == 5
        attempts = [datetime.fromisoformat(a["started_at"]) for a in pending["attempts"]]
        delays = [(due - at).total_seconds() for due, at in zip(schedule, attempts, strict=True)]
        assert delays == sorted(delays) and delays[0] >= 9 and delays[-1] >= 270, delays
        assert (await http.get(f"/v1/webhooks/{hook['id']}", headers=HEADERS)).json()["status"] == "active"
        clock.advance(hours=73)
        await asyncio.sleep(1.5)
        disabled = (await http.get(f"/v1/webhooks/{hook['id']}", headers=HEADERS)).json()
        feed = await http.get("/v1/events", params={"types": "webhook.disabled", "limit": 200}, headers=HEADERS)
        (still,) = await deliveries(http, hook["id"])
        await delete(http, hook["id"])
    assert disabled["status"] == "disabled" and disabled["disabled_at"] is not None
    assert any(e["data"]["id"] == hook["id"] for e in feed.json()["items"])
    assert still["status"] == "pending", "nothing is lost: the delivery waits"


async def test_three_dispatchers_deliver_every_event_once(hooks_url: str) -> None:
    """Three services on one database (each with its dispatcher) and 200 top-ups: every event is delivered, and
    with no failure none twice (SKIP LOCKED shares the fan-out and the sending)."""
    with Receiver().running() as receiver:
        async with service(hooks_url) as a, service(hooks_url) as b, service(hooks_url) as c:
            hook = await register(a, receiver.url)
            sent = await asyncio.gather(*(topup((a, b, c)[i % 3], "bob", 1) for i in range(200)))
            await until(lambda: len(receiver.received) >= 200, "200 deliveries", 60)
            await asyncio.sleep(1.0)
            await delete(a, hook["id"])
    ids = [e["id"] for e in receiver.events()]
    assert sorted(ids) == sorted(f"evt_{tx['id']}" for tx in sent)


async def test_after_a_rotation_both_secrets_sign_for_a_day(hooks_url: str) -> None:
    with Receiver().running() as receiver:
        async with service(hooks_url) as http:
            hook = await register(http, receiver.url)
            rotated = (await http.post(f"/v1/webhooks/{hook['id']}/rotate-secret", headers=HEADERS)).json()
            await topup(http, "alice", 7)
            await until(lambda: len(receiver.received) >= 1, "a delivery")
            await delete(http, hook["id"])
    (received,) = receiver.received[:1]
    assert received.headers["Wallet-Signature"].count("v1=") == 2
    verify_signature(rotated["secret"], received)
    verify_signature(hook["secret"], received)
