"""The ledger: posting templates over the engine in SQL, reads, the rollup of system accounts, verification, seed.

Domain functions take a connection and never commit: each call is one statement, so one request is one database
transaction. Representations are rendered by PostgreSQL as JSON text and passed through untouched, so that a
transaction reads the same from the POST that created it, from a replay, and from GET.
"""

import re
import uuid
from dataclasses import dataclass
from typing import Any, Literal

import asyncpg
import orjson

from wallet.errors import AssetNotFound, TransactionNotFound, UserNotFound, ValidationFailed

OperationType = Literal["topup", "bonus", "purchase"]

# Each template names the system account on the other side and the sign of the user's leg.
TEMPLATES: dict[str, tuple[str, int]] = {
    "topup": ("system:treasury", +1),
    "bonus": ("system:bonus_pool", +1),
    "purchase": ("system:revenue", -1),
}
SYSTEM_ACCOUNTS = ("treasury", "bonus_pool", "revenue")

TRANSACTION_ID_PATTERN = re.compile(r"tx_([0-9a-f]{16})")


@dataclass(frozen=True, slots=True)
class Movement:
    """A money-moving request, as validated: what the client asked for."""

    type: OperationType
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

    def legs(self) -> tuple[list[str], list[int]]:
        system_account, user_sign = TEMPLATES[self.type]
        return [f"user:{self.user_id}", system_account], [user_sign * self.amount, -user_sign * self.amount]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a money-moving request produced: `created`, `failed` (recorded business error), `replayed` or
    `reused` (the key belongs to another request; `body` holds what that request was)."""

    kind: Literal["created", "failed", "replayed", "reused", "aborted", "rejected"]
    status: int
    body: str
    transaction_id: str | None


_REQUEST_SQL = """
SELECT outcome, status, body, transaction_id
  FROM wallet_request($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
"""


async def execute(
    conn: asyncpg.Connection,
    attempt_id: uuid.UUID,
    api_key_id: int,
    api_key_name: str,
    idempotency_key: str,
    endpoint: str,
    movement: Movement,
) -> Outcome:
    accounts, amounts = movement.legs()
    row = await conn.fetchrow(
        _REQUEST_SQL,
        attempt_id,
        api_key_id,
        api_key_name,
        idempotency_key,
        endpoint,
        movement.request(),
        movement.type,
        movement.asset,
        movement.user_id,
        movement.amount,
        accounts,
        amounts,
        movement.description,
        movement.metadata,
    )
    assert row is not None
    return Outcome(row["outcome"], row["status"], row["body"], row["transaction_id"])


ENDPOINTS: dict[str, str] = {"topup": "POST /v1/topups", "bonus": "POST /v1/bonuses", "purchase": "POST /v1/purchases"}


@dataclass(frozen=True, slots=True)
class BatchItem:
    idempotency_key: str
    movement: Movement

    def as_json(self) -> dict[str, Any]:
        accounts, amounts = self.movement.legs()
        return {
            "key": self.idempotency_key,
            "endpoint": ENDPOINTS[self.movement.type],
            "request": self.movement.request(),
            "type": self.movement.type,
            "asset": self.movement.asset,
            "user_id": self.movement.user_id,
            "amount": self.movement.amount,
            "accounts": accounts,
            "amounts": amounts,
            "description": self.movement.description,
            "metadata": self.movement.metadata,
        }


async def execute_batch(
    conn: asyncpg.Connection,
    attempt_id: uuid.UUID,
    api_key_id: int,
    api_key_name: str,
    atomic: bool,
    items: list[BatchItem],
) -> list[Outcome]:
    """Runs every item in one statement (one transaction); outcomes in request order. Outcome kinds add
    `aborted` (atomic batch, not written because another item failed) and `rejected` (atomic batch, failed and
    not recorded)."""
    rows = await conn.fetch(
        "SELECT outcome, status, body, transaction_id FROM wallet_batch($1, $2, $3, $4, $5) ORDER BY ord",
        attempt_id,
        api_key_id,
        api_key_name,
        atomic,
        [item.as_json() for item in items],
    )
    return [Outcome(row["outcome"], row["status"], row["body"], row["transaction_id"]) for row in rows]


def parse_transaction_id(public_id: str) -> int | None:
    match = TRANSACTION_ID_PATTERN.fullmatch(public_id)
    return int(match.group(1), 16) if match else None


async def get_transaction(conn: asyncpg.Connection, public_id: str) -> str:
    internal_id = parse_transaction_id(public_id)
    body = None
    if internal_id is not None and internal_id < 2**63:  # ids are bigint
        body = await conn.fetchval("SELECT wallet_transaction_json($1)", internal_id)
    if body is None:
        raise TransactionNotFound(f"Transaction {public_id[:64]} does not exist.")
    return str(body)


async def list_assets(conn: asyncpg.Connection) -> str:
    return str(
        await conn.fetchval(
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


async def get_user(conn: asyncpg.Connection, user_id: str) -> str:
    body = await conn.fetchval(f"SELECT {_USER_JSON} FROM users u WHERE u.user_id = $1", user_id)
    if body is None:
        raise UserNotFound(f"User {user_id} does not exist.")
    return str(body)


async def get_balances(conn: asyncpg.Connection, user_id: str) -> str:
    body = await conn.fetchval(
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


async def get_balance(conn: asyncpg.Connection, user_id: str, asset: str) -> str:
    row = await conn.fetchrow(
        """SELECT EXISTS (SELECT 1 FROM users WHERE user_id = $1) AS user_exists,
                  EXISTS (SELECT 1 FROM assets WHERE code = $2) AS asset_exists,
                  (SELECT balance FROM accounts WHERE name = 'user:' || $1 AND asset = $2) AS balance""",
        user_id,
        asset,
    )
    assert row is not None
    if not row["user_exists"]:
        raise UserNotFound(f"User {user_id} does not exist.")
    if not row["asset_exists"]:
        raise AssetNotFound(f"Asset {asset} does not exist.")
    return orjson.dumps({"user_id": user_id, "asset": asset, "balance": row["balance"] or 0}).decode()


async def get_history(conn: asyncpg.Connection, user_id: str, asset: str | None, limit: int, cursor: str | None) -> str:
    """One page of the user's transactions, newest first. The cursor is the last id of the previous page."""
    before_id = None
    if cursor is not None:
        before_id = parse_transaction_id(cursor)
        if before_id is None or before_id >= 2**63:
            raise ValidationFailed(
                "The cursor is not one this service handed out.",
                [{"loc": ["query", "cursor"], "msg": "malformed cursor", "type": "cursor"}],
            )
    rows = await conn.fetch(
        """
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
        """,
        user_id,
        asset,
        before_id,
        limit + 1,
    )
    if not rows[0]["user_exists"]:
        raise UserNotFound(f"User {user_id} does not exist.")
    if not rows[0]["asset_exists"]:
        raise AssetNotFound(f"Asset {asset} does not exist.")
    items = [row for row in rows if row["transaction_id"] is not None]
    next_cursor = None
    if len(items) > limit:
        items = items[:limit]
        next_cursor = f'"tx_{items[-1]["transaction_id"]:016x}"'
    return '{"items":[' + ",".join(row["body"] for row in items) + '],"next_cursor":' + (next_cursor or "null") + "}"


async def rollup(conn: asyncpg.Connection) -> int:
    """Folds pending system-account deltas into their balances; returns how many deltas moved."""
    return int(await conn.fetchval("SELECT wallet_rollup()"))


async def purge_idempotency_keys(conn: asyncpg.Connection, retention_days: int) -> int:
    status = await conn.execute(
        "DELETE FROM idempotency_keys WHERE created_at < now() - make_interval(days => $1)", retention_days
    )
    return int(status.split()[-1])


# Each check is a set-based query returning the violating rows; a clean ledger returns none.
VERIFY_CHECKS: dict[str, str] = {
    "every transaction's entries sum to 0 (at least two legs)": """
        SELECT wallet_public_id(t.id) AS transaction, coalesce(sum(e.amount), 0) AS total, count(e.leg) AS legs
          FROM transactions t LEFT JOIN entries e ON e.transaction_id = t.id
         GROUP BY t.id HAVING coalesce(sum(e.amount), 0) <> 0 OR count(e.leg) < 2""",
    "every entry is on an account of its transaction's asset": """
        SELECT wallet_public_id(e.transaction_id) AS transaction, e.leg, a.asset, t.asset AS expected
          FROM entries e JOIN transactions t ON t.id = e.transaction_id LEFT JOIN accounts a ON a.id = e.account_id
         WHERE a.id IS NULL OR a.asset <> t.asset""",
    "every asset's entries sum to 0": """
        SELECT a.asset, sum(e.amount) AS total FROM entries e JOIN accounts a ON a.id = e.account_id
         GROUP BY a.asset HAVING sum(e.amount) <> 0""",
    "every asset's balances sum to 0": """
        SELECT asset, sum(balance) AS total FROM account_balances GROUP BY asset HAVING sum(balance) <> 0""",
    "every balance equals the sum of its account's entries": """
        SELECT b.name, b.asset, b.balance, coalesce(s.total, 0) AS entries_total
          FROM account_balances b
          LEFT JOIN (SELECT account_id, sum(amount) AS total FROM entries GROUP BY account_id) s
                 ON s.account_id = b.id
         WHERE b.balance <> coalesce(s.total, 0)""",
    "every user balance equals its latest entry's balance_after": """
        SELECT a.name, a.asset, a.balance, last.balance_after
          FROM accounts a
          CROSS JOIN LATERAL (SELECT balance_after FROM entries WHERE account_id = a.id
                               ORDER BY transaction_id DESC LIMIT 1) last
         WHERE a.kind = 'user' AND last.balance_after IS DISTINCT FROM a.balance""",
    "no user balance below 0": """
        SELECT name, asset, balance FROM accounts WHERE kind = 'user' AND balance < 0""",
    "every pending delta is on a system account": """
        SELECT d.account_id, d.amount FROM account_deltas d LEFT JOIN accounts a ON a.id = d.account_id
         WHERE a.kind IS DISTINCT FROM 'system'""",
    "every idempotency record belongs to an API key": """
        SELECT k.api_key_id, k.key FROM idempotency_keys k LEFT JOIN api_keys a ON a.id = k.api_key_id
         WHERE a.id IS NULL""",
    "every successful idempotency record names its transaction, and only those": """
        SELECT api_key_id, key, status FROM idempotency_keys
         WHERE (status = 201) <> (transaction_id IS NOT NULL) OR status IS NULL""",
}


@dataclass(frozen=True, slots=True)
class CheckResult:
    name: str
    violations: int
    sample: list[dict[str, Any]]


async def verify(conn: asyncpg.Connection, sample_size: int = 5) -> list[CheckResult]:
    """Runs every check on one snapshot of the ledger, so it is exact while writes go on."""
    results = []
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        await conn.execute("SET LOCAL statement_timeout = 0")  # a full scan of a large ledger takes its time
        for name, sql in VERIFY_CHECKS.items():
            rows = await conn.fetch(sql)
            results.append(CheckResult(name, len(rows), [dict(row) for row in rows[:sample_size]]))
    return results


async def ledger_totals(conn: asyncpg.Connection) -> dict[str, int]:
    row = await conn.fetchrow(
        "SELECT (SELECT count(*) FROM transactions) AS transactions, (SELECT count(*) FROM entries) AS entries,"
        " (SELECT count(*) FROM accounts) AS accounts, (SELECT count(*) FROM users) AS users"
    )
    assert row is not None
    return {key: int(value) for key, value in row.items()}


SEED_ASSETS = (("GOLD", "Gold Coins"), ("DIAMOND", "Diamonds"), ("LOYALTY", "Loyalty Points"))
SEED_FUNDING: dict[str, dict[str, int]] = {
    "alice": {"GOLD": 1_000, "DIAMOND": 50, "LOYALTY": 200},
    "bob": {"GOLD": 500, "DIAMOND": 10},
    "carol": {"GOLD": 250, "LOYALTY": 100},
}
SEED_KEY_NAME = "seed"


async def seed(conn: asyncpg.Connection) -> None:
    """Assets, system accounts and users funded by ordinary top-ups. Running it again changes nothing: the
    top-ups carry fixed idempotency keys of the `seed` key (revoked at birth, so it can never authenticate)."""
    async with conn.transaction():
        await conn.executemany(
            "INSERT INTO assets (code, name, scale) VALUES ($1, $2, 0) ON CONFLICT DO NOTHING", SEED_ASSETS
        )
        await conn.execute(
            """INSERT INTO accounts (kind, name, asset)
               SELECT 'system', 'system:' || s.name, a.code FROM assets a CROSS JOIN unnest($1::text[]) s (name)
               ON CONFLICT DO NOTHING""",
            list(SYSTEM_ACCOUNTS),
        )
        # Users created before an asset existed get their account in it.
        await conn.execute(
            """INSERT INTO accounts (kind, name, asset, user_id)
               SELECT 'user', 'user:' || u.user_id, a.code, u.user_id FROM users u CROSS JOIN assets a
               ON CONFLICT DO NOTHING"""
        )
        seed_key_id = await conn.fetchval(
            """INSERT INTO api_keys (name, secret_hash, scopes, revoked_at)
               VALUES ($1, sha256(gen_random_uuid()::text::bytea), '{topup}', clock_timestamp())
               ON CONFLICT (name) DO UPDATE SET name = excluded.name RETURNING id""",
            SEED_KEY_NAME,
        )
    for user_id, funding in SEED_FUNDING.items():
        await ensure_user(conn, user_id, user_id.capitalize())
        for asset, amount in funding.items():
            movement = Movement("topup", user_id, asset, amount, "Welcome credits", {"source": "seed"})
            key = f"seed:{user_id}:{asset}"
            await execute(conn, uuid.uuid4(), seed_key_id, SEED_KEY_NAME, key, ENDPOINTS["topup"], movement)
