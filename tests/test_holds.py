"""Holds (spec/API.md, v1.1 "Holds"): a reservation of part of a user's available balance, captured (a purchase),
voided, or expired, at most once; `available = balance - held` never below 0, under any concurrency."""

import asyncio
import os
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from tests.conftest import Keys, ServeProcess, in_process, wait_healthy
from tests.support import (
    TIMESTAMP,
    assert_problem,
    assert_transaction,
    assert_validation_error,
    create_user,
    idem,
    move,
    own_database,
    post,
    wallet_verify,
)
from wallet import keys
from wallet.config import Settings
from wallet.database import connect, migrate
from wallet.http.app import create_app
from wallet.seed import seed

HOLD_FIELDS = {
    "id",
    "status",
    "user_id",
    "asset",
    "amount",
    "captured_amount",
    "expires_at",
    "transaction_id",
    "created_at",
    "resolved_at",
    "description",
    "metadata",
}


async def hold(
    client: httpx.AsyncClient, keys_: Keys, user_id: str, amount: int, asset: str = "GOLD", **fields: Any
) -> httpx.Response:
    body = {"user_id": user_id, "asset": asset, "amount": amount, **fields}
    return await post(client, keys_, "/v1/holds", body, idem(), scope="purchase")


async def held(client: httpx.AsyncClient, keys_: Keys, user_id: str, amount: int, **fields: Any) -> dict[str, Any]:
    response = await hold(client, keys_, user_id, amount, **fields)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def capture(
    client: httpx.AsyncClient, keys_: Keys, hold_id: str, body: dict[str, Any] | None = None, key: str | None = None
) -> Any:
    return post(client, keys_, f"/v1/holds/{hold_id}/capture", body or {}, key or idem(), scope="purchase")


def void(client: httpx.AsyncClient, keys_: Keys, hold_id: str, key: str | None = None) -> Any:
    return post(client, keys_, f"/v1/holds/{hold_id}/void", {}, key or idem(), scope="purchase")


async def balances(client: httpx.AsyncClient, keys_: Keys, user_id: str, asset: str = "GOLD") -> tuple[int, int, int]:
    response = await client.get(f"/v1/users/{user_id}/balances/{asset}", headers=keys_.headers("read"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["available"] == body["balance"] - body["held"], body
    return body["balance"], body["held"], body["available"]


async def funded_user(client: httpx.AsyncClient, keys_: Keys, amount: int) -> str:
    user_id = await create_user(client, keys_)
    await move(client, keys_, "topup", user_id, amount)
    return user_id


# Shape, reads, lists ---------------------------------------------------------------------------------------------


async def test_a_hold_reserves_without_moving_money(client: httpx.AsyncClient, api_keys: Keys) -> None:
    user_id = await funded_user(client, api_keys, 500)
    response = await hold(
        client, api_keys, user_id, 200, expires_in_s=60, description="Buy-in", metadata={"tournament": 7}
    )
    assert response.status_code == 201, response.text
    created = response.json()
    assert set(created) == HOLD_FIELDS
    assert created["id"].startswith("hold_")
    assert (created["status"], created["user_id"], created["asset"], created["amount"]) == (
        "held",
        user_id,
        "GOLD",
        200,
    )
    assert (created["captured_amount"], created["transaction_id"], created["resolved_at"]) == (None, None, None)
    assert (created["description"], created["metadata"]) == ("Buy-in", {"tournament": 7})
    assert TIMESTAMP.fullmatch(created["created_at"]) and TIMESTAMP.fullmatch(created["expires_at"])
    assert created["expires_at"] > created["created_at"]

    assert await balances(client, api_keys, user_id) == (500, 200, 300)
    fetched = await client.get(f"/v1/holds/{created['id']}", headers=api_keys.headers("read"))
    assert fetched.status_code == 200
    assert fetched.content == response.content
    listed = await client.get(f"/v1/users/{user_id}/balances", headers=api_keys.headers("read"))
    gold = next(b for b in listed.json()["balances"] if b["asset"] == "GOLD")
    assert gold == {"asset": "GOLD", "balance": 500, "held": 200, "available": 300}


async def test_holds_and_purchases_take_available_funds_only(client: httpx.AsyncClient, api_keys: Keys) -> None:
    user_id = await funded_user(client, api_keys, 100)
    await held(client, api_keys, user_id, 70)
    assert_problem(await hold(client, api_keys, user_id, 31), 409, "insufficient_funds")
    purchase = await post(
        client, api_keys, "/v1/purchases", {"user_id": user_id, "asset": "GOLD", "amount": 31}, idem()
    )
    problem = assert_problem(purchase, 409, "insufficient_funds")
    assert "held 70" in problem["detail"], problem
    assert (
        await post(client, api_keys, "/v1/purchases", {"user_id": user_id, "asset": "GOLD", "amount": 30}, idem())
    ).status_code == 201
    assert await balances(client, api_keys, user_id) == (70, 70, 0)


async def test_a_replayed_hold_answers_the_same_bytes_even_after_it_changed(
    client: httpx.AsyncClient, api_keys: Keys
) -> None:
    user_id = await funded_user(client, api_keys, 100)
    key = idem()
    body = {"user_id": user_id, "asset": "GOLD", "amount": 40}
    first = await post(client, api_keys, "/v1/holds", body, key, scope="purchase")
    assert first.status_code == 201
    captured = await capture(client, api_keys, first.json()["id"])
    assert captured.status_code == 201, captured.text
    again = await post(client, api_keys, "/v1/holds", body, key, scope="purchase")
    assert (again.status_code, again.headers["idempotent-replayed"]) == (201, "true")
    assert again.content == first.content
    assert await balances(client, api_keys, user_id) == (60, 0, 60)
    reused = await post(client, api_keys, "/v1/holds", {**body, "amount": 41}, key, scope="purchase")
    assert_problem(reused, 422, "idempotency_key_reused")


async def test_a_users_holds_newest_first_by_status_in_pages(client: httpx.AsyncClient, api_keys: Keys) -> None:
    user_id = await funded_user(client, api_keys, 100)
    ids = [(await held(client, api_keys, user_id, 1))["id"] for _ in range(5)]
    assert (await void(client, api_keys, ids[1])).status_code == 200
    assert (await capture(client, api_keys, ids[3])).status_code == 201
    read = api_keys.headers("read")
    everything = (await client.get(f"/v1/users/{user_id}/holds", headers=read)).json()
    assert [h["id"] for h in everything["items"]] == ids[::-1]
    assert everything["next_cursor"] is None
    statuses = {h["id"]: h["status"] for h in everything["items"]}
    assert statuses == {ids[0]: "held", ids[1]: "voided", ids[2]: "held", ids[3]: "captured", ids[4]: "held"}
    still = (await client.get(f"/v1/users/{user_id}/holds?status=held", headers=read)).json()
    assert [h["id"] for h in still["items"]] == [ids[4], ids[2], ids[0]]

    pages: list[str] = []
    cursor = None
    while True:
        query = f"?limit=2&cursor={cursor}" if cursor else "?limit=2"
        page = (await client.get(f"/v1/users/{user_id}/holds{query}", headers=read)).json()
        pages += [h["id"] for h in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == ids[::-1]
    assert_problem(await client.get("/v1/users/nobody-here-at-all/holds", headers=read), 404, "user_not_found")
    assert_validation_error(await client.get(f"/v1/users/{user_id}/holds?status=gone", headers=read), "status")
    assert_validation_error(await client.get(f"/v1/users/{user_id}/holds?cursor=tx_0000000000000001", headers=read))


@pytest.mark.parametrize(
    "hold_id", ["hold_0000000000fffff1", "nothing", "tx_0000000000000001", "hold_ffffffffffffffff"]
)
async def test_an_unknown_hold_is_404(client: httpx.AsyncClient, api_keys: Keys, hold_id: str) -> None:
    assert_problem(await client.get(f"/v1/holds/{hold_id}", headers=api_keys.headers("read")), 404, "hold_not_found")
    assert_problem(await capture(client, api_keys, hold_id), 404, "hold_not_found")
    assert_problem(await void(client, api_keys, hold_id), 404, "hold_not_found")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"amount": 0}, "amount"),
        ({"amount": 1.0}, "amount"),
        ({"amount": 10**15 + 1}, "amount"),
        ({"expires_in_s": 0}, "expires_in_s"),
        ({"expires_in_s": 2_592_001}, "expires_in_s"),
        ({"expires_in_s": "60"}, "expires_in_s"),
        ({"asset": "gold"}, "asset"),
        ({"surprise": 1}, "surprise"),
    ],
)
async def test_a_malformed_hold_is_422_and_holds_nothing(
    client: httpx.AsyncClient, api_keys: Keys, change: dict[str, Any], field: str
) -> None:
    user_id = await funded_user(client, api_keys, 10)
    key = idem()
    body = {"user_id": user_id, "asset": "GOLD", "amount": 5, **change}
    assert_validation_error(await post(client, api_keys, "/v1/holds", body, key, scope="purchase"), field)
    assert await balances(client, api_keys, user_id) == (10, 0, 10)
    corrected = await post(client, api_keys, "/v1/holds", {"user_id": user_id, "asset": "GOLD", "amount": 5}, key)
    assert corrected.status_code == 201, corrected.text


async def test_holds_need_a_key_and_the_purchase_scope(client: httpx.AsyncClient, api_keys: Keys) -> None:
    user_id = await funded_user(client, api_keys, 10)
    body = {"user_id": user_id, "asset": "GOLD", "amount": 5}
    assert_problem(await post(client, api_keys, "/v1/holds", body, None), 400, "idempotency_key_missing")
    for scope in ("read", "topup", "bonus"):
        assert_problem(await post(client, api_keys, "/v1/holds", body, idem(), scope=scope), 403, "forbidden")
    assert_problem(await hold(client, api_keys, "nobody-here-at-all", 1), 404, "user_not_found")
    assert_problem(await hold(client, api_keys, user_id, 1, asset="NOPE"), 404, "asset_not_found")


# Capture and void -------------------------------------------------------------------------------------------------


async def test_a_capture_is_a_purchase_of_the_hold(client: httpx.AsyncClient, api_keys: Keys) -> None:
    user_id = await funded_user(client, api_keys, 500)
    created = await held(client, api_keys, user_id, 200)
    key = idem()
    response = await capture(client, api_keys, created["id"], {"description": "Won", "metadata": {"m": 1}}, key)
    assert response.status_code == 201, response.text
    tx = response.json()
    assert_transaction(tx)
    assert (tx["type"], tx["user_id"], tx["asset"], tx["amount"], tx["balance_after"]) == (
        "purchase",
        user_id,
        "GOLD",
        200,
        300,
    )
    assert (tx["hold_id"], tx["refund_of"], tx["description"], tx["metadata"]) == (created["id"], None, "Won", {"m": 1})
    assert tx["entries"] == [
        {"account": f"user:{user_id}", "asset": "GOLD", "amount": -200},
        {"account": "system:revenue", "asset": "GOLD", "amount": 200},
    ]
    fetched = await client.get(f"/v1/transactions/{tx['id']}", headers=api_keys.headers("read"))
    assert fetched.content == response.content
    again = await capture(client, api_keys, created["id"], {"description": "Won", "metadata": {"m": 1}}, key)
    assert (again.status_code, again.content, again.headers["idempotent-replayed"]) == (201, response.content, "true")

    after = (await client.get(f"/v1/holds/{created['id']}", headers=api_keys.headers("read"))).json()
    assert (after["status"], after["captured_amount"], after["transaction_id"]) == ("captured", 200, tx["id"])
    assert after["resolved_at"] == tx["created_at"]
    assert await balances(client, api_keys, user_id) == (300, 0, 300)
    assert_problem(await capture(client, api_keys, created["id"]), 409, "hold_not_active")
    assert_problem(await void(client, api_keys, created["id"]), 409, "hold_not_active")


async def test_a_partial_capture_releases_the_rest(client: httpx.AsyncClient, api_keys: Keys) -> None:
    user_id = await funded_user(client, api_keys, 100)
    created = await held(client, api_keys, user_id, 80)
    response = await capture(client, api_keys, created["id"], {"amount": 30})
    assert response.status_code == 201, response.text
    assert response.json()["amount"] == 30
    assert await balances(client, api_keys, user_id) == (70, 0, 70)
    after = (await client.get(f"/v1/holds/{created['id']}", headers=api_keys.headers("read"))).json()
    assert (after["status"], after["amount"], after["captured_amount"]) == ("captured", 80, 30)


async def test_a_capture_above_the_hold_is_422_and_can_be_corrected_under_the_same_key(
    client: httpx.AsyncClient, api_keys: Keys
) -> None:
    user_id = await funded_user(client, api_keys, 100)
    created = await held(client, api_keys, user_id, 50)
    key = idem()
    assert_validation_error(await capture(client, api_keys, created["id"], {"amount": 51}, key), "amount")
    assert await balances(client, api_keys, user_id) == (100, 50, 50)
    corrected = await capture(client, api_keys, created["id"], {"amount": 50}, key)
    assert corrected.status_code == 201, corrected.text


async def test_a_void_releases_the_hold_once(client: httpx.AsyncClient, api_keys: Keys) -> None:
    user_id = await funded_user(client, api_keys, 100)
    created = await held(client, api_keys, user_id, 60)
    key = idem()
    response = await void(client, api_keys, created["id"], key)
    assert response.status_code == 200, response.text
    voided = response.json()
    assert set(voided) == HOLD_FIELDS
    assert (voided["status"], voided["captured_amount"], voided["transaction_id"]) == ("voided", None, None)
    assert TIMESTAMP.fullmatch(voided["resolved_at"])
    assert await balances(client, api_keys, user_id) == (100, 0, 100)
    again = await void(client, api_keys, created["id"], key)
    assert (again.status_code, again.content, again.headers["idempotent-replayed"]) == (200, response.content, "true")
    assert_problem(await void(client, api_keys, created["id"]), 409, "hold_not_active")
    assert_problem(await capture(client, api_keys, created["id"]), 409, "hold_not_active")


async def test_captures_and_voids_in_a_batch(client: httpx.AsyncClient, api_keys: Keys) -> None:
    user_id = await funded_user(client, api_keys, 100)
    first, second = await held(client, api_keys, user_id, 30), await held(client, api_keys, user_id, 30)
    operations = [
        {"type": "capture", "hold_id": first["id"], "amount": 10, "idempotency_key": idem()},
        {"type": "capture", "hold_id": second["id"], "idempotency_key": idem()},
        {"type": "capture", "hold_id": second["id"], "idempotency_key": idem()},
        {"type": "purchase", "user_id": user_id, "asset": "GOLD", "amount": 60, "idempotency_key": idem()},
    ]
    response = await client.post("/v1/batch", json={"operations": operations}, headers=api_keys.headers("purchase"))
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["status"] for r in results] == [201, 201, 409, 201]
    assert results[0]["transaction"]["hold_id"] == first["id"]
    assert results[2]["problem"]["code"] == "hold_not_active"
    assert await balances(client, api_keys, user_id) == (0, 0, 0)
    replay = await client.post("/v1/batch", json={"operations": operations}, headers=api_keys.headers("purchase"))
    assert [r.get("replayed") for r in replay.json()["results"]] == [True] * 4
    assert replay.json()["results"][0]["transaction"] == results[0]["transaction"]


# Concurrency ------------------------------------------------------------------------------------------------------


async def test_200_parallel_holds_and_purchases_never_overcommit(
    http: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection
) -> None:
    user_id = await funded_user(http, api_keys, 100)

    async def one(i: int) -> httpx.Response:
        if i % 2:
            return await hold(http, api_keys, user_id, 1)
        body = {"user_id": user_id, "asset": "GOLD", "amount": 1}
        return await post(http, api_keys, "/v1/purchases", body, idem(), scope="purchase")

    responses = await asyncio.gather(*(one(i) for i in range(200)))
    statuses = Counter(r.status_code for r in responses)
    assert statuses == {201: 100, 409: 100}, statuses
    assert {r.json()["code"] for r in responses if r.status_code == 409} == {"insufficient_funds"}
    holds = sum(1 for i, r in enumerate(responses) if i % 2 and r.status_code == 201)
    balance, held_now, available = await balances(http, api_keys, user_id)
    assert (balance, held_now, available) == (holds, holds, 0)
    account = await db.fetchrow(
        "SELECT balance, held FROM accounts WHERE name = $1 AND asset = 'GOLD'", f"user:{user_id}"
    )
    assert account is not None and (account["balance"], account["held"]) == (holds, holds)


async def test_20_parallel_captures_and_voids_of_one_hold_one_wins(http: httpx.AsyncClient, api_keys: Keys) -> None:
    for _ in range(3):
        user_id = await funded_user(http, api_keys, 100)
        created = await held(http, api_keys, user_id, 50)
        responses = await asyncio.gather(
            *(
                (capture(http, api_keys, created["id"]) if i % 2 else void(http, api_keys, created["id"]))
                for i in range(20)
            )
        )
        winners = [r for r in responses if r.status_code in (200, 201)]
        assert len(winners) == 1, [r.text for r in winners]
        losers = [r for r in responses if r not in winners]
        assert {(r.status_code, r.json()["code"]) for r in losers} == {(409, "hold_not_active")}
        final = (await http.get(f"/v1/holds/{created['id']}", headers=api_keys.headers("read"))).json()
        if winners[0].status_code == 201:
            assert final["status"] == "captured"
            assert await balances(http, api_keys, user_id) == (50, 0, 50)
        else:
            assert final["status"] == "voided"
            assert await balances(http, api_keys, user_id) == (100, 0, 100)


# Expiry, and holds across restarts: an app of its own, on a database of its own, whose expiry job never runs -------


@pytest.fixture(scope="module")
def still_url(server_url: str) -> Iterator[str]:
    with own_database(server_url, "wallet_holds") as url:
        migrate(url)
        yield url
        verified = wallet_verify(url)
        assert verified.returncode == 0, verified.stdout


@pytest.fixture(scope="module")
async def still(still_url: str) -> AsyncIterator[tuple[Settings, httpx.AsyncClient, dict[str, str]]]:
    """An app on its own database whose expiry job does not run during the test (once an hour), so that what the
    API does with an expired hold is its own doing; and an admin key."""
    settings = Settings(database_url=still_url, api_key_cache_ttl_ms=0, hold_expiry_interval_ms=3_600_000)
    conn = await connect(still_url, settings)
    await seed(conn)
    secret = await keys.create(conn, "holds-admin", ["admin"])
    await conn.close()
    async with in_process(create_app(settings)) as http:
        yield settings, http, {"Authorization": f"Bearer {secret}"}


async def _post(http: httpx.AsyncClient, headers: dict[str, str], path: str, body: dict[str, Any]) -> httpx.Response:
    return await http.post(path, json=body, headers={**headers, "Idempotency-Key": idem()})


async def test_an_expired_hold_stops_counting_at_once_and_cannot_be_captured(
    still: tuple[Settings, httpx.AsyncClient, dict[str, str]],
) -> None:
    settings, http, admin = still
    assert (await http.put("/v1/users/exp-ann", headers=admin)).status_code in (200, 201)
    assert (
        await _post(http, admin, "/v1/topups", {"user_id": "exp-ann", "asset": "GOLD", "amount": 100})
    ).status_code == 201
    short = await _post(
        http, admin, "/v1/holds", {"user_id": "exp-ann", "asset": "GOLD", "amount": 60, "expires_in_s": 1}
    )
    other = await _post(
        http, admin, "/v1/holds", {"user_id": "exp-ann", "asset": "GOLD", "amount": 40, "expires_in_s": 1}
    )
    assert short.status_code == other.status_code == 201
    await asyncio.sleep(1.1)

    conn = await connect(settings.database_url or "", settings)
    try:
        marked = await conn.fetchval("SELECT count(*) FROM holds WHERE user_id = 'exp-ann' AND status = 'held'")
        assert marked == 2  # the job has not run: both are still `held` in the table
        balance = (await http.get("/v1/users/exp-ann/balances/GOLD", headers=admin)).json()
        assert (balance["balance"], balance["held"], balance["available"]) == (100, 0, 100)
        seen = (await http.get(f"/v1/holds/{short.json()['id']}", headers=admin)).json()
        assert seen["status"] == "expired" and seen["resolved_at"] == seen["expires_at"]
        listed = (await http.get("/v1/users/exp-ann/holds?status=expired", headers=admin)).json()
        assert {h["id"] for h in listed["items"]} == {short.json()["id"], other.json()["id"]}

        capture_path = f"/v1/holds/{short.json()['id']}/capture"
        assert_problem(await _post(http, admin, capture_path, {}), 409, "hold_expired")
        assert_problem(await _post(http, admin, f"/v1/holds/{other.json()['id']}/void", {}), 409, "hold_not_active")
        # A purchase of the whole balance finds the held amount still on the account, marks the due holds expired
        # (releasing them) and goes through.
        spent = await _post(http, admin, "/v1/purchases", {"user_id": "exp-ann", "asset": "GOLD", "amount": 100})
        assert spent.status_code == 201, spent.text
        rows = await conn.fetch("SELECT status FROM holds WHERE user_id = 'exp-ann'")
        assert {row["status"] for row in rows} == {"expired"}
        assert await conn.fetchval("SELECT held FROM accounts WHERE name = 'user:exp-ann' AND asset = 'GOLD'") == 0
    finally:
        await conn.close()


async def test_the_expiry_job_marks_due_holds_and_releases_them(
    still: tuple[Settings, httpx.AsyncClient, dict[str, str]],
) -> None:
    settings, http, admin = still
    assert (await http.put("/v1/users/exp-bea", headers=admin)).status_code in (200, 201)
    assert (
        await _post(http, admin, "/v1/topups", {"user_id": "exp-bea", "asset": "GOLD", "amount": 10})
    ).status_code == 201
    for _ in range(3):
        body = {"user_id": "exp-bea", "asset": "GOLD", "amount": 2, "expires_in_s": 1}
        assert (await _post(http, admin, "/v1/holds", body)).status_code == 201
    kept = await _post(http, admin, "/v1/holds", {"user_id": "exp-bea", "asset": "GOLD", "amount": 3})
    await asyncio.sleep(1.1)
    conn = await connect(settings.database_url or "", settings)
    try:
        marked = await conn.fetchval("SELECT wallet_expire_holds(1000)")
        assert marked >= 3
        rows = await conn.fetch("SELECT status, count(*) AS n FROM holds WHERE user_id = 'exp-bea' GROUP BY status")
        assert {row["status"]: row["n"] for row in rows} == {"expired": 3, "held": 1}
        assert await conn.fetchval("SELECT held FROM accounts WHERE name = 'user:exp-bea' AND asset = 'GOLD'") == 3
    finally:
        await conn.close()
    assert (await http.get(f"/v1/holds/{kept.json()['id']}", headers=admin)).json()["status"] == "held"


async def test_holds_survive_a_crash_of_the_service(
    still: tuple[Settings, httpx.AsyncClient, dict[str, str]], tmp_path: Path
) -> None:
    """A hold made through a real `wallet serve`, which is then SIGKILLed and started again: the hold is there,
    still held, and can be captured."""
    settings, _, admin = still
    env = {**os.environ, "WALLET_DATABASE_URL": settings.database_url or "", "WALLET_LOG_LEVEL": "WARNING"}
    service = ServeProcess(env, tmp_path / "serve.log")
    service.start()
    try:
        assert await wait_healthy(service.base_url, 60) is not None, service.log_tail()
        async with httpx.AsyncClient(base_url=service.base_url, timeout=30) as http:
            assert (await http.put("/v1/users/exp-cid", headers=admin)).status_code in (200, 201)
            topup = {"user_id": "exp-cid", "asset": "GOLD", "amount": 10}
            assert (await _post(http, admin, "/v1/topups", topup)).status_code == 201
            created = await _post(http, admin, "/v1/holds", {"user_id": "exp-cid", "asset": "GOLD", "amount": 7})
            assert created.status_code == 201
        service.kill()
        service.start()
        assert await wait_healthy(service.base_url, 60) is not None, service.log_tail()
        async with httpx.AsyncClient(base_url=service.base_url, timeout=30) as http:
            fetched = await http.get(f"/v1/holds/{created.json()['id']}", headers=admin)
            assert fetched.content == created.content
            balance = (await http.get("/v1/users/exp-cid/balances/GOLD", headers=admin)).json()
            assert (balance["balance"], balance["held"], balance["available"]) == (10, 7, 3)
            captured = await _post(http, admin, f"/v1/holds/{created.json()['id']}/capture", {"amount": 5})
            assert captured.status_code == 201, captured.text
            balance = (await http.get("/v1/users/exp-cid/balances/GOLD", headers=admin)).json()
            assert (balance["balance"], balance["held"], balance["available"]) == (5, 0, 5)
    finally:
        service.stop()
