"""The posting engine alone: wallet_post(), account_deltas and wallet_rollup(), called through SQL.

The engine accepts any balanced set of legs on one asset. Tests that only read or that must not persist run in a
transaction that is rolled back; tests that commit write balanced postings on their own users, so the ledger
stays consistent for the `wallet verify` that runs at the end of the session.
"""

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import asyncpg
import pytest

from tests.support import new_id, stored_balance
from wallet import ledger
from wallet.config import Settings
from wallet.database import connect
from wallet.kinds import SYSTEM_ACCOUNTS

POST_SQL = "SELECT posted_id, error_code, error_detail FROM wallet_post($1, $2, $3, $4, $5, $6, $7, $8, $9)"
KEY_NAME = "engine-test"


@contextlib.asynccontextmanager
async def rolled_back(db: asyncpg.Connection, isolation: str | None = None) -> AsyncIterator[None]:
    """A transaction whose writes never persist, whatever happens inside."""
    transaction = db.transaction(isolation=isolation)
    await transaction.start()
    try:
        yield
    finally:
        await transaction.rollback()


async def new_user(db: asyncpg.Connection, prefix: str = "e") -> str:
    user_id = new_id(prefix)
    created, _ = await ledger.ensure_user(db, user_id, None)
    assert created
    return user_id


async def post(
    db: asyncpg.Connection,
    legs: Sequence[tuple[str, int]],
    *,
    asset: str = "GOLD",
    type_: str = "transfer",
    user_id: str | None = None,
    amount: int | None = None,
    description: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> asyncpg.Record:
    accounts = [account for account, _ in legs]
    amounts = [value for _, value in legs]
    if amount is None:
        amount = max((abs(value) for value in amounts), default=1) or 1
    row = await db.fetchrow(POST_SQL, type_, asset, user_id, amount, accounts, amounts, description, metadata, KEY_NAME)
    assert row is not None
    return row


async def fund(db: asyncpg.Connection, user_id: str, amount: int, asset: str = "GOLD") -> int:
    row = await post(
        db, [(f"user:{user_id}", amount), ("system:treasury", -amount)], asset=asset, type_="topup", user_id=user_id
    )
    assert row["error_code"] is None, row
    posted_id: int = row["posted_id"]
    return posted_id


async def counts(db: asyncpg.Connection) -> dict[str, int]:
    row = await db.fetchrow(
        """SELECT (SELECT count(*) FROM transactions) AS transactions, (SELECT count(*) FROM entries) AS entries,
                  (SELECT count(*) FROM account_deltas) AS deltas"""
    )
    assert row is not None
    return {name: int(value) for name, value in row.items()}


async def entries_of(db: asyncpg.Connection, posted_id: int) -> list[tuple[str, str, int, int | None]]:
    rows = await db.fetch(
        """SELECT a.kind, a.name, e.amount, e.balance_after FROM entries e JOIN accounts a ON a.id = e.account_id
            WHERE e.transaction_id = $1 ORDER BY e.leg""",
        posted_id,
    )
    return [(row["kind"], row["name"], row["amount"], row["balance_after"]) for row in rows]


# Balanced postings --------------------------------------------------------------------------------------------------


async def test_three_leg_transfer_is_posted(db: asyncpg.Connection) -> None:
    """A pays 300: B receives 270 and revenue keeps a 30 fee. One transaction, three entries summing to 0."""
    payer, payee = await new_user(db), await new_user(db)
    await fund(db, payer, 1000)
    revenue_before = await stored_balance(db, "system:revenue")

    row = await post(
        db,
        [(f"user:{payer}", -300), (f"user:{payee}", 270), ("system:revenue", 30)],
        user_id=payer,
        amount=300,
        description="gift with fee",
        metadata={"fee": 30},
    )
    assert row["error_code"] is None, row
    assert row["error_detail"] is None
    posted_id = row["posted_id"]
    assert isinstance(posted_id, int)

    assert await entries_of(db, posted_id) == [
        ("user", f"user:{payer}", -300, 700),
        ("user", f"user:{payee}", 270, 270),
        ("system", "system:revenue", 30, None),
    ]
    tx = await db.fetchrow("SELECT * FROM transactions WHERE id = $1", posted_id)
    assert tx is not None
    assert (tx["type"], tx["asset"], tx["user_id"], tx["amount"]) == ("transfer", "GOLD", payer, 300)
    assert (tx["description"], tx["metadata"], tx["api_key_name"]) == ("gift with fee", {"fee": 30}, KEY_NAME)

    assert await stored_balance(db, f"user:{payer}") == 700
    assert await stored_balance(db, f"user:{payee}") == 270
    assert await stored_balance(db, "system:revenue") == revenue_before + 30

    rendered = await db.fetchval("SELECT wallet_transaction_json($1)::jsonb", posted_id)
    assert rendered["balance_after"] == 700
    assert rendered["entries"] == [
        {"account": f"user:{payer}", "amount": -300},
        {"account": f"user:{payee}", "amount": 270},
        {"account": "system:revenue", "amount": 30},
    ]


async def test_user_to_user_transfer_without_system_leg(db: asyncpg.Connection) -> None:
    a, b = await new_user(db), await new_user(db)
    await fund(db, a, 50, "DIAMOND")
    row = await post(db, [(f"user:{b}", 20), (f"user:{a}", -20)], asset="DIAMOND", user_id=a)
    assert row["error_code"] is None, row
    assert await entries_of(db, row["posted_id"]) == [
        ("user", f"user:{b}", 20, 20),
        ("user", f"user:{a}", -20, 30),
    ]


async def test_a_user_can_spend_exactly_the_whole_balance(db: asyncpg.Connection) -> None:
    user_id = await new_user(db)
    await fund(db, user_id, 40)
    row = await post(db, [(f"user:{user_id}", -40), ("system:revenue", 40)], type_="purchase", user_id=user_id)
    assert row["error_code"] is None, row
    assert await entries_of(db, row["posted_id"]) == [
        ("user", f"user:{user_id}", -40, 0),
        ("system", "system:revenue", 40, None),
    ]
    assert await stored_balance(db, f"user:{user_id}") == 0


# Refused postings ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accounts", "amounts"),
    [
        pytest.param(["{u}", "system:treasury"], [100, -99], id="sum-not-zero"),
        pytest.param(["{u}", "system:treasury", "system:revenue"], [100, -100, 1], id="three-legs-sum-not-zero"),
        pytest.param(["{u}"], [0], id="one-leg"),
        pytest.param(["{u}", "system:treasury"], [0, 0], id="zero-amounts"),
        pytest.param(["{u}", "system:treasury", "system:revenue"], [100, -100, 0], id="a-zero-leg"),
        pytest.param(["{u}", "system:treasury"], [100, -50, -50], id="more-amounts-than-accounts"),
        pytest.param(["{u}", "system:treasury", "system:revenue"], [100, -100], id="more-accounts-than-amounts"),
        pytest.param([], [], id="no-legs"),
        pytest.param(None, None, id="null-legs"),
        pytest.param(["{u}", "{u}", "system:treasury"], [50, 50, -100], id="duplicate-user-account"),
        pytest.param(["{u}", "system:treasury", "system:treasury"], [100, -50, -50], id="duplicate-system-account"),
    ],
)
async def test_malformed_legs_raise_wl900(
    db: asyncpg.Connection, accounts: list[str] | None, amounts: list[int] | None
) -> None:
    user_id = await new_user(db)
    await fund(db, user_id, 1000)
    named = None if accounts is None else [a.format(u=f"user:{user_id}") for a in accounts]
    before = await stored_balance(db, f"user:{user_id}")
    with pytest.raises(asyncpg.PostgresError) as raised:
        await db.fetchrow(POST_SQL, "transfer", "GOLD", user_id, 100, named, amounts, None, None, KEY_NAME)
    assert raised.value.sqlstate == "WL900", raised.value
    assert await stored_balance(db, f"user:{user_id}") == before


async def test_unknown_system_account_raises(db: asyncpg.Connection) -> None:
    user_id = await new_user(db)
    with pytest.raises(asyncpg.PostgresError) as raised:
        await post(db, [(f"user:{user_id}", 10), ("system:nowhere", -10)], user_id=user_id)
    assert raised.value.sqlstate == "WL901", raised.value
    assert await stored_balance(db, f"user:{user_id}") == 0


async def test_unknown_user_returns_user_not_found_and_writes_nothing(db: asyncpg.Connection) -> None:
    ghost = new_id("ghost")
    async with db.transaction(isolation="repeatable_read"):
        before = await counts(db)
        row = await post(db, [(f"user:{ghost}", 10), ("system:treasury", -10)], type_="topup", user_id=ghost)
        assert row["posted_id"] is None
        assert row["error_code"] == "user_not_found"
        assert ghost in row["error_detail"]
        assert await counts(db) == before


async def test_unknown_asset_returns_asset_not_found_and_writes_nothing(db: asyncpg.Connection) -> None:
    user_id = await new_user(db)
    async with db.transaction(isolation="repeatable_read"):
        before = await counts(db)
        row = await post(db, [(f"user:{user_id}", 10), ("system:treasury", -10)], asset="NOPE", user_id=user_id)
        assert row["posted_id"] is None
        assert row["error_code"] == "asset_not_found"
        assert await counts(db) == before


async def test_insufficient_funds_returns_the_error_and_writes_nothing(db: asyncpg.Connection) -> None:
    user_id = await new_user(db)
    await fund(db, user_id, 100)
    async with db.transaction(isolation="repeatable_read"):
        before = await counts(db)
        row = await post(db, [(f"user:{user_id}", -101), ("system:revenue", 101)], type_="purchase", user_id=user_id)
        assert row["posted_id"] is None
        assert row["error_code"] == "insufficient_funds"
        assert "100" in row["error_detail"]
        assert "101" in row["error_detail"]
        assert await counts(db) == before
        assert await stored_balance(db, f"user:{user_id}") == 100


async def test_insufficient_funds_on_one_leg_refuses_every_leg(db: asyncpg.Connection) -> None:
    """A multi-leg posting is all or nothing: the payee gets nothing when the payer is short."""
    payer, payee = await new_user(db), await new_user(db)
    await fund(db, payer, 100)
    async with db.transaction(isolation="repeatable_read"):
        before = await counts(db)
        row = await post(db, [(f"user:{payee}", 140), ("system:revenue", 10), (f"user:{payer}", -150)], user_id=payer)
        assert row["error_code"] == "insufficient_funds", row
        assert f"user:{payer}" in row["error_detail"]
        assert await counts(db) == before
    assert await stored_balance(db, f"user:{payer}") == 100
    assert await stored_balance(db, f"user:{payee}") == 0


async def test_balance_limit_exceeded(db: asyncpg.Connection) -> None:
    user_id = await new_user(db)
    # Repeatable read: the background rollup deleting deltas meanwhile must not change what we count.
    async with rolled_back(db, isolation="repeatable_read"):
        await fund(db, user_id, 10**18)
        before = await counts(db)
        row = await post(db, [(f"user:{user_id}", 1), ("system:treasury", -1)], user_id=user_id)
        assert row["error_code"] == "balance_limit_exceeded", row
        assert await counts(db) == before


# Balances after, system legs, rollup ------------------------------------------------------------------------------


async def test_balance_after_on_user_entries_only(db: asyncpg.Connection) -> None:
    user_id = await new_user(db)
    posted = [
        await fund(db, user_id, 500),
        (await post(db, [("system:revenue", 120), (f"user:{user_id}", -120)], type_="purchase", user_id=user_id))[
            "posted_id"
        ],
        (await post(db, [(f"user:{user_id}", 7), ("system:bonus_pool", -7)], type_="bonus", user_id=user_id))[
            "posted_id"
        ],
    ]
    expected_after = [500, 380, 387]
    for posted_id, after in zip(posted, expected_after, strict=True):
        entries = await entries_of(db, posted_id)
        assert [e[3] for e in entries if e[0] == "user"] == [after], entries
        assert [e[3] for e in entries if e[0] == "system"] == [None], entries
    assert await stored_balance(db, f"user:{user_id}") == 387


async def _lock_probe(other: asyncpg.Connection, account: str, asset: str = "GOLD") -> bool:
    """True when `other` can lock the account row right now (nobody holds a conflicting lock)."""
    try:
        async with other.transaction():
            await other.execute(
                "SELECT 1 FROM accounts WHERE name = $1 AND asset = $2 FOR UPDATE NOWAIT", account, asset
            )
    except asyncpg.LockNotAvailableError:
        return False
    return True


async def test_system_legs_go_to_deltas_and_lock_nothing(
    db: asyncpg.Connection, database_url: str, settings: Settings
) -> None:
    """While a top-up is uncommitted, its user account is locked but the treasury row is not: the treasury's side
    is an appended delta, and its stored balance is untouched."""
    user_id = await new_user(db)
    other = await connect(database_url, settings)
    try:
        async with rolled_back(db, "repeatable_read"):
            treasury_id, stored_before = await db.fetchrow(
                "SELECT id, balance FROM accounts WHERE name = 'system:treasury' AND asset = 'GOLD'"
            )
            deltas_before = await db.fetchval(
                "SELECT count(*) FROM account_deltas WHERE account_id = $1 AND amount = -777", treasury_id
            )
            view_before = await stored_balance(db, "system:treasury")

            await fund(db, user_id, 777)

            assert await db.fetchval("SELECT balance FROM accounts WHERE id = $1", treasury_id) == stored_before
            deltas_after = await db.fetchval(
                "SELECT count(*) FROM account_deltas WHERE account_id = $1 AND amount = -777", treasury_id
            )
            assert deltas_after == deltas_before + 1
            assert await stored_balance(db, "system:treasury") == view_before - 777

            assert not await _lock_probe(other, f"user:{user_id}"), "the user row should be locked"
            # The background rollup may hold the treasury row for a moment: retry a few times.
            for _ in range(20):
                if await _lock_probe(other, "system:treasury"):
                    break
                await asyncio.sleep(0.05)
            else:
                pytest.fail("the uncommitted top-up holds a lock on system:treasury")
    finally:
        await other.close()
    assert await stored_balance(db, f"user:{user_id}") == 0


async def _rollup(db: asyncpg.Connection) -> int:
    """wallet_rollup() returns 0 when the background rollup holds its lock: try again until it runs."""
    for _ in range(50):
        moved = int(await db.fetchval("SELECT wallet_rollup()"))
        if moved:
            return moved
        await asyncio.sleep(0.02)
    pytest.fail("wallet_rollup() never ran")


async def test_rollup_folds_deltas_and_keeps_balances(db: asyncpg.Connection) -> None:
    """On a private asset (rolled back at the end): system legs wait in account_deltas, the view counts them, and
    wallet_rollup() moves them into accounts.balance without changing any balance the view shows."""
    asset = "E" + uuid.uuid4().hex[:10].upper()
    async with rolled_back(db):
        await db.execute("INSERT INTO assets (code, name, scale) VALUES ($1, 'Engine test', 0)", asset)
        await db.execute(
            """INSERT INTO accounts (kind, name, asset)
               SELECT 'system', 'system:' || s, $1 FROM unnest($2::text[]) s""",
            asset,
            list(SYSTEM_ACCOUNTS),
        )
        a, b = await new_user(db), await new_user(db)
        await fund(db, a, 1000, asset)
        for legs in (
            [(f"user:{b}", 200), ("system:bonus_pool", -200)],
            [(f"user:{a}", -300), ("system:revenue", 300)],
            [(f"user:{a}", -105), (f"user:{b}", 100), ("system:revenue", 5)],
        ):
            row = await post(db, legs, asset=asset, user_id=a)
            assert row["error_code"] is None, row

        system = """SELECT a.name, a.balance AS stored,
                           (SELECT count(*) FROM account_deltas d WHERE d.account_id = a.id) AS deltas,
                           (SELECT coalesce(sum(d.amount), 0) FROM account_deltas d WHERE d.account_id = a.id)
                               AS pending
                      FROM accounts a WHERE a.asset = $1 AND a.kind = 'system' ORDER BY a.name"""
        view = "SELECT name, balance FROM account_balances WHERE asset = $1 ORDER BY name"

        before = [tuple(row) for row in await db.fetch(view, asset)]
        assert dict(before) == {
            "system:bonus_pool": -200,
            "system:revenue": 305,
            "system:treasury": -1000,
            f"user:{a}": 595,
            f"user:{b}": 300,
        }
        assert [tuple(row) for row in await db.fetch(system, asset)] == [
            ("system:bonus_pool", 0, 1, -200),
            ("system:revenue", 0, 2, 305),
            ("system:treasury", 0, 1, -1000),
        ]

        assert await _rollup(db) >= 4

        assert [tuple(row) for row in await db.fetch(system, asset)] == [
            ("system:bonus_pool", -200, 0, 0),
            ("system:revenue", 305, 0, 0),
            ("system:treasury", -1000, 0, 0),
        ]
        assert [tuple(row) for row in await db.fetch(view, asset)] == before
        assert sum(balance for _, balance in before) == 0
    assert await db.fetchval("SELECT count(*) FROM assets WHERE code = $1", asset) == 0


async def test_rollup_keeps_every_balance_of_the_real_ledger(db: asyncpg.Connection) -> None:
    """The shared ledger (rolled back at the end): every account_balances row is the same before and after a
    rollup, and no delta is left pending."""
    user_id = await new_user(db)
    view = "SELECT id, balance FROM account_balances ORDER BY id"
    async with rolled_back(db):
        await fund(db, user_id, 33)  # at least one pending delta, so the rollup has work
        before = await db.fetch(view)
        assert await db.fetchval("SELECT count(*) FROM account_deltas") >= 1
        await _rollup(db)
        assert await db.fetchval("SELECT count(*) FROM account_deltas") == 0
        assert await db.fetch(view) == before
