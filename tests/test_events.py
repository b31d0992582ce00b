"""The event feed (spec/API.md, v1.1 "Events and webhooks"): every change is an event, written in the transaction
of the change; GET /v1/events returns them in commit order, and a reader that follows `next_cursor` sees each
once and never skips one that commits after it read a later one, across a restart of PostgreSQL too."""

import asyncio
import random
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from tests.conftest import Keys
from tests.support import assert_validation_error, create_user, free_port, idem, move, own_database, post
from wallet import events
from wallet.config import Settings
from wallet.database import connect, migrate
from wallet.embedded import embedded_server
from wallet.errors import DATABASE_ERRORS
from wallet.kinds import KINDS
from wallet.ledger import Caller, Movement, Request, post_on
from wallet.seed import seed


async def feed_end(client: httpx.AsyncClient, keys: Keys) -> str:
    """The cursor at the end of the feed as it is now."""
    cursor = None
    while True:
        params = {"limit": 200, **({"after": cursor} if cursor else {})}
        response = await client.get("/v1/events", params=params, headers=keys.headers("read"))
        assert response.status_code == 200, response.text
        page = response.json()
        assert page["next_cursor"]
        if not page["items"]:
            return str(page["next_cursor"])
        cursor = page["next_cursor"]


async def events_after(
    client: httpx.AsyncClient, keys: Keys, cursor: str, **params: Any
) -> tuple[list[dict[str, Any]], str]:
    items: list[dict[str, Any]] = []
    while True:
        response = await client.get(
            "/v1/events", params={"after": cursor, "limit": 200, **params}, headers=keys.headers("read")
        )
        assert response.status_code == 200, response.text
        page = response.json()
        if not page["items"]:
            assert page["next_cursor"] == cursor, "an empty page points where it was asked from"
            return items, cursor
        items.extend(page["items"])
        cursor = page["next_cursor"]


def about(items: list[dict[str, Any]], user_id: str) -> list[tuple[str, dict[str, Any]]]:
    """The events whose object is the user's, in feed order: (type, data)."""
    return [(item["type"], item["data"]) for item in items if item["data"].get("user_id") == user_id]


async def test_every_change_is_an_event_with_its_object_as_the_api_shows_it(
    client: httpx.AsyncClient, api_keys: Keys
) -> None:
    cursor = await feed_end(client, api_keys)
    user_id = await create_user(client, api_keys, "ev")
    topup = await move(client, api_keys, "topup", user_id, 100)
    response = await post(client, api_keys, "/v1/holds", {"user_id": user_id, "asset": "GOLD", "amount": 30}, idem())
    hold = response.json()
    voided = await post(client, api_keys, f"/v1/holds/{hold['id']}/void", {}, idem())
    response = await post(client, api_keys, "/v1/holds", {"user_id": user_id, "asset": "GOLD", "amount": 20}, idem())
    second = response.json()
    captured = await post(client, api_keys, f"/v1/holds/{second['id']}/capture", {}, idem())
    frozen = await client.post(f"/v1/users/{user_id}/freeze", json={"reason": "r"}, headers=api_keys.headers())
    unfrozen = await client.post(f"/v1/users/{user_id}/unfreeze", json={}, headers=api_keys.headers())

    items, _ = await events_after(client, api_keys, cursor)
    assert len({item["id"] for item in items}) == len(items)
    seen = about(items, user_id)
    read = api_keys.headers("read")
    user_now = (await client.get(f"/v1/users/{user_id}", headers=read)).json()
    assert [kind for kind, _ in seen] == [
        "user.created",
        "transaction.posted",
        "hold.created",
        "hold.voided",
        "hold.created",
        "transaction.posted",
        "hold.captured",
        "user.frozen",
        "user.unfrozen",
    ]
    assert seen[0][1] == {**user_now, "status": "active", "frozen_reason": None, "frozen_at": None}
    assert seen[1][1] == topup
    assert seen[2][1] == hold
    assert seen[3][1] == voided.json()
    assert seen[5][1] == captured.json()
    assert seen[6][1] == (await client.get(f"/v1/holds/{second['id']}", headers=read)).json()
    assert seen[7][1] == frozen.json()
    assert seen[8][1] == unfrozen.json() == user_now
    for item in items:
        assert set(item) == {"id", "type", "created_at", "data"}
    event = next(item for item in items if item["type"] == "transaction.posted" and item["data"]["id"] == topup["id"])
    assert (event["id"], event["created_at"]) == ("evt_" + topup["id"], topup["created_at"])

    only, _ = await events_after(client, api_keys, cursor, types="hold.created,user.frozen")
    assert [kind for kind, _ in about(only, user_id)] == ["hold.created", "hold.created", "user.frozen"]


@pytest.mark.parametrize(
    "params",
    [
        {"after": "ev_1_0"},
        {"after": "ev_1_2_3"},
        {"after": "tx_0000000000000001"},
        {"after": "ev_99999999999999999999_0_1"},
        {"types": "transaction.deleted"},
        {"types": ","},
        {"limit": 0},
        {"limit": 201},
    ],
)
async def test_bad_cursors_types_and_limits_are_422(
    client: httpx.AsyncClient, api_keys: Keys, params: dict[str, Any]
) -> None:
    response = await client.get("/v1/events", params=params, headers=api_keys.headers("read"))
    assert_validation_error(response)


async def test_an_event_that_commits_later_is_not_skipped(
    client: httpx.AsyncClient, api_keys: Keys, database_url: str, settings: Settings
) -> None:
    """T1 writes first and commits last; T2 writes and commits in between. A reader that read T2's event before T1
    committed would skip T1's forever: the feed holds T2 back until T1 has ended, then gives T1, then T2."""
    cursor = await feed_end(client, api_keys)
    first, second = await create_user(client, api_keys, "ev"), await create_user(client, api_keys, "ev")
    key_id = await _admin_key_id(database_url, settings)
    t1 = await connect(database_url, settings)
    t2 = await connect(database_url, settings)
    try:
        async with t1.transaction():
            await _topup(t1, key_id, first, 11)
            async with t2.transaction():
                await _topup(t2, key_id, second, 22)
            items, cursor_mid = await events_after(client, api_keys, cursor)
            posted = [data for kind, data in about(items, second) if kind == "transaction.posted"]
            assert posted == [], "T2's event came out while T1, begun before it, was still open"
        items, _ = await events_after(client, api_keys, cursor_mid)
        amounts = [data["amount"] for kind, data in about(items, first) + about(items, second) if "amount" in data]
        assert amounts == [11, 22]
        assert [item["data"]["user_id"] for item in items if item["type"] == "transaction.posted"][-2:] == [
            first,
            second,
        ]
    finally:
        await t1.close()
        await t2.close()


async def _admin_key_id(database_url: str, settings: Settings) -> int:
    conn = await connect(database_url, settings)
    try:
        return int(await conn.fetchval("SELECT min(id) FROM api_keys WHERE 'admin' = ANY (scopes)"))
    finally:
        await conn.close()


async def _topup(conn: asyncpg.Connection, key_id: int, user_id: str, amount: int) -> None:
    movement = Movement(KINDS["topup"], user_id, "GOLD", amount, None, {})
    outcome = await post_on(conn, Request(Caller(key_id, "events-test", uuid.uuid4()), idem(), movement))
    assert outcome.problem is None, outcome


@pytest.mark.own_postgres
async def test_16_writers_and_a_paging_reader_see_every_transaction_once_across_a_restart() -> None:
    """16 writers post top-ups, each holding its transaction open a random while after writing (so transactions
    commit out of the order of their ids); a reader pages the feed all along, 20 events a page; PostgreSQL is
    restarted in the middle (writers and reader reconnect). In the end the reader has seen every committed
    transaction's event exactly once, in feed order."""
    from tests.test_bank import Postgres

    root = Path(tempfile.mkdtemp(prefix="wallet-feed-", dir="/tmp"))
    try:
        with embedded_server(root) as url:
            migrate(url)
            settings = Settings(database_url=url)
            conn = await connect(url, settings)
            await seed(conn)
            key_id = int(await conn.fetchval("SELECT id FROM api_keys WHERE name = 'seed'"))
            users = [f"feed-{i}" for i in range(16)]
            await conn.executemany("INSERT INTO users (user_id) VALUES ($1)", [(u,) for u in users])
            await conn.close()
            postgres = Postgres(root / "pg")
            stop = asyncio.Event()
            seen: list[tuple[events.Position, str]] = []
            reconnects = {"writers": 0, "reader": 0}

            async def connection() -> asyncpg.Connection:
                while True:
                    try:
                        return await connect(url, settings)
                    except DATABASE_ERRORS:
                        await asyncio.sleep(0.1)

            async def writer(user_id: str, rng: random.Random) -> None:
                conn = await connection()
                while not stop.is_set():
                    try:
                        async with conn.transaction():
                            await _topup(conn, key_id, user_id, 1)
                            await asyncio.sleep(rng.uniform(0, 0.02))
                    except DATABASE_ERRORS:
                        reconnects["writers"] += 1
                        conn.terminate()
                        conn = await connection()
                conn.terminate()

            async def reader() -> None:
                conn = await connection()
                position = events.START
                idle_after_stop = 0
                while idle_after_stop < 3:
                    try:
                        page = await events.read(conn, position, 20)
                    except DATABASE_ERRORS:
                        reconnects["reader"] += 1
                        conn.terminate()
                        conn = await connection()
                        continue
                    seen.extend((pos, kind) for pos, kind, _ in page.events)
                    position = page.next
                    if not page.events:
                        idle_after_stop += stop.is_set()
                        await asyncio.sleep(0.05)
                conn.terminate()

            rng = random.Random(7)
            tasks = [asyncio.create_task(writer(u, random.Random(rng.random()))) for u in users]
            read_task = asyncio.create_task(reader())
            await asyncio.sleep(4)
            await asyncio.to_thread(postgres.restart, "fast")
            await asyncio.sleep(4)
            stop.set()
            await asyncio.gather(*tasks)
            await read_task

            conn = await connect(url, settings)
            committed = {row["id"] for row in await conn.fetch("SELECT id FROM transactions")}
            await conn.close()
        transactions = [pos.id for pos, kind in seen if kind == "transaction.posted"]
        assert len(transactions) == len(set(transactions)), "an event was seen twice"
        assert set(transactions) == committed, (len(committed - set(transactions)), len(set(transactions) - committed))
        assert [pos for pos, _ in seen] == sorted(pos for pos, _ in seen), "out of feed order"
        assert reconnects["writers"] >= 1 and reconnects["reader"] >= 1, reconnects
        print(f"\n{len(committed)} transactions, each seen once across the restart; reconnects {reconnects}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def test_monitors_emit_once_per_crossing(client: httpx.AsyncClient, api_keys: Keys) -> None:
    user_id = await create_user(client, api_keys, "mon")
    admin = api_keys.headers("admin")
    watch = {"asset": "GOLD", "user_id": user_id, "condition": "below", "threshold": 50}
    response = await client.post("/v1/monitors", json=watch, headers=admin)
    assert response.status_code == 201, response.text
    monitor = response.json()
    assert {k: monitor[k] for k in watch} == watch and monitor["id"].startswith("mon_")
    asset = f"M{uuid.uuid4().hex[:10].upper()}"
    assert (await client.put(f"/v1/assets/{asset}", json={"name": "M"}, headers=admin)).status_code == 201
    everyone = {"asset": asset, "condition": "above", "threshold": 1000}
    assert (await client.post("/v1/monitors", json=everyone, headers=admin)).status_code == 201
    listed = await client.get("/v1/monitors", headers=admin)
    assert monitor in listed.json()["items"]

    cursor = await feed_end(client, api_keys)
    for kind, amount in [("topup", 100), ("purchase", 60), ("purchase", 10), ("topup", 50), ("purchase", 40)]:
        await move(client, api_keys, kind, user_id, amount)
    whale = await create_user(client, api_keys, "mon")  # its account is opened by the top-up: watched from birth
    await move(client, api_keys, "topup", whale, 2000, asset)
    await move(client, api_keys, "topup", whale, 5, asset)
    items, _ = await events_after(client, api_keys, cursor, types="balance.threshold_crossed")
    crossings = [(e["data"]["user_id"], e["data"]["balance_before"], e["data"]["balance"]) for e in items]
    assert crossings == [(user_id, 100, 40), (user_id, 80, 40), (whale, 0, 2000)]
    assert items[0]["data"] == {
        "monitor_id": monitor["id"], "user_id": user_id, "asset": "GOLD", "condition": "below", "threshold": 50,
        "balance_before": 100, "balance": 40,
    }  # fmt: skip

    for body, status in [
        ({**watch, "user_id": "nobody-" + uuid.uuid4().hex[:6]}, 404),
        ({**watch, "asset": "NOPE"}, 404),
        ({**watch, "condition": "equal"}, 422),
        ({**watch, "threshold": -1}, 422),
    ]:
        assert (await client.post("/v1/monitors", json=body, headers=admin)).status_code == status, body


NATS_SERVER = shutil.which("nats-server") or shutil.which("nats-server", path="/usr/sbin")


@pytest.fixture
def nats_database(server_url: str) -> Iterator[str]:
    with own_database(server_url, "wallet_nats") as url:
        migrate(url)
        yield url


@pytest.mark.skipif(NATS_SERVER is None, reason="nats-server is not installed (Debian: nats-server)")
async def test_every_event_reaches_nats_jetstream_once_across_a_nats_restart(nats_database: str) -> None:
    """With WALLET_NATS_URL, 1,000 top-ups (ten batches of 100) reach the stream as 1,000 messages on
    wallet.events.transaction.posted, each event id once, though NATS (a server of this test's own, JetStream on
    disk) is restarted after the first 500."""
    import nats
    from nats.js.api import ConsumerConfig, DeliverPolicy

    from tests.conftest import in_process
    from wallet import keys, sink
    from wallet.http.app import create_app

    assert NATS_SERVER is not None
    url = nats_database
    store = Path(tempfile.mkdtemp(prefix="wallet-nats-", dir="/tmp"))
    port = free_port()

    def start_nats() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [NATS_SERVER, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(store)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    nats_url = f"nats://127.0.0.1:{port}"
    process = await asyncio.to_thread(start_nats)
    try:
        if True:
            conn = await connect(url, Settings(database_url=url))
            await seed(conn)
            secret = await keys.create(conn, "nats-admin", ["admin"])
            await conn.close()
            headers = {"Authorization": f"Bearer {secret}"}
            await asyncio.sleep(0.5)
            settings = Settings(database_url=url, nats_url=nats_url, webhook_dispatch=False)
            async with in_process(create_app(settings)) as http:
                # The sink starts at the feed's head when it first runs: wait for it to have taken its position.
                probe = await connect(url, Settings(database_url=url))
                for _ in range(200):
                    if await probe.fetchval("SELECT count(*) FROM event_sinks WHERE name = $1", sink.NAME):
                        break
                    await asyncio.sleep(0.05)
                await probe.close()
                assert (await http.put("/v1/users/nats-user", headers=headers)).status_code == 201
                sent: list[str] = []
                for batch in range(10):
                    if batch == 5:
                        process.terminate()
                        await asyncio.to_thread(process.wait)
                        await asyncio.sleep(1.0)
                        process = await asyncio.to_thread(start_nats)
                    operations = [
                        {"type": "topup", "user_id": "nats-user", "asset": "GOLD", "amount": 1,
                         "idempotency_key": idem()}
                        for _ in range(100)
                    ]  # fmt: skip
                    response = await http.post("/v1/batch", json={"operations": operations}, headers=headers)
                    assert response.status_code == 200, response.text
                    sent += ["evt_" + r["transaction"]["id"] for r in response.json()["results"]]

                client = await nats.connect(nats_url)
                js = client.jetstream()
                deadline = asyncio.get_running_loop().time() + 60
                while True:
                    info = await js.stream_info(sink.STREAM)
                    if info.state.messages >= 1000 or asyncio.get_running_loop().time() > deadline:
                        break
                    await asyncio.sleep(0.2)
                subscription = await js.pull_subscribe(
                    "wallet.events.>", config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
                )
                ids: list[str] = []
                subjects: set[str] = set()
                while True:
                    try:
                        messages = await subscription.fetch(500, timeout=2)
                    except nats.errors.TimeoutError:
                        break
                    for message in messages:
                        ids.append(message.headers["Nats-Msg-Id"] if message.headers else "")
                        subjects.add(message.subject)
                        await message.ack()
                await client.close()
        posted = [i for i in ids if i.startswith("evt_tx_")]
        assert len(ids) == len(set(ids)), "a message stored twice"
        assert posted == sent, (len(posted), len(sent))
        assert subjects == {"wallet.events.transaction.posted", "wallet.events.user.created"}
    finally:
        process.kill()
        shutil.rmtree(store, ignore_errors=True)
