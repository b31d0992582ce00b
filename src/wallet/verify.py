"""`wallet verify`: every invariant of the ledger, checked by set-based queries on one snapshot."""

from dataclasses import dataclass
from typing import Any

import asyncpg

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
    "every system account is its stripes: all of them, rooms summing to its distance from its floor": """
        SELECT a.name, a.asset, a.balance AS own_balance, count(s.stripe) AS stripes, sum(s.balance) AS balance,
               sum(s.room) AS room, a.balance_min
          FROM accounts a LEFT JOIN account_stripes s ON s.account_id = a.id
         WHERE a.kind = 'system'
         GROUP BY a.id
        HAVING a.balance <> 0 OR count(s.stripe) <> wallet_stripe_count()
            OR sum(s.room) <> sum(s.balance) - a.balance_min OR sum(s.balance) < a.balance_min""",
    "every stripe belongs to a system account": """
        SELECT s.account_id, s.stripe FROM account_stripes s JOIN accounts a ON a.id = s.account_id
         WHERE a.kind <> 'system'""",
    "every entry belongs to a transaction": """
        SELECT e.transaction_id, e.leg FROM entries e LEFT JOIN transactions t ON t.id = e.transaction_id
         WHERE t.id IS NULL""",
    "every idempotency record of a success names a transaction that exists": """
        SELECT k.api_key_id, k.key, k.transaction_id FROM idempotency_keys k
          LEFT JOIN transactions t ON t.id = k.transaction_id
         WHERE k.transaction_id IS NOT NULL AND t.id IS NULL""",
    "every idempotency record belongs to an API key": """
        SELECT k.api_key_id, k.key FROM idempotency_keys k LEFT JOIN api_keys a ON a.id = k.api_key_id
         WHERE a.id IS NULL""",
    "every idempotency record names its outcome: a transaction or a problem": """
        SELECT api_key_id, key FROM idempotency_keys WHERE (transaction_id IS NULL) = (problem IS NULL)""",
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
            try:
                async with conn.transaction():  # a savepoint: a check that cannot run fails alone
                    rows = await conn.fetch(sql)
            except asyncpg.PostgresError as exc:
                results.append(CheckResult(name, 1, [{"error": f"{exc.sqlstate}: {exc}"}]))
                continue
            results.append(CheckResult(name, len(rows), [dict(row) for row in rows[:sample_size]]))
    return results


async def ledger_totals(conn: asyncpg.Connection) -> dict[str, int]:
    row = await conn.fetchrow(
        "SELECT (SELECT count(*) FROM transactions) AS transactions, (SELECT count(*) FROM entries) AS entries,"
        " (SELECT count(*) FROM accounts) AS accounts, (SELECT count(*) FROM users) AS users"
    )
    assert row is not None
    return {key: int(value) for key, value in row.items()}
