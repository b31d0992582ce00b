"""Reads, and the changes that move no money: assets (create, change policies), users (create, rename, freeze),
balances (now, or as they were at an instant), history pages, transactions and their refunds.

An unknown user is reported before an unknown asset, on every route.
"""

from datetime import datetime, timedelta

import asyncpg
import orjson

from wallet.database import Database
from wallet.errors import AssetNotFound, AssetScaleImmutable, TransactionNotFound, UserNotFound, ValidationFailed
from wallet.kinds import SYSTEM_ACCOUNTS
from wallet.ledger import view
from wallet.render import parse_public_id, public_id, timestamp


async def get_transaction(database: Database, transaction_id: str) -> bytes:
    internal_id = parse_public_id(transaction_id)
    row = None
    if internal_id is not None:
        row = await database.fetchrow("SELECT * FROM wallet_transactions(ARRAY[$1::bigint])", internal_id)
    if row is None:
        raise TransactionNotFound(f"Transaction {transaction_id[:64]} does not exist.")
    return view(row).render()


_REFUNDS_SQL = """
SELECT t.id, t.type, t.amount, coalesce(r.amount, 0) AS refunded,
       (SELECT array_agg(x.id ORDER BY x.id) FROM transactions x WHERE x.refund_of = t.id) AS refunds
  FROM transactions t LEFT JOIN refunded r ON r.transaction_id = t.id
 WHERE t.id = $1
"""


async def get_refunds(database: Database, transaction_id: str) -> bytes:
    """A transaction's refunds, oldest first, and how much of it is left to refund."""
    internal_id = parse_public_id(transaction_id)
    original = None
    if internal_id is not None:
        original = await database.fetchrow(_REFUNDS_SQL, internal_id)
    if original is None:
        raise TransactionNotFound(f"Transaction {transaction_id[:64]} does not exist.")
    rows = await database.fetch("SELECT * FROM wallet_transactions($1) ORDER BY id", original["refunds"] or [])
    refundable = original["type"] in ("purchase", "topup", "bonus")
    document = {
        "transaction_id": public_id(original["id"]),
        "amount": original["amount"],
        "refunded_amount": original["refunded"],
        "refundable_amount": original["amount"] - original["refunded"] if refundable else 0,
        "items": [orjson.Fragment(view(row).render()) for row in rows],
    }
    return orjson.dumps(document)


_ASSET_FIELDS = ("code", "name", "scale", "transferable", "expiry_days")


def _asset(row: asyncpg.Record) -> dict[str, object]:
    return {name: row[name] for name in _ASSET_FIELDS}


async def list_assets(database: Database) -> bytes:
    rows = await database.fetch(f"SELECT {', '.join(_ASSET_FIELDS)} FROM assets ORDER BY code")
    return orjson.dumps({"items": [_asset(row) for row in rows]})


async def put_asset(
    database: Database,
    code: str,
    name: str,
    scale: int | None,
    transferable: bool | None,
    expiry_days: int | None,
    expiry_sent: bool,
) -> tuple[bool, bytes]:
    """Creates the asset with its system accounts, or changes its name and policies; None (and expiry_sent False)
    leaves a field as it is. (created, representation.) A different scale of an existing asset is a 409."""
    row = await database.fetchrow(
        "SELECT * FROM wallet_put_asset($1, $2, $3, $4, $5, $6, $7)",
        code,
        name,
        scale,
        transferable,
        expiry_days,
        expiry_sent,
        list(SYSTEM_ACCOUNTS),
    )
    assert row is not None
    if row["problem"] is not None:
        raise AssetScaleImmutable(row["problem"]["detail"])
    return bool(row["created"]), orjson.dumps(_asset(row))


_USER_COLUMNS = "u.user_id, u.display_name, u.status, u.frozen_reason, u.frozen_at, u.created_at"


def _user(row: asyncpg.Record) -> bytes:
    """A user's representation."""
    return orjson.dumps(
        {
            "user_id": row["user_id"],
            "display_name": row["display_name"],
            "status": row["status"],
            "frozen_reason": row["frozen_reason"],
            "frozen_at": timestamp(row["frozen_at"]),
            "created_at": timestamp(row["created_at"]),
        }
    )


async def list_users(database: Database, prefix: str, limit: int, after: str | None) -> bytes:
    """A page of the users whose id starts with `prefix`, by id (in bytes: ids are ASCII); the cursor is the last id
    of the previous page."""
    rows = await database.fetch(
        f"""SELECT {_USER_COLUMNS} FROM users u
             WHERE u.user_id COLLATE "C" >= $1 AND u.user_id COLLATE "C" < $1 || '~'  -- '~' follows every id character
               AND u.user_id COLLATE "C" > coalesce($2, '')
             ORDER BY u.user_id COLLATE "C" LIMIT $3""",
        prefix,
        after,
        limit + 1,
    )
    more = len(rows) > limit
    rows = rows[:limit]
    page = {
        "items": [orjson.Fragment(_user(row)) for row in rows],
        "next_cursor": rows[-1]["user_id"] if more else None,
    }
    return orjson.dumps(page)


# A user has no account until a posting first credits it (wallet_open_accounts()): balances read 0 meanwhile.
_ENSURE_USER_SQL = f"""
        WITH created AS (
            INSERT INTO users (user_id, display_name) VALUES ($1, $2)
            ON CONFLICT (user_id) DO NOTHING RETURNING *
        ), renamed AS (
            UPDATE users SET display_name = $2
             WHERE user_id = $1 AND $3 AND display_name IS DISTINCT FROM $2 AND NOT EXISTS (SELECT 1 FROM created)
            RETURNING *
        )
        SELECT true AS created, {_USER_COLUMNS} FROM created u
        UNION ALL SELECT false, {_USER_COLUMNS} FROM renamed u
        UNION ALL SELECT false, {_USER_COLUMNS} FROM users u
         WHERE u.user_id = $1 AND NOT EXISTS (SELECT 1 FROM created) AND NOT EXISTS (SELECT 1 FROM renamed)
        """


async def ensure_user(
    conn: asyncpg.Connection, user_id: str, display_name: str | None, rename: bool = False
) -> tuple[bool, bytes]:
    """Creates the user (accounts come with their first credits), or returns the existing one, its display name set to
    `display_name` (None clears it) when `rename`. (created, representation)."""
    for _ in range(3):
        row = await conn.fetchrow(_ENSURE_USER_SQL, user_id, display_name, rename)
        if row is not None:
            return bool(row["created"]), _user(row)
        # A concurrent PUT committed the user after our statement's snapshot: its insert made ours a no-op,
        # and the snapshot cannot see it. The next statement can.
    raise AssertionError(f"user {user_id} neither created nor found")


async def put_user(database: Database, user_id: str, display_name: str | None, rename: bool) -> tuple[bool, bytes]:
    return await database.run(lambda conn: ensure_user(conn, user_id, display_name, rename))


async def get_user(database: Database, user_id: str) -> bytes:
    row = await database.fetchrow(f"SELECT {_USER_COLUMNS} FROM users u WHERE u.user_id = $1", user_id)
    if row is None:
        raise UserNotFound(f"User {user_id} does not exist.")
    return _user(row)


# A freeze locks every account of the user (in id order, as postings do), then the user (which every opening of an
# account holds FOR SHARE), and flags the accounts with the user: a debit in flight finishes first, and none can
# follow; frozen_at is read under those locks, so every debit the user ever made before the freeze has an earlier
# created_at (wallet_set_frozen(), migration 0006). Freezing a frozen user changes the reason only; unfreezing
# clears all of it.
_FREEZE_SQL = f"SELECT {_USER_COLUMNS} FROM wallet_set_frozen($1, $2, $3) u"


async def set_frozen(database: Database, user_id: str, frozen: bool, reason: str | None) -> bytes:
    row = await database.fetchrow(_FREEZE_SQL, user_id, frozen, reason)
    if row is None:
        raise UserNotFound(f"User {user_id} does not exist.")
    return _user(row)


# Balances now: posted, held (holds past their expiry no longer count) and available, and for assets whose credits
# expire the next lots to expire; or, with an instant, the posted balances as they were then
# (wallet_balance_as_of(): O(log n) per account).
EXPIRING_MAX = 5  # lots listed in a balance's `expiring`
_BALANCES_SQL = f"""
WITH owner AS (
    SELECT EXISTS (SELECT 1 FROM users WHERE user_id = $1) AS user_exists,
           $2::text IS NULL OR EXISTS (SELECT 1 FROM assets WHERE code = $2) AS asset_exists,
           CASE WHEN $3::timestamptz IS NOT NULL THEN wallet_id_at($3) END AS around
)
SELECT o.user_exists, o.asset_exists, s.code AS asset,
       CASE WHEN $3::timestamptz IS NULL THEN coalesce(a.balance, 0)
            ELSE coalesce(wallet_balance_as_of(a.id, $3, o.around), 0) END AS balance,
       CASE WHEN $3::timestamptz IS NULL THEN coalesce(wallet_held(a.id, a.held), 0) END AS held,
       $3::timestamptz IS NULL AND s.lots AS lots, x.amounts AS expiring_amounts, x.dates AS expiring_dates
  FROM owner o
  LEFT JOIN assets s ON o.user_exists AND ($2::text IS NULL OR s.code = $2)
  LEFT JOIN accounts a ON a.asset = s.code AND a.name = 'user:' || $1
  LEFT JOIN LATERAL (SELECT array_agg(n.amount ORDER BY n.expires_at, n.id) AS amounts,
                            array_agg(n.expires_at ORDER BY n.expires_at, n.id) AS dates
                       FROM (SELECT l.id, l.amount, l.expires_at FROM lots l
                              WHERE $3::timestamptz IS NULL AND a.lots AND l.account_id = a.id AND l.amount > 0
                                AND l.expires_at < 'infinity'
                              ORDER BY l.expires_at, l.id LIMIT {EXPIRING_MAX}) n) x ON true
 ORDER BY s.code
"""


def _balance(row: asyncpg.Record, as_of: datetime | None) -> dict[str, object]:
    if as_of is not None:
        return {"asset": row["asset"], "balance": row["balance"]}
    balance: dict[str, object] = {
        "asset": row["asset"],
        "balance": row["balance"],
        "held": row["held"],
        "available": row["balance"] - row["held"],
    }
    if row["lots"]:
        amounts, dates = row["expiring_amounts"] or [], row["expiring_dates"] or []
        balance["expiring"] = [{"amount": a, "expires_at": timestamp(d)} for a, d in zip(amounts, dates, strict=True)]
    return balance


async def get_balances(database: Database, user_id: str, as_of: datetime | None) -> bytes:
    rows = await database.fetch(_BALANCES_SQL, user_id, None, as_of)
    _check_found(rows[0], user_id, None)
    document: dict[str, object] = {"user_id": user_id, "balances": [_balance(row, as_of) for row in rows]}
    if as_of is not None:
        document["as_of"] = timestamp(as_of)
    return orjson.dumps(document)


async def get_balance(database: Database, user_id: str, asset: str, as_of: datetime | None) -> bytes:
    rows = await database.fetch(_BALANCES_SQL, user_id, asset, as_of)
    _check_found(rows[0], user_id, asset)
    document: dict[str, object] = {"user_id": user_id, **_balance(rows[0], as_of)}
    if as_of is not None:
        document["as_of"] = timestamp(as_of)
    return orjson.dumps(document)


def _check_found(row: asyncpg.Record, user_id: str, asset: str | None) -> None:
    """The one precedence of every route: an unknown user before an unknown asset."""
    if not row["user_exists"]:
        raise UserNotFound(f"User {user_id} does not exist.")
    if not row["asset_exists"]:
        raise AssetNotFound(f"Asset {asset} does not exist.")


# A page of a user's history, newest first: each of the user's accounts (one asset, or all) read newest first from
# entries_by_account, stopping after the page, each transaction's legs beside it. (0001's wallet_history_page()
# was a SQL function the planner could not inline: planned at every call; this is 35-45% less database time a
# page, on an account of 300,000 entries or of 20.)
_HISTORY_SQL = """
WITH owner AS (
    SELECT EXISTS (SELECT 1 FROM users WHERE user_id = $1) AS user_exists,
           $2::text IS NULL OR EXISTS (SELECT 1 FROM assets WHERE code = $2) AS asset_exists
), page AS (
    SELECT p.transaction_id
      FROM accounts ua
     CROSS JOIN LATERAL (SELECT e.transaction_id FROM entries e
                          WHERE e.account_id = ua.id AND e.stripe IS NULL
                            AND e.transaction_id < coalesce($3, 9223372036854775807)
                          ORDER BY e.transaction_id DESC LIMIT $4) p
     WHERE ua.name = 'user:' || $1 AND ($2::text IS NULL OR ua.asset = $2)
     ORDER BY p.transaction_id DESC LIMIT $4
)
SELECT o.user_exists, o.asset_exists, t.id, t.type, t.user_id, t.asset, t.amount, t.description,
       t.metadata::text AS metadata, legs.accounts, legs.assets, legs.amounts, legs.balances, t.refund_of, t.hold_id,
       t.created_at
  FROM owner o
  LEFT JOIN page ON true
  LEFT JOIN transactions t ON t.id = page.transaction_id
  LEFT JOIN LATERAL (SELECT array_agg(a.name ORDER BY e.leg) AS accounts, array_agg(a.asset ORDER BY e.leg) AS assets,
                            array_agg(e.amount ORDER BY e.leg) AS amounts,
                            array_agg(CASE WHEN e.stripe IS NULL THEN e.balance_after END ORDER BY e.leg) AS balances
                       FROM entries e JOIN accounts a ON a.id = e.account_id WHERE e.transaction_id = t.id) legs ON true
 ORDER BY page.transaction_id DESC
"""


async def get_history(database: Database, user_id: str, asset: str | None, limit: int, cursor: str | None) -> bytes:
    """One page of the user's transactions, newest first. The cursor is the last id of the previous page."""
    before_id = None
    if cursor is not None:
        before_id = parse_public_id(cursor)
        if before_id is None:
            raise ValidationFailed(
                "The cursor is not one this service handed out.",
                [{"loc": ["query", "cursor"], "msg": "malformed cursor", "type": "cursor"}],
            )
    rows = await database.fetch(_HISTORY_SQL, user_id, asset, before_id, limit + 1)
    _check_found(rows[0], user_id, asset)
    views = [view(row) for row in rows if row["id"] is not None]
    next_cursor = None
    if len(views) > limit:
        views = views[:limit]
        next_cursor = public_id(views[-1].id)
    page = {"items": [orjson.Fragment(v.render()) for v in views], "next_cursor": next_cursor}
    return orjson.dumps(page)


async def list_system_accounts(database: Database, asset: str | None) -> bytes:
    """Every system account's balance (the sum of its stripes), by asset and name."""
    rows = await database.fetch(
        """SELECT a.code AS asset, b.name, b.balance, a.code IS NOT NULL AS asset_exists
             FROM (SELECT $1::text AS wanted) w
             LEFT JOIN assets a ON a.code = coalesce(w.wanted, a.code)
             LEFT JOIN account_balances b ON b.asset = a.code AND b.kind = 'system'
            ORDER BY a.code, b.name""",
        asset,
    )
    if asset is not None and not rows[0]["asset_exists"]:
        raise AssetNotFound(f"Asset {asset} does not exist.")
    items = [{"asset": r["asset"], "account": r["name"], "balance": r["balance"]} for r in rows if r["name"]]
    return orjson.dumps({"items": items})


# Transactions by the hour they were created in, per asset and type, over the last `hours` (the BRIN index of
# migration 0009 finds them). A purchase's rewards count with the purchase, in the purchase's asset.
_VOLUME_SQL = """
    SELECT asset, date_bin('1 hour', created_at, timestamptz 'epoch') AS hour, type,
           count(*) AS count, sum(amount) AS amount
      FROM transactions
     WHERE created_at >= $1 AND created_at < $2 AND ($3::text IS NULL OR asset = $3)
     GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"""


async def volume(database: Database, hours: int, asset: str | None) -> bytes:
    """Counts and amounts of transactions per asset, hour and type, from the start of the hour `hours - 1` hours
    before the current one to now."""
    now = await database.fetchval("SELECT now()")
    start = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=hours - 1)
    rows = await database.fetch(_VOLUME_SQL, start, now, asset)
    items = [
        {
            "asset": r["asset"],
            "hour": timestamp(r["hour"]),
            "type": r["type"],
            "count": r["count"],
            "amount": int(r["amount"]),
        }
        for r in rows
    ]
    return orjson.dumps({"from": timestamp(start), "to": timestamp(now), "items": items})
