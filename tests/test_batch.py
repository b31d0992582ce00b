"""POST /v1/batch (spec/API.md, "Batch" and "Idempotency"): shape, independence, atomicity, per-item idempotency
shared with the single POSTs, scopes, validation, size and concurrency.

Every test uses its own users and idempotency keys. "Nothing was written" is checked in the database through the
`db` fixture: the users' balances and transactions, and the idempotency records of the batch's keys.
"""

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from tests.conftest import Keys
from tests.support import (
    PATHS,
    SYSTEM_SIDE,
    TIMESTAMP,
    TRANSACTION_FIELDS,
    USER_SIGN,
    assert_problem,
    assert_problem_document,
    create_user,
    idem,
    media_type,
    move,
)
from wallet.errors import CODES

# Helpers ---------------------------------------------------------------------------------------------------------


def op(kind: str, user_id: str, amount: Any, key: str | None = None, asset: str = "GOLD", **extra: Any) -> dict:
    return {
        "type": kind,
        "user_id": user_id,
        "asset": asset,
        "amount": amount,
        "idempotency_key": key or idem(),
        **extra,
    }


def send(
    client: httpx.AsyncClient, keys: Keys | None, body: Any, scope: str = "admin", **headers: str
) -> Any:  # a coroutine of httpx.Response
    """POST /v1/batch with `body` as compact JSON (bytes are sent as they are)."""
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    all_headers = {"Content-Type": "application/json", **(keys.headers(scope) if keys else {}), **headers}
    return client.post("/v1/batch", content=content, headers=all_headers)


def batch(*operations: dict, atomic: bool | None = None) -> dict:
    body: dict[str, Any] = {"operations": list(operations)}
    if atomic is not None:
        body["atomic"] = atomic
    return body


def results_of(response: httpx.Response, count: int) -> list[dict[str, Any]]:
    """The 200 batch response's results, one per operation."""
    assert response.status_code == 200, (response.status_code, response.text)
    assert media_type(response) == "application/json", response.headers
    body = response.json()
    assert set(body) == {"results"}, body
    results: list[dict[str, Any]] = body["results"]
    assert len(results) == count, results
    return results


def assert_created(result: dict[str, Any], operation: dict[str, Any], replayed: bool = False) -> dict[str, Any]:
    """The item is a 201 whose transaction is the one this operation asked for."""
    assert result["status"] == 201, result
    assert set(result) == ({"status", "transaction", "replayed"} if replayed else {"status", "transaction"}), result
    if replayed:
        assert result["replayed"] is True, result
    tx: dict[str, Any] = result["transaction"]
    assert set(tx) == TRANSACTION_FIELDS, tx
    assert isinstance(tx["id"], str), tx
    assert tx["id"], tx
    assert tx["status"] == "posted", tx
    assert TIMESTAMP.fullmatch(tx["created_at"]), tx
    assert tx["type"] == operation["type"], (tx, operation)
    assert tx["user_id"] == operation["user_id"], (tx, operation)
    assert tx["asset"] == operation["asset"], (tx, operation)
    assert tx["amount"] == operation["amount"], (tx, operation)
    assert tx["description"] == operation.get("description"), (tx, operation)
    assert tx["metadata"] == operation.get("metadata", {}), (tx, operation)
    signed = USER_SIGN[operation["type"]] * operation["amount"]
    assert tx["entries"] == [
        {"account": f"user:{operation['user_id']}", "asset": operation["asset"], "amount": signed},
        {"account": SYSTEM_SIDE[operation["type"]], "asset": operation["asset"], "amount": -signed},
    ], tx
    return tx


def assert_failed(result: dict[str, Any], status: int, code: str, replayed: bool = False) -> dict[str, Any]:
    assert result["status"] == status, result
    assert set(result) == ({"status", "problem", "replayed"} if replayed else {"status", "problem"}), result
    if replayed:
        assert result["replayed"] is True, result
    return assert_problem_document(result["problem"], status, code)


async def create_users(client: httpx.AsyncClient, keys: Keys, count: int) -> list[str]:
    return list(await asyncio.gather(*(create_user(client, keys, "bt") for _ in range(count))))


async def topup(client: httpx.AsyncClient, keys: Keys, user_id: str, amount: int, asset: str = "GOLD") -> None:
    await move(client, keys, "topup", user_id, amount, asset)


async def balances(db: asyncpg.Connection, users: list[str], asset: str = "GOLD") -> dict[str, int]:
    rows = await db.fetch(
        "SELECT user_id, balance FROM accounts WHERE kind = 'user' AND user_id = ANY($1) AND asset = $2",
        users,
        asset,
    )
    found = {row["user_id"]: int(row["balance"]) for row in rows}
    return {user_id: found.get(user_id, 0) for user_id in users}  # no account yet: nothing was ever credited


async def snapshot(db: asyncpg.Connection, users: list[str], keys: list[str]) -> dict[str, Any]:
    """What a batch about these users and keys could have written."""
    row = await db.fetchrow(
        """SELECT (SELECT coalesce(json_agg(json_build_object('a', name, 'asset', asset, 'b', balance)
                                            ORDER BY name, asset), '[]')
                     FROM accounts WHERE user_id = ANY($1)) AS accounts,
                  (SELECT count(*) FROM transactions WHERE user_id = ANY($1)) AS transactions,
                  (SELECT count(*) FROM entries e JOIN accounts a ON a.id = e.account_id
                    WHERE a.user_id = ANY($1)) AS entries,
                  (SELECT count(*) FROM idempotency_keys WHERE key = ANY($2)) AS records""",
        users,
        keys,
    )
    assert row is not None
    return {
        "accounts": orjson.loads(row["accounts"]),
        "transactions": int(row["transactions"]),
        "entries": int(row["entries"]),
        "records": int(row["records"]),
    }


async def stored(db: asyncpg.Connection, keys: list[str]) -> dict[str, int | None]:
    """Status of each key's idempotency record (absent keys are missing from the result): 201 for a transaction,
    the status of the problem's code for a recorded failure."""
    rows = await db.fetch(
        "SELECT key, transaction_id, problem->>'code' AS code FROM idempotency_keys WHERE key = ANY($1)", keys
    )
    return {row["key"]: 201 if row["transaction_id"] else CODES[row["code"]][0] for row in rows}


async def user_transactions(db: asyncpg.Connection, users: list[str]) -> dict[str, int]:
    rows = await db.fetch(
        "SELECT user_id, count(*) AS n FROM transactions WHERE user_id = ANY($1) GROUP BY user_id", users
    )
    counts = {user: 0 for user in users}
    counts.update({row["user_id"]: int(row["n"]) for row in rows})
    return counts


# Success ---------------------------------------------------------------------------------------------------------


async def test_success_shape_one_result_per_operation_in_order(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection
) -> None:
    first, second = await create_users(client, api_keys, 2)
    operations = [
        op("topup", first, 100, description="Weekly allowance", metadata={"campaign": "w47"}),
        op("bonus", second, 50, asset="DIAMOND"),
        op("purchase", first, 30, metadata={"order": 7}),
        op("topup", second, 5, asset="LOYALTY", description=None),
    ]
    response = await send(client, api_keys, batch(*operations))
    assert response.headers.get("x-request-id"), response.headers
    results = results_of(response, 4)

    txs = [assert_created(result, operation) for result, operation in zip(results, operations, strict=True)]
    assert [tx["balance_after"] for tx in txs] == [100, 50, 70, 5], txs
    ids = [tx["id"] for tx in txs]
    assert len(set(ids)) == 4, ids
    assert ids == sorted(ids), "transaction ids sort by creation time, i.e. in request order"
    for tx in txs:
        fetched = await client.get(f"/v1/transactions/{tx['id']}", headers=api_keys.headers("read"))
        assert fetched.status_code == 200, fetched.text
        assert fetched.json() == tx

    assert await balances(db, [first, second]) == {first: 70, second: 0}
    assert await balances(db, [second], "DIAMOND") == {second: 50}
    assert await balances(db, [second], "LOYALTY") == {second: 5}
    keys = [operation["idempotency_key"] for operation in operations]
    assert await stored(db, keys) == dict.fromkeys(keys, 201)


async def test_atomic_defaults_to_false(client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection) -> None:
    (user,) = await create_users(client, api_keys, 1)
    operations = [op("topup", user, 10), op("purchase", user, 11)]
    results = results_of(await send(client, api_keys, batch(*operations)), 2)
    assert_created(results[0], operations[0])
    assert_failed(results[1], 409, "insufficient_funds")
    assert await balances(db, [user]) == {user: 10}


async def test_non_atomic_items_succeed_or_fail_independently(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection
) -> None:
    rich, poor = await create_users(client, api_keys, 2)
    await topup(client, api_keys, poor, 20)
    ghost = f"ghost-{uuid.uuid4().hex[:12]}"
    operations = [
        op("topup", rich, 100),
        op("purchase", poor, 50),  # balance 20: insufficient
        op("topup", ghost, 10),  # no such user
        op("bonus", poor, 7),
        op("topup", rich, 1, asset="NOPE"),  # no such asset
        op("purchase", rich, 40),
    ]
    before = await user_transactions(db, [rich, poor])
    results = results_of(await send(client, api_keys, batch(*operations, atomic=False)), 6)

    assert_created(results[0], operations[0])
    assert_failed(results[1], 409, "insufficient_funds")
    assert_failed(results[2], 404, "user_not_found")
    assert_created(results[3], operations[3])
    assert_failed(results[4], 404, "asset_not_found")
    assert_created(results[5], operations[5])
    assert results[3]["transaction"]["balance_after"] == 27
    assert results[5]["transaction"]["balance_after"] == 60

    assert await balances(db, [rich, poor]) == {rich: 60, poor: 27}
    assert await user_transactions(db, [rich, poor]) == {rich: before[rich] + 2, poor: before[poor] + 1}
    assert int(await db.fetchval("SELECT count(*) FROM users WHERE user_id = $1", ghost)) == 0
    # Failures are stored like those of single requests.
    keys = [operation["idempotency_key"] for operation in operations]
    assert await stored(db, keys) == dict(zip(keys, [201, 409, 404, 201, 404, 201], strict=True))


async def test_items_see_the_effects_of_earlier_items(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection
) -> None:
    (user,) = await create_users(client, api_keys, 1)
    operations = [op("topup", user, 10), op("purchase", user, 10)]
    results = results_of(await send(client, api_keys, batch(*operations)), 2)
    assert assert_created(results[0], operations[0])["balance_after"] == 10
    assert assert_created(results[1], operations[1])["balance_after"] == 0
    assert await balances(db, [user]) == {user: 0}

    # And not the effects of later ones: the same two in the other order, the purchase comes first.
    reversed_operations = [op("purchase", user, 10), op("topup", user, 10)]
    results = results_of(await send(client, api_keys, batch(*reversed_operations)), 2)
    assert_failed(results[0], 409, "insufficient_funds")
    assert assert_created(results[1], reversed_operations[1])["balance_after"] == 10
    assert await balances(db, [user]) == {user: 10}


# Atomic ----------------------------------------------------------------------------------------------------------


FAILURES = {
    "insufficient_funds": (lambda user: op("purchase", user, 1_000), 409),
    "user_not_found": (lambda user: op("topup", f"ghost-{uuid.uuid4().hex[:12]}", 5), 404),
    "asset_not_found": (lambda user: op("bonus", user, 5, asset="NOPE"), 404),
}


@pytest.mark.parametrize("failure", list(FAILURES))
async def test_atomic_batch_with_a_failing_item_writes_nothing(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection, failure: str
) -> None:
    first, second = await create_users(client, api_keys, 2)
    await topup(client, api_keys, second, 30)
    make_failing, status = FAILURES[failure]
    operations = [
        op("topup", first, 100),
        op("purchase", second, 30),
        make_failing(first),
        op("bonus", first, 5),
    ]
    keys = [operation["idempotency_key"] for operation in operations]
    before = await snapshot(db, [first, second], keys)
    assert before["records"] == 0

    results = results_of(await send(client, api_keys, batch(*operations, atomic=True)), 4)
    for index in (0, 1, 3):
        assert_failed(results[index], 424, "batch_aborted")
    assert_failed(results[2], status, failure)

    assert await snapshot(db, [first, second], keys) == before
    assert await balances(db, [first, second]) == {first: 0, second: 30}

    # An aborted atomic batch recorded nothing: the corrected batch, with the same keys, goes through.
    corrected = [*operations]
    corrected[2] = op("purchase", first, 60, key=keys[2])
    results = results_of(await send(client, api_keys, batch(*corrected, atomic=True)), 4)
    for result, operation in zip(results, corrected, strict=True):
        assert_created(result, operation)
    assert await balances(db, [first, second]) == {first: 45, second: 0}
    assert await stored(db, keys) == dict.fromkeys(keys, 201)
    after = await snapshot(db, [first, second], keys)
    assert after["transactions"] == before["transactions"] + 4


async def test_atomic_batch_that_succeeds_writes_everything(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection
) -> None:
    first, second = await create_users(client, api_keys, 2)
    operations = [op("topup", first, 40), op("bonus", second, 8), op("purchase", first, 15), op("purchase", second, 8)]
    keys = [operation["idempotency_key"] for operation in operations]
    before = await user_transactions(db, [first, second])
    results = results_of(await send(client, api_keys, batch(*operations, atomic=True)), 4)
    txs = [assert_created(result, operation) for result, operation in zip(results, operations, strict=True)]
    assert [tx["balance_after"] for tx in txs] == [40, 8, 25, 0]
    assert await balances(db, [first, second]) == {first: 25, second: 0}
    assert await user_transactions(db, [first, second]) == {first: before[first] + 2, second: before[second] + 2}
    assert await stored(db, keys) == dict.fromkeys(keys, 201)


# Per-item idempotency ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("atomic", [False, True])
async def test_resending_a_batch_replays_every_item(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection, atomic: bool
) -> None:
    first, second = await create_users(client, api_keys, 2)
    operations = [op("topup", first, 100), op("purchase", first, 30), op("bonus", second, 3, metadata={"x": [1]})]
    if not atomic:
        operations.append(op("purchase", second, 1_000))  # a stored failure replays too
    keys = [operation["idempotency_key"] for operation in operations]
    body = batch(*operations, atomic=atomic)
    first_results = results_of(await send(client, api_keys, body), len(operations))
    written = await snapshot(db, [first, second], keys)

    again = results_of(await send(client, api_keys, body), len(operations))
    for index in range(3):
        tx = assert_created(again[index], operations[index], replayed=True)
        assert tx == first_results[index]["transaction"]
    if not atomic:
        problem = assert_failed(again[3], 409, "insufficient_funds", replayed=True)
        assert problem == first_results[3]["problem"]

    assert await snapshot(db, [first, second], keys) == written
    assert await balances(db, [first, second]) == {first: 70, second: 3}


async def test_single_post_key_replays_in_a_batch(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection
) -> None:
    (user,) = await create_users(client, api_keys, 1)
    key = idem()
    single = await client.post(
        "/v1/topups",
        json={"user_id": user, "asset": "GOLD", "amount": 25, "description": "d", "metadata": {"m": 1}},
        headers={**api_keys.headers("admin"), "Idempotency-Key": key},
    )
    assert single.status_code == 201, single.text

    operations = [op("topup", user, 25, key=key, description="d", metadata={"m": 1}), op("topup", user, 4)]
    results = results_of(await send(client, api_keys, batch(*operations)), 2)
    assert assert_created(results[0], operations[0], replayed=True) == single.json()
    assert assert_created(results[1], operations[1])["balance_after"] == 29
    assert await balances(db, [user]) == {user: 29}
    assert (await user_transactions(db, [user]))[user] == 2


async def test_batch_item_key_replays_as_a_single_post(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection
) -> None:
    (user,) = await create_users(client, api_keys, 1)
    operations = [op("bonus", user, 12), op("purchase", user, 2)]
    results = results_of(await send(client, api_keys, batch(*operations)), 2)
    created = [assert_created(result, operation) for result, operation in zip(results, operations, strict=True)]

    for operation, tx in zip(operations, created, strict=True):
        response = await client.post(
            PATHS[operation["type"]],
            json={"user_id": user, "asset": "GOLD", "amount": operation["amount"]},
            headers={**api_keys.headers("admin"), "Idempotency-Key": operation["idempotency_key"]},
        )
        assert response.status_code == 201, response.text
        assert response.headers.get("idempotent-replayed") == "true", response.headers
        assert response.json() == tx
    assert await balances(db, [user]) == {user: 10}
    assert (await user_transactions(db, [user]))[user] == 2


async def test_key_of_another_request_is_reused_for_that_item_only(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection
) -> None:
    (user,) = await create_users(client, api_keys, 1)
    amount_key, endpoint_key = idem(), idem()
    for key in (amount_key, endpoint_key):
        response = await client.post(
            "/v1/topups",
            json={"user_id": user, "asset": "GOLD", "amount": 100},
            headers={**api_keys.headers("admin"), "Idempotency-Key": key},
        )
        assert response.status_code == 201, response.text
    operations = [
        op("topup", user, 200, key=amount_key),  # same endpoint, another amount
        op("topup", user, 5),
        op("purchase", user, 100, key=endpoint_key),  # same body, another endpoint
    ]
    results = results_of(await send(client, api_keys, batch(*operations, atomic=False)), 3)
    problem = assert_failed(results[0], 422, "idempotency_key_reused")
    assert [d["field"] for d in problem["differences"]] == ["amount"], problem
    assert_created(results[1], operations[1])
    problem = assert_failed(results[2], 422, "idempotency_key_reused")
    assert "endpoint" in [d["field"] for d in problem["differences"]], problem
    assert await balances(db, [user]) == {user: 205}
    assert (await user_transactions(db, [user]))[user] == 3


async def test_batch_item_key_sent_again_as_another_single_request_is_reused(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection
) -> None:
    (user,) = await create_users(client, api_keys, 1)
    operation = op("topup", user, 9)
    assert_created(results_of(await send(client, api_keys, batch(operation)), 1)[0], operation)
    response = await client.post(
        "/v1/topups",
        json={"user_id": user, "asset": "GOLD", "amount": 10},
        headers={**api_keys.headers("admin"), "Idempotency-Key": operation["idempotency_key"]},
    )
    assert_problem(response, 422, "idempotency_key_reused")
    assert await balances(db, [user]) == {user: 9}


async def test_item_keys_are_scoped_to_the_api_key(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection
) -> None:
    (user,) = await create_users(client, api_keys, 1)
    operation = op("topup", user, 6)
    by_admin = results_of(await send(client, api_keys, batch(operation), scope="admin"), 1)
    by_topup = results_of(await send(client, api_keys, batch(operation), scope="topup"), 1)
    first, second = assert_created(by_admin[0], operation), assert_created(by_topup[0], operation)
    assert first["id"] != second["id"]
    assert await balances(db, [user]) == {user: 12}


async def test_stored_insufficient_funds_replays_as_409_in_a_later_batch(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection
) -> None:
    (user,) = await create_users(client, api_keys, 1)
    key = idem()
    refused = await client.post(
        "/v1/purchases",
        json={"user_id": user, "asset": "GOLD", "amount": 50},
        headers={**api_keys.headers("admin"), "Idempotency-Key": key},
    )
    original = assert_problem(refused, 409, "insufficient_funds")
    await topup(client, api_keys, user, 100)  # the purchase would now succeed, but its key has its answer

    operations = [op("purchase", user, 50, key=key), op("purchase", user, 10)]
    results = results_of(await send(client, api_keys, batch(*operations)), 2)
    assert assert_failed(results[0], 409, "insufficient_funds", replayed=True) == original
    assert assert_created(results[1], operations[1])["balance_after"] == 90
    assert await balances(db, [user]) == {user: 90}

    # And a failure stored by a batch replays as a single request.
    failing = op("purchase", user, 1_000)
    first = assert_failed(results_of(await send(client, api_keys, batch(failing)), 1)[0], 409, "insufficient_funds")
    await topup(client, api_keys, user, 1_000)
    replay = await client.post(
        "/v1/purchases",
        json={"user_id": user, "asset": "GOLD", "amount": 1_000},
        headers={**api_keys.headers("admin"), "Idempotency-Key": failing["idempotency_key"]},
    )
    assert assert_problem(replay, 409, "insufficient_funds") == first
    assert replay.headers.get("idempotent-replayed") == "true", replay.headers
    assert await balances(db, [user]) == {user: 1_090}


# Authentication and scopes ---------------------------------------------------------------------------------------


async def test_topup_key_can_batch_topups(client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection) -> None:
    (user,) = await create_users(client, api_keys, 1)
    operations = [op("topup", user, 3), op("topup", user, 4)]
    results = results_of(await send(client, api_keys, batch(*operations), scope="topup"), 2)
    for result, operation in zip(results, operations, strict=True):
        assert_created(result, operation)
    assert await balances(db, [user]) == {user: 7}


@pytest.mark.parametrize(
    ("scope", "kinds", "status", "code"),
    [
        ("topup", ["topup", "purchase"], 403, "forbidden"),
        ("topup", ["topup", "bonus"], 403, "forbidden"),
        ("purchase", ["purchase", "topup"], 403, "forbidden"),
        ("read", ["topup"], 403, "forbidden"),
        (None, ["topup"], 401, "unauthenticated"),
    ],
)
async def test_batch_needs_the_scope_of_every_item(
    client: httpx.AsyncClient,
    api_keys: Keys,
    db: asyncpg.Connection,
    scope: str | None,
    kinds: list[str],
    status: int,
    code: str,
) -> None:
    (user,) = await create_users(client, api_keys, 1)
    await topup(client, api_keys, user, 50)
    operations = [op(kind, user, 5) for kind in kinds]
    keys = [operation["idempotency_key"] for operation in operations]
    before = await snapshot(db, [user], keys)
    if scope is None:
        response = await send(client, None, batch(*operations))
    else:
        response = await send(client, api_keys, batch(*operations), scope=scope)
    assert_problem(response, status, code)
    assert await snapshot(db, [user], keys) == before
    assert before["records"] == 0


async def test_unknown_api_key_is_401(client: httpx.AsyncClient, api_keys: Keys) -> None:
    (user,) = await create_users(client, api_keys, 1)
    response = await send(client, None, batch(op("topup", user, 1)), Authorization="Bearer wk_not-a-key")
    assert_problem(response, 401, "unauthenticated")


# Validation ------------------------------------------------------------------------------------------------------


def at(index: int, **changes: Any) -> Callable[[dict], Any]:
    def mutate(body: dict) -> dict:
        body["operations"][index].update(changes)
        return body

    return mutate


def without(index: int, field: str) -> Callable[[dict], Any]:
    def mutate(body: dict) -> dict:
        del body["operations"][index][field]
        return body

    return mutate


def duplicate_key(body: dict) -> dict:
    body["operations"][3]["idempotency_key"] = body["operations"][1]["idempotency_key"]
    return body


def item_not_an_object(body: dict) -> dict:
    body["operations"][2] = "topup"
    return body


INVALID: dict[str, tuple[Callable[[dict], Any], list[Any] | None]] = {
    "body is a list": (lambda body: body["operations"], None),
    "body is a string": (lambda body: "operations", None),
    "body is null": (lambda body: None, None),
    "body is not JSON": (lambda body: orjson.dumps(body)[:-5], ["body"]),
    "operations missing": (lambda body: {"atomic": False}, ["operations"]),
    "operations not a list": (lambda body: {"operations": body["operations"][0]}, ["operations"]),
    "operations empty": (lambda body: {"operations": []}, ["operations"]),
    "unknown top-level field": (lambda body: {**body, "dry_run": True}, ["dry_run"]),
    "atomic is a string": (lambda body: {**body, "atomic": "true"}, ["atomic"]),
    "atomic is 1": (lambda body: {**body, "atomic": 1}, ["atomic"]),
    "atomic is null": (lambda body: {**body, "atomic": None}, ["atomic"]),
    "item not an object": (item_not_an_object, ["operations", 2]),
    "amount 1.5 at index 3": (at(3, amount=1.5), ["operations", 3, "amount"]),
    "amount 10.0": (at(1, amount=10.0), ["operations", 1, "amount"]),
    "amount a string": (at(1, amount="10"), ["operations", 1, "amount"]),
    "amount a boolean": (at(4, amount=True), ["operations", 4, "amount"]),
    "amount zero": (at(0, amount=0), ["operations", 0, "amount"]),
    "amount negative": (at(2, amount=-5), ["operations", 2, "amount"]),
    "amount over 10^15": (at(2, amount=10**15 + 1), ["operations", 2, "amount"]),
    "unknown type": (at(2, type="teleport"), ["operations", 2, "type"]),
    "type missing": (without(0, "type"), ["operations", 0, "type"]),
    "user_id missing": (without(4, "user_id"), ["operations", 4, "user_id"]),
    "user_id malformed": (at(4, user_id="-bad id"), ["operations", 4, "user_id"]),
    "asset malformed": (at(2, asset="gold"), ["operations", 2, "asset"]),
    "unknown item field": (at(2, fee=1), ["operations", 2, "fee"]),
    "idempotency_key missing": (without(1, "idempotency_key"), ["operations", 1, "idempotency_key"]),
    "idempotency_key empty": (at(1, idempotency_key=""), ["operations", 1, "idempotency_key"]),
    "idempotency_key with a space": (at(1, idempotency_key="a b"), ["operations", 1, "idempotency_key"]),
    "idempotency_key too long": (at(1, idempotency_key="k" * 256), ["operations", 1, "idempotency_key"]),
    "idempotency_key not a string": (at(1, idempotency_key=12345), ["operations", 1, "idempotency_key"]),
    "duplicate idempotency keys": (duplicate_key, ["operations", 3, "idempotency_key"]),
    "description too long": (at(0, description="x" * 501), ["operations", 0, "description"]),
    "metadata not an object": (at(0, metadata=[1, 2]), ["operations", 0, "metadata"]),
}


@pytest.mark.parametrize("case", list(INVALID))
async def test_malformed_batch_is_422_naming_the_item_and_writes_nothing(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection, case: str
) -> None:
    (user,) = await create_users(client, api_keys, 1)
    await topup(client, api_keys, user, 1_000)
    operations = [op("topup", user, 10), op("bonus", user, 20), op("purchase", user, 30), op("topup", user, 40)]
    operations.append(op("purchase", user, 50))
    keys = [operation["idempotency_key"] for operation in operations]
    before = await snapshot(db, [user], keys)
    mutate, loc = INVALID[case]
    body = mutate(orjson.loads(orjson.dumps(batch(*operations))))

    problem = assert_problem(await send(client, api_keys, body), 422, "validation_error")
    assert isinstance(problem.get("errors"), list), problem
    assert problem["errors"], problem
    if loc is not None:
        assert loc in [error["loc"] for error in problem["errors"]], (loc, problem["errors"])
    assert await snapshot(db, [user], keys) == before


async def test_validation_failure_stores_nothing_so_the_corrected_batch_can_reuse_the_keys(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection
) -> None:
    (user,) = await create_users(client, api_keys, 1)
    operations = [op("topup", user, amount) for amount in (1, 2, 3, 4, 5)]
    operations[3]["amount"] = 1.5
    problem = assert_problem(await send(client, api_keys, batch(*operations)), 422, "validation_error")
    assert [error["loc"] for error in problem["errors"]] == [["operations", 3, "amount"]], problem

    operations[3]["amount"] = 4
    results = results_of(await send(client, api_keys, batch(*operations)), 5)
    for result, operation in zip(results, operations, strict=True):
        assert_created(result, operation)
    assert await balances(db, [user]) == {user: 15}


async def test_content_type_must_be_json(client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection) -> None:
    (user,) = await create_users(client, api_keys, 1)
    operation = op("topup", user, 5)
    response = await send(client, api_keys, batch(operation), **{"Content-Type": "text/plain"})
    assert_problem(response, 422, "validation_error")
    assert await balances(db, [user]) == {user: 0}


async def test_1001_operations_is_422(client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection) -> None:
    (user,) = await create_users(client, api_keys, 1)
    operations = [op("topup", user, 1) for _ in range(1_001)]
    keys = [operation["idempotency_key"] for operation in operations]
    problem = assert_problem(await send(client, api_keys, batch(*operations)), 422, "validation_error")
    assert ["operations"] in [error["loc"] for error in problem["errors"]], problem["errors"]
    assert await balances(db, [user]) == {user: 0}
    assert await stored(db, keys) == {}


# Size ------------------------------------------------------------------------------------------------------------


async def make_users(db: asyncpg.Connection, count: int) -> list[str]:
    """`count` new users with one account per asset, in one statement (the shape of reads._ENSURE_USER_SQL)."""
    prefix = uuid.uuid4().hex[:6]
    users = [f"{prefix}{i}" for i in range(count)]
    await db.execute(
        """WITH created AS (
               INSERT INTO users (user_id) SELECT unnest($1::text[]) RETURNING user_id
           )
           INSERT INTO accounts (kind, name, asset, user_id, lots)
           SELECT 'user', 'user:' || c.user_id, a.code, c.user_id, a.lots FROM created c CROSS JOIN assets a""",
        users,
    )
    return users


async def test_batch_of_1000_topups_to_distinct_users(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection
) -> None:
    """The spec allows 1 to 1,000 operations; the largest batch must be accepted as the service is configured."""
    users = await make_users(db, 1_000)
    operations = [op("topup", user, index + 1, key=f"{user}k") for index, user in enumerate(users)]
    response = await send(client, api_keys, batch(*operations))
    results = results_of(response, 1_000)
    assert [result["status"] for result in results] == [201] * 1_000
    for result, operation in zip(results, operations, strict=True):
        assert assert_created(result, operation)["balance_after"] == operation["amount"]
    assert await balances(db, users) == {user: index + 1 for index, user in enumerate(users)}
    assert await user_transactions(db, users) == dict.fromkeys(users, 1)


# Concurrency -----------------------------------------------------------------------------------------------------


async def test_parallel_batches_in_opposite_orders_never_deadlock(
    http: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection
) -> None:
    users = await create_users(http, api_keys, 10)
    for user in users:
        await topup(http, api_keys, user, 50)
    initial = await user_transactions(db, users)

    bodies = []
    for number in range(12):
        order = users if number % 2 == 0 else users[::-1]
        operations = []
        for user in order:
            pair = [op("topup", user, 3), op("purchase", user, 10)]
            operations.extend(pair if number % 4 < 2 else pair[::-1])
        if number % 6 == 3:  # an atomic batch bound to abort, after taking its locks
            operations.insert(len(operations) // 2, op("purchase", order[0], 10**6))
        bodies.append(batch(*operations, atomic=number % 3 == 0))

    responses = await asyncio.gather(*(send(http, api_keys, body) for body in bodies))
    assert [response.status_code for response in responses] == [200] * len(bodies), [
        (response.status_code, response.text[:300]) for response in responses if response.status_code != 200
    ]

    expected = dict.fromkeys(users, 50)
    written = dict.fromkeys(users, 0)
    statuses: list[int] = []
    for body, response in zip(bodies, responses, strict=True):
        results = results_of(response, len(body["operations"]))
        if body["atomic"]:
            assert {result["status"] for result in results} in ({201}, {409, 424}), results
        for operation, result in zip(body["operations"], results, strict=True):
            statuses.append(result["status"])
            if result["status"] == 201:
                assert_created(result, operation)
                expected[operation["user_id"]] += USER_SIGN[operation["type"]] * operation["amount"]
                written[operation["user_id"]] += 1
            elif result["status"] == 409:
                assert_failed(result, 409, "insufficient_funds")
            else:
                assert_failed(result, 424, "batch_aborted")
    assert {201, 409, 424} <= set(statuses), statuses

    assert await balances(db, users) == expected
    assert await user_transactions(db, users) == {user: initial[user] + written[user] for user in users}
