"""Concurrency: real parallel HTTP requests against a real `wallet serve` process (two workers).

Every test uses its own users, so the counts it checks in the database are its own.
"""

import asyncio
import random
from collections import Counter, defaultdict
from typing import Any

import asyncpg
import httpx

from tests.conftest import Keys
from tests.support import PATHS, SYSTEM_SIDE, assert_books_balance, balance, create_user, new_id, post


async def move(
    http: httpx.AsyncClient, keys: Keys, kind: str, body: dict[str, Any], key: str | None = None
) -> httpx.Response:
    """Sent with the key of the kind's own scope; the response, whatever it is."""
    return await post(http, keys, PATHS[kind], body, key or new_id(kind), scope=kind)


async def system_balances(db: asyncpg.Connection) -> dict[tuple[str, str], int]:
    rows = await db.fetch("SELECT name, asset, balance FROM account_balances WHERE kind = 'system'")
    return {(row["name"], row["asset"]): int(row["balance"]) for row in rows}


async def assert_ledger_sums_to_zero(db: asyncpg.Connection) -> None:
    """The books balance, and no user's balance is below zero."""
    await assert_books_balance(db)
    negative = await db.fetch("SELECT name, asset, balance FROM account_balances WHERE kind = 'user' AND balance < 0")
    assert negative == []


def replayed(response: httpx.Response) -> bool:
    return response.headers.get("idempotent-replayed") == "true"


async def test_parallel_purchases_never_overdraw(http: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection):
    user_id = await create_user(http, api_keys)
    funded = await move(http, api_keys, "topup", {"user_id": user_id, "asset": "GOLD", "amount": 100})
    assert funded.status_code == 201, funded.text

    body = {"user_id": user_id, "asset": "GOLD", "amount": 1}
    responses = await asyncio.gather(*(move(http, api_keys, "purchase", body) for _ in range(200)))

    statuses = Counter(r.status_code for r in responses)
    assert statuses == {201: 100, 409: 100}, {r.status_code: r.text for r in responses if r.status_code >= 500}
    refusals = Counter(r.json()["code"] for r in responses if r.status_code == 409)
    assert refusals == {"insufficient_funds": 100}
    # Each accepted purchase saw a distinct balance: they were applied one after the other.
    assert sorted(r.json()["balance_after"] for r in responses if r.status_code == 201) == list(range(100))
    assert not any(replayed(r) for r in responses)

    assert await balance(http, api_keys, user_id, "GOLD") == 0
    written = await db.fetchval("SELECT count(*) FROM transactions WHERE user_id = $1 AND type = 'purchase'", user_id)
    assert written == 100
    history = await http.get(
        f"/v1/users/{user_id}/transactions", params={"limit": 200}, headers=api_keys.headers("read")
    )
    assert history.status_code == 200
    kinds = Counter(item["type"] for item in history.json()["items"])
    assert kinds == {"purchase": 100, "topup": 1}
    await assert_ledger_sums_to_zero(db)


async def test_parallel_large_purchases_are_refused_not_failed(
    http: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection
):
    """Purchases of 30 against balances of 100, all at once: three per user are accepted, the others are
    refused with insufficient_funds, whatever balance they saw when they started."""
    users = list(await asyncio.gather(*(create_user(http, api_keys) for _ in range(4))))
    for user_id in users:
        funded = await move(http, api_keys, "topup", {"user_id": user_id, "asset": "GOLD", "amount": 100})
        assert funded.status_code == 201, funded.text

    bodies = [{"user_id": user_id, "asset": "GOLD", "amount": 30} for _ in range(50) for user_id in users]
    responses = await asyncio.gather(*(move(http, api_keys, "purchase", body) for body in bodies))

    outcomes = Counter((r.status_code, r.json().get("code")) for r in responses)
    assert outcomes == {(201, None): 12, (409, "insufficient_funds"): 188}, outcomes
    for user_id in users:
        assert await balance(http, api_keys, user_id, "GOLD") == 10
    written = await db.fetchval(
        "SELECT count(*) FROM transactions WHERE user_id = ANY($1::text[]) AND type = 'purchase'", users
    )
    assert written == 12
    await assert_ledger_sums_to_zero(db)


async def test_parallel_requests_with_one_key_write_once(
    http: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection
):
    user_id = await create_user(http, api_keys)
    key = new_id("same")
    body = {"user_id": user_id, "asset": "DIAMOND", "amount": 7, "description": "race", "metadata": {"n": 1}}
    responses = await asyncio.gather(*(move(http, api_keys, "topup", body, key) for _ in range(30)))

    statuses = Counter(r.status_code for r in responses)
    assert set(statuses) == {201}, [(r.status_code, r.text) for r in responses]
    created = [r for r in responses if r.status_code == 201]
    assert len({r.content for r in created}) == 1, "replays differ from the first response"
    assert sum(not replayed(r) for r in created) == 1

    written = await db.fetchval("SELECT count(*) FROM transactions WHERE user_id = $1", user_id)
    assert written == 1
    assert await balance(http, api_keys, user_id, "DIAMOND") == 7
    # A later retry still replays the one transaction.
    again = await move(http, api_keys, "topup", body, key)
    assert again.status_code == 201 and replayed(again)
    assert again.content == created[0].content


async def test_parallel_requests_with_one_key_and_different_bodies(
    http: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection
):
    user_id = await create_user(http, api_keys)
    key = new_id("mixed")
    # Amounts 1..5, each sent 6 times: a request identical to the winner replays, the others are refused.
    bodies = [{"user_id": user_id, "asset": "GOLD", "amount": 1 + i % 5} for i in range(30)]
    responses = await asyncio.gather(*(move(http, api_keys, "topup", body, key) for body in bodies))

    unexpected = [(r.status_code, r.text) for r in responses if r.status_code not in (201, 422)]
    assert unexpected == []
    winners = [(b, r) for b, r in zip(bodies, responses, strict=True) if r.status_code == 201 and not replayed(r)]
    assert len(winners) == 1, [(r.status_code, r.text) for r in responses]
    won_body, won = winners[0]
    for body, response in zip(bodies, responses, strict=True):
        if response.status_code == 201:
            assert body["amount"] == won_body["amount"]
            assert response.content == won.content
        else:
            assert response.json()["code"] == "idempotency_key_reused", response.text
            assert body["amount"] != won_body["amount"]

    written = await db.fetchval("SELECT count(*) FROM transactions WHERE user_id = $1", user_id)
    assert written == 1
    assert await balance(http, api_keys, user_id, "GOLD") == won_body["amount"]


async def test_crossing_topups_and_purchases_keep_every_balance_exact(
    http: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection
):
    rng = random.Random(20261122)
    users = [await create_user(http, api_keys) for _ in range(8)]
    assets = ("GOLD", "DIAMOND")
    system_before = await system_balances(db)

    operations = []
    for _ in range(400):
        kind = rng.choices(("topup", "bonus", "purchase"), weights=(4, 1, 6))[0]
        amount = rng.randint(1, 60) if kind == "purchase" else rng.randint(1, 40)
        operations.append((kind, {"user_id": rng.choice(users), "asset": rng.choice(assets), "amount": amount}))
    responses = await asyncio.gather(*(move(http, api_keys, kind, body) for kind, body in operations))

    expected: dict[tuple[str, str], int] = defaultdict(int)
    system_moved: dict[tuple[str, str], int] = defaultdict(int)
    accepted: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for (kind, body), response in zip(operations, responses, strict=True):
        account = (body["user_id"], body["asset"])
        if response.status_code == 201:
            sign = -1 if kind == "purchase" else 1
            tx = response.json()
            assert (tx["type"], tx["user_id"], tx["asset"], tx["amount"]) == (kind, *account, body["amount"])
            assert tx["balance_after"] >= 0
            assert tx["entries"] == [
                {"account": f"user:{account[0]}", "asset": body["asset"], "amount": sign * body["amount"]},
                {"account": SYSTEM_SIDE[kind], "asset": body["asset"], "amount": -sign * body["amount"]},
            ]
            expected[account] += sign * body["amount"]
            system_moved[(SYSTEM_SIDE[kind], body["asset"])] -= sign * body["amount"]
            accepted[account].append({**tx, "delta": sign * body["amount"]})
        else:
            assert kind == "purchase" and response.status_code == 409, (kind, response.status_code, response.text)
            assert response.json()["code"] == "insufficient_funds"
    assert sum(r.status_code == 201 for r in responses) > 200, "too few writes to say anything"

    for user_id in users:
        for asset in assets:
            assert await balance(http, api_keys, user_id, asset) == expected[(user_id, asset)], (user_id, asset)
    # Per account, transaction ids follow the order in which the writes took the lock: balance_after is a
    # running sum of the accepted movements.
    for account, txs in accepted.items():
        running = 0
        for tx in sorted(txs, key=lambda t: t["id"]):
            running += tx["delta"]
            assert tx["balance_after"] == running, (account, tx["id"])

    written = await db.fetchval("SELECT count(*) FROM transactions WHERE user_id = ANY($1::text[])", users)
    assert written == sum(r.status_code == 201 for r in responses)
    system_after = await system_balances(db)
    for account in system_after:
        assert system_after[account] - system_before.get(account, 0) == system_moved.get(account, 0), account
    await assert_ledger_sums_to_zero(db)


async def test_parallel_creation_of_one_user(http: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection):
    user_id = new_id("same-user")
    responses = await asyncio.gather(
        *(http.put(f"/v1/users/{user_id}", headers=api_keys.headers("admin")) for _ in range(20))
    )
    statuses = Counter(r.status_code for r in responses)
    assert statuses == {201: 1, 200: 19}, [(r.status_code, r.text) for r in responses]
    assert len({r.json()["created_at"] for r in responses}) == 1
    assert {r.json()["user_id"] for r in responses} == {user_id}

    # Accounts appear with the user's first credits, not with the user.
    assert await db.fetchval("SELECT count(*) FROM accounts WHERE user_id = $1", user_id) == 0
    assets = await db.fetchval("SELECT count(*) FROM assets")
    balances = await http.get(f"/v1/users/{user_id}/balances", headers=api_keys.headers("read"))
    assert balances.status_code == 200
    assert all(item["balance"] == 0 for item in balances.json()["balances"])
    assert len(balances.json()["balances"]) == assets


async def test_parallel_topups_for_many_users(http: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection):
    users = list(await asyncio.gather(*(create_user(http, api_keys) for _ in range(50))))
    system_before = await system_balances(db)
    operations = [{"user_id": user_id, "asset": "LOYALTY", "amount": 10 + i} for user_id in users for i in range(4)]
    random.Random(7).shuffle(operations)
    responses = await asyncio.gather(*(move(http, api_keys, "topup", body) for body in operations))

    failed = [(r.status_code, r.text) for r in responses if r.status_code != 201]
    assert failed == []
    for user_id in users:
        assert await balance(http, api_keys, user_id, "LOYALTY") == 10 + 11 + 12 + 13
    written = await db.fetchval("SELECT count(*) FROM transactions WHERE user_id = ANY($1::text[])", users)
    assert written == 200
    system_after = await system_balances(db)
    treasury = ("system:treasury", "LOYALTY")
    assert system_after[treasury] - system_before[treasury] == -sum(body["amount"] for body in operations)
    await assert_ledger_sums_to_zero(db)


async def test_concurrent_requests_share_transactions_and_each_keeps_its_own_outcome(
    http: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection
):
    """Group commit: requests a worker has in hand at once go to the database as one transaction (fewer commits
    than requests, seen in the transactions' xmin), and each still gets its own answer: a refused purchase, an
    unknown user and a replayed key beside successes."""
    users = [await create_user(http, api_keys) for _ in range(48)]
    ghost = new_id("ghost")
    replay_key = new_id("replay")
    first = await move(http, api_keys, "topup", {"user_id": users[0], "asset": "GOLD", "amount": 5}, replay_key)
    assert first.status_code == 201
    sent = [("topup", {"user_id": user_id, "asset": "GOLD", "amount": 10}, None) for user_id in users]
    sent += [("purchase", {"user_id": users[1], "asset": "DIAMOND", "amount": 1}, None)]  # nothing to spend
    sent += [("topup", {"user_id": ghost, "asset": "GOLD", "amount": 1}, None)]
    sent += [("topup", {"user_id": users[0], "asset": "GOLD", "amount": 5}, replay_key)]
    # The treasury's stripes are locked meanwhile: the first group of each worker waits on them, and what comes
    # next queues behind it, as under load, whatever the machine's speed.
    async with db.transaction():
        await db.execute(
            """SELECT 1 FROM account_stripes s JOIN accounts a ON a.id = s.account_id
                WHERE a.name = 'system:treasury' AND a.asset = 'GOLD' FOR UPDATE OF s"""
        )
        tasks = [asyncio.create_task(move(http, api_keys, kind, body, key)) for kind, body, key in sent]
        await asyncio.sleep(1.0)
    responses = await asyncio.gather(*tasks)

    assert [r.status_code for r in responses] == [201] * 48 + [409, 404, 201], [r.text for r in responses[-3:]]
    assert responses[-3].json()["code"] == "insufficient_funds"
    assert responses[-2].json()["code"] == "user_not_found"
    assert replayed(responses[-1]) and responses[-1].content == first.content
    commits = await db.fetchval(
        "SELECT count(DISTINCT xmin::text) FROM transactions WHERE user_id = ANY($1) AND amount = 10", users
    )
    print(f"\n48 concurrent top-ups committed in {commits} transactions")
    assert commits <= 12, "requests hardly shared transactions"
    for user_id in users:
        assert await balance(http, api_keys, user_id, "GOLD") == 10 + (5 if user_id == users[0] else 0)
    await assert_ledger_sums_to_zero(db)
