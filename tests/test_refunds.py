"""Refunds and reversals (spec/API.md, v1.1 "Refunds and reversals"): POST /v1/transactions/{id}/refunds and
GET .../refunds. In accounting terms: a refund is a new transaction, linked to its original, whose entries are the
original's legs reversed in proportion to the amount refunded; the refunds of a transaction never add up to more
than it, whatever the concurrency; a reversal that takes credits back from the user needs them available, and is
refused while the user is frozen. "Nothing was written" is read in the database through the `db` fixture."""

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
    frozen,
    idem,
    ledger_counts,
    move,
    post,
    refund,
    stored_balance,
    stored_keys,
    user_balances,
)


async def funded(client: httpx.AsyncClient, keys: Keys, gold: int) -> str:
    user_id = await create_user(client, keys, "rf")
    if gold:
        await move(client, keys, "topup", user_id, gold, "GOLD")
    return user_id


async def purchase(
    client: httpx.AsyncClient, keys: Keys, user_id: str, amount: int, asset: str = "GOLD", **extra: Any
) -> dict[str, Any]:
    body = {"user_id": user_id, "asset": asset, "amount": amount, **extra}
    response = await post(client, keys, "/v1/purchases", body, idem(), scope="purchase")
    assert response.status_code == 201, response.text
    tx: dict[str, Any] = response.json()
    return tx


async def refunds_of(client: httpx.AsyncClient, keys: Keys, transaction_id: str) -> dict[str, Any]:
    response = await client.get(f"/v1/transactions/{transaction_id}/refunds", headers=keys.headers("read"))
    assert response.status_code == 200, response.text
    document: dict[str, Any] = response.json()
    return document


async def get_bytes(client: httpx.AsyncClient, keys: Keys, transaction_id: str) -> bytes:
    response = await client.get(f"/v1/transactions/{transaction_id}", headers=keys.headers("read"))
    assert response.status_code == 200, response.text
    return response.content


def by_asset(entries: list[dict[str, Any]]) -> dict[str, int]:
    totals: dict[str, int] = {}
    for e in entries:
        totals[e["asset"]] = totals.get(e["asset"], 0) + e["amount"]
    return totals


def reversed_legs(original: dict[str, Any]) -> list[dict[str, Any]]:
    return [{**e, "amount": -e["amount"]} for e in original["entries"]]


# A refund of a purchase --------------------------------------------------------------------------------------------


async def test_refund_of_a_purchase_reverses_its_legs_and_credits_the_user(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection
) -> None:
    user_id = await funded(client, api_keys, 1000)
    original = await purchase(client, api_keys, user_id, 300, description="Iron sword", metadata={"sku": 7})
    original_bytes = await get_bytes(client, api_keys, original["id"])
    revenue_before = await stored_balance(db, "system:revenue")

    key = idem()
    response = await refund(client, api_keys, original["id"], {"reason": "Item never delivered"}, key)
    assert response.status_code == 201, response.text
    assert "idempotent-replayed" not in response.headers
    tx = response.json()
    assert_transaction(tx)
    assert tx["type"] == "refund"
    assert tx["refund_of"] == original["id"]
    assert tx["id"] != original["id"]
    assert (tx["user_id"], tx["asset"], tx["amount"]) == (user_id, "GOLD", 300)
    assert tx["entries"] == reversed_legs(original)
    assert tx["entries"] == [
        {"account": f"user:{user_id}", "asset": "GOLD", "amount": 300},
        {"account": "system:revenue", "asset": "GOLD", "amount": -300},
    ]
    assert tx["balance_after"] == 1000
    assert tx["description"] == "Item never delivered"
    assert tx["rewards"] == [] and tx["hold_id"] is None
    assert (await user_balances(db, user_id))["GOLD"] == 1000
    assert await stored_balance(db, "system:revenue") == revenue_before - 300

    assert await get_bytes(client, api_keys, tx["id"]) == response.content
    again = await refund(client, api_keys, original["id"], {"reason": "Item never delivered"}, key)
    assert again.status_code == 201, again.text
    assert again.headers.get("idempotent-replayed") == "true"
    assert again.content == response.content
    assert (await user_balances(db, user_id))["GOLD"] == 1000  # the replay wrote nothing

    # The original is as it was: refund_of and hold_id are set at creation and never change.
    assert await get_bytes(client, api_keys, original["id"]) == original_bytes
    await assert_books_balance(db)


async def test_partial_refunds_never_add_up_to_more_than_the_original(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection
) -> None:
    user_id = await funded(client, api_keys, 100)
    original = await purchase(client, api_keys, user_id, 100)
    assert await refunds_of(client, api_keys, original["id"]) == {
        "transaction_id": original["id"],
        "amount": 100,
        "refunded_amount": 0,
        "refundable_amount": 100,
        "items": [],
    }

    first = await refund(client, api_keys, original["id"], {"amount": 30, "reason": "Partly broken"})
    assert first.status_code == 201, first.text
    assert first.json()["amount"] == 30 and first.json()["balance_after"] == 30
    assert first.json()["entries"] == [
        {"account": f"user:{user_id}", "asset": "GOLD", "amount": 30},
        {"account": "system:revenue", "asset": "GOLD", "amount": -30},
    ]

    # More than is left: refused, nothing written, the refusal recorded under its key.
    before = await ledger_counts(db, user_id)
    key = idem()
    refused = await refund(client, api_keys, original["id"], {"amount": 71, "reason": "Too much"}, key)
    problem = assert_problem(refused, 409, "refund_exceeds_original")
    assert "70" in problem["detail"], problem
    assert await ledger_counts(db, user_id) == before
    replayed = await refund(client, api_keys, original["id"], {"amount": 71, "reason": "Too much"}, key)
    assert replayed.status_code == 409 and replayed.headers.get("idempotent-replayed") == "true"
    assert replayed.content == refused.content

    # No amount: what is left.
    rest = await refund(client, api_keys, original["id"], {"reason": "The rest"})
    assert rest.status_code == 201, rest.text
    assert rest.json()["amount"] == 70 and rest.json()["balance_after"] == 100

    before = await ledger_counts(db, user_id)
    for body in ({"amount": 1, "reason": "One more"}, {"reason": "Again the rest"}):
        assert_problem(await refund(client, api_keys, original["id"], body), 409, "refund_exceeds_original")
    assert await ledger_counts(db, user_id) == before

    listed = await refunds_of(client, api_keys, original["id"])
    assert listed == {
        "transaction_id": original["id"],
        "amount": 100,
        "refunded_amount": 100,
        "refundable_amount": 0,
        "items": [first.json(), rest.json()],  # oldest first, each as its POST returned it
    }
    for item in listed["items"]:
        assert item["refund_of"] == original["id"]  # linked both ways
        assert orjson.loads(await get_bytes(client, api_keys, item["id"])) == item
    assert (await user_balances(db, user_id))["GOLD"] == 100
    written = await db.fetchval(
        "SELECT sum(amount) FROM transactions WHERE refund_of = $1", int(original["id"][3:], 16)
    )
    assert written == 100


async def test_a_refund_is_not_refundable(client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection) -> None:
    user_id = await funded(client, api_keys, 50)
    original = await purchase(client, api_keys, user_id, 50)
    response = await refund(client, api_keys, original["id"], {"amount": 20, "reason": "Late"})
    assert response.status_code == 201, response.text
    refund_id = response.json()["id"]
    before = await ledger_counts(db, user_id)
    for scope in ("purchase", "admin"):
        refused = await refund(client, api_keys, refund_id, {"reason": "Undo the refund"}, scope=scope)
        assert_problem(refused, 409, "not_refundable")
        refused = await refund(client, api_keys, refund_id, {"amount": 1, "reason": "Undo part"}, scope=scope)
        assert_problem(refused, 409, "not_refundable")
    assert await ledger_counts(db, user_id) == before
    assert await refunds_of(client, api_keys, refund_id) == {
        "transaction_id": refund_id,
        "amount": 20,
        "refunded_amount": 0,
        "refundable_amount": 0,
        "items": [],
    }


@pytest.mark.parametrize(
    "transaction_id",
    ["tx_7ffffffffffffffe", "tx_0000000000000000", "tx_ffffffffffffffff", "tx_12", "nope", "hold_0000000000000001"],
)
async def test_unknown_or_malformed_transaction_is_404(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection, transaction_id: str
) -> None:
    user_id = await funded(client, api_keys, 0)
    before = await ledger_counts(db, user_id)
    response = await refund(client, api_keys, transaction_id, {"reason": "Why not"})
    assert_problem(response, 404, "transaction_not_found")
    response = await client.get(f"/v1/transactions/{transaction_id}/refunds", headers=api_keys.headers("read"))
    assert_problem(response, 404, "transaction_not_found")
    assert await ledger_counts(db, user_id) == before


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "reason"),
        ({"amount": 5}, "reason"),
        ({"reason": ""}, "reason"),
        ({"reason": "x" * 501}, "reason"),
        ({"reason": None}, "reason"),
        ({"reason": "ok", "amount": 0}, "amount"),
        ({"reason": "ok", "amount": -5}, "amount"),
        ({"reason": "ok", "amount": 5.0}, "amount"),
        ({"reason": "ok", "amount": "5"}, "amount"),
        ({"reason": "ok", "amount": 10**15 + 1}, "amount"),
        ({"reason": "ok", "description": "extra"}, "description"),
    ],
)
async def test_invalid_refund_is_422_and_stores_nothing(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection, body: dict[str, Any], field: str
) -> None:
    user_id = await funded(client, api_keys, 10)
    original = await purchase(client, api_keys, user_id, 10)
    before = await ledger_counts(db, user_id)
    key = idem()
    assert_validation_error(await refund(client, api_keys, original["id"], body, key), field)
    assert await ledger_counts(db, user_id) == before
    assert await stored_keys(db, key) == 0
    # The same key then takes the corrected request; a reason of 500 characters is within the bound.
    corrected = await refund(client, api_keys, original["id"], {"amount": 5, "reason": "y" * 500}, key)
    assert corrected.status_code == 201, corrected.text
    assert "idempotent-replayed" not in corrected.headers
    assert corrected.json()["description"] == "y" * 500


# Reversals of top-ups and bonuses; scopes --------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "system"), [("topup", "system:treasury"), ("bonus", "system:bonus_pool")])
async def test_reversal_of_a_topup_or_bonus_needs_admin(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection, kind: str, system: str
) -> None:
    user_id = await funded(client, api_keys, 0)
    original = await move(client, api_keys, kind, user_id, 80, "DIAMOND")
    before = await ledger_counts(db, user_id)
    system_before = await stored_balance(db, system, "DIAMOND")

    forbidden = await refund(client, api_keys, original["id"], {"amount": 30, "reason": "Chargeback"}, scope="purchase")
    assert_problem(forbidden, 403, "forbidden")
    for scope in ("read", "topup", "bonus"):
        key = idem()
        response = await refund(client, api_keys, original["id"], {"reason": "Chargeback"}, key, scope=scope)
        assert_problem(response, 403, "forbidden")
        assert await stored_keys(db, key) == 0
    assert await ledger_counts(db, user_id) == before

    response = await refund(client, api_keys, original["id"], {"amount": 30, "reason": "Chargeback"}, scope="admin")
    assert response.status_code == 201, response.text
    tx = response.json()
    assert_transaction(tx)
    assert (tx["type"], tx["refund_of"], tx["amount"], tx["balance_after"]) == ("refund", original["id"], 30, 50)
    assert tx["entries"] == [
        {"account": f"user:{user_id}", "asset": "DIAMOND", "amount": -30},
        {"account": system, "asset": "DIAMOND", "amount": 30},
    ]
    assert (await user_balances(db, user_id))["DIAMOND"] == 50
    assert await stored_balance(db, system, "DIAMOND") == system_before + 30
    assert (await refunds_of(client, api_keys, original["id"]))["refundable_amount"] == 50
    await assert_books_balance(db)


async def test_purchase_refunds_need_a_purchase_or_admin_key(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection
) -> None:
    user_id = await funded(client, api_keys, 10)
    original = await purchase(client, api_keys, user_id, 10)
    before = await ledger_counts(db, user_id)
    for scope in ("read", "topup", "bonus"):
        assert_problem(await refund(client, api_keys, original["id"], {"reason": "r"}, scope=scope), 403, "forbidden")
    response = await client.post(f"/v1/transactions/{original['id']}/refunds", json={"reason": "r"})
    assert_problem(response, 401, "unauthenticated")
    response = await client.post(
        f"/v1/transactions/{original['id']}/refunds", json={"reason": "r"}, headers=api_keys.headers("purchase")
    )
    assert_problem(response, 400, "idempotency_key_missing")
    assert await ledger_counts(db, user_id) == before
    response = await refund(client, api_keys, original["id"], {"amount": 4, "reason": "r"}, scope="admin")
    assert response.status_code == 201, response.text
    response = await refund(client, api_keys, original["id"], {"reason": "r"}, scope="purchase")
    assert response.status_code == 201, response.text
    assert response.json()["amount"] == 6


async def test_a_reversal_needs_the_users_available_funds(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection
) -> None:
    user_id = await funded(client, api_keys, 0)
    topup = await move(client, api_keys, "topup", user_id, 100)
    await purchase(client, api_keys, user_id, 80)  # most of it is spent

    before = await ledger_counts(db, user_id)
    key = idem()
    refused = await refund(client, api_keys, topup["id"], {"reason": "Chargeback"}, key, scope="admin")
    assert_problem(refused, 409, "insufficient_funds")
    assert await ledger_counts(db, user_id) == before
    assert (await user_balances(db, user_id))["GOLD"] == 20
    assert (await refunds_of(client, api_keys, topup["id"]))["refunded_amount"] == 0

    # Held credits are not available either.
    hold = await post(
        client, api_keys, "/v1/holds", {"user_id": user_id, "asset": "GOLD", "amount": 15}, idem(), scope="purchase"
    )
    assert hold.status_code == 201, hold.text
    refused = await refund(client, api_keys, topup["id"], {"amount": 6, "reason": "Chargeback"}, scope="admin")
    assert_problem(refused, 409, "insufficient_funds")
    assert await ledger_counts(db, user_id) == before

    partial = await refund(client, api_keys, topup["id"], {"amount": 5, "reason": "Chargeback"}, scope="admin")
    assert partial.status_code == 201, partial.text
    assert partial.json()["balance_after"] == 15
    balance = await client.get(f"/v1/users/{user_id}/balances/GOLD", headers=api_keys.headers("read"))
    assert balance.json() == {"user_id": user_id, "asset": "GOLD", "balance": 15, "held": 15, "available": 0}
    assert await db.fetchval("SELECT min(balance) FROM accounts WHERE user_id = $1", user_id) >= 0


# Rewards, frozen users, holds --------------------------------------------------------------------------------------


async def test_refunds_reverse_rewards_in_proportion_with_cumulative_rounding(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection
) -> None:
    user_id = await funded(client, api_keys, 3)
    pool = {asset: await stored_balance(db, "system:bonus_pool", asset) for asset in ("LOYALTY", "DIAMOND")}
    original = await purchase(
        client,
        api_keys,
        user_id,
        3,
        rewards=[{"asset": "LOYALTY", "amount": 10}, {"asset": "DIAMOND", "amount": 1}],
    )
    assert await user_balances(db, user_id) == {"GOLD": 0, "LOYALTY": 10, "DIAMOND": 1}

    # Three refunds of 1: a third of 10 is 3.33, so 3, 3 and 4 (what is reversed after each is truncated, never
    # the part); a third of 1 rounds to nothing until the last.
    expected = [
        ({"LOYALTY": -3}, {"GOLD": 1, "LOYALTY": 7, "DIAMOND": 1}),
        ({"LOYALTY": -3}, {"GOLD": 2, "LOYALTY": 4, "DIAMOND": 1}),
        ({"LOYALTY": -4, "DIAMOND": -1}, {"GOLD": 3, "LOYALTY": 0, "DIAMOND": 0}),
    ]
    for n, (rewards, balances) in enumerate(expected):
        response = await refund(client, api_keys, original["id"], {"amount": 1, "reason": f"part {n + 1}"})
        assert response.status_code == 201, response.text
        tx = response.json()
        assert_transaction(tx)  # the entries of each asset sum to 0
        assert tx["amount"] == 1
        assert {r["asset"]: r["amount"] for r in tx["rewards"]} == rewards
        assert {r["asset"]: r["balance_after"] for r in tx["rewards"]} == {a: balances[a] for a in rewards}
        user_legs = {e["asset"]: e["amount"] for e in tx["entries"] if e["account"] == f"user:{user_id}"}
        assert user_legs == {"GOLD": 1, **rewards}
        pool_legs = {e["asset"]: e["amount"] for e in tx["entries"] if e["account"] == "system:bonus_pool"}
        assert pool_legs == {asset: -amount for asset, amount in rewards.items()}
        assert await user_balances(db, user_id) == balances
        assert await get_bytes(client, api_keys, tx["id"]) == response.content

    assert pool == {asset: await stored_balance(db, "system:bonus_pool", asset) for asset in ("LOYALTY", "DIAMOND")}
    listed = await refunds_of(client, api_keys, original["id"])
    assert (listed["refunded_amount"], listed["refundable_amount"]) == (3, 0)
    assert sum(r["amount"] for item in listed["items"] for r in item["rewards"] if r["asset"] == "LOYALTY") == -10
    await assert_books_balance(db)


async def test_refund_of_a_purchase_whose_rewards_were_spent_is_insufficient_funds(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection
) -> None:
    """Refunding a purchase takes its rewards back: that needs them available, and writes nothing otherwise."""
    user_id = await funded(client, api_keys, 100)
    original = await purchase(client, api_keys, user_id, 100, rewards=[{"asset": "LOYALTY", "amount": 50}])
    await purchase(client, api_keys, user_id, 40, "LOYALTY")
    before = await ledger_counts(db, user_id)
    balances = await user_balances(db, user_id)
    assert_problem(await refund(client, api_keys, original["id"], {"reason": "r"}), 409, "insufficient_funds")
    assert await ledger_counts(db, user_id) == before
    assert await user_balances(db, user_id) == balances
    # A part whose share of the reward is still there is refunded.
    response = await refund(client, api_keys, original["id"], {"amount": 20, "reason": "r"})
    assert response.status_code == 201, response.text
    assert response.json()["rewards"] == [{"asset": "LOYALTY", "amount": -10, "balance_after": 0}]
    assert await user_balances(db, user_id) == {"GOLD": 20, "LOYALTY": 0}


async def test_frozen_user_gets_refunds_of_purchases_but_no_reversal(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection
) -> None:
    user_id = await funded(client, api_keys, 0)
    topup = await move(client, api_keys, "topup", user_id, 100)
    original = await purchase(client, api_keys, user_id, 50, rewards=[{"asset": "LOYALTY", "amount": 10}])
    bonus = await move(client, api_keys, "bonus", user_id, 5, "DIAMOND")
    async with frozen(client, api_keys, user_id, "Chargeback under review"):
        assert_problem(
            await post(client, api_keys, "/v1/purchases", {"user_id": user_id, "asset": "GOLD", "amount": 1}, idem()),
            409,
            "account_frozen",
        )
        response = await refund(client, api_keys, original["id"], {"amount": 20, "reason": "Goodwill"})
        assert response.status_code == 201, response.text
        assert response.json()["balance_after"] == 70
        assert response.json()["rewards"] == [{"asset": "LOYALTY", "amount": -4, "balance_after": 6}]

        before = await ledger_counts(db, user_id)
        for original_id in (topup["id"], bonus["id"]):
            refused = await refund(client, api_keys, original_id, {"amount": 1, "reason": "Chargeback"}, scope="admin")
            assert_problem(refused, 409, "account_frozen")
        assert await ledger_counts(db, user_id) == before
    assert await user_balances(db, user_id) == {"GOLD": 70, "LOYALTY": 6, "DIAMOND": 5}
    # Unfrozen, the chargeback applies.
    response = await refund(client, api_keys, topup["id"], {"amount": 1, "reason": "Chargeback"}, scope="admin")
    assert response.status_code == 201, response.text


async def test_refund_of_a_captured_hold(client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection) -> None:
    user_id = await funded(client, api_keys, 100)
    hold = await post(
        client, api_keys, "/v1/holds", {"user_id": user_id, "asset": "GOLD", "amount": 60}, idem(), scope="purchase"
    )
    assert hold.status_code == 201, hold.text
    capture = await post(
        client, api_keys, f"/v1/holds/{hold.json()['id']}/capture", {"amount": 40}, idem(), scope="purchase"
    )
    assert capture.status_code == 201, capture.text
    captured = capture.json()
    assert (captured["type"], captured["hold_id"], captured["amount"]) == ("purchase", hold.json()["id"], 40)
    assert (await user_balances(db, user_id))["GOLD"] == 60

    response = await refund(client, api_keys, captured["id"], {"reason": "Tournament cancelled"})
    assert response.status_code == 201, response.text
    tx = response.json()
    assert (tx["refund_of"], tx["amount"], tx["balance_after"], tx["hold_id"]) == (captured["id"], 40, 100, None)
    assert tx["entries"] == reversed_legs(captured)
    balance = await client.get(f"/v1/users/{user_id}/balances/GOLD", headers=api_keys.headers("read"))
    assert balance.json() == {"user_id": user_id, "asset": "GOLD", "balance": 100, "held": 0, "available": 100}
    assert (await refunds_of(client, api_keys, captured["id"]))["items"] == [tx]


# Batches -----------------------------------------------------------------------------------------------------------


def refund_op(transaction_id: str, key: str, amount: int | None = None, reason: str = "batch") -> dict[str, Any]:
    op: dict[str, Any] = {"type": "refund", "transaction_id": transaction_id, "reason": reason, "idempotency_key": key}
    if amount is not None:
        op["amount"] = amount
    return op


async def send_batch(
    client: httpx.AsyncClient, keys: Keys, operations: list[dict[str, Any]], scope: str = "purchase", **extra: Any
) -> list[dict[str, Any]]:
    response = await client.post("/v1/batch", json={"operations": operations, **extra}, headers=keys.headers(scope))
    assert response.status_code == 200, response.text
    results: list[dict[str, Any]] = response.json()["results"]
    assert len(results) == len(operations)
    return results


async def test_batch_refund_items_post_and_replay_per_item(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection
) -> None:
    user_id = await funded(client, api_keys, 100)
    original = await purchase(client, api_keys, user_id, 100)
    topup = await move(client, api_keys, "topup", user_id, 10)
    keys = [idem() for _ in range(4)]
    operations = [
        refund_op(original["id"], keys[0], 10),
        refund_op(original["id"], keys[1]),  # the rest: 90
        refund_op(original["id"], keys[2], 1),  # nothing is left
        refund_op(topup["id"], keys[3], 1),  # a chargeback, with a purchase key
    ]
    results = await send_batch(client, api_keys, operations)
    assert [r["status"] for r in results] == [201, 201, 409, 403], results
    assert [r["transaction"]["amount"] for r in results[:2]] == [10, 90]
    assert all(r["transaction"]["refund_of"] == original["id"] for r in results[:2])
    assert [r["transaction"]["balance_after"] for r in results[:2]] == [20, 110]
    assert_problem_document(results[2]["problem"], 409, "refund_exceeds_original")
    assert_problem_document(results[3]["problem"], 403, "forbidden")
    for result in results[:2]:
        assert orjson.loads(await get_bytes(client, api_keys, result["transaction"]["id"])) == result["transaction"]
    assert (await user_balances(db, user_id))["GOLD"] == 110

    # The same batch again: every item replays its first outcome, nothing is written.
    before = await ledger_counts(db, user_id)
    again = await send_batch(client, api_keys, operations)
    assert [r.get("replayed") for r in again] == [True] * 4
    assert [r.get("transaction") for r in again] == [r.get("transaction") for r in results]
    assert [r.get("problem", {}).get("code") for r in again] == [None, None, "refund_exceeds_original", "forbidden"]
    assert await ledger_counts(db, user_id) == before
    # An item's key is the single POST's key: the single request replays it.
    single = await refund(client, api_keys, original["id"], {"amount": 10, "reason": "batch"}, keys[0])
    assert single.status_code == 201 and single.headers.get("idempotent-replayed") == "true"
    assert single.json() == results[0]["transaction"]


async def test_atomic_batch_of_refunds_writes_all_or_nothing(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection
) -> None:
    user_id = await funded(client, api_keys, 50)
    original = await purchase(client, api_keys, user_id, 50)
    before = await ledger_counts(db, user_id)
    operations = [refund_op(original["id"], idem(), 30), refund_op(original["id"], idem(), 30)]
    results = await send_batch(client, api_keys, operations, atomic=True)
    assert [r["status"] for r in results] == [424, 409], results
    assert_problem_document(results[0]["problem"], 424, "batch_aborted")
    assert_problem_document(results[1]["problem"], 409, "refund_exceeds_original")
    assert await ledger_counts(db, user_id) == before
    assert (await refunds_of(client, api_keys, original["id"]))["refunded_amount"] == 0
    # Nothing was recorded under the keys either: the first item posts now.
    results = await send_batch(client, api_keys, operations[:1], atomic=True)
    assert results[0]["status"] == 201 and "replayed" not in results[0], results


async def test_malformed_batch_refund_item_is_422_naming_the_item(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection
) -> None:
    user_id = await funded(client, api_keys, 10)
    original = await purchase(client, api_keys, user_id, 10)
    before = await ledger_counts(db, user_id)
    for bad, field in (
        ({"transaction_id": "tx_nope"}, "transaction_id"),
        ({"reason": ""}, "reason"),
        ({"amount": 0}, "amount"),
        ({"user_id": user_id}, "user_id"),
    ):
        operations = [refund_op(original["id"], idem(), 1), {**refund_op(original["id"], idem(), 1), **bad}]
        response = await client.post("/v1/batch", json={"operations": operations}, headers=api_keys.headers())
        problem = assert_validation_error(response, field)
        assert ["operations", 1, field] in [e["loc"] for e in problem["errors"]], problem
    assert await ledger_counts(db, user_id) == before


async def test_a_refund_locks_the_users_account_before_its_originals_refunds(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection, database_url: str
) -> None:
    """Lock order: every posting takes the user's accounts first (a batch, and so a group of coalesced requests,
    locks all of its items' user accounts before it runs them), so a refund must not hold its original's counter
    of refunds while it waits for the user's account: that is half of a deadlock with a group that holds the
    account and comes to the same refund. Here the account is held, and the counter must stay free meanwhile."""
    user_id = await funded(client, api_keys, 100)
    original = await purchase(client, api_keys, user_id, 100)
    first = await refund(client, api_keys, original["id"], {"amount": 10, "reason": "first"})
    assert first.status_code == 201, first.text  # its counter of refunds exists from now on
    internal_id = int(original["id"][3:], 16)

    holder = await asyncpg.connect(database_url)
    prober = await asyncpg.connect(database_url)
    try:
        async with holder.transaction():
            await holder.execute(
                "SELECT 1 FROM accounts WHERE user_id = $1 AND asset = 'GOLD' FOR NO KEY UPDATE", user_id
            )
            waiting = asyncio.create_task(refund(client, api_keys, original["id"], {"amount": 5, "reason": "second"}))
            for _ in range(100):  # until the refund waits for the account's lock
                blocked = await prober.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND wait_event_type = 'Lock' AND query LIKE '%wallet_request%'"
                )
                if blocked:
                    break
                await asyncio.sleep(0.01)
            assert blocked == 1
            async with prober.transaction():
                free = await prober.fetchval(
                    "SELECT amount FROM refunded WHERE transaction_id = $1 FOR UPDATE SKIP LOCKED", internal_id
                )
            assert free == 10, "the waiting refund holds the original's counter of refunds"
        response = await waiting
        assert response.status_code == 201, response.text
        assert response.json()["balance_after"] == 15
    finally:
        await holder.close()
        await prober.close()


# Concurrency -------------------------------------------------------------------------------------------------------


async def test_parallel_partial_refunds_never_exceed_the_original(
    http: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection
) -> None:
    """20 refunds of 7 of one purchase of 100, all at once through two workers: 14 fit, 6 do not."""
    user_id = await create_user(http, api_keys, "rfc")
    await move(http, api_keys, "topup", user_id, 150)
    original = await purchase(http, api_keys, user_id, 100)

    responses = await asyncio.gather(
        *(refund(http, api_keys, original["id"], {"amount": 7, "reason": f"parallel {n}"}) for n in range(20))
    )
    outcomes = Counter((r.status_code, r.json().get("code")) for r in responses)
    assert outcomes == {(201, None): 14, (409, "refund_exceeds_original"): 6}, [r.text for r in responses]
    # They applied one after another: each saw the balance the previous one left.
    created = [r.json() for r in responses if r.status_code == 201]
    assert sorted(tx["balance_after"] for tx in created) == [50 + 7 * n for n in range(1, 15)]

    listed = await refunds_of(http, api_keys, original["id"])
    assert (listed["refunded_amount"], listed["refundable_amount"]) == (98, 2)
    assert sorted(item["id"] for item in listed["items"]) == sorted(tx["id"] for tx in created)
    assert [item["id"] for item in listed["items"]] == sorted(item["id"] for item in listed["items"])
    assert (await user_balances(db, user_id))["GOLD"] == 148
    row = await db.fetchrow(
        "SELECT count(*) AS n, sum(amount) AS total FROM transactions WHERE refund_of = $1",
        int(original["id"][3:], 16),
    )
    assert (row["n"], row["total"]) == (14, 98)
    await assert_books_balance(db)


async def test_parallel_refunds_of_the_rest_apply_once(
    http: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection
) -> None:
    user_id = await create_user(http, api_keys, "rfc")
    await move(http, api_keys, "topup", user_id, 100)
    original = await purchase(http, api_keys, user_id, 100)
    first = await refund(http, api_keys, original["id"], {"amount": 25, "reason": "first part"})
    assert first.status_code == 201, first.text

    responses = await asyncio.gather(
        *(refund(http, api_keys, original["id"], {"reason": f"the rest {n}"}) for n in range(20))
    )
    outcomes = Counter((r.status_code, r.json().get("code")) for r in responses)
    assert outcomes == {(201, None): 1, (409, "refund_exceeds_original"): 19}, [r.text for r in responses]
    (winner,) = [r.json() for r in responses if r.status_code == 201]
    assert (winner["amount"], winner["balance_after"]) == (75, 100)
    assert (await user_balances(db, user_id))["GOLD"] == 100
    listed = await refunds_of(http, api_keys, original["id"])
    assert (listed["refunded_amount"], listed["refundable_amount"]) == (100, 0)
    assert [item["id"] for item in listed["items"]] == [first.json()["id"], winner["id"]]


async def test_parallel_chargebacks_and_purchases_never_overdraw(
    http: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection
) -> None:
    """Chargebacks of a top-up race purchases for the same credits: together they never take more than there is."""
    user_id = await create_user(http, api_keys, "rfc")
    topup = await move(http, api_keys, "topup", user_id, 100)
    chargebacks = [
        refund(http, api_keys, topup["id"], {"amount": 10, "reason": f"cb {n}"}, scope="admin") for n in range(10)
    ]
    purchases = [
        post(
            http,
            api_keys,
            "/v1/purchases",
            {"user_id": user_id, "asset": "GOLD", "amount": 10},
            idem(),
            scope="purchase",
        )
        for _ in range(10)
    ]
    mixed = [c for pair in zip(chargebacks, purchases, strict=True) for c in pair]
    responses = await asyncio.gather(*mixed)
    outcomes = Counter((r.status_code, r.json().get("code")) for r in responses)
    assert set(outcomes) <= {(201, None), (409, "insufficient_funds")}, outcomes
    assert outcomes[(201, None)] == 10, outcomes  # 100 credits, 10 a request: exactly ten fit
    assert (await user_balances(db, user_id))["GOLD"] == 0
    charged_back = sum(r.status_code == 201 for r in responses[0::2])
    listed = await refunds_of(http, api_keys, topup["id"])
    assert listed["refunded_amount"] == 10 * charged_back
    assert len(listed["items"]) == charged_back
    await assert_books_balance(db)
