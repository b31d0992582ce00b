"""The Idempotency-Key of single POSTs (spec/API.md, "Idempotency"): a missing or malformed key, replays of the
same request (errors included), a key reused for another request or endpoint, and keys scoped per API key.

Every test uses keys of its own. "Nothing was written" is read in the database through the `db` fixture: the
ledger's counts and the idempotency records of the key.
"""

import asyncio
from typing import Any

import asyncpg
import httpx
import pytest

from tests.conftest import Keys
from tests.support import (
    PATHS,
    assert_problem,
    assert_validation_error,
    balance,
    fresh_id,
    idem,
    ledger_counts,
    move,
    movement,
    open_account,
    post,
    stored_keys,
)


async def test_idempotency_key_missing_is_400(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection, new_user: str
) -> None:
    for path in PATHS.values():
        response = await post(client, api_keys, path, movement(new_user, 1))
        assert_problem(response, 400, "idempotency_key_missing")
    assert (await ledger_counts(db, new_user))["user_transactions"] == 0


@pytest.mark.parametrize("key", ["", "k" * 256, "clé".encode(), "with space", "tab\tkey", "\x7fdel"])
async def test_idempotency_key_malformed_is_400(
    client: httpx.AsyncClient, api_keys: Keys, new_user: str, key: str | bytes
) -> None:
    headers: dict[str, Any] = {**api_keys.headers(), "Idempotency-Key": key}
    response = await client.post("/v1/topups", json=movement(new_user, 1), headers=headers)
    assert_problem(response, 400, "idempotency_key_invalid")
    assert await balance(client, api_keys, new_user) == 0


@pytest.mark.parametrize("key", ["k", "k" * 255, "!~:/{}[]@#$%^&*()=+?<>|\\'\"`,;"])
async def test_idempotency_key_edge_values_are_accepted(
    client: httpx.AsyncClient, api_keys: Keys, new_user: str, key: str
) -> None:
    # Each value is used once per session by this API key (a fresh one per session, on a fresh database).
    response = await post(client, api_keys, "/v1/topups", movement(new_user, 1), key, scope="topup")
    assert response.status_code == 201, response.text
    replay = await post(client, api_keys, "/v1/topups", movement(new_user, 1), key, scope="topup")
    assert replay.headers.get("idempotent-replayed") == "true"
    assert await balance(client, api_keys, new_user) == 1


async def test_same_key_same_body_replays_and_writes_nothing(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection, new_user: str
) -> None:
    key = idem()
    body = movement(new_user, 75, description="Pack", metadata={"order": 7})
    first = await post(client, api_keys, "/v1/topups", body, key)
    assert first.status_code == 201, first.text
    assert "idempotent-replayed" not in first.headers
    before = await ledger_counts(db, new_user)

    for replay_body in (
        body,
        {"metadata": {"order": 7}, "description": "Pack", "amount": 75, "asset": "GOLD", "user_id": new_user},
    ):
        replay = await post(client, api_keys, "/v1/topups", replay_body, key)
        assert replay.status_code == 201, replay.text
        assert replay.headers.get("idempotent-replayed") == "true"
        assert replay.content == first.content
    assert await ledger_counts(db, new_user) == before
    assert await balance(client, api_keys, new_user) == 75
    assert await stored_keys(db, key) == 1


async def test_replay_with_defaults_spelled_out_is_the_same_request(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection, new_user: str
) -> None:
    key = idem()
    first = await post(client, api_keys, "/v1/topups", movement(new_user, 9), key)
    assert first.status_code == 201, first.text
    before = await ledger_counts(db, new_user)
    replay = await post(client, api_keys, "/v1/topups", movement(new_user, 9, description=None, metadata={}), key)
    assert replay.status_code == 201, replay.text
    assert replay.headers.get("idempotent-replayed") == "true"
    assert replay.content == first.content
    assert await ledger_counts(db, new_user) == before


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"amount": 76}, "amount"),
        ({"asset": "DIAMOND"}, "asset"),
        ({"description": "other"}, "description"),
        ({"metadata": {"order": 8}}, "metadata"),
    ],
)
async def test_same_key_different_body_is_422_reused(
    client: httpx.AsyncClient,
    api_keys: Keys,
    db: asyncpg.Connection,
    new_user: str,
    change: dict[str, Any],
    field: str,
) -> None:
    key = idem()
    body = movement(new_user, 75, description="Pack", metadata={"order": 7})
    first = await post(client, api_keys, "/v1/topups", body, key)
    assert first.status_code == 201, first.text
    before = await ledger_counts(db, new_user)

    reused = await post(client, api_keys, "/v1/topups", {**body, **change}, key)
    problem = assert_problem(reused, 422, "idempotency_key_reused")
    assert [d["field"] for d in problem["differences"]] == [field], problem
    assert await ledger_counts(db, new_user) == before
    assert await balance(client, api_keys, new_user) == 75
    assert await balance(client, api_keys, new_user, "DIAMOND") == 0

    # The key still belongs to the first request.
    replay = await post(client, api_keys, "/v1/topups", body, key)
    assert replay.headers.get("idempotent-replayed") == "true"
    assert replay.content == first.content


async def test_same_key_on_another_endpoint_is_422_reused(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection, new_user: str
) -> None:
    key = idem()
    body = movement(new_user, 20)
    assert (await post(client, api_keys, "/v1/topups", body, key)).status_code == 201
    before = await ledger_counts(db, new_user)
    for path in ("/v1/bonuses", "/v1/purchases"):
        reused = await post(client, api_keys, path, body, key)
        problem = assert_problem(reused, 422, "idempotency_key_reused")
        assert "endpoint" in [d["field"] for d in problem["differences"]], problem
    assert await ledger_counts(db, new_user) == before
    assert await balance(client, api_keys, new_user) == 20


async def test_insufficient_funds_is_stored_and_replayed(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection, new_user: str
) -> None:
    await move(client, api_keys, "topup", new_user, 10)
    key = idem()
    body = movement(new_user, 20)
    refused = await post(client, api_keys, "/v1/purchases", body, key)
    assert_problem(refused, 409, "insufficient_funds")
    assert "idempotent-replayed" not in refused.headers

    await move(client, api_keys, "topup", new_user, 50)  # now the purchase would fit
    before = await ledger_counts(db, new_user)
    replay = await post(client, api_keys, "/v1/purchases", body, key)
    assert_problem(replay, 409, "insufficient_funds")
    assert replay.headers.get("idempotent-replayed") == "true"
    assert replay.content == refused.content
    assert await ledger_counts(db, new_user) == before
    assert await balance(client, api_keys, new_user) == 60


async def test_user_not_found_is_stored_and_replayed(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection
) -> None:
    user_id = fresh_id()
    key = idem()
    body = movement(user_id, 5)
    missing = await post(client, api_keys, "/v1/topups", body, key)
    assert_problem(missing, 404, "user_not_found")

    assert (await client.put(f"/v1/users/{user_id}", headers=api_keys.headers())).status_code == 201
    replay = await post(client, api_keys, "/v1/topups", body, key)
    assert_problem(replay, 404, "user_not_found")
    assert replay.headers.get("idempotent-replayed") == "true"
    assert (await ledger_counts(db, user_id))["user_transactions"] == 0
    assert await balance(client, api_keys, user_id) == 0


async def test_validation_failure_stores_nothing_and_the_key_can_be_reused(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection, new_user: str
) -> None:
    key = idem()
    invalid = await post(client, api_keys, "/v1/topups", movement(new_user, 0), key)
    assert_validation_error(invalid, "amount")
    assert await stored_keys(db, key) == 0

    corrected = await post(client, api_keys, "/v1/topups", movement(new_user, 5), key)
    assert corrected.status_code == 201, corrected.text
    assert "idempotent-replayed" not in corrected.headers
    assert await balance(client, api_keys, new_user) == 5
    assert await stored_keys(db, key) == 1


async def test_idempotency_keys_are_scoped_per_api_key(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection, new_user: str
) -> None:
    key = idem()
    body = movement(new_user, 15)
    by_topup_key = await post(client, api_keys, "/v1/topups", body, key, scope="topup")
    by_admin_key = await post(client, api_keys, "/v1/topups", body, key, scope="admin")
    assert by_topup_key.status_code == 201, by_topup_key.text
    assert by_admin_key.status_code == 201, by_admin_key.text
    assert "idempotent-replayed" not in by_admin_key.headers
    assert by_topup_key.json()["id"] != by_admin_key.json()["id"]
    assert await balance(client, api_keys, new_user) == 30

    # And a different body under the same key of a third API key is not "reused".
    by_bonus_key = await post(client, api_keys, "/v1/bonuses", movement(new_user, 1), key, scope="bonus")
    assert by_bonus_key.status_code == 201, by_bonus_key.text
    assert await stored_keys(db, key) == 3


async def test_two_requests_racing_with_one_key_write_once_and_the_loser_replays(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection, new_user: str
) -> None:
    """Both requests are held on the user's account lock, so both have read "key not seen" before either commits:
    the loser's record collides with the winner's, which rolls it back whole, and run again it replays."""
    key = idem()
    body = movement(new_user, 40, description="race")
    await open_account(db, new_user)
    async with db.transaction():
        await db.execute("SELECT 1 FROM accounts WHERE name = $1 AND asset = 'GOLD' FOR UPDATE", f"user:{new_user}")
        racing = [asyncio.create_task(post(client, api_keys, PATHS["topup"], body, key)) for _ in range(2)]
        await asyncio.sleep(0.3)  # both are waiting on the lock now
        assert not any(task.done() for task in racing)
    responses = await asyncio.gather(*racing)
    assert [r.status_code for r in responses] == [201, 201], [r.text for r in responses]
    assert sorted(r.headers.get("idempotent-replayed") == "true" for r in responses) == [False, True]
    assert responses[0].content == responses[1].content
    assert (await ledger_counts(db, new_user))["user_transactions"] == 1
    assert await balance(client, api_keys, new_user) == 40
    assert await stored_keys(db, key) == 1
