"""The ledger: postings through the engine in SQL, reads, and the maintenance that runs beside them.

Each function is one statement on the database's unit of work, so one request is one database transaction and
nothing here commits by itself. Representations are rendered by PostgreSQL as JSON text and passed through
untouched, so that a transaction reads the same from the POST that created it, from a replay, and from GET.
"""

import asyncio
import dataclasses
import logging
import re
import uuid
from dataclasses import dataclass
from typing import Any, Literal

import asyncpg
import orjson

from wallet.config import Settings
from wallet.database import Database
from wallet.errors import CODES, AssetNotFound, TransactionNotFound, UserNotFound, ValidationFailed, WalletError
from wallet.kinds import Kind
from wallet.render import TransactionView, public_id

log = logging.getLogger("wallet.ledger")

TRANSACTION_ID_PATTERN = re.compile(r"tx_([0-9a-f]{16})")
VIEW_FIELDS = tuple(field.name for field in dataclasses.fields(TransactionView))
PURGE_INTERVAL_S = 3600
PURGE_RETRY_S = 60


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
    """What a money-moving request came to: `created`, `failed` (a recorded business error), `replayed` (the
    key's first outcome, success or failure), or `reused` (the key belongs to another request; `problem` holds
    what that request was: its endpoint and request). Batches add `aborted` (atomic batch, not written because
    another item failed) and `rejected` (atomic batch, failed and not recorded)."""

    kind: OutcomeKind
    transaction: TransactionView | None
    problem: dict[str, Any] | None  # the business error (code, detail), or for `reused` the first request

    @property
    def status(self) -> int:
        if self.transaction is not None:
            return 201
        assert self.problem is not None
        code = "idempotency_key_reused" if self.kind == "reused" else self.problem["code"]
        return CODES[code][0]


def _outcome(row: asyncpg.Record, movement: Movement) -> Outcome:
    """A `wallet_outcome` row: the transaction's values the request did not send, joined to what it did."""
    if row["transaction_id"] is None:
        return Outcome(row["outcome"], None, row["problem"])
    legs = movement.kind.legs(movement.user_id, movement.amount)
    transaction = TransactionView(
        id=row["transaction_id"],
        type=movement.kind.type,
        user_id=movement.user_id,
        asset=movement.asset,
        amount=movement.amount,
        balance_after=row["balance_after"],
        description=movement.description,
        metadata=row["metadata"],
        accounts=[account for account, _ in legs],
        amounts=[amount for _, amount in legs],
        created_at=row["created_at"],
    )
    return Outcome(row["outcome"], transaction, None)


def _item(caller: Caller, idempotency_key: str, movement: Movement) -> tuple[Any, ...]:
    """A `wallet_item`: who sends it, the key, the fingerprint it is bound to, and the posting (a
    `wallet_posting`) that the kind's template makes of the request."""
    kind = movement.kind
    legs = kind.legs(movement.user_id, movement.amount)
    posting = (
        kind.type,
        movement.user_id,
        movement.asset,
        movement.amount,
        movement.description,
        movement.metadata,
        [account for account, _ in legs],
        [movement.asset] * len(legs),
        [amount for _, amount in legs],
    )
    return (
        caller.api_key_id,
        caller.api_key_name,
        caller.attempt_id,
        idempotency_key,
        kind.endpoint,
        movement.request(),
        posting,
    )


async def post(database: Database, caller: Caller, idempotency_key: str, movement: Movement) -> Outcome:
    """Posts one movement under its idempotency key, or replays what the key recorded."""
    return await database.run(lambda conn: post_on(conn, caller, idempotency_key, movement))


REQUEST_SQL = "SELECT * FROM wallet_request($1)"
BATCH_SQL = "SELECT * FROM wallet_batch($1, $2)"
HOT_STATEMENTS = (REQUEST_SQL, BATCH_SQL)  # prepared on every pooled connection at start (Database.warm)


async def post_on(conn: asyncpg.Connection, caller: Caller, idempotency_key: str, movement: Movement) -> Outcome:
    """`post` on a connection of the caller's (the seed's)."""
    row = await conn.fetchrow(REQUEST_SQL, _item(caller, idempotency_key, movement))
    assert row is not None
    return _outcome(row, movement)


@dataclass(frozen=True, slots=True)
class Request:
    """One money-moving request, as a batch item or a request the service coalesces with others."""

    caller: Caller
    idempotency_key: str
    movement: Movement


async def post_batch(database: Database, atomic: bool, requests: list[Request]) -> list[Outcome]:
    """Posts every request in one statement (one transaction), each through the item path; outcomes in order."""
    items = [_item(r.caller, r.idempotency_key, r.movement) for r in requests]
    rows = await database.fetch(BATCH_SQL, atomic, items)
    return [_outcome(row, request.movement) for row, request in zip(rows, requests, strict=True)]


def differences(stored: dict[str, Any], endpoint: str, request: dict[str, Any]) -> list[dict[str, Any]]:
    """Which fields of a request differ from the one its idempotency key was first used for."""
    if stored["endpoint"] != endpoint:
        return [{"field": "endpoint", "first": stored["endpoint"], "now": endpoint}]
    first = stored["request"]
    request = orjson.loads(orjson.dumps(request))  # numbers as the stored request reads back (kept text included)
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


def _view(row: asyncpg.Record) -> TransactionView:
    """A row of wallet_transactions()."""
    return TransactionView(**{name: row[name] for name in VIEW_FIELDS})


async def get_transaction(database: Database, public_id: str) -> bytes:
    internal_id = parse_transaction_id(public_id)
    row = None
    if internal_id is not None:
        row = await database.fetchrow("SELECT * FROM wallet_transactions(ARRAY[$1::bigint])", internal_id)
    if row is None:
        raise TransactionNotFound(f"Transaction {public_id[:64]} does not exist.")
    return _view(row).render()


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
             WHERE user_id = $1 AND $3 AND display_name IS DISTINCT FROM $2 AND NOT EXISTS (SELECT 1 FROM created)
            RETURNING *
        )
        SELECT true AS created, {_USER_JSON} AS body FROM created u
        UNION ALL SELECT false, {_USER_JSON} FROM renamed u
        UNION ALL SELECT false, {_USER_JSON} FROM users u
         WHERE u.user_id = $1 AND NOT EXISTS (SELECT 1 FROM created) AND NOT EXISTS (SELECT 1 FROM renamed)
        """


async def ensure_user(
    conn: asyncpg.Connection, user_id: str, display_name: str | None, rename: bool = False
) -> tuple[bool, str]:
    """Creates the user with one account per asset, or returns the existing one, its display name set to
    `display_name` (None clears it) when `rename`. (created, representation)."""
    for _ in range(3):
        row = await conn.fetchrow(_ENSURE_USER_SQL, user_id, display_name, rename)
        if row is not None:
            return bool(row["created"]), str(row["body"])
        # A concurrent PUT committed the user after our statement's snapshot: its insert made ours a no-op,
        # and the snapshot cannot see it. The next statement can.
    raise AssertionError(f"user {user_id} neither created nor found")


async def put_user(database: Database, user_id: str, display_name: str | None, rename: bool) -> tuple[bool, str]:
    return await database.run(lambda conn: ensure_user(conn, user_id, display_name, rename))


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


# A page of a user's history, newest first: each of the user's accounts (one asset, or all) read newest first from
# entries_by_account, stopping after the page, the user's balance_after taken from its own entry, each
# transaction's legs beside it. (0001's wallet_history_page() was a SQL function the planner could not inline:
# planned at every call; this is 35-45% less database time a page, on an account of 300,000 entries or of 20.)
_HISTORY_SQL = """
WITH owner AS (
    SELECT EXISTS (SELECT 1 FROM users WHERE user_id = $1) AS user_exists,
           $2::text IS NULL OR EXISTS (SELECT 1 FROM assets WHERE code = $2) AS asset_exists
), page AS (
    SELECT p.transaction_id, p.balance_after
      FROM accounts ua
     CROSS JOIN LATERAL (SELECT e.transaction_id, e.balance_after FROM entries e
                          WHERE e.account_id = ua.id AND e.transaction_id < coalesce($3, 9223372036854775807)
                          ORDER BY e.transaction_id DESC LIMIT $4) p
     WHERE ua.name = 'user:' || $1 AND ($2::text IS NULL OR ua.asset = $2)
     ORDER BY p.transaction_id DESC LIMIT $4
)
SELECT o.user_exists, o.asset_exists, t.id, t.type, t.user_id, t.asset, t.amount, page.balance_after,
       t.description, t.metadata::text AS metadata, legs.accounts, legs.amounts, t.created_at
  FROM owner o
  LEFT JOIN page ON true
  LEFT JOIN transactions t ON t.id = page.transaction_id
  LEFT JOIN LATERAL (SELECT array_agg(a.name ORDER BY e.leg) AS accounts, array_agg(e.amount ORDER BY e.leg) AS amounts
                       FROM entries e JOIN accounts a ON a.id = e.account_id WHERE e.transaction_id = t.id) legs ON true
 ORDER BY page.transaction_id DESC
"""


async def get_history(database: Database, user_id: str, asset: str | None, limit: int, cursor: str | None) -> bytes:
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
    views = [_view(row) for row in rows if row["id"] is not None]
    next_cursor = None
    if len(views) > limit:
        views = views[:limit]
        next_cursor = public_id(views[-1].id)
    page = {"items": [orjson.Fragment(view.render()) for view in views], "next_cursor": next_cursor}
    return orjson.dumps(page)


# Maintenance ------------------------------------------------------------------------------------------------------


async def purge_idempotency_keys(conn: asyncpg.Connection, retention_days: int) -> int:
    status = await conn.execute(
        "DELETE FROM idempotency_keys WHERE created_at < now() - make_interval(days => $1)", retention_days
    )
    return int(status.split()[-1])


async def maintain(database: Database, settings: Settings) -> None:
    """Background loop of every worker: purges idempotency keys past their retention. Survives outages: a round
    that fails is tried again a minute later."""
    while True:
        try:
            await database.run(lambda conn: purge_idempotency_keys(conn, settings.idempotency_retention_days))
            await asyncio.sleep(PURGE_INTERVAL_S)
        except WalletError as exc:
            log.warning("maintenance skipped: %s", exc.detail)
            await asyncio.sleep(PURGE_RETRY_S)
