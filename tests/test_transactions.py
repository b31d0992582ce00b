"""GET /v1/transactions/{transaction_id} for ids that name no transaction, and what a transaction records about
the API key that posted it. (The shape of a posted transaction is in test_movements.py.)"""

import uuid
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest

from tests.conftest import Keys
from tests.support import assert_problem, idem, movement
from wallet import keys as wallet_keys
from wallet.render import parse_public_id


@pytest.fixture
async def named_key(db: asyncpg.Connection) -> AsyncIterator[tuple[str, str]]:
    """An API key with the topup scope whose name this test knows: (name, secret)."""
    name = f"contract-{uuid.uuid4().hex[:10]}"
    secret = await wallet_keys.create(db, name, ["topup", "read"])
    yield name, secret
    await wallet_keys.revoke(db, name)


@pytest.mark.parametrize(
    "transaction_id",
    [
        "tx_0000000000000000",
        "tx_7fffffffffffffff",
        "tx_ffffffffffffffff",
        "tx_00000000000000001",
        "tx_123",
        "TX_0000000000000001",
        "garbage",
        "12345",
        "x" * 300,
        "caf%C3%A9",
        "%00",
    ],
)
async def test_unknown_transaction_is_404(client: httpx.AsyncClient, api_keys: Keys, transaction_id: str) -> None:
    response = await client.get(f"/v1/transactions/{transaction_id}", headers=api_keys.headers("read"))
    assert_problem(response, 404, "transaction_not_found")


async def test_transaction_records_the_api_key_name(
    client: httpx.AsyncClient, db: asyncpg.Connection, new_user: str, named_key: tuple[str, str]
) -> None:
    name, secret = named_key
    headers = {"Authorization": f"Bearer {secret}", "Idempotency-Key": idem()}
    response = await client.post("/v1/topups", json=movement(new_user, 4), headers=headers)
    assert response.status_code == 201, response.text
    internal_id = parse_public_id(response.json()["id"])
    assert internal_id is not None
    recorded = await db.fetchval("SELECT api_key_name FROM transactions WHERE id = $1", internal_id)
    assert recorded == name
