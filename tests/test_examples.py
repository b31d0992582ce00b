"""Worked examples, in accounting terms.

Sign convention of this ledger: an entry's amount is signed, positive raises the account's balance. Below, an
account is *credited* when its balance goes up (a positive entry) and *debited* when it goes down (a negative
entry). The treasury issues credits and the bonus pool gives them away, so both go below zero; revenue collects
what players spend. After every example: each transaction's entries sum to 0, every asset's balances (users and
system accounts together) sum to 0, and every account's balance equals the sum of its entries.
"""

from typing import Any

import asyncpg
import httpx

from tests import support
from tests.conftest import Keys
from tests.support import PATHS, create_user, idem, movement, post, post_legs, stored_balance
from wallet.render import parse_public_id


async def open_account(client: httpx.AsyncClient, keys: Keys, name: str) -> str:
    return await create_user(client, keys, name, display_name=name.title())


async def move(
    client: httpx.AsyncClient, keys: Keys, kind: str, user_id: str, amount: int, asset: str = "GOLD", **extra: Any
) -> httpx.Response:
    """Sent with the key of the kind's own scope; the response, whatever it is."""
    return await post(client, keys, PATHS[kind], movement(user_id, amount, asset, **extra), idem(), scope=kind)


async def posted(
    client: httpx.AsyncClient, keys: Keys, kind: str, user_id: str, amount: int, asset: str = "GOLD", **extra: Any
) -> dict[str, Any]:
    response = await move(client, keys, kind, user_id, amount, asset, **extra)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def balances(db: asyncpg.Connection, asset: str, *accounts: str) -> dict[str, int]:
    return {account: await stored_balance(db, account, asset) for account in accounts}


async def assert_transaction_balances(db: asyncpg.Connection, tx: dict[str, Any]) -> None:
    """The transaction's entries sum to 0, as the API shows them and as the database stores them."""
    assert sum(entry["amount"] for entry in tx["entries"]) == 0, tx["entries"]
    internal_id = parse_public_id(tx["id"])
    assert internal_id is not None
    row = await db.fetchrow(
        "SELECT count(*) AS legs, sum(amount) AS total FROM entries WHERE transaction_id = $1", internal_id
    )
    assert row is not None
    assert row["legs"] == len(tx["entries"]) >= 2
    assert row["total"] == 0


async def assert_books_balance(db: asyncpg.Connection) -> None:
    """The trial balance of the whole ledger (support.assert_books_balance), every seeded asset in it, and every
    account's balance equal to the sum of its entries: read from one snapshot."""
    async with db.transaction(isolation="repeatable_read", readonly=True):
        await support.assert_books_balance(db)  # nested: a savepoint in this same snapshot
        assets = await db.fetch("SELECT DISTINCT asset FROM account_balances")
        assert {row["asset"] for row in assets} >= {"GOLD", "DIAMOND", "LOYALTY"}

        mismatched = await db.fetch(
            """SELECT b.name, b.asset, b.balance, coalesce(s.total, 0) AS entries_total
                 FROM account_balances b
                 LEFT JOIN (SELECT account_id, sum(amount) AS total FROM entries GROUP BY account_id) s
                        ON s.account_id = b.id
                WHERE b.balance <> coalesce(s.total, 0)"""
        )
        assert [dict(row) for row in mismatched] == []


async def test_alice_buys_a_pack_of_gold(client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection) -> None:
    """Alice buys a pack of 1,000 gold with real money: the treasury, which issues gold, is debited 1,000 and
    Alice's account is credited 1,000."""
    alice = await open_account(client, api_keys, "alice")
    before = await balances(db, "GOLD", f"user:{alice}", "system:treasury")

    tx = await posted(client, api_keys, "topup", alice, 1000, description="Pack of 1,000")

    assert tx["entries"] == [
        {"account": f"user:{alice}", "asset": "GOLD", "amount": 1000},
        {"account": "system:treasury", "asset": "GOLD", "amount": -1000},
    ]
    assert tx["balance_after"] == 1000
    after = await balances(db, "GOLD", f"user:{alice}", "system:treasury")
    assert after[f"user:{alice}"] == before[f"user:{alice}"] + 1000
    assert after["system:treasury"] == before["system:treasury"] - 1000
    await assert_transaction_balances(db, tx)
    await assert_books_balance(db)


async def test_alice_buys_a_sword(client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection) -> None:
    """Alice, holding 1,000 gold, buys a 300-gold sword: her account is debited 300 and revenue is credited 300.
    She has 700 left."""
    alice = await open_account(client, api_keys, "alice")
    await posted(client, api_keys, "topup", alice, 1000)
    revenue_before = await stored_balance(db, "system:revenue", "GOLD")

    tx = await posted(client, api_keys, "purchase", alice, 300, description="Sword", metadata={"item": "sword"})

    assert tx["entries"] == [
        {"account": f"user:{alice}", "asset": "GOLD", "amount": -300},
        {"account": "system:revenue", "asset": "GOLD", "amount": 300},
    ]
    assert tx["balance_after"] == 700
    assert await stored_balance(db, f"user:{alice}", "GOLD") == 700
    assert await stored_balance(db, "system:revenue", "GOLD") == revenue_before + 300
    await assert_transaction_balances(db, tx)
    await assert_books_balance(db)


async def test_bob_gets_a_diamond_bonus_and_spends_some(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection
) -> None:
    """Bob logs in seven days in a row and gets 50 diamonds: the bonus pool is debited 50 and Bob is credited 50.
    He then spends 20 on a skin: Bob is debited 20 and revenue is credited 20. The pool's 50 is now split
    between Bob (30) and revenue (20)."""
    bob = await open_account(client, api_keys, "bob")
    accounts = (f"user:{bob}", "system:bonus_pool", "system:revenue")
    before = await balances(db, "DIAMOND", *accounts)

    bonus = await posted(client, api_keys, "bonus", bob, 50, "DIAMOND", description="7-day streak")
    assert bonus["entries"] == [
        {"account": f"user:{bob}", "asset": "DIAMOND", "amount": 50},
        {"account": "system:bonus_pool", "asset": "DIAMOND", "amount": -50},
    ]
    skin = await posted(client, api_keys, "purchase", bob, 20, "DIAMOND", description="Skin")
    assert skin["balance_after"] == 30

    after = await balances(db, "DIAMOND", *accounts)
    change = {account: after[account] - before[account] for account in accounts}
    assert change == {f"user:{bob}": 30, "system:bonus_pool": -50, "system:revenue": 20}
    assert sum(change.values()) == 0
    for tx in (bonus, skin):
        await assert_transaction_balances(db, tx)
    await assert_books_balance(db)


async def test_carol_cannot_spend_what_she_does_not_have(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection
) -> None:
    """Carol holds 100 loyalty points and tries to redeem a 150-point reward: refused as insufficient funds, and no
    account of the loyalty ledger moves at all."""
    carol = await open_account(client, api_keys, "carol")
    await posted(client, api_keys, "topup", carol, 100, "LOYALTY")
    ledger_before = await db.fetch("SELECT id, balance FROM account_balances WHERE asset = 'LOYALTY' ORDER BY id")
    transactions_before = await db.fetchval("SELECT count(*) FROM transactions")

    refused = await move(client, api_keys, "purchase", carol, 150, "LOYALTY")

    assert refused.status_code == 409, refused.text
    assert refused.json()["code"] == "insufficient_funds"
    assert await db.fetch("SELECT id, balance FROM account_balances WHERE asset = 'LOYALTY' ORDER BY id") == (
        ledger_before
    )
    assert await db.fetchval("SELECT count(*) FROM transactions") == transactions_before
    await assert_books_balance(db)


async def test_gift_between_players_with_a_fee(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection
) -> None:
    """A later flow on the same engine: Alice gifts Bob 100 gold through the gift shop, which keeps a 10-gold fee.
    One transaction, three legs: Alice is debited 110, Bob credited 100, revenue credited 10."""
    alice = await open_account(client, api_keys, "alice")
    bob = await open_account(client, api_keys, "bob")
    await posted(client, api_keys, "topup", alice, 500)
    accounts = (f"user:{alice}", f"user:{bob}", "system:revenue")
    before = await balances(db, "GOLD", *accounts)

    row = await post_legs(
        db,
        [(f"user:{alice}", -110), (f"user:{bob}", 100), ("system:revenue", 10)],
        type_="gift",
        user_id=alice,
        amount=110,
        description="Gift to Bob",
        metadata={"to": bob},
        key_name="examples",
    )
    assert row["problem"] is None, row

    public_id = await db.fetchval("SELECT wallet_public_id($1)", row["transaction_id"])
    fetched = await client.get(f"/v1/transactions/{public_id}", headers=api_keys.headers("read"))
    assert fetched.status_code == 200, fetched.text
    gift = fetched.json()
    assert gift["type"] == "gift"
    assert gift["balance_after"] == 390
    assert gift["entries"] == [
        {"account": f"user:{alice}", "asset": "GOLD", "amount": -110},
        {"account": f"user:{bob}", "asset": "GOLD", "amount": 100},
        {"account": "system:revenue", "asset": "GOLD", "amount": 10},
    ]
    after = await balances(db, "GOLD", *accounts)
    assert {account: after[account] - before[account] for account in accounts} == {
        f"user:{alice}": -110,
        f"user:{bob}": 100,
        "system:revenue": 10,
    }
    await assert_transaction_balances(db, gift)
    await assert_books_balance(db)


async def test_a_day_of_trading(client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection) -> None:
    """Three players, three assets, a day of top-ups, bonuses, purchases and one refused purchase. At the end of the
    day: the players' net change in each asset is exactly the opposite of the system accounts' net change; each
    player's balance is the sum of their entries; and reading each player's statement from the oldest line, every
    line's balance_after is the previous one plus that line's amount."""
    players = [await open_account(client, api_keys, name) for name in ("dora", "eli", "fay")]
    dora, eli, fay = players
    system = ("system:treasury", "system:bonus_pool", "system:revenue")
    assets = ("GOLD", "DIAMOND", "LOYALTY")
    before = {asset: await balances(db, asset, *system) for asset in assets}

    day = [
        ("topup", dora, 1_000, "GOLD"),
        ("topup", eli, 250, "GOLD"),
        ("bonus", fay, 40, "DIAMOND"),
        ("purchase", dora, 600, "GOLD"),
        ("bonus", dora, 75, "LOYALTY"),
        ("purchase", eli, 250, "GOLD"),
        ("purchase", fay, 41, "DIAMOND"),  # refused: Fay holds 40
        ("purchase", fay, 40, "DIAMOND"),
        ("topup", fay, 5, "DIAMOND"),
        ("purchase", dora, 25, "LOYALTY"),
    ]
    expected = {(dora, "GOLD"): 400, (eli, "GOLD"): 0, (fay, "DIAMOND"): 5, (dora, "LOYALTY"): 50}
    for kind, user_id, amount, asset in day:
        response = await move(client, api_keys, kind, user_id, amount, asset)
        if (kind, user_id, amount) == ("purchase", fay, 41):
            assert response.status_code == 409, response.text
            continue
        assert response.status_code == 201, response.text
        await assert_transaction_balances(db, response.json())

    for asset in assets:
        players_now = sum([await stored_balance(db, f"user:{p}", asset) for p in players])
        system_now = await balances(db, asset, *system)
        system_change = sum(system_now[a] - before[asset][a] for a in system)
        assert players_now == sum(v for (_, a), v in expected.items() if a == asset)
        assert system_change == -players_now, asset

    for user_id in players:
        for asset in assets:
            stored = await stored_balance(db, f"user:{user_id}", asset)
            assert stored == expected.get((user_id, asset), 0), (user_id, asset)
            entries_total = await db.fetchval(
                """SELECT coalesce(sum(e.amount), 0) FROM entries e JOIN accounts a ON a.id = e.account_id
                    WHERE a.name = $1 AND a.asset = $2""",
                f"user:{user_id}",
                asset,
            )
            assert entries_total == stored

        statement = await client.get(f"/v1/users/{user_id}/transactions", headers=api_keys.headers("read"))
        assert statement.status_code == 200, statement.text
        running: dict[str, int] = {}
        for line in reversed(statement.json()["items"]):
            (own,) = [e["amount"] for e in line["entries"] if e["account"] == f"user:{user_id}"]
            running[line["asset"]] = running.get(line["asset"], 0) + own
            assert line["balance_after"] == running[line["asset"]], line
    await assert_books_balance(db)
