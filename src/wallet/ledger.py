"""The ledger: postings through the engine in SQL, reads, and the maintenance that runs beside them.

Each function is one statement on the database's unit of work, so one request is one database transaction and
nothing here commits by itself. Representations are rendered by PostgreSQL as JSON text and passed through
untouched, so that a transaction reads the same from the POST that created it, from a replay, and from GET.
"""

import asyncio
import logging
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal

import asyncpg
import orjson

from wallet.config import Settings
from wallet.database import Database
from wallet.errors import AssetNotFound, TransactionNotFound, UserNotFound, ValidationFailed, WalletError
from wallet.kinds import Kind

log = logging.getLogger("wallet.ledger")

TRANSACTION_ID_PATTERN = re.compile(r"tx_([0-9a-f]{16})")
PURGE_INTERVAL_S = 3600


@dataclass(frozen=True, slots=True)
class Movement:
    """A money-moving request, as validated: what the client asked for."""

    kind: Kind
    user_id: str
    asset: str
    amount: int
    description: str | None
    metadata: dict[str, Any]

    def request(self) -> dict[str, Any]:
        """The canonical body that the idempotency fingerprint compares (defaults filled in)."""
        return {
            "user_id": self.user_id,
            "asset": self.asset,
            "amount": self.amount,
            "description": self.description,
            "metadata": self.metadata,
        }


@dataclass(frozen=True, slots=True)
class Caller:
    """Who posts: the API key (idempotency keys are scoped to it, transactions record its name), and the id of
    this HTTP request, the same across the service's own retries of it."""

    api_key_id: int
    api_key_name: str
    attempt_id: uuid.UUID


OutcomeKind = Literal["created", "failed", "replayed", "reused", "aborted", "rejected"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a money-moving request produced: `created`, `failed` (a recorded business error; `body` holds its
    code and detail), `replayed`, or `reused` (the key belongs to another request; `body` holds what that request
    was). Batches add `aborted` (atomic batch, not written because another item failed) and `rejected` (atomic
    batch, failed and not recorded)."""

    kind: OutcomeKind
    status: int
    body: str
    transaction_id: str | None


_REQUEST_SQL = """
SELECT outcome, status, body, transaction_id
  FROM wallet_request($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
"""


def _outcome(row: asyncpg.Record) -> Outcome:
    return Outcome(row["outcome"], row["status"], row["body"], row["transaction_id"])


async def post(database: Database, caller: Caller, idempotency_key: str, movement: Movement) -> Outcome:
    """Posts one movement under its idempotency key, or replays what the key recorded."""
    return await database.run(lambda conn: post_on(conn, caller, idempotency_key, movement))


async def post_on(conn: asyncpg.Connection, caller: Caller, idempotency_key: str, movement: Movement) -> Outcome:
    """`post` on a connection of the caller's (the seed's)."""
    legs = movement.kind.legs(movement.user_id, movement.amount)
    row = await conn.fetchrow(
        _REQUEST_SQL,
        caller.attempt_id,
        caller.api_key_id,
        caller.api_key_name,
        idempotency_key,
        movement.kind.endpoint,
        movement.request(),
        movement.kind.type,
        movement.asset,
        movement.user_id,
        movement.amount,
        [account for account, _ in legs],
        [amount for _, amount in legs],
        movement.description,
        movement.metadata,
    )
    assert row is not None
    return _outcome(row)


@dataclass(frozen=True, slots=True)
class BatchItem:
    idempotency_key: str
    movement: Movement

    def as_json(self) -> dict[str, Any]:
        movement = self.movement
        legs = movement.kind.legs(movement.user_id, movement.amount)
        return {
            "key": self.idempotency_key,
            "endpoint": movement.kind.endpoint,
            "request": movement.request(),
            "type": movement.kind.type,
            "asset": movement.asset,
            "user_id": movement.user_id,
            "amount": movement.amount,
            "accounts": [account for account, _ in legs],
            "amounts": [amount for _, amount in legs],
            "description": movement.description,
            "metadata": movement.metadata,
        }


async def post_batch(database: Database, caller: Caller, atomic: bool, items: list[BatchItem]) -> list[Outcome]:
    """Posts every item in one statement (one transaction); outcomes in request order."""
    rows = await database.fetch(
        "SELECT outcome, status, body, transaction_id FROM wallet_batch($1, $2, $3, $4, $5) ORDER BY ord",
        caller.attempt_id,
        caller.api_key_id,
        caller.api_key_name,
        atomic,
        [item.as_json() for item in items],
    )
    return [_outcome(row) for row in rows]


def differences(stored: dict[str, Any], endpoint: str, request: dict[str, Any]) -> list[dict[str, Any]]:
    """Which fields of a request differ from the one its idempotency key was first used for."""
    if stored["endpoint"] != endpoint:
        return [{"field": "endpoint", "first": stored["endpoint"], "now": endpoint}]
    first = stored["request"]
    return [
        {"field": name, "first": first.get(name), "now": request.get(name)}
        for name in sorted(set(first) | set(request))
        if first.get(name) != request.get(name)
    ]


# Reads ------------------------------------------------------------------------------------------------------------


def parse_transaction_id(public_id: str) -> int | None:
    match = TRANSACTION_ID_PATTERN.fullmatch(public_id)
    if match is None:
        return None
    internal_id = int(match.group(1), 16)
    return internal_id if internal_id < 2**63 else None  # ids are bigint


async def get_transaction(database: Database, public_id: str) -> str:
    internal_id = parse_transaction_id(public_id)
    body = None
    if internal_id is not None:
        body = await database.fetchval("SELECT wallet_transaction_json($1)", internal_id)
    if body is None:
        raise TransactionNotFound(f"Transaction {public_id[:64]} does not exist.")
    return str(body)


async def list_assets(database: Database) -> str:
    return str(
        await database.fetchval(
            """SELECT json_build_object('items', coalesce(json_agg(
               json_build_object('code', code, 'name', name, 'scale', scale) ORDER BY code), '[]'))
           FROM assets"""
        )
    )


_USER_JSON = """json_build_object('user_id', u.user_id, 'display_name', u.display_name,
                                  'created_at', wallet_ts(u.created_at))"""

_ENSURE_USER_SQL = f"""
        WITH created AS (
            INSERT INTO users (user_id, display_name) VALUES ($1, $2)
            ON CONFLICT (user_id) DO NOTHING RETURNING *
        ), opened AS (
            INSERT INTO accounts (kind, name, asset, user_id)
            SELECT 'user', 'user:' || c.user_id, a.code, c.user_id FROM created c CROSS JOIN assets a
        ), renamed AS (
            UPDATE users SET display_name = $2
             WHERE user_id = $1 AND $2::text IS NOT NULL AND display_name IS DISTINCT FROM $2
               AND NOT EXISTS (SELECT 1 FROM created)
            RETURNING *
        )
        SELECT true AS created, {_USER_JSON} AS body FROM created u
        UNION ALL SELECT false, {_USER_JSON} FROM renamed u
        UNION ALL SELECT false, {_USER_JSON} FROM users u
         WHERE u.user_id = $1 AND NOT EXISTS (SELECT 1 FROM created) AND NOT EXISTS (SELECT 1 FROM renamed)
        """


async def ensure_user(conn: asyncpg.Connection, user_id: str, display_name: str | None) -> tuple[bool, str]:
    """Creates the user with one account per asset, or returns the existing one. (created, representation)."""
    for _ in range(3):
        row = await conn.fetchrow(_ENSURE_USER_SQL, user_id, display_name)
        if row is not None:
            return bool(row["created"]), str(row["body"])
        # A concurrent PUT committed the user after our statement's snapshot: its insert made ours a no-op,
        # and the snapshot cannot see it. The next statement can.
    raise AssertionError(f"user {user_id} neither created nor found")


async def put_user(database: Database, user_id: str, display_name: str | None) -> tuple[bool, str]:
    return await database.run(lambda conn: ensure_user(conn, user_id, display_name))


async def get_user(database: Database, user_id: str) -> str:
    body = await database.fetchval(f"SELECT {_USER_JSON} FROM users u WHERE u.user_id = $1", user_id)
    if body is None:
        raise UserNotFound(f"User {user_id} does not exist.")
    return str(body)


async def get_balances(database: Database, user_id: str) -> str:
    body = await database.fetchval(
        """SELECT json_build_object('user_id', u.user_id, 'balances', (
               SELECT json_agg(json_build_object('asset', s.code, 'balance', coalesce(a.balance, 0))
                               ORDER BY s.code)
                 FROM assets s
                 LEFT JOIN accounts a ON a.asset = s.code AND a.name = 'user:' || u.user_id))
           FROM users u WHERE u.user_id = $1""",
        user_id,
    )
    if body is None:
        raise UserNotFound(f"User {user_id} does not exist.")
    return str(body)


async def get_balance(database: Database, user_id: str, asset: str) -> str:
    row = await database.fetchrow(
        """SELECT EXISTS (SELECT 1 FROM users WHERE user_id = $1) AS user_exists,
                  EXISTS (SELECT 1 FROM assets WHERE code = $2) AS asset_exists,
                  (SELECT balance FROM accounts WHERE name = 'user:' || $1 AND asset = $2) AS balance""",
        user_id,
        asset,
    )
    assert row is not None
    _check_found(row, user_id, asset)
    return orjson.dumps({"user_id": user_id, "asset": asset, "balance": row["balance"] or 0}).decode()


def _check_found(row: asyncpg.Record, user_id: str, asset: str | None) -> None:
    """The one precedence of every route: an unknown user before an unknown asset."""
    if not row["user_exists"]:
        raise UserNotFound(f"User {user_id} does not exist.")
    if not row["asset_exists"]:
        raise AssetNotFound(f"Asset {asset} does not exist.")


_HISTORY_SQL = """
WITH owner AS (
    SELECT EXISTS (SELECT 1 FROM users WHERE user_id = $1) AS user_exists,
           $2::text IS NULL OR EXISTS (SELECT 1 FROM assets WHERE code = $2) AS asset_exists
), page AS (
    SELECT wallet_history_page($1, $2, $3, $4) AS ids
)
SELECT o.user_exists, o.asset_exists, r.id AS transaction_id, r.body
  FROM owner o
 CROSS JOIN page
  LEFT JOIN LATERAL wallet_transactions_json(page.ids) r ON true
 ORDER BY r.id DESC
"""


async def get_history(database: Database, user_id: str, asset: str | None, limit: int, cursor: str | None) -> str:
    """One page of the user's transactions, newest first. The cursor is the last id of the previous page."""
    before_id = None
    if cursor is not None:
        before_id = parse_transaction_id(cursor)
        if before_id is None:
            raise ValidationFailed(
                "The cursor is not one this service handed out.",
                [{"loc": ["query", "cursor"], "msg": "malformed cursor", "type": "cursor"}],
            )
    rows = await database.fetch(_HISTORY_SQL, user_id, asset, before_id, limit + 1)
    _check_found(rows[0], user_id, asset)
    items = [row for row in rows if row["transaction_id"] is not None]
    next_cursor = None
    if len(items) > limit:
        items = items[:limit]
        next_cursor = f'"tx_{items[-1]["transaction_id"]:016x}"'
    return '{"items":[' + ",".join(row["body"] for row in items) + '],"next_cursor":' + (next_cursor or "null") + "}"


# Maintenance ------------------------------------------------------------------------------------------------------


async def rollup(conn: asyncpg.Connection) -> int:
    """Folds pending system-account deltas into their balances; returns how many deltas moved."""
    return int(await conn.fetchval("SELECT wallet_rollup()"))


async def purge_idempotency_keys(conn: asyncpg.Connection, retention_days: int) -> int:
    status = await conn.execute(
        "DELETE FROM idempotency_keys WHERE created_at < now() - make_interval(days => $1)", retention_days
    )
    return int(status.split()[-1])


async def maintain(database: Database, settings: Settings) -> None:
    """Background loop of every worker: folds system-account deltas and purges old idempotency keys. Survives
    outages: a round that fails is skipped."""
    interval_s = settings.rollup_interval_ms / 1000
    purged_at = 0.0
    while True:
        await asyncio.sleep(interval_s)
        try:
            await database.run(rollup)
            if time.monotonic() - purged_at > PURGE_INTERVAL_S:
                await database.run(lambda conn: purge_idempotency_keys(conn, settings.idempotency_retention_days))
                purged_at = time.monotonic()
        except WalletError as exc:
            log.warning("maintenance skipped: %s", exc.detail)
