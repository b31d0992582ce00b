"""What the test files share: unique ids, the movement paths, assertions on problems, transactions and the books,
request helpers, a free port, and a few database helpers. Fixtures stay in conftest.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx

from wallet.kinds import KINDS

if TYPE_CHECKING:
    from tests.conftest import Keys

# The service's registry of posting kinds, as the tests use it: each kind's route, the other side of its
# posting, and the sign of the user's entry.
PATHS = {kind.type: kind.path for kind in KINDS.values()}
SYSTEM_SIDE = {kind.type: f"system:{kind.system_account}" for kind in KINDS.values()}
USER_SIGN = {kind.type: kind.direction for kind in KINDS.values()}

PROBLEM = "application/problem+json"
TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")
TRANSACTION_FIELDS = {
    "id",
    "type",
    "status",
    "user_id",
    "asset",
    "amount",
    "balance_after",
    "description",
    "metadata",
    "entries",
    "rewards",
    "refund_of",
    "hold_id",
    "created_at",
}


# Unique ids --------------------------------------------------------------------------------------------------------


def new_id(prefix: str) -> str:
    """`prefix-` and 12 random hex digits: a user id (or key name) no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def fresh_id() -> str:
    """A user id that nobody has created."""
    return new_id("c")


def idem() -> str:
    """A new Idempotency-Key."""
    return f"k-{uuid.uuid4().hex}"


# Assertions --------------------------------------------------------------------------------------------------------


def media_type(response: httpx.Response) -> str:
    return response.headers.get("content-type", "").split(";", 1)[0].strip()


def assert_problem_document(body: dict[str, Any], status: int, code: str) -> dict[str, Any]:
    """An RFC 9457 problem document with this status and code: a response's body, or a batch item's `problem`."""
    for field in ("type", "title", "detail", "code"):
        assert isinstance(body.get(field), str), (field, body)
        assert body[field], (field, body)
    assert body["status"] == status, body
    assert body["code"] == code, body
    return body


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The response is an RFC 9457 problem document with this status and code."""
    assert response.status_code == status, (response.status_code, response.text)
    assert media_type(response) == PROBLEM, response.headers
    assert response.headers.get("x-request-id"), response.headers
    return assert_problem_document(response.json(), status, code)


def error_locations(body: dict[str, Any]) -> set[str]:
    """Every name that appears in the `loc` of the problem's `errors`."""
    assert isinstance(body.get("errors"), list), body
    assert body["errors"], body
    return {str(part) for error in body["errors"] for part in error["loc"]}


def assert_validation_error(response: httpx.Response, field: str | None = None) -> dict[str, Any]:
    body = assert_problem(response, 422, "validation_error")
    locations = error_locations(body)
    if field is not None:
        assert field in locations, (field, body["errors"])
    return body


def assert_transaction(body: dict[str, Any]) -> None:
    assert set(body) == TRANSACTION_FIELDS, body
    assert isinstance(body["id"], str), body
    assert body["id"], body
    assert body["status"] == "posted"
    assert TIMESTAMP.fullmatch(body["created_at"]), body["created_at"]
    assert isinstance(body["amount"], int)
    totals: dict[str, int] = {}
    for entry in body["entries"]:
        assert set(entry) == {"account", "asset", "amount"}
        assert isinstance(entry["amount"], int)
        totals[entry["asset"]] = totals.get(entry["asset"], 0) + entry["amount"]
    assert body["asset"] in totals, body["entries"]
    assert set(totals.values()) == {0}, body["entries"]


async def assert_books_balance(db: asyncpg.Connection) -> None:
    """The trial balance, read from one snapshot: for every asset the balances of all accounts (users and system
    accounts together) sum to 0, and so do each transaction's entries."""
    async with db.transaction(isolation="repeatable_read", readonly=True):
        totals = await db.fetch("SELECT asset, sum(balance) AS total FROM account_balances GROUP BY asset")
        assert totals, "no account at all"
        assert {row["asset"]: row["total"] for row in totals if row["total"] != 0} == {}

        unbalanced = await db.fetch(
            """SELECT e.transaction_id, a.asset, sum(e.amount) AS total
                 FROM entries e JOIN accounts a ON a.id = e.account_id
                GROUP BY e.transaction_id, a.asset HAVING sum(e.amount) <> 0"""
        )
        assert [dict(row) for row in unbalanced] == []


# Requests ----------------------------------------------------------------------------------------------------------


def movement(user_id: str, amount: Any = 100, asset: str = "GOLD", **extra: Any) -> dict[str, Any]:
    return {"user_id": user_id, "asset": asset, "amount": amount, **extra}


def post(
    client: httpx.AsyncClient,
    keys: Keys,
    path: str,
    body: Any,
    key: str | None = None,
    scope: str = "admin",
    **headers: str,
) -> Awaitable[httpx.Response]:
    all_headers = {**keys.headers(scope), **headers}
    if key is not None:
        all_headers["Idempotency-Key"] = key
    return client.post(path, json=body, headers=all_headers)


async def move(
    client: httpx.AsyncClient, keys: Keys, kind: str, user_id: str, amount: int, asset: str = "GOLD"
) -> dict[str, Any]:
    """A movement of this kind with a new key and the admin key, which must be posted (201): the transaction."""
    response = await post(client, keys, PATHS[kind], movement(user_id, amount, asset), idem())
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def balance(client: httpx.AsyncClient, keys: Keys, user_id: str, asset: str = "GOLD") -> int:
    response = await client.get(f"/v1/users/{user_id}/balances/{asset}", headers=keys.headers("read"))
    assert response.status_code == 200, response.text
    value: int = response.json()["balance"]
    return value


async def create_user(client: httpx.AsyncClient, keys: Keys, prefix: str = "u", **fields: Any) -> str:
    """A new user (PUT with `fields` as the body, when there are any), which must be created (201): its id."""
    user_id = new_id(prefix)
    response = await client.put(f"/v1/users/{user_id}", json=fields or None, headers=keys.headers("admin"))
    assert response.status_code == 201, response.text
    return user_id


def refund(
    client: httpx.AsyncClient,
    keys: Keys,
    transaction_id: str,
    body: Any,
    key: str | None = None,
    scope: str = "purchase",
) -> Awaitable[httpx.Response]:
    """POST /v1/transactions/{id}/refunds with a new key (or `key`), by default with a purchase-scope key."""
    return post(client, keys, f"/v1/transactions/{transaction_id}/refunds", body, key or idem(), scope=scope)


@contextlib.asynccontextmanager
async def frozen(
    client: httpx.AsyncClient, keys: Keys, user_id: str, reason: str = "Under review"
) -> AsyncIterator[None]:
    """The user frozen for the block (POST .../freeze), and unfrozen after it, whatever happened."""
    response = await client.post(f"/v1/users/{user_id}/freeze", json={"reason": reason}, headers=keys.headers("admin"))
    assert response.status_code == 200, response.text
    assert (response.json()["status"], response.json()["frozen_reason"]) == ("frozen", reason), response.text
    try:
        yield
    finally:
        response = await client.post(f"/v1/users/{user_id}/unfreeze", json={}, headers=keys.headers("admin"))
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "active", response.text


# Servers and databases ---------------------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def with_database(url: str, name: str) -> str:
    """The same server's URL, for the database `name`."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


WALLET = str(Path(sys.executable).with_name("wallet"))


def wallet_verify(database_url: str) -> subprocess.CompletedProcess[str]:
    """`wallet verify` on a database, as an operator runs it; its report is in stdout."""
    return subprocess.run(
        [WALLET, "verify"],
        env={**os.environ, "WALLET_DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@contextlib.contextmanager
def own_database(server_url: str, prefix: str = "wallet_test") -> Iterator[str]:
    """A new, empty database on the test server, for a test that must not share the session's; dropped after."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    asyncio.run(execute_alone(server_url, f'CREATE DATABASE "{name}"'))
    try:
        yield with_database(server_url, name)
    finally:
        asyncio.run(execute_alone(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def execute_alone(url: str, sql: str) -> None:
    """One statement on a connection of its own, outside any transaction (as CREATE and DROP DATABASE need)."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def stored_balance(db: asyncpg.Connection, account: str, asset: str = "GOLD") -> int:
    """An account's balance as the database has it (account_balances: stored balance plus pending deltas)."""
    value = await db.fetchval("SELECT balance FROM account_balances WHERE name = $1 AND asset = $2", account, asset)
    if value is None and account.startswith("user:"):
        return 0  # not opened yet: a user account appears with its first credit
    assert value is not None, (account, asset)
    return int(value)


async def ledger_counts(db: asyncpg.Connection, user_id: str) -> dict[str, int]:
    row = await db.fetchrow(
        """SELECT (SELECT count(*) FROM transactions) AS transactions,
                  (SELECT count(*) FROM entries) AS entries,
                  (SELECT count(*) FROM transactions WHERE user_id = $1) AS user_transactions,
                  (SELECT coalesce(sum(balance), 0) FROM accounts WHERE user_id = $1) AS user_total""",
        user_id,
    )
    assert row is not None
    return {name: int(value) for name, value in row.items()}


async def user_balances(db: asyncpg.Connection, user_id: str) -> dict[str, int]:
    """Every balance of the user, by asset, as the database has it: the assets the user has an account in (one is
    opened by its first credit)."""
    rows = await db.fetch("SELECT asset, balance FROM accounts WHERE user_id = $1", user_id)
    return {row["asset"]: int(row["balance"]) for row in rows}


async def open_account(db: asyncpg.Connection, user_id: str, asset: str = "GOLD") -> None:
    """The user's account in `asset`, opened now with nothing in it, for a test that locks the row: accounts
    otherwise appear with their first credit (users created before migration 0006 have one in every asset)."""
    await db.execute(
        """INSERT INTO accounts (kind, name, asset, user_id, frozen, lots)
           SELECT 'user', 'user:' || u.user_id, s.code, u.user_id, u.status = 'frozen', s.lots
             FROM users u, assets s WHERE u.user_id = $1 AND s.code = $2
           ON CONFLICT DO NOTHING""",
        user_id,
        asset,
    )


async def stored_keys(db: asyncpg.Connection, key: str) -> int:
    """How many idempotency records hold this key (one per API key that used it)."""
    return int(await db.fetchval("SELECT count(*) FROM idempotency_keys WHERE key = $1", key))


async def post_legs(
    db: asyncpg.Connection,
    legs: Sequence[tuple[str, int]],
    *,
    asset: str = "GOLD",
    type_: str = "engine_test",
    user_id: str | None = None,
    amount: int | None = None,
    description: str | None = None,
    metadata: dict[str, Any] | None = None,
    key_name: str = "engine-test",
) -> asyncpg.Record:
    """The posting engine called directly: `wallet_request()` with these legs, all in `asset`, and no idempotency
    key. The record has the transaction id (`transaction_id`) or the problem (`problem`: code and detail)."""
    accounts = [account for account, _ in legs]
    amounts = [value for _, value in legs]
    if amount is None:
        amount = max((abs(value) for value in amounts), default=1) or 1
    posting = (
        type_, user_id, asset, amount, description, metadata, accounts, [asset] * len(legs), amounts,
        None, None, None, False,
    )  # fmt: skip
    row = await db.fetchrow(
        "SELECT transaction_id, problem FROM wallet_request("
        " ROW(NULL, $2, gen_random_uuid(), NULL, NULL, NULL, $1::wallet_posting)::wallet_item)",
        posting,
        key_name,
    )
    assert row is not None
    return row
