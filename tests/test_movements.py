"""Top-ups, bonuses and purchases over HTTP (spec/API.md, "Endpoints"), in accounting terms: the transaction each
one posts, its entries and the balance it leaves, and the refusals (unknown user or asset, insufficient funds)
that write nothing. "Nothing was written" is read in the database through the `db` fixture."""

import asyncpg
import httpx
import pytest

from tests.conftest import Keys
from tests.support import (
    PATHS,
    assert_problem,
    assert_transaction,
    balance,
    fresh_id,
    idem,
    ledger_counts,
    media_type,
    move,
    movement,
    post,
)


@pytest.mark.parametrize(
    ("kind", "user_sign", "system"),
    [("topup", 1, "system:treasury"), ("bonus", 1, "system:bonus_pool"), ("purchase", -1, "system:revenue")],
)
async def test_movement_shape_and_get_returns_the_same_bytes(
    client: httpx.AsyncClient, api_keys: Keys, new_user: str, kind: str, user_sign: int, system: str
) -> None:
    await move(client, api_keys, "topup", new_user, 1000, "LOYALTY")
    body = movement(new_user, 250, "LOYALTY", description="Weekly allowance", metadata={"campaign": "w47"})
    response = await post(client, api_keys, PATHS[kind], body, idem())
    assert response.status_code == 201, response.text
    assert media_type(response) == "application/json"
    assert "idempotent-replayed" not in response.headers
    tx = response.json()
    assert_transaction(tx)
    assert tx["type"] == kind
    assert (tx["user_id"], tx["asset"], tx["amount"]) == (new_user, "LOYALTY", 250)
    assert tx["description"] == "Weekly allowance"
    assert tx["metadata"] == {"campaign": "w47"}
    assert tx["balance_after"] == 1000 + user_sign * 250
    assert tx["entries"] == [
        {"account": f"user:{new_user}", "asset": "LOYALTY", "amount": user_sign * 250},
        {"account": system, "asset": "LOYALTY", "amount": -user_sign * 250},
    ]

    fetched = await client.get(f"/v1/transactions/{tx['id']}", headers=api_keys.headers("read"))
    assert fetched.status_code == 200, fetched.text
    assert fetched.content == response.content


async def test_optional_fields_default(client: httpx.AsyncClient, api_keys: Keys, new_user: str) -> None:
    tx = await move(client, api_keys, "topup", new_user, 5)
    assert tx["description"] is None
    assert tx["metadata"] == {}


async def test_movement_to_unknown_user_or_asset_is_404_and_writes_nothing(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection, new_user: str
) -> None:
    ghost = fresh_id()
    before = await ledger_counts(db, new_user)
    response = await post(client, api_keys, "/v1/topups", movement(ghost, 10), idem())
    assert_problem(response, 404, "user_not_found")
    response = await post(client, api_keys, "/v1/topups", movement(new_user, 10, "NOPE"), idem())
    assert_problem(response, 404, "asset_not_found")
    assert await ledger_counts(db, new_user) == before


async def test_purchase_beyond_balance_is_409(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection, new_user: str
) -> None:
    await move(client, api_keys, "topup", new_user, 40)
    before = await ledger_counts(db, new_user)
    response = await post(client, api_keys, "/v1/purchases", movement(new_user, 41), idem())
    assert_problem(response, 409, "insufficient_funds")
    assert await ledger_counts(db, new_user) == before
    assert await balance(client, api_keys, new_user) == 40


async def test_topup_debits_treasury_and_credits_user(client: httpx.AsyncClient, api_keys: Keys, new_user: str) -> None:
    response = await post(
        client,
        api_keys,
        "/v1/topups",
        {"user_id": new_user, "asset": "GOLD", "amount": 250, "description": "Pack of 250"},
        f"t-{new_user}",
    )
    assert response.status_code == 201, response.text
    tx = response.json()
    assert tx["type"] == "topup" and tx["status"] == "posted" and tx["amount"] == 250
    assert tx["balance_after"] == 250
    assert tx["entries"] == [
        {"account": f"user:{new_user}", "asset": "GOLD", "amount": 250},
        {"account": "system:treasury", "asset": "GOLD", "amount": -250},
    ]
    fetched = await client.get(f"/v1/transactions/{tx['id']}", headers=api_keys.headers("read"))
    assert fetched.status_code == 200
    assert fetched.content == response.content


async def test_purchase_beyond_balance_is_refused_and_writes_nothing(
    client: httpx.AsyncClient, api_keys: Keys, new_user: str
) -> None:
    await post(client, api_keys, "/v1/topups", {"user_id": new_user, "asset": "GOLD", "amount": 40}, f"t-{new_user}")
    refused = await post(
        client, api_keys, "/v1/purchases", {"user_id": new_user, "asset": "GOLD", "amount": 41}, f"p-{new_user}"
    )
    assert refused.status_code == 409
    assert refused.json()["code"] == "insufficient_funds"
    balance = await client.get(f"/v1/users/{new_user}/balances/GOLD", headers=api_keys.headers("read"))
    assert balance.json() == {"user_id": new_user, "asset": "GOLD", "balance": 40, "held": 0, "available": 40}
