"""A user's statistics over a window, and statements: every entry of the user's accounts in a window, as CSV,
streamed from a server-side cursor in constant memory.

Statistics read the rollup that the maintenance loop keeps (statistics_chunks, migration 0007) plus the raw entries
it does not cover, so they are exact at every moment and their cost does not grow with the history.
"""

import asyncio
import csv
import io
import time
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import orjson
from asyncpg.pool import PoolConnectionProxy

from wallet.database import Database
from wallet.errors import DATABASE_ERRORS, AssetNotFound, Unavailable, UserNotFound, from_database
from wallet.render import public_id, timestamp

# Transactions of an account a chunk sums up. A window reads at most two chunks raw, and the tail: on the 10M-entry
# bench ledger a window of the 100k-transaction user took 85 ms with chunks of 1000 (each raw entry costs a heap
# page of entries and a transaction: ~13 us warm), 10-14 ms with chunks of 128.
ROLLUP_CHUNK = 128
ROLLUP_IDS_MAX = 50_000  # transaction ids a round of the rollup looks at: 1.25 s on the 10M-entry bench ledger
# A round is background work that the requests' statement_timeout need not cut short: its first rounds on a large
# ledger roll whole histories up (100,000 transactions of one account: seconds).
ROLLUP_TIMEOUT_MS = 120_000
STATEMENT_HEADER = ("created_at", "transaction_id", "type", "asset", "amount", "balance_after", "description")
STATEMENT_FETCH_ROWS = 2000  # rows per FETCH: each is one statement, well within statement_timeout
STATEMENT_DURATION_MAX_S = 600  # a statement's transaction never lasts longer, however slowly its client reads
STATEMENTS_PER_WORKER_MAX = 4  # statements a worker streams at once: each holds a pooled connection throughout
# A cell a spreadsheet would run as a formula (OWASP, "CSV injection"): such a description is prefixed with '.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


async def rollup(conn: asyncpg.Connection, ids_max: int = ROLLUP_IDS_MAX, chunk: int = ROLLUP_CHUNK) -> int:
    """One round of the rollup; how many transaction ids it looked at (0: nothing new, or another worker's turn)."""
    async with conn.transaction():
        await conn.execute(f"SET LOCAL statement_timeout = {ROLLUP_TIMEOUT_MS}")
        return int(await conn.fetchval("SELECT wallet_statistics_rollup($1, $2)", ids_max, chunk))


async def roll(conn: asyncpg.Connection, account_id: int, chunk: int = ROLLUP_CHUNK) -> int:
    """Rolls one account's complete chunks now (waiting for a round in progress); how many it wrote."""
    return int(await conn.fetchval("SELECT wallet_statistics_roll($1, $2)", account_id, chunk))


_ACCOUNTS_SQL = """
WITH owner AS (
    SELECT EXISTS (SELECT 1 FROM users WHERE user_id = $1) AS user_exists,
           $2::text IS NULL OR EXISTS (SELECT 1 FROM assets WHERE code = $2) AS asset_exists
)
SELECT o.user_exists, o.asset_exists, s.code AS asset, a.id AS account_id, a.balance
  FROM owner o
  LEFT JOIN assets s ON o.user_exists AND ($2::text IS NULL OR s.code = $2)
  LEFT JOIN accounts a ON a.asset = s.code AND a.name = 'user:' || $1
 ORDER BY s.code
"""


async def _accounts(
    conn: asyncpg.Connection | PoolConnectionProxy, user_id: str, asset: str | None
) -> list[asyncpg.Record]:
    """The user's accounts (one asset, or all; account_id None where the user has none in that asset yet), or the
    one precedence of every route: an unknown user before an unknown asset."""
    rows: list[asyncpg.Record] = await conn.fetch(_ACCOUNTS_SQL, user_id, asset)
    if not rows[0]["user_exists"]:
        raise UserNotFound(f"User {user_id} does not exist.")
    if not rows[0]["asset_exists"]:
        raise AssetNotFound(f"Asset {asset} does not exist.")
    return rows


# Per type, over the window, and the balance at its end: the last entry before `to` (wallet_balance_as_of() takes
# "at or before", and times are microseconds), or the balance now.
_STATISTICS_SQL = """
SELECT a.id AS account_id,
       CASE WHEN $3::timestamptz IS NULL THEN a.balance
            ELSE coalesce(wallet_balance_as_of(a.id, $3 - interval '1 microsecond',
                                               wallet_id_at($3 - interval '1 microsecond')), 0) END AS balance,
       s.*
  FROM accounts a LEFT JOIN LATERAL wallet_statistics(a.id, $2, $3) s ON true
 WHERE a.id = ANY($1::bigint[])
"""


def _amount(value: int) -> orjson.Fragment:
    """A sum of entries as a JSON integer: it may pass 64 bits, which orjson does not render."""
    return orjson.Fragment(str(value).encode())


def _asset_statistics(asset: str, rows: list[asyncpg.Record]) -> dict[str, Any]:
    by_type: dict[str, dict[str, Any]] = {}
    credits = [0, 0]
    debits = [0, 0]
    first_at: datetime | None = None
    last_at: datetime | None = None
    balance = 0
    for row in rows:
        balance = row["balance"]
        if row["type"] is None:
            continue
        credit_amount, debit_amount = int(row["credit_amount"]), int(row["debit_amount"])
        credits[0] += row["credit_count"]
        credits[1] += credit_amount
        debits[0] += row["debit_count"]
        debits[1] += debit_amount
        by_type[row["type"]] = {
            "count": row["credit_count"] + row["debit_count"],
            "amount": _amount(credit_amount - debit_amount),
        }
        first_at = row["first_at"] if first_at is None else min(first_at, row["first_at"])
        last_at = row["last_at"] if last_at is None else max(last_at, row["last_at"])
    return {
        "asset": asset,
        "balance": balance,
        "credits": {"count": credits[0], "amount": _amount(credits[1])},
        "debits": {"count": debits[0], "amount": _amount(debits[1])},
        "by_type": dict(sorted(by_type.items())),
        "first_at": timestamp(first_at),
        "last_at": timestamp(last_at),
    }


async def get_statistics(
    database: Database, user_id: str, asset: str | None, start: datetime | None, end: datetime | None
) -> bytes:
    """Per asset, over [start, end): credits and debits (entries raising and lowering the user's balance: counts,
    and amounts, both positive), the net change by transaction type, the first and last entry's times, and the
    balance at the end of the window (now, without an end)."""

    async def read(conn: asyncpg.Connection) -> tuple[list[asyncpg.Record], list[asyncpg.Record]]:
        async with conn.transaction(isolation="repeatable_read", readonly=True):  # one snapshot for every asset
            accounts = await _accounts(conn, user_id, asset)
            ids = [row["account_id"] for row in accounts if row["account_id"] is not None]
            return accounts, await conn.fetch(_STATISTICS_SQL, ids, start, end)

    accounts, tallies = await database.run(read)
    by_account: dict[int, list[asyncpg.Record]] = {}
    for row in tallies:
        by_account.setdefault(row["account_id"], []).append(row)
    document = {
        "user_id": user_id,
        "from": timestamp(start),
        "to": timestamp(end),
        "assets": [_asset_statistics(a["asset"], by_account.get(a["account_id"], [])) for a in accounts],
    }
    return orjson.dumps(document)


# Oldest first: each account's entries in id order (the order they applied, which creation times follow), merged
# across the user's accounts by id. One ordered index scan per account, merged (Merge Append): rows flow at once,
# with no sort of the whole statement, each entry's transaction by its primary key (OFFSET 0: never a hash of all
# transactions, which the planner chose for long histories). The rollup's chunks bound where the window starts and
# ends.
_STATEMENT_ACCOUNT_SQL = """
(SELECT e.transaction_id, e.leg, e.amount, e.balance_after, '{asset}'::text AS asset
   FROM entries e
  WHERE e.account_id = ${n} AND e.stripe IS NULL
    AND e.transaction_id > coalesce((SELECT max(c.last_id) FROM statistics_chunks c
                                      WHERE c.account_id = ${n} AND c.last_at < $1), 0)
    AND e.transaction_id < coalesce((SELECT min(c.first_id) FROM statistics_chunks c
                                      WHERE c.account_id = ${n} AND c.first_at >= $2), 9223372036854775807)
  ORDER BY e.transaction_id, e.leg)"""

_STATEMENT_SQL = """
SELECT t.created_at, e.transaction_id, t.type, e.asset, e.amount, e.balance_after, t.description
  FROM ({entries}) e
 CROSS JOIN LATERAL (SELECT x.created_at, x.type, x.description FROM transactions x
                      WHERE x.id = e.transaction_id OFFSET 0) t
 WHERE ($1::timestamptz IS NULL OR t.created_at >= $1) AND ($2::timestamptz IS NULL OR t.created_at < $2)
 ORDER BY e.transaction_id, e.leg
"""


def statement_sql(assets: list[str]) -> str:
    """The statement's query over the accounts $3, $4, ... of these assets (asset codes are checked [A-Z0-9_])."""
    parts = [_STATEMENT_ACCOUNT_SQL.format(asset=asset, n=3 + i) for i, asset in enumerate(assets)]
    return _STATEMENT_SQL.format(entries="\n UNION ALL ".join(parts))


def _cell(description: str | None) -> str:
    if description is None:
        return ""
    return "'" + description if description.startswith(FORMULA_STARTS) else description


def statement_rows(rows: list[asyncpg.Record]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    for row in rows:
        writer.writerow(
            (
                timestamp(row["created_at"]),
                public_id(row["transaction_id"]),
                row["type"],
                row["asset"],
                row["amount"],
                row["balance_after"],
                _cell(row["description"]),
            )
        )
    return out.getvalue().encode()


def statement_header() -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerow(STATEMENT_HEADER)
    return out.getvalue().encode()


@dataclass
class Statement:
    """A statement ready to stream: the user's accounts are found (or the request failed before any byte), and a
    pooled connection is held until the stream ends."""

    database: Database
    conn: PoolConnectionProxy
    accounts: list[asyncpg.Record]
    start: datetime | None
    end: datetime | None
    slot: asyncio.Semaphore

    async def stream(self) -> AsyncIterator[bytes]:
        """The CSV, chunk by chunk. A failure after the first chunk ends the response without its last chunk, so
        that the client sees it broken off, never a statement that looks complete."""
        deadline = time.monotonic() + STATEMENT_DURATION_MAX_S
        try:
            yield statement_header()
            accounts = [row for row in self.accounts if row["account_id"] is not None]
            if not accounts:
                return
            sql = statement_sql([row["asset"] for row in accounts])
            args = [self.start, self.end, *(row["account_id"] for row in accounts)]
            async with self.conn.transaction(isolation="repeatable_read", readonly=True):
                cursor = await self.conn.cursor(sql, *args)
                while True:
                    rows = await cursor.fetch(STATEMENT_FETCH_ROWS)
                    if rows:
                        yield statement_rows(rows)
                    if len(rows) < STATEMENT_FETCH_ROWS:
                        return
                    if time.monotonic() > deadline:
                        raise Unavailable(f"The statement took longer than {STATEMENT_DURATION_MAX_S} s.")
        finally:
            await self.database.pool.release(self.conn)
            self.slot.release()


_slots: "weakref.WeakKeyDictionary[Database, asyncio.Semaphore]" = weakref.WeakKeyDictionary()


def _slot(database: Database) -> asyncio.Semaphore:
    """The statement slots of a worker's database (its pool)."""
    return _slots.setdefault(database, asyncio.Semaphore(STATEMENTS_PER_WORKER_MAX))


async def open_statement(
    database: Database, user_id: str, asset: str | None, start: datetime | None, end: datetime | None
) -> Statement:
    """Checks the user and asset and takes a connection for the stream (503 when every statement slot stays taken
    for the pool's acquire timeout)."""
    slot = _slot(database)
    timeout_s = database.settings.pool_acquire_timeout_ms / 1000
    try:
        await asyncio.wait_for(slot.acquire(), timeout_s)
    except TimeoutError:
        raise Unavailable(
            f"{STATEMENTS_PER_WORKER_MAX} statements are being streamed; try again shortly.",
            headers={"Retry-After": "1"},
        ) from None
    conn = None
    try:
        conn = await database.pool.acquire(timeout=timeout_s)
        accounts = await _accounts(conn, user_id, asset)
    except BaseException as exc:
        if conn is not None:
            await database.pool.release(conn)
        slot.release()
        if isinstance(exc, (TimeoutError, *DATABASE_ERRORS)):
            raise from_database(exc) from None
        raise
    return Statement(database, conn, accounts, start, end, slot)
