"""The posting engine alone: wallet_request() without an idempotency key, and the stripes of system accounts,
called through SQL.

The engine accepts any balanced set of legs. Tests that only read or that must not persist run in a
transaction that is rolled back; tests that commit write balanced postings on their own users, so the ledger
stays consistent for the `wallet verify` that runs at the end of the session.
"""

import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pytest

from tests.conftest import Keys
from tests.support import new_id, open_account, post_legs, stored_balance, user_balances
from wallet import reads
from wallet.config import Settings
from wallet.database import connect
from wallet.kinds import SYSTEM_ACCOUNTS
from wallet.render import public_id

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
    created, _ = await reads.ensure_user(db, user_id, None)
    assert created
    return user_id


@dataclass(frozen=True)
class Posted:
    """What the engine returned: the transaction, or the problem's code and detail."""

    transaction_id: int | None
    code: str | None
    detail: str | None


async def post(db: asyncpg.Connection, legs: Sequence[tuple[str, int]], **fields: Any) -> Posted:
    row = await post_legs(db, legs, key_name=KEY_NAME, **fields)
    problem = row["problem"] or {}
    return Posted(row["transaction_id"], problem.get("code"), problem.get("detail"))


async def fund(db: asyncpg.Connection, user_id: str, amount: int, asset: str = "GOLD") -> int:
    row = await post(
        db, [(f"user:{user_id}", amount), ("system:treasury", -amount)], asset=asset, type_="topup", user_id=user_id
    )
    assert row.code is None, row
    assert row.transaction_id is not None
    return row.transaction_id


async def counts(db: asyncpg.Connection) -> dict[str, int]:
    row = await db.fetchrow(
        """SELECT (SELECT count(*) FROM transactions) AS transactions, (SELECT count(*) FROM entries) AS entries,
                  (SELECT sum(balance) FROM account_stripes) AS stripes"""
    )
    assert row is not None
    return {name: int(value) for name, value in row.items()}


RUNNING = "running"  # a system leg's balance_after: its stripe's balance after it, as the stripe's entries sum to


async def entries_of(db: asyncpg.Connection, posted_id: int) -> list[tuple[str, str, int, int | str]]:
    """Each leg: kind, account, amount, and the balance after it (a user's), or RUNNING when a system leg's
    balance_after is the sum of its stripe's entries up to it (its raw value otherwise)."""
    rows = await db.fetch(
        """SELECT a.kind, a.name, e.amount, e.balance_after,
                  (SELECT sum(x.amount) FROM entries x WHERE x.account_id = e.account_id AND x.stripe = e.stripe
                      AND x.transaction_id <= e.transaction_id) AS running
             FROM entries e JOIN accounts a ON a.id = e.account_id
            WHERE e.transaction_id = $1 ORDER BY e.leg""",
        posted_id,
    )
    return [
        (
            row["kind"],
            row["name"],
            row["amount"],
            RUNNING if row["kind"] == "system" and row["balance_after"] == row["running"] else row["balance_after"],
        )
        for row in rows
    ]


# Balanced postings --------------------------------------------------------------------------------------------------


async def test_three_leg_transfer_is_posted(db: asyncpg.Connection, client: httpx.AsyncClient, api_keys: Keys) -> None:
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
    assert row.code is None, row
    assert row.detail is None
    posted_id = row.transaction_id
    assert isinstance(posted_id, int)

    assert await entries_of(db, posted_id) == [
        ("user", f"user:{payer}", -300, 700),
        ("user", f"user:{payee}", 270, 270),
        ("system", "system:revenue", 30, RUNNING),
    ]
    tx = await db.fetchrow("SELECT * FROM transactions WHERE id = $1", posted_id)
    assert tx is not None
    assert (tx["type"], tx["asset"], tx["user_id"], tx["amount"]) == ("engine_test", "GOLD", payer, 300)
    assert (tx["description"], tx["metadata"], tx["api_key_name"]) == ("gift with fee", {"fee": 30}, KEY_NAME)

    assert await stored_balance(db, f"user:{payer}") == 700
    assert await stored_balance(db, f"user:{payee}") == 270
    assert await stored_balance(db, "system:revenue") == revenue_before + 30

    fetched = await client.get(f"/v1/transactions/{public_id(posted_id)}", headers=api_keys.headers("read"))
    rendered = fetched.json()
    assert rendered["balance_after"] == 700
    assert rendered["entries"] == [
        {"account": f"user:{payer}", "asset": "GOLD", "amount": -300},
        {"account": f"user:{payee}", "asset": "GOLD", "amount": 270},
        {"account": "system:revenue", "asset": "GOLD", "amount": 30},
    ]


async def test_user_to_user_transfer_without_system_leg(db: asyncpg.Connection) -> None:
    a, b = await new_user(db), await new_user(db)
    await fund(db, a, 50, "DIAMOND")
    row = await post(db, [(f"user:{b}", 20), (f"user:{a}", -20)], asset="DIAMOND", user_id=a)
    assert row.code is None, row
    assert await entries_of(db, row.transaction_id) == [
        ("user", f"user:{b}", 20, 20),
        ("user", f"user:{a}", -20, 30),
    ]


async def test_a_user_can_spend_exactly_the_whole_balance(db: asyncpg.Connection) -> None:
    user_id = await new_user(db)
    await fund(db, user_id, 40)
    row = await post(db, [(f"user:{user_id}", -40), ("system:revenue", 40)], type_="purchase", user_id=user_id)
    assert row.code is None, row
    assert await entries_of(db, row.transaction_id) == [
        ("user", f"user:{user_id}", -40, 0),
        ("system", "system:revenue", 40, RUNNING),
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
    assets = None if named is None else ["GOLD"] * len(named)
    posting = ("engine_test", user_id, "GOLD", 100, None, None, named, assets, amounts, None, None, None, False)
    with pytest.raises(asyncpg.PostgresError) as raised:
        await db.fetchrow(
            "SELECT * FROM wallet_request(ROW(NULL, $2, gen_random_uuid(), NULL, NULL, NULL, $1)::wallet_item)",
            posting,
            KEY_NAME,
        )
    assert raised.value.sqlstate == "WL900", raised.value
    assert await stored_balance(db, f"user:{user_id}") == before


async def test_unknown_system_account_raises(db: asyncpg.Connection) -> None:
    user_id = await new_user(db)
    with pytest.raises(asyncpg.PostgresError) as raised:
        await post(db, [(f"user:{user_id}", 10), ("system:nowhere", -10)], user_id=user_id)
    assert raised.value.sqlstate == "WL901", raised.value
    assert await user_balances(db, user_id) == {}  # not even the user's account was opened


async def test_unknown_user_returns_user_not_found_and_writes_nothing(db: asyncpg.Connection) -> None:
    ghost = new_id("ghost")
    async with db.transaction(isolation="repeatable_read"):
        before = await counts(db)
        row = await post(db, [(f"user:{ghost}", 10), ("system:treasury", -10)], type_="topup", user_id=ghost)
        assert row.transaction_id is None
        assert row.code == "user_not_found"
        assert ghost in row.detail
        assert await counts(db) == before


async def test_unknown_asset_returns_asset_not_found_and_writes_nothing(db: asyncpg.Connection) -> None:
    user_id = await new_user(db)
    async with db.transaction(isolation="repeatable_read"):
        before = await counts(db)
        row = await post(db, [(f"user:{user_id}", 10), ("system:treasury", -10)], asset="NOPE", user_id=user_id)
        assert row.transaction_id is None
        assert row.code == "asset_not_found"
        assert await counts(db) == before


async def test_insufficient_funds_returns_the_error_and_writes_nothing(db: asyncpg.Connection) -> None:
    user_id = await new_user(db)
    await fund(db, user_id, 100)
    async with db.transaction(isolation="repeatable_read"):
        before = await counts(db)
        row = await post(db, [(f"user:{user_id}", -101), ("system:revenue", 101)], type_="purchase", user_id=user_id)
        assert row.transaction_id is None
        assert row.code == "insufficient_funds"
        assert "100" in row.detail
        assert "101" in row.detail
        assert await counts(db) == before
        assert await stored_balance(db, f"user:{user_id}") == 100


async def test_insufficient_funds_on_one_leg_refuses_every_leg(db: asyncpg.Connection) -> None:
    """A multi-leg posting is all or nothing: the payee gets nothing when the payer is short."""
    payer, payee = await new_user(db), await new_user(db)
    await fund(db, payer, 100)
    async with db.transaction(isolation="repeatable_read"):
        before = await counts(db)
        row = await post(db, [(f"user:{payee}", 140), ("system:revenue", 10), (f"user:{payer}", -150)], user_id=payer)
        assert row.code == "insufficient_funds", row
        assert f"user:{payer}" in row.detail
        assert await counts(db) == before
    assert await stored_balance(db, f"user:{payer}") == 100
    assert await user_balances(db, payee) == {}  # a refused posting opens no account


async def test_balance_limit_exceeded(db: asyncpg.Connection) -> None:
    user_id = await new_user(db)
    async with rolled_back(db, isolation="repeatable_read"):
        await fund(db, user_id, 10**18)
        before = await counts(db)
        row = await post(db, [(f"user:{user_id}", 1), ("system:treasury", -1)], user_id=user_id)
        assert row.code == "balance_limit_exceeded", row
        assert await counts(db) == before


# Balances after, system legs, stripes ------------------------------------------------------------------------------


async def test_balance_after_is_the_running_balance_of_each_account_or_stripe(db: asyncpg.Connection) -> None:
    user_id = await new_user(db)
    posted = [
        await fund(db, user_id, 500),
        (
            await post(db, [("system:revenue", 120), (f"user:{user_id}", -120)], type_="purchase", user_id=user_id)
        ).transaction_id,
        (
            await post(db, [(f"user:{user_id}", 7), ("system:bonus_pool", -7)], type_="bonus", user_id=user_id)
        ).transaction_id,
    ]
    expected_after = [500, 380, 387]
    for posted_id, after in zip(posted, expected_after, strict=True):
        entries = await entries_of(db, posted_id)
        assert [e[3] for e in entries if e[0] == "user"] == [after], entries
        assert [e[3] for e in entries if e[0] == "system"] == [RUNNING], entries
    assert await stored_balance(db, f"user:{user_id}") == 387


async def _lockable(other: asyncpg.Connection, sql: str, *args: Any) -> bool:
    """True when `other` can lock the rows `sql` selects right now (nobody holds a conflicting lock)."""
    try:
        async with other.transaction():
            await other.execute(sql + " FOR UPDATE NOWAIT", *args)
    except asyncpg.LockNotAvailableError:
        return False
    return True


async def test_system_legs_go_to_a_stripe_and_lock_nothing_else(
    db: asyncpg.Connection, database_url: str, settings: Settings
) -> None:
    """While a top-up is uncommitted, its user account and one stripe of the treasury (this connection's) are
    locked; the treasury's account row and its other stripes are not, so other requests go on."""
    user_id = await new_user(db)
    await open_account(db, user_id)  # an account a top-up opens is locked too, but invisible to others until then
    other = await connect(database_url, settings)
    try:
        async with rolled_back(db, "repeatable_read"):
            treasury_id = await db.fetchval("SELECT id FROM accounts WHERE name = 'system:treasury' AND asset = 'GOLD'")
            mine = await db.fetchval("SELECT pg_backend_pid() % wallet_stripe_count()")
            stripes_before = {
                r["stripe"]: r["balance"]
                for r in await db.fetch(
                    "SELECT stripe, balance FROM account_stripes WHERE account_id = $1", treasury_id
                )
            }
            view_before = await stored_balance(db, "system:treasury")

            await fund(db, user_id, 777)

            stripes_after = {
                r["stripe"]: r["balance"]
                for r in await db.fetch(
                    "SELECT stripe, balance FROM account_stripes WHERE account_id = $1", treasury_id
                )
            }
            assert {
                k: stripes_after[k] - stripes_before[k] for k in stripes_after if stripes_after[k] != stripes_before[k]
            } == {mine: -777}
            assert await stored_balance(db, "system:treasury") == view_before - 777

            assert not await _lockable(
                other, "SELECT 1 FROM accounts WHERE name = $1 AND asset = 'GOLD'", f"user:{user_id}"
            )
            assert not await _lockable(
                other, "SELECT 1 FROM account_stripes WHERE account_id = $1 AND stripe = $2", treasury_id, mine
            )
            assert await _lockable(other, "SELECT 1 FROM accounts WHERE id = $1", treasury_id)
            assert await _lockable(
                other, "SELECT 1 FROM account_stripes WHERE account_id = $1 AND stripe <> $2", treasury_id, mine
            )
    finally:
        await other.close()
    assert await stored_balance(db, f"user:{user_id}") == 0


async def private_asset(db: asyncpg.Connection) -> str:
    """An asset of this test only, with its system accounts, inside the caller's transaction."""
    asset = "E" + uuid.uuid4().hex[:10].upper()
    await db.execute("INSERT INTO assets (code, name, scale) VALUES ($1, 'Engine test', 0)", asset)
    await db.execute(
        "SELECT wallet_system_account('system:' || s, $1) FROM unnest($2::text[]) s", asset, list(SYSTEM_ACCOUNTS)
    )
    return asset


STRIPES = """SELECT a.name, count(*) AS stripes, sum(s.balance) AS balance, sum(s.room) AS room, a.balance_min
               FROM accounts a JOIN account_stripes s ON s.account_id = a.id
              WHERE a.asset = $1 AND a.kind = 'system' GROUP BY a.id ORDER BY a.name"""


async def test_system_balances_are_the_sums_of_their_stripes(db: asyncpg.Connection) -> None:
    """On a private asset (rolled back at the end): every system account has all its stripes, its balance is their
    sum, and their rooms add up to its distance from its floor (issuers -2^61, revenue 0)."""
    async with rolled_back(db):
        asset = await private_asset(db)
        a, b = await new_user(db), await new_user(db)
        await fund(db, a, 1000, asset)
        for legs in (
            [(f"user:{b}", 200), ("system:bonus_pool", -200)],
            [(f"user:{a}", -300), ("system:revenue", 300)],
            [(f"user:{a}", -105), (f"user:{b}", 100), ("system:revenue", 5)],
        ):
            row = await post(db, legs, asset=asset, user_id=a)
            assert row.code is None, row

        view = "SELECT name, balance FROM account_balances WHERE asset = $1 ORDER BY name"
        assert dict(tuple(row) for row in await db.fetch(view, asset)) == {
            "system:bonus_pool": -200,
            "system:expired": 0,
            "system:revenue": 305,
            "system:treasury": -1000,
            f"user:{a}": 595,
            f"user:{b}": 300,
        }
        issuance_max = 2**61
        assert [tuple(row) for row in await db.fetch(STRIPES, asset)] == [
            ("system:bonus_pool", 64, -200, issuance_max - 200, -issuance_max),
            ("system:expired", 64, 0, 0, 0),
            ("system:revenue", 64, 305, 305, 0),
            ("system:treasury", 64, -1000, issuance_max - 1000, -issuance_max),
        ]


async def test_gathering_room_moves_it_between_stripes_and_changes_no_balance(db: asyncpg.Connection) -> None:
    async with rolled_back(db):
        asset = await private_asset(db)
        treasury = await db.fetchval("SELECT id FROM accounts WHERE name = 'system:treasury' AND asset = $1", asset)
        before = [tuple(row) for row in await db.fetch(STRIPES, asset)]
        assert await db.fetchval("SELECT wallet_stripe_gather($1, 5, $2)", treasury, 2**60)
        rooms = {
            r["stripe"]: r["room"]
            for r in await db.fetch("SELECT stripe, room FROM account_stripes WHERE account_id = $1", treasury)
        }
        assert rooms[5] >= 2**60
        assert len(set(room for stripe, room in rooms.items() if stripe != 5)) == 1, "the rest is spread evenly"
        assert [tuple(row) for row in await db.fetch(STRIPES, asset)] == before
        assert not await db.fetchval("SELECT wallet_stripe_gather($1, 5, $2)", treasury, 2**61 + 1)


@pytest.mark.parametrize(("room", "amount"), [(40, 7), (65, 7), (100, 7), (64 * 7, 7), (7, 7), (1000, 999)])
async def test_gathering_on_a_sink_leaves_the_stripe_the_room_it_gathered_for(
    db: asyncpg.Connection, room: int, amount: int
) -> None:
    """Revenue (a sink, floored at 0) has only the room it received, spread over its stripes once gathered: for any
    total that covers the amount, a gather leaves the gathering stripe at least the amount and no stripe below 0.
    (0004's gather rounded the others' share to the nearest: with 40 for 7, the stripe kept 40 - 63 = -23.)"""
    async with rolled_back(db):
        asset = await private_asset(db)
        user_id = await new_user(db)
        await fund(db, user_id, room, asset)
        row = await post(db, [(f"user:{user_id}", -room), ("system:revenue", room)], asset=asset, user_id=user_id)
        assert row.code is None, row
        revenue = await db.fetchval("SELECT id FROM accounts WHERE name = 'system:revenue' AND asset = $1", asset)
        assert await db.fetchval("SELECT wallet_stripe_gather($1, 5, $2)", revenue, amount)
        rooms = {
            r["stripe"]: r["room"]
            for r in await db.fetch("SELECT stripe, room FROM account_stripes WHERE account_id = $1", revenue)
        }
        assert rooms[5] >= amount, rooms
        assert min(rooms.values()) >= 0, rooms
        assert sum(rooms.values()) == room
        assert not await db.fetchval("SELECT wallet_stripe_gather($1, 5, $2)", revenue, room + 1)


async def test_issuance_stops_at_the_supply_limit_and_writes_nothing(db: asyncpg.Connection) -> None:
    """A private asset's treasury issues up to 2^61 and not one unit more: the posting that would pass it is
    refused with supply_limit_exceeded, whatever stripe it lands on, and the stripes have gathered their room."""
    async with rolled_back(db):
        asset = await private_asset(db)
        users = [await new_user(db) for _ in range(3)]
        for user_id, amount in zip(users, [10**18, 10**18, 2**61 - 2 * 10**18], strict=True):
            await fund(db, user_id, amount, asset)
        assert await stored_balance(db, "system:treasury", asset) == -(2**61)
        before = await counts(db)
        row = await post(db, [(f"user:{users[0]}", -1), ("system:treasury", 1)], asset=asset, user_id=users[0])
        assert row.code is None, "a chargeback to the treasury gives room back"
        row = await post(db, [(f"user:{users[2]}", 2), ("system:treasury", -2)], asset=asset, user_id=users[2])
        assert row.code == "supply_limit_exceeded", row
        assert asset in (row.detail or "")
        row = await post(db, [(f"user:{users[2]}", 1), ("system:treasury", -1)], asset=asset, user_id=users[2])
        assert row.code is None, row
        assert await stored_balance(db, "system:treasury", asset) == -(2**61)
        row = await post(db, [(f"user:{users[2]}", 1), ("system:treasury", -1)], asset=asset, user_id=users[2])
        assert row.code == "supply_limit_exceeded", row
        assert (await counts(db))["transactions"] == before["transactions"] + 2
        assert [r["room"] for r in await db.fetch(STRIPES, asset) if r["name"] == "system:treasury"] == [0]
