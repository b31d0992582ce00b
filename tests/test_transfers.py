"""Transfers (spec/API.md, v1.1 "Asset policies"): POST /v1/transfers moves an amount of a transferable asset from
one user to another, in one transaction of type `transfer` that is the sender's. Not transferable: 409
transfers_disabled; a frozen sender: 409 account_frozen (a frozen receiver is credited); short funds: 409
insufficient_funds; nothing written on any refusal. The two accounts are locked in id order, so transfers both
ways at once neither deadlock nor lose a unit."""

import asyncio
import uuid
from collections import Counter
from typing import Any

import asyncpg
import httpx
import pytest

from tests.conftest import Keys
from tests.support import (
    TRANSACTION_FIELDS,
    assert_problem,
    assert_validation_error,
    create_user,
    idem,
    ledger_counts,
    move,
    post,
    stored_keys,
)

TRANSFER_FIELDS = TRANSACTION_FIELDS | {"to_user_id", "to_balance_after"}


@pytest.fixture(scope="module")
async def gems(client: httpx.AsyncClient, api_keys: Keys) -> str:
    """A transferable asset made at runtime."""
    code = f"T{uuid.uuid4().hex[:10].upper()}"
    response = await client.put(
        f"/v1/assets/{code}", json={"name": "Gems", "transferable": True}, headers=api_keys.headers("admin")
    )
    assert response.status_code == 201, response.text
    return code


def body(sender: str, receiver: str, asset: str, amount: int, **extra: Any) -> dict[str, Any]:
    return {"from_user_id": sender, "to_user_id": receiver, "asset": asset, "amount": amount, **extra}


def transfer(
    client: httpx.AsyncClient, keys: Keys, sent: dict[str, Any], key: str | None = None, scope: str = "transfer"
) -> Any:
    return post(client, keys, "/v1/transfers", sent, key or idem(), scope=scope)


async def funded(client: httpx.AsyncClient, keys: Keys, asset: str, amount: int) -> str:
    user_id = await create_user(client, keys, "tr")
    if amount:
        await move(client, keys, "topup", user_id, amount, asset)
    return user_id


async def balance(client: httpx.AsyncClient, keys: Keys, user_id: str, asset: str) -> int:
    response = await client.get(f"/v1/users/{user_id}/balances/{asset}", headers=keys.headers("read"))
    assert response.status_code == 200, response.text
    value: int = response.json()["balance"]
    return value


async def test_a_transfer_moves_the_amount_and_is_the_senders(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection, gems: str
) -> None:
    sender = await funded(client, api_keys, gems, 100)
    receiver = await create_user(client, api_keys, "tr")
    assert await db.fetchval("SELECT count(*) FROM accounts WHERE user_id = $1", receiver) == 0

    response = await transfer(client, api_keys, body(sender, receiver, gems, 30, description="Loot", metadata={"r": 1}))
    assert response.status_code == 201, response.text
    tx = response.json()
    assert set(tx) == TRANSFER_FIELDS
    assert (tx["type"], tx["user_id"], tx["asset"], tx["amount"]) == ("transfer", sender, gems, 30)
    assert (tx["balance_after"], tx["to_user_id"], tx["to_balance_after"]) == (70, receiver, 30)
    assert (tx["description"], tx["metadata"], tx["rewards"], tx["refund_of"]) == ("Loot", {"r": 1}, [], None)
    assert tx["entries"] == [
        {"account": f"user:{sender}", "asset": gems, "amount": -30},
        {"account": f"user:{receiver}", "asset": gems, "amount": 30},
    ]
    assert await balance(client, api_keys, sender, gems) == 70
    assert await balance(client, api_keys, receiver, gems) == 30
    # The receiver's account was opened by the transfer; it reads back alike everywhere.
    assert await db.fetchval("SELECT count(*) FROM accounts WHERE user_id = $1", receiver) == 1
    fetched = await client.get(f"/v1/transactions/{tx['id']}", headers=api_keys.headers("read"))
    assert fetched.json() == tx
    for user_id in (sender, receiver):
        history = await client.get(f"/v1/users/{user_id}/transactions", headers=api_keys.headers("read"))
        assert history.json()["items"][0] == tx
    # Other transactions do not gain the transfer's fields.
    topup = await move(client, api_keys, "topup", sender, 1, gems)
    assert set(topup) == TRANSACTION_FIELDS


async def test_transfers_need_a_transferable_asset(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection
) -> None:
    sender = await funded(client, api_keys, "GOLD", 100)
    receiver = await create_user(client, api_keys, "tr")
    key = idem()
    before = await ledger_counts(db, sender)
    problem = assert_problem(
        await transfer(client, api_keys, body(sender, receiver, "GOLD", 10), key), 409, "transfers_disabled"
    )
    assert "GOLD" in problem["detail"]
    assert await ledger_counts(db, sender) == before
    assert await db.fetchval("SELECT count(*) FROM accounts WHERE user_id = $1", receiver) == 0
    # Recorded under the key like every business error: the same request replays it.
    replay = await transfer(client, api_keys, body(sender, receiver, "GOLD", 10), key)
    assert_problem(replay, 409, "transfers_disabled")
    assert replay.headers["idempotent-replayed"] == "true"
    assert await stored_keys(db, key) == 1


async def test_a_transfer_posted_replays_after_the_asset_is_closed(client: httpx.AsyncClient, api_keys: Keys) -> None:
    code = f"T{uuid.uuid4().hex[:10].upper()}"
    admin = api_keys.headers("admin")
    assert (
        await client.put(f"/v1/assets/{code}", json={"name": "Open", "transferable": True}, headers=admin)
    ).status_code == 201
    sender = await funded(client, api_keys, code, 10)
    receiver = await create_user(client, api_keys, "tr")
    key = idem()
    first = await transfer(client, api_keys, body(sender, receiver, code, 4), key)
    assert first.status_code == 201, first.text
    assert (
        await client.put(f"/v1/assets/{code}", json={"name": "Closed", "transferable": False}, headers=admin)
    ).status_code == 200
    replay = await transfer(client, api_keys, body(sender, receiver, code, 4), key)
    assert (replay.status_code, replay.content) == (201, first.content)
    assert_problem(await transfer(client, api_keys, body(sender, receiver, code, 4)), 409, "transfers_disabled")


async def test_refusals_write_nothing(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection, gems: str
) -> None:
    sender = await funded(client, api_keys, gems, 50)
    receiver = await create_user(client, api_keys, "tr")
    ghost = f"ghost-{uuid.uuid4().hex[:8]}"
    before = await ledger_counts(db, sender)
    problem = assert_problem(
        await transfer(client, api_keys, body(sender, receiver, gems, 51)), 409, "insufficient_funds"
    )
    assert f"user:{sender}" in problem["detail"]
    assert_problem(await transfer(client, api_keys, body(ghost, receiver, gems, 1)), 404, "user_not_found")
    assert_problem(await transfer(client, api_keys, body(sender, ghost, gems, 1)), 404, "user_not_found")
    assert_problem(await transfer(client, api_keys, body(sender, receiver, "NOPE_NOPE", 1)), 404, "asset_not_found")
    # An unknown user before an unknown asset, and before a closed one.
    assert_problem(await transfer(client, api_keys, body(sender, ghost, "NOPE_NOPE", 1)), 404, "user_not_found")
    assert_problem(await transfer(client, api_keys, body(sender, ghost, "GOLD", 1)), 404, "user_not_found")
    # A sender with no account in the asset has 0 of it.
    assert_problem(await transfer(client, api_keys, body(receiver, sender, gems, 1)), 409, "insufficient_funds")
    assert await ledger_counts(db, sender) == before
    assert await db.fetchval("SELECT count(*) FROM accounts WHERE user_id = $1", receiver) == 0


@pytest.mark.parametrize(
    "change",
    [
        {"to_user_id": "SAME"},
        {"amount": 0},
        {"amount": -5},
        {"amount": 1.0},
        {"amount": "5"},
        {"amount": 10**15 + 1},
        {"from_user_id": None},
        {"to_user_id": "bad id"},
        {"asset": "gold"},
        {"user_id": "alice"},
        {"description": "x" * 501},
        {"metadata": []},
    ],
)
async def test_bad_transfers_are_422(
    client: httpx.AsyncClient, api_keys: Keys, gems: str, change: dict[str, Any]
) -> None:
    sent = {**body("alice", "bob", gems, 5), **change}
    if sent["to_user_id"] == "SAME":
        sent["to_user_id"] = sent["from_user_id"]
    assert_validation_error(await transfer(client, api_keys, sent))


async def test_the_sender_may_not_be_frozen_the_receiver_may(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection, gems: str
) -> None:
    sender = await funded(client, api_keys, gems, 20)
    receiver = await funded(client, api_keys, gems, 0)
    admin = api_keys.headers("admin")
    assert (await client.post(f"/v1/users/{sender}/freeze", json={"reason": "r"}, headers=admin)).status_code == 200
    before = await ledger_counts(db, sender)
    assert_problem(await transfer(client, api_keys, body(sender, receiver, gems, 5)), 409, "account_frozen")
    assert await ledger_counts(db, sender) == before
    assert (await client.post(f"/v1/users/{sender}/unfreeze", headers=admin)).status_code == 200

    assert (await client.post(f"/v1/users/{receiver}/freeze", json={"reason": "r"}, headers=admin)).status_code == 200
    response = await transfer(client, api_keys, body(sender, receiver, gems, 5))
    assert response.status_code == 201, response.text
    assert response.json()["to_balance_after"] == 5
    # The frozen receiver's account, opened by the transfer, is frozen: it cannot send on.
    assert await db.fetchval("SELECT frozen FROM accounts WHERE name = $1 AND asset = $2", f"user:{receiver}", gems)
    assert_problem(await transfer(client, api_keys, body(receiver, sender, gems, 1)), 409, "account_frozen")


async def test_idempotent_replay_and_reuse(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection, gems: str
) -> None:
    sender = await funded(client, api_keys, gems, 20)
    receiver = await create_user(client, api_keys, "tr")
    key = idem()
    first = await transfer(client, api_keys, body(sender, receiver, gems, 7), key)
    assert first.status_code == 201, first.text
    again = await transfer(client, api_keys, body(sender, receiver, gems, 7), key)
    assert (again.status_code, again.content, again.headers["idempotent-replayed"]) == (201, first.content, "true")
    reused = assert_problem(
        await transfer(client, api_keys, body(sender, receiver, gems, 8), key), 422, "idempotency_key_reused"
    )
    assert reused["differences"] == [{"field": "amount", "first": 7, "now": 8}]
    missing = await client.post(
        "/v1/transfers", json=body(sender, receiver, gems, 7), headers=api_keys.headers("transfer")
    )
    assert_problem(missing, 400, "idempotency_key_missing")
    assert await balance(client, api_keys, receiver, gems) == 7
    assert (await ledger_counts(db, sender))["user_transactions"] == 2  # the top-up and one transfer


async def test_scopes(client: httpx.AsyncClient, api_keys: Keys, gems: str) -> None:
    sender = await funded(client, api_keys, gems, 5)
    receiver = await create_user(client, api_keys, "tr")
    for scope in ("read", "topup", "bonus", "purchase"):
        assert_problem(await transfer(client, api_keys, body(sender, receiver, gems, 1), scope=scope), 403, "forbidden")
    assert (await transfer(client, api_keys, body(sender, receiver, gems, 1), scope="admin")).status_code == 201
    unauthenticated = await client.post(
        "/v1/transfers", json=body(sender, receiver, gems, 1), headers={"Idempotency-Key": idem()}
    )
    assert_problem(unauthenticated, 401, "unauthenticated")


async def test_transfers_in_batches(client: httpx.AsyncClient, api_keys: Keys, gems: str) -> None:
    sender = await funded(client, api_keys, gems, 10)
    receiver = await create_user(client, api_keys, "tr")
    items = [
        {"type": "transfer", **body(sender, receiver, gems, 4), "idempotency_key": idem()},
        {"type": "transfer", **body(receiver, sender, gems, 1), "idempotency_key": idem()},
        {"type": "transfer", **body(sender, receiver, "GOLD", 1), "idempotency_key": idem()},
    ]
    response = await client.post("/v1/batch", json={"operations": items}, headers=api_keys.headers("transfer"))
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["status"] for r in results] == [201, 201, 409]
    assert results[0]["transaction"]["to_balance_after"] == 4
    assert results[1]["transaction"]["balance_after"] == 3
    assert results[2]["problem"]["code"] == "transfers_disabled"
    assert await balance(client, api_keys, sender, gems) == 7
    # The scope of each item is needed: a transfer in a batch of a top-up key is refused whole.
    topup_key = await client.post("/v1/batch", json={"operations": items[:1]}, headers=api_keys.headers("topup"))
    assert_problem(topup_key, 403, "forbidden")
    bad = await client.post(
        "/v1/batch",
        json={"operations": [{**items[0], "to_user_id": sender, "idempotency_key": idem()}]},
        headers=api_keys.headers("transfer"),
    )
    assert_validation_error(bad)


async def test_a_transfer_is_not_refundable(client: httpx.AsyncClient, api_keys: Keys, gems: str) -> None:
    sender = await funded(client, api_keys, gems, 10)
    receiver = await create_user(client, api_keys, "tr")
    tx = (await transfer(client, api_keys, body(sender, receiver, gems, 4))).json()
    refund = await post(client, api_keys, f"/v1/transactions/{tx['id']}/refunds", {"reason": "oops"}, idem())
    assert_problem(refund, 409, "not_refundable")


async def test_parallel_transfers_both_ways_conserve_the_sum(
    http: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection, gems: str
) -> None:
    """200 transfers at once through the real server, half each way between two users, some larger than what the
    sender may have at its moment: no 5xx (no deadlock surfaced), each refused one an insufficient_funds, and the
    two balances sum to what they started with, as the posted transfers say."""
    alice, bob = await funded(http, api_keys, gems, 300), await funded(http, api_keys, gems, 300)
    sends = [(alice, bob, 1 + i % 7) if i % 2 == 0 else (bob, alice, 1 + i % 5) for i in range(200)]
    responses = await asyncio.gather(*(transfer(http, api_keys, body(a, b, gems, n)) for a, b, n in sends))

    statuses = Counter(r.status_code for r in responses)
    assert set(statuses) <= {201, 409}, [(r.status_code, r.text) for r in responses if r.status_code not in (201, 409)]
    assert {r.json()["code"] for r in responses if r.status_code == 409} <= {"insufficient_funds"}
    net = {alice: 300, bob: 300}
    for (sender, receiver, amount), response in zip(sends, responses, strict=True):
        if response.status_code == 201:
            net[sender] -= amount
            net[receiver] += amount
    assert await balance(http, api_keys, alice, gems) == net[alice]
    assert await balance(http, api_keys, bob, gems) == net[bob]
    assert net[alice] + net[bob] == 600
    posted = await db.fetchval(
        "SELECT count(*) FROM transactions WHERE type = 'transfer' AND user_id = ANY($1::text[])", [alice, bob]
    )
    assert posted == statuses[201] >= 150
