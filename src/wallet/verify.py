"""`wallet verify`: every invariant of the ledger, checked by set-based queries on one snapshot."""

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from wallet.database import Database
from wallet.kinds import SYSTEM_ACCOUNTS
from wallet.render import timestamp

_SYSTEM_NAMES = ", ".join(f"'system:{name}'" for name in SYSTEM_ACCOUNTS)


def _two_legs(kind: str, receiver: str) -> str:
    """Transactions of this type whose legs are not exactly two: its amount of its asset out of its user's account,
    and into the account `receiver` (a condition on `a`, the account, and `e`, the entry) names."""
    return f"""
        SELECT wallet_public_id(t.id) AS transaction, t.user_id, t.asset, t.amount,
               array_agg(a.name || ' ' || a.asset || ' ' || e.amount ORDER BY e.leg) AS legs
          FROM transactions t JOIN entries e ON e.transaction_id = t.id JOIN accounts a ON a.id = e.account_id
         WHERE t.type = '{kind}'
         GROUP BY t.id
        HAVING count(*) <> 2
            OR count(*) FILTER (WHERE a.name = 'user:' || t.user_id AND a.asset = t.asset AND e.amount = -t.amount) <> 1
            OR count(*) FILTER (WHERE {receiver} AND a.asset = t.asset AND e.amount = t.amount) <> 1"""


# Each check is a set-based query returning the violating rows; a clean ledger returns none.
VERIFY_CHECKS: dict[str, str] = {
    "every transaction's entries sum to 0 in each asset (at least two legs, one in its own asset)": """
        SELECT wallet_public_id(t.id) AS transaction, l.asset, l.total, l.legs
          FROM transactions t
          LEFT JOIN LATERAL (SELECT a.asset, sum(e.amount) AS total, count(*) AS legs
                               FROM entries e JOIN accounts a ON a.id = e.account_id
                              WHERE e.transaction_id = t.id GROUP BY a.asset) l ON true
         WHERE l.total <> 0
            OR NOT EXISTS (SELECT FROM entries e JOIN accounts a ON a.id = e.account_id
                            WHERE e.transaction_id = t.id AND a.asset = t.asset)
            OR (SELECT count(*) FROM entries e WHERE e.transaction_id = t.id) < 2""",
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
    "every user entry is on no stripe, every system entry on one": """
        SELECT wallet_public_id(e.transaction_id) AS transaction, e.leg, a.name, e.stripe
          FROM entries e JOIN accounts a ON a.id = e.account_id
         WHERE (a.kind = 'user') <> (e.stripe IS NULL)
            OR e.stripe NOT BETWEEN 0 AND wallet_stripe_count() - 1""",
    "every user balance equals its latest entry's balance_after": """
        SELECT a.name, a.asset, a.balance, last.balance_after
          FROM accounts a
          LEFT JOIN LATERAL (SELECT transaction_id, balance_after FROM entries
                              WHERE account_id = a.id AND stripe IS NULL
                              ORDER BY transaction_id DESC LIMIT 1) last ON true
         WHERE a.kind = 'user'
           AND (last.transaction_id IS NULL AND a.balance <> 0
                OR last.transaction_id IS NOT NULL AND last.balance_after IS DISTINCT FROM a.balance)""",
    "every stripe's balance equals the sum of its entries and its latest entry's balance_after": """
        SELECT a.name, a.asset, s.stripe, s.balance, sums.total, last.balance_after
          FROM account_stripes s JOIN accounts a ON a.id = s.account_id
          LEFT JOIN LATERAL (SELECT sum(amount) AS total FROM entries e
                              WHERE e.account_id = s.account_id AND e.stripe = s.stripe) sums ON true
          LEFT JOIN LATERAL (SELECT balance_after FROM entries e
                              WHERE e.account_id = s.account_id AND e.stripe = s.stripe
                              ORDER BY e.transaction_id DESC LIMIT 1) last ON true
         WHERE s.balance <> coalesce(sums.total, 0) OR s.balance <> coalesce(last.balance_after, 0)""",
    "every entry's balance_after is the running sum of its series (its user account's entries, or its stripe's)": """
        SELECT wallet_public_id(r.transaction_id) AS transaction, r.leg, r.name, r.asset, r.stripe, r.balance_after,
               r.running
          FROM (SELECT e.transaction_id, e.leg, a.name, a.asset, e.stripe, e.balance_after,
                       sum(e.amount) OVER (PARTITION BY e.account_id, CASE WHEN a.kind = 'system' THEN e.stripe END
                                           ORDER BY e.transaction_id, e.leg) AS running
                  FROM entries e JOIN accounts a ON a.id = e.account_id) r
         WHERE r.balance_after IS DISTINCT FROM r.running""",
    "no user balance below 0, nor below what it holds": """
        SELECT name, asset, balance, held FROM accounts WHERE kind = 'user' AND (balance < 0 OR held > balance)""",
    "every system account is its stripes: all of them, rooms summing to its distance from its floor": """
        SELECT a.name, a.asset, a.balance AS own_balance, count(s.stripe) AS stripes, sum(s.balance) AS balance,
               sum(s.room) AS room, a.balance_min
          FROM accounts a LEFT JOIN account_stripes s ON s.account_id = a.id
         WHERE a.kind = 'system'
         GROUP BY a.id
        HAVING a.balance <> 0 OR count(s.stripe) <> wallet_stripe_count() OR max(s.stripe) <> wallet_stripe_count() - 1
            OR sum(s.room) <> sum(s.balance) - a.balance_min OR sum(s.balance) < a.balance_min""",
    f"every asset has its system accounts ({', '.join(SYSTEM_ACCOUNTS)})": f"""
        SELECT s.code AS asset, n.name
          FROM assets s CROSS JOIN unnest(ARRAY[{_SYSTEM_NAMES}]) AS n (name)
         WHERE NOT EXISTS (SELECT FROM accounts a WHERE a.asset = s.code AND a.name = n.name AND a.kind = 'system')""",
    "every account's asset and user exist": """
        SELECT a.name, a.asset FROM accounts a
          LEFT JOIN assets s ON s.code = a.asset LEFT JOIN users u ON u.user_id = a.user_id
         WHERE s.code IS NULL OR a.user_id IS NOT NULL AND u.user_id IS NULL""",
    "every transfer moves its amount of its asset from its user to another user, in two legs": _two_legs(
        "transfer", "a.kind = 'user' AND a.name <> 'user:' || t.user_id"
    ),
    "every stripe belongs to a system account": """
        SELECT s.account_id, s.stripe FROM account_stripes s JOIN accounts a ON a.id = s.account_id
         WHERE a.kind <> 'system'""",
    "every entry belongs to a transaction": """
        SELECT e.transaction_id, e.leg FROM entries e LEFT JOIN transactions t ON t.id = e.transaction_id
         WHERE t.id IS NULL""",
    "every entry is on an account": """
        SELECT wallet_public_id(e.transaction_id) AS transaction, e.leg, e.account_id
          FROM entries e LEFT JOIN accounts a ON a.id = e.account_id
         WHERE a.id IS NULL""",
    "every account's held equals the sum of its holds still held": """
        SELECT a.name, a.asset, a.held, coalesce(h.total, 0) AS holds
          FROM accounts a
          LEFT JOIN (SELECT account_id, sum(amount) AS total FROM holds WHERE status = 'held'
                      GROUP BY account_id) h ON h.account_id = a.id
         WHERE a.held <> coalesce(h.total, 0)""",
    "every hold is on its user's account of its asset": """
        SELECT wallet_hold_public_id(h.id) AS hold, h.user_id, h.asset, a.name, a.asset AS account_asset
          FROM holds h LEFT JOIN accounts a ON a.id = h.account_id
         WHERE a.id IS NULL OR a.name <> 'user:' || h.user_id OR a.asset <> h.asset""",
    "every captured hold and its purchase name each other, for the captured amount": """
        SELECT wallet_hold_public_id(h.id) AS hold, h.captured_amount, wallet_public_id(t.id) AS transaction,
               t.amount, t.hold_id
          FROM holds h FULL JOIN transactions t ON t.id = h.transaction_id
         WHERE (h.status = 'captured' OR t.hold_id IS NOT NULL)
           AND (h.id IS NULL OR t.id IS NULL OR t.hold_id IS DISTINCT FROM h.id OR t.type <> 'purchase'
                OR t.amount <> h.captured_amount OR t.user_id <> h.user_id OR t.asset <> h.asset)""",
    "every refund's original is a purchase, top-up or bonus of its user and asset": """
        SELECT wallet_public_id(r.id) AS refund, wallet_public_id(r.refund_of) AS original, o.type
          FROM transactions r LEFT JOIN transactions o ON o.id = r.refund_of
         WHERE (r.type = 'refund') <> (r.refund_of IS NOT NULL)
            OR r.refund_of IS NOT NULL AND (o.id IS NULL OR o.type NOT IN ('purchase', 'topup', 'bonus')
                                            OR o.user_id <> r.user_id OR o.asset <> r.asset)""",
    "refunds never add up to more than their original, and the count of what is refunded is their sum": """
        SELECT wallet_public_id(coalesce(c.transaction_id, r.refund_of)) AS original, o.amount, c.amount AS counted,
               r.total AS refunded
          FROM refunded c
          FULL JOIN (SELECT refund_of, sum(amount) AS total FROM transactions WHERE refund_of IS NOT NULL
                      GROUP BY refund_of) r ON r.refund_of = c.transaction_id
          LEFT JOIN transactions o ON o.id = coalesce(c.transaction_id, r.refund_of)
         WHERE coalesce(c.amount, 0) <> coalesce(r.total, 0) OR o.id IS NULL OR r.total > o.amount""",
    "every refund reverses its original's legs, never more of a leg than it had": """
        SELECT wallet_public_id(o.id) AS original, a.name, a.asset, e.amount, coalesce(sum(x.amount), 0) AS reversed
          FROM transactions o JOIN entries e ON e.transaction_id = o.id JOIN accounts a ON a.id = e.account_id
          LEFT JOIN transactions r ON r.refund_of = o.id
          LEFT JOIN entries x ON x.transaction_id = r.id AND x.account_id = e.account_id
         WHERE EXISTS (SELECT FROM transactions r2 WHERE r2.refund_of = o.id)
         GROUP BY o.id, e.leg, a.name, a.asset, e.amount
        HAVING sign(coalesce(sum(x.amount), 0)) = sign(e.amount) OR abs(coalesce(sum(x.amount), 0)) > abs(e.amount)
         UNION ALL  -- a refund's leg on an account its original has no leg on
        SELECT wallet_public_id(r.refund_of), a.name, a.asset, NULL, x.amount
          FROM transactions r JOIN entries x ON x.transaction_id = r.id JOIN accounts a ON a.id = x.account_id
         WHERE r.refund_of IS NOT NULL
           AND NOT EXISTS (SELECT FROM entries e
                            WHERE e.transaction_id = r.refund_of AND e.account_id = x.account_id)""",
    "every account of a frozen user is flagged frozen, and no other": """
        SELECT a.name, a.asset, a.frozen, u.status FROM accounts a LEFT JOIN users u ON u.user_id = a.user_id
         WHERE a.frozen <> coalesce(u.status = 'frozen', false)""",
    "every user account of an asset with lots keeps its balance as lots, and no other account does": """
        SELECT a.name, a.asset, a.lots, s.lots AS asset_lots FROM accounts a JOIN assets s ON s.code = a.asset
         WHERE a.lots <> (a.kind = 'user' AND s.lots)""",
    "the lots of every account sum to its balance": """
        SELECT a.name, a.asset, a.lots, a.balance, sum(l.amount) AS lots_total
          FROM accounts a JOIN lots l ON l.account_id = a.id
         GROUP BY a.id
        HAVING NOT a.lots OR a.balance <> sum(l.amount)
         UNION ALL
        SELECT a.name, a.asset, a.lots, a.balance, 0 FROM accounts a
         WHERE a.lots AND a.balance <> 0 AND NOT EXISTS (SELECT FROM lots l WHERE l.account_id = a.id)""",
    "every lot holds what formed it, less what debits took from it, plus what refunds gave back": """
        SELECT l.id AS lot, l.original, l.amount, u.taken
          FROM lots l
          LEFT JOIN (SELECT lot_id, sum(amount - restored) AS taken FROM lot_uses GROUP BY lot_id) u ON u.lot_id = l.id
         WHERE l.amount <> l.original - coalesce(u.taken, 0)""",
    "every lot formed by a credit is on the credited account, for no more than the credit": """
        SELECT l.id AS lot, wallet_public_id(l.transaction_id) AS transaction, l.original FROM lots l
         WHERE l.transaction_id IS NOT NULL
           AND NOT EXISTS (SELECT FROM entries e WHERE e.transaction_id = l.transaction_id
                              AND e.account_id = l.account_id AND e.amount >= l.original)""",
    "what each debit took from lots is what it debited from their account": """
        SELECT wallet_public_id(u.transaction_id) AS transaction, t.account_id, sum(u.amount) AS taken, e.amount
          FROM lot_uses u JOIN lots t ON t.id = u.lot_id
          LEFT JOIN entries e ON e.transaction_id = u.transaction_id AND e.account_id = t.account_id
         GROUP BY u.transaction_id, t.account_id, e.amount
        HAVING e.amount IS NULL OR sum(u.amount) <> -e.amount""",
    "every expiry moves its amount from its user to system:expired of its asset, in two legs": _two_legs(
        "expiry", "a.name = 'system:expired'"
    ),
    "every idempotency record names one outcome, which exists: a transaction, a hold, or a problem": """
        SELECT k.api_key_id, k.key, k.transaction_id, k.hold_id FROM idempotency_keys k
          LEFT JOIN transactions t ON t.id = k.transaction_id
          LEFT JOIN holds h ON h.id = k.hold_id
         WHERE num_nonnulls(k.transaction_id, k.hold_id, k.problem) <> 1
            OR k.transaction_id IS NOT NULL AND t.id IS NULL OR k.hold_id IS NOT NULL AND h.id IS NULL""",
    "every idempotency record belongs to an API key": """
        SELECT k.api_key_id, k.key FROM idempotency_keys k LEFT JOIN api_keys a ON a.id = k.api_key_id
         WHERE a.id IS NULL""",
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


async def record(
    conn: asyncpg.Connection, started_at: datetime, results: list[CheckResult], totals: dict[str, int]
) -> None:
    """Keeps a run's report (the console shows the last one, /metrics its result and time)."""
    # Samples hold dates and numerics: as their text.
    checks = orjson.loads(orjson.dumps([asdict(result) for result in results], default=str))
    await conn.execute(
        "INSERT INTO verify_reports (started_at, failed, totals, checks) VALUES ($1, $2, $3, $4)",
        started_at,
        sum(result.violations > 0 for result in results),
        totals,
        checks,
    )


async def list_reports(database: Database, limit: int, before: int | None) -> bytes:
    """A page of verify reports, newest first; the cursor is the last report's id."""
    rows = await database.fetch(
        "SELECT id, started_at, finished_at, failed, totals::text, checks::text FROM verify_reports"
        " WHERE id < coalesce($1, 9223372036854775807) ORDER BY id DESC LIMIT $2",
        before,
        limit + 1,
    )
    more = len(rows) > limit
    rows = rows[:limit]
    items = [
        {
            "id": f"vr_{row['id']}",
            "started_at": timestamp(row["started_at"]),
            "finished_at": timestamp(row["finished_at"]),
            "ok": row["failed"] == 0,
            "failed": row["failed"],
            "totals": orjson.Fragment(row["totals"]),
            "checks": orjson.Fragment(row["checks"]),
        }
        for row in rows
    ]
    return orjson.dumps({"items": items, "next_cursor": f"vr_{rows[-1]['id']}" if more else None})
