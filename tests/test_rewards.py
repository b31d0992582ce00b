"""Purchases with rewards (spec/API.md, v1.1 "Purchases with rewards"): POST /v1/purchases with `rewards`, each
paid bonus_pool -> user in other assets, in the same transaction as the purchase. In accounting terms: one
transaction whose entries sum to 0 in each asset; all its legs commit together or none does; a refusal of any leg
writes nothing ("nothing" read in the database through the `db` fixture)."""

import asyncio
from collections import Counter
from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from tests.conftest import Keys
from tests.support import (
    assert_books_balance,
    assert_problem,
    assert_problem_document,
    assert_transaction,
    assert_validation_error,
    create_user,
    error_locations,
    frozen,
    idem,
    ledger_counts,
    move,
    post,
    stored_balance,
    stored_keys,
    user_balances,
)

ASSETS = ("GOLD", "DIAMOND", "LOYALTY")


def purchase_body(user_id: str, amount: Any, rewards: Any, asset: str = "GOLD", **extra: Any) -> dict[str, Any]:
    return {"user_id": user_id, "asset": asset, "amount": amount, "rewards": rewards, **extra}


def buy(client: httpx.AsyncClient, keys: Keys, body: Any, key: str | None = None, scope: str = "purchase") -> Any:
    """POST /v1/purchases with a new key (or `key`); a coroutine of the response."""
    return post(client, keys, "/v1/purchases", body, key or idem(), scope=scope)


async def funded(client: httpx.AsyncClient, keys: Keys, gold: int) -> str:
    user_id = await create_user(client, keys, "rw")
    if gold:
        await move(client, keys, "topup", user_id, gold, "GOLD")
    return user_id


async def system_books(db: asyncpg.Connection) -> dict[tuple[str, str], int]:
    rows = await db.fetch("SELECT name, asset, balance FROM account_balances WHERE kind = 'system'")
    return {(row["name"], row["asset"]): int(row["balance"]) for row in rows}


async def snapshot(db: asyncpg.Connection, user_id: str) -> dict[str, Any]:
    """What a purchase with rewards by this user could change."""
    return {
        "counts": await ledger_counts(db, user_id),
        "user": await user_balances(db, user_id),
        "systems": await system_books(db),
    }


# Posted -----------------------------------------------------------------------------------------------------------


async def test_purchase_with_rewards_is_one_transaction_balanced_per_asset(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection
) -> None:
    user_id = await funded(client, api_keys, 1000)
    await move(client, api_keys, "bonus", user_id, 4, "LOYALTY")
    systems = await system_books(db)
    body = purchase_body(
        user_id,
        100,
        [{"asset": "LOYALTY", "amount": 10}, {"asset": "DIAMOND", "amount": 2}],
        description="Starter pack",
        metadata={"sku": "starter"},
    )
    key = idem()
    response = await buy(client, api_keys, body, key)
    assert response.status_code == 201, response.text
    tx = response.json()
    assert_transaction(tx)  # each asset's entries sum to 0
    assert (tx["type"], tx["user_id"], tx["asset"], tx["amount"]) == ("purchase", user_id, "GOLD", 100)
    assert tx["balance_after"] == 900
    assert (tx["description"], tx["metadata"]) == ("Starter pack", {"sku": "starter"})
    assert sorted(tx["entries"], key=lambda e: (e["asset"], e["account"])) == [
        {"account": "system:bonus_pool", "asset": "DIAMOND", "amount": -2},
        {"account": f"user:{user_id}", "asset": "DIAMOND", "amount": 2},
        {"account": "system:revenue", "asset": "GOLD", "amount": 100},
        {"account": f"user:{user_id}", "asset": "GOLD", "amount": -100},
        {"account": "system:bonus_pool", "asset": "LOYALTY", "amount": -10},
        {"account": f"user:{user_id}", "asset": "LOYALTY", "amount": 10},
    ]
    assert sorted(tx["rewards"], key=lambda r: r["asset"]) == [
        {"asset": "DIAMOND", "amount": 2, "balance_after": 2},
        {"asset": "LOYALTY", "amount": 10, "balance_after": 14},
    ]
    assert tx["refund_of"] is None and tx["hold_id"] is None

    assert await user_balances(db, user_id) == {"GOLD": 900, "LOYALTY": 14, "DIAMOND": 2}
    moved = {k: v - systems[k] for k, v in (await system_books(db)).items() if v != systems[k]}
    assert moved == {
        ("system:revenue", "GOLD"): 100,
        ("system:bonus_pool", "LOYALTY"): -10,
        ("system:bonus_pool", "DIAMOND"): -2,
    }
    assert await db.fetchval("SELECT count(*) FROM transactions WHERE user_id = $1 AND type = 'purchase'", user_id) == 1

    fetched = await client.get(f"/v1/transactions/{tx['id']}", headers=api_keys.headers("read"))
    assert fetched.status_code == 200, fetched.text
    assert fetched.content == response.content
    history = await client.get(f"/v1/users/{user_id}/transactions", headers=api_keys.headers("read"))
    assert history.json()["items"][0] == tx
    # Each asset's history shows the one transaction.
    for asset in ASSETS:
        page = await client.get(
            f"/v1/users/{user_id}/transactions", params={"asset": asset}, headers=api_keys.headers("read")
        )
        assert page.json()["items"][0]["id"] == tx["id"], asset

    before = await snapshot(db, user_id)
    again = await buy(client, api_keys, body, key)
    assert again.status_code == 201, again.text
    assert again.headers.get("idempotent-replayed") == "true"
    assert again.content == response.content
    assert await snapshot(db, user_id) == before

    changed = {**body, "rewards": [{"asset": "LOYALTY", "amount": 11}, {"asset": "DIAMOND", "amount": 2}]}
    problem = assert_problem(await buy(client, api_keys, changed, key), 422, "idempotency_key_reused")
    assert [d["field"] for d in problem["differences"]] == ["rewards"], problem
    assert await snapshot(db, user_id) == before
    await assert_books_balance(db)


async def test_no_rewards_is_the_plain_purchase(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection
) -> None:
    """An empty list of rewards is the default: the same canonical request, so one key serves both spellings."""
    user_id = await funded(client, api_keys, 10)
    key = idem()
    plain = {"user_id": user_id, "asset": "GOLD", "amount": 3}
    response = await buy(client, api_keys, plain, key)
    assert response.status_code == 201, response.text
    assert response.json()["rewards"] == []
    assert len(response.json()["entries"]) == 2
    again = await buy(client, api_keys, {**plain, "rewards": []}, key)
    assert again.status_code == 201 and again.headers.get("idempotent-replayed") == "true", again.text
    assert again.content == response.content
    assert (await user_balances(db, user_id))["GOLD"] == 7


async def test_five_rewards_pass_validation(client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection) -> None:
    """Five rewards are within the bound (six are not: see the 422s below). Only three assets exist, so five
    distinct rewards name three that do not: refused as unknown, not as too many."""
    user_id = await funded(client, api_keys, 10)
    rewards = [{"asset": a, "amount": 1} for a in ("DIAMOND", "LOYALTY", "NOPE_A", "NOPE_B", "NOPE_C")]
    assert_problem(await buy(client, api_keys, purchase_body(user_id, 1, rewards)), 404, "asset_not_found")
    response = await buy(client, api_keys, purchase_body(user_id, 1, rewards[:2]))
    assert response.status_code == 201, response.text
    assert {r["asset"] for r in response.json()["rewards"]} == {"DIAMOND", "LOYALTY"}


# A failure of any leg writes nothing -------------------------------------------------------------------------------


async def test_insufficient_funds_for_the_purchase_pays_no_reward(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection
) -> None:
    user_id = await funded(client, api_keys, 50)
    before = await snapshot(db, user_id)
    key = idem()
    body = purchase_body(user_id, 51, [{"asset": "LOYALTY", "amount": 10}, {"asset": "DIAMOND", "amount": 1}])
    response = await buy(client, api_keys, body, key)
    assert_problem(response, 409, "insufficient_funds")
    assert await snapshot(db, user_id) == before
    assert await stored_keys(db, key) == 1  # the refusal is recorded, and replays
    again = await buy(client, api_keys, body, key)
    assert again.status_code == 409 and again.headers.get("idempotent-replayed") == "true"
    assert await snapshot(db, user_id) == before


async def test_unknown_reward_asset_is_404_and_writes_nothing(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection
) -> None:
    user_id = await funded(client, api_keys, 50)
    before = await snapshot(db, user_id)
    for rewards in (
        [{"asset": "NOPE", "amount": 1}],
        [{"asset": "LOYALTY", "amount": 5}, {"asset": "NOPE", "amount": 1}],
    ):
        problem = assert_problem(
            await buy(client, api_keys, purchase_body(user_id, 10, rewards)), 404, "asset_not_found"
        )
        assert "NOPE" in problem["detail"]
        assert await snapshot(db, user_id) == before


async def test_frozen_user_cannot_buy_with_rewards(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection
) -> None:
    user_id = await funded(client, api_keys, 50)
    body = purchase_body(user_id, 10, [{"asset": "LOYALTY", "amount": 5}])
    async with frozen(client, api_keys, user_id):
        before = await snapshot(db, user_id)
        assert_problem(await buy(client, api_keys, body), 409, "account_frozen")
        assert await snapshot(db, user_id) == before
    response = await buy(client, api_keys, body)
    assert response.status_code == 201, response.text
    assert await user_balances(db, user_id) == {"GOLD": 40, "LOYALTY": 5}


async def batch(client: httpx.AsyncClient, keys: Keys, operations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """An atomic batch with the admin key, which must post every item: the transactions."""
    response = await client.post(
        "/v1/batch",
        content=orjson.dumps({"operations": operations, "atomic": True}),
        headers={**keys.headers("admin"), "Content-Type": "application/json"},
    )
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert {r["status"] for r in results} == {201}, [r for r in results if r["status"] != 201][:3]
    return [r["transaction"] for r in results]


async def test_a_reward_past_the_balance_limit_refuses_the_purchase_too(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection
) -> None:
    """The failing leg is a credit here (the reward would take the user's LOYALTY past 10^18): the purchase's debit
    must not be written without it."""
    user_id = await funded(client, api_keys, 10)
    bonus = {"type": "bonus", "user_id": user_id, "asset": "LOYALTY", "amount": 10**15}
    bonuses = await batch(client, api_keys, [{**bonus, "idempotency_key": idem()} for _ in range(1000)])
    assert (await user_balances(db, user_id))["LOYALTY"] == 10**18
    try:
        before = await snapshot(db, user_id)
        response = await buy(client, api_keys, purchase_body(user_id, 5, [{"asset": "LOYALTY", "amount": 1}]))
        assert_problem(response, 409, "balance_limit_exceeded")
        assert await snapshot(db, user_id) == before
    finally:
        # Clawed back, so that the session's LOYALTY bonus pool has all its supply again for the other tests.
        clawbacks = [
            {"type": "refund", "transaction_id": tx["id"], "reason": "test over", "idempotency_key": idem()}
            for tx in bonuses
        ]
        await batch(client, api_keys, clawbacks)
    assert (await user_balances(db, user_id))["LOYALTY"] == 0


# Validation ------------------------------------------------------------------------------------------------------


INVALID_REWARDS: dict[str, tuple[Any, str | None]] = {
    "the same asset twice": ([{"asset": "LOYALTY", "amount": 1}, {"asset": "LOYALTY", "amount": 2}], None),
    "in the purchase's asset": ([{"asset": "GOLD", "amount": 1}], None),
    "six rewards": ([{"asset": f"R{n}X", "amount": 1} for n in range(6)], "rewards"),
    "amount 0": ([{"asset": "LOYALTY", "amount": 0}], "amount"),
    "negative amount": ([{"asset": "LOYALTY", "amount": -1}], "amount"),
    "float amount": ([{"asset": "LOYALTY", "amount": 1.0}], "amount"),
    "string amount": ([{"asset": "LOYALTY", "amount": "1"}], "amount"),
    "amount above 10^15": ([{"asset": "LOYALTY", "amount": 10**15 + 1}], "amount"),
    "amount missing": ([{"asset": "LOYALTY"}], "amount"),
    "malformed asset": ([{"asset": "loyalty", "amount": 1}], "asset"),
    "unknown field": ([{"asset": "LOYALTY", "amount": 1, "account": "user:x"}], "account"),
    "not a list": ({"asset": "LOYALTY", "amount": 1}, "rewards"),
    "null": (None, "rewards"),
}


@pytest.mark.parametrize("case", list(INVALID_REWARDS))
async def test_invalid_rewards_are_422_and_store_nothing(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection, case: str
) -> None:
    user_id = await funded(client, api_keys, 10)
    rewards, field = INVALID_REWARDS[case]
    before = await snapshot(db, user_id)
    key = idem()
    problem = assert_validation_error(await buy(client, api_keys, purchase_body(user_id, 1, rewards), key), field)
    if field is None:
        assert "rewards" in problem["detail"] + repr(problem["errors"]), problem
    assert await snapshot(db, user_id) == before
    assert await stored_keys(db, key) == 0
    corrected = await buy(client, api_keys, purchase_body(user_id, 1, [{"asset": "LOYALTY", "amount": 1}]), key)
    assert corrected.status_code == 201, corrected.text
    assert "idempotent-replayed" not in corrected.headers


@pytest.mark.parametrize("path", ["/v1/topups", "/v1/bonuses"])
async def test_rewards_are_an_unknown_field_on_topups_and_bonuses(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection, path: str
) -> None:
    user_id = await funded(client, api_keys, 0)
    before = await snapshot(db, user_id)
    key = idem()
    response = await post(client, api_keys, path, purchase_body(user_id, 5, [{"asset": "LOYALTY", "amount": 1}]), key)
    assert_validation_error(response, "rewards")
    assert await snapshot(db, user_id) == before
    assert await stored_keys(db, key) == 0


# Batches -----------------------------------------------------------------------------------------------------------


def purchase_op(user_id: str, amount: int, rewards: list[dict[str, Any]], key: str) -> dict[str, Any]:
    return {**purchase_body(user_id, amount, rewards), "type": "purchase", "idempotency_key": key}


async def test_batch_purchase_items_carry_rewards(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection
) -> None:
    user_id = await funded(client, api_keys, 100)
    keys = [idem(), idem(), idem()]
    operations = [
        purchase_op(user_id, 30, [{"asset": "LOYALTY", "amount": 3}], keys[0]),
        purchase_op(user_id, 80, [{"asset": "DIAMOND", "amount": 8}], keys[1]),  # 70 left: refused, no reward
        purchase_op(user_id, 70, [{"asset": "DIAMOND", "amount": 7}, {"asset": "LOYALTY", "amount": 1}], keys[2]),
    ]
    response = await client.post("/v1/batch", json={"operations": operations}, headers=api_keys.headers("purchase"))
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["status"] for r in results] == [201, 409, 201], results
    assert_problem_document(results[1]["problem"], 409, "insufficient_funds")
    for result in (results[0], results[2]):
        assert_transaction(result["transaction"])
        fetched = await client.get(f"/v1/transactions/{result['transaction']['id']}", headers=api_keys.headers("read"))
        assert fetched.json() == result["transaction"]
    assert {r["asset"]: r["amount"] for r in results[2]["transaction"]["rewards"]} == {"DIAMOND": 7, "LOYALTY": 1}
    assert await user_balances(db, user_id) == {"GOLD": 0, "LOYALTY": 4, "DIAMOND": 7}

    # Per item replay, in a batch and as the single POST.
    before = await snapshot(db, user_id)
    again = await client.post("/v1/batch", json={"operations": operations}, headers=api_keys.headers("purchase"))
    assert [r.get("replayed") for r in again.json()["results"]] == [True, True, True]
    assert [r.get("transaction") for r in again.json()["results"]] == [r.get("transaction") for r in results]
    single = await buy(
        client, api_keys, {k: v for k, v in operations[0].items() if k not in ("type", "idempotency_key")}, keys[0]
    )
    assert single.status_code == 201 and single.headers.get("idempotent-replayed") == "true"
    assert single.json() == results[0]["transaction"]
    assert await snapshot(db, user_id) == before


@pytest.mark.parametrize("kind", ["topup", "bonus"])
async def test_rewards_on_a_batch_topup_or_bonus_item_is_422_naming_the_item(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection, kind: str
) -> None:
    user_id = await funded(client, api_keys, 100)
    before = await snapshot(db, user_id)
    keys = [idem(), idem()]
    operations = [
        purchase_op(user_id, 10, [{"asset": "LOYALTY", "amount": 1}], keys[0]),
        {**purchase_op(user_id, 10, [{"asset": "LOYALTY", "amount": 1}], keys[1]), "type": kind},
    ]
    response = await client.post("/v1/batch", json={"operations": operations}, headers=api_keys.headers("admin"))
    problem = assert_validation_error(response)
    assert {"operations", "1"} <= error_locations(problem), problem
    assert "0" not in error_locations(problem), problem
    assert "rewards" in repr(problem["errors"]), problem
    assert await snapshot(db, user_id) == before
    assert [await stored_keys(db, key) for key in keys] == [0, 0]


# Concurrency -------------------------------------------------------------------------------------------------------


async def test_parallel_purchases_with_rewards_never_overdraw_and_commit_whole(
    http: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection
) -> None:
    """40 purchases of 10 with two rewards each, against a balance of 100, all at once through two workers: ten
    commit, each with all six legs, and the thirty refused leave no reward behind."""
    user_id = await create_user(http, api_keys, "rwc")
    await move(http, api_keys, "topup", user_id, 100)
    systems = await system_books(db)
    body = purchase_body(user_id, 10, [{"asset": "LOYALTY", "amount": 3}, {"asset": "DIAMOND", "amount": 1}])
    responses = await asyncio.gather(*(buy(http, api_keys, body) for _ in range(40)))

    outcomes = Counter((r.status_code, r.json().get("code")) for r in responses)
    assert outcomes == {(201, None): 10, (409, "insufficient_funds"): 30}, [r.text for r in responses]
    created = [r.json() for r in responses if r.status_code == 201]
    assert sorted(tx["balance_after"] for tx in created) == list(range(0, 100, 10))
    assert sorted(r["balance_after"] for tx in created for r in tx["rewards"] if r["asset"] == "LOYALTY") == list(
        range(3, 31, 3)
    )
    assert await user_balances(db, user_id) == {"GOLD": 0, "LOYALTY": 30, "DIAMOND": 10}
    legs = await db.fetch(
        """SELECT t.id, count(*) AS legs, count(DISTINCT a.asset) AS assets
             FROM transactions t JOIN entries e ON e.transaction_id = t.id JOIN accounts a ON a.id = e.account_id
            WHERE t.user_id = $1 AND t.type = 'purchase' GROUP BY t.id""",
        user_id,
    )
    assert sorted((row["legs"], row["assets"]) for row in legs) == [(6, 3)] * 10
    moved = {k: v - systems[k] for k, v in (await system_books(db)).items() if v != systems[k]}
    assert moved == {
        ("system:revenue", "GOLD"): 100,
        ("system:bonus_pool", "LOYALTY"): -30,
        ("system:bonus_pool", "DIAMOND"): -10,
    }
    assert await stored_balance(db, f"user:{user_id}", "LOYALTY") == 30
    await assert_books_balance(db)
