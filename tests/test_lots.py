"""Expiring credits (spec/API.md, v1.1 "Asset policies", Expiry): on an asset with `expiry_days`, every credit to a
user forms a lot that expires that many days later; debits take the lots that expire first; a refund gives back to
the lots its original took from; a hold reserves without taking; within 60 s after a lot's date, what is left of it
(less what active holds reserve) moves to `system:expired` in a transaction of type `expiry`. Balances of such
assets list the next five lots to expire. The lots of an account always sum to its balance.

The expiry runs in the service's maintenance loop, whose clock a test moves days ahead (create_app(clock=...)):
no test waits for a lot's date."""

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx

from tests.conftest import Keys, in_process
from tests.support import create_user, frozen, idem, move, post, refund
from wallet.config import Settings
from wallet.http.app import create_app

EXPIRY_PROMISE_S = 60  # spec: within 60 s after a lot expires


async def expiring_asset(client: httpx.AsyncClient, keys: Keys, days: int | None, **policies: Any) -> str:
    code = f"X{uuid.uuid4().hex[:10].upper()}"
    response = await client.put(
        f"/v1/assets/{code}", json={"name": "Points", "expiry_days": days, **policies}, headers=keys.headers("admin")
    )
    assert response.status_code == 201, response.text
    return code


async def set_expiry(client: httpx.AsyncClient, keys: Keys, code: str, days: int | None) -> None:
    response = await client.put(
        f"/v1/assets/{code}", json={"name": "Points", "expiry_days": days}, headers=keys.headers("admin")
    )
    assert response.status_code == 200, response.text


async def balance_of(client: httpx.AsyncClient, keys: Keys, user_id: str, asset: str) -> dict[str, Any]:
    response = await client.get(f"/v1/users/{user_id}/balances/{asset}", headers=keys.headers("read"))
    assert response.status_code == 200, response.text
    document: dict[str, Any] = response.json()
    return document


async def lots_of(db: asyncpg.Connection, user_id: str, asset: str) -> list[tuple[int, datetime | None]]:
    """The open lots of the user's account, soonest to expire first: (amount, expires_at or None for never)."""
    rows = await db.fetch(
        """SELECT l.amount, CASE WHEN l.expires_at < 'infinity' THEN l.expires_at END AS expires_at
             FROM lots l JOIN accounts a ON a.id = l.account_id
            WHERE a.name = $1 AND a.asset = $2 AND l.amount > 0 ORDER BY l.expires_at, l.id""",
        f"user:{user_id}",
        asset,
    )
    return [(row["amount"], row["expires_at"]) for row in rows]


async def lots_match_balance(db: asyncpg.Connection, user_id: str, asset: str) -> tuple[int, int]:
    row = await db.fetchrow(
        """SELECT a.balance, (SELECT coalesce(sum(l.amount), 0) FROM lots l WHERE l.account_id = a.id) AS lots
             FROM accounts a WHERE a.name = $1 AND a.asset = $2""",
        f"user:{user_id}",
        asset,
    )
    assert row is not None
    return int(row["balance"]), int(row["lots"])


def at(tx: dict[str, Any], days: int) -> datetime:
    """`days` after the transaction's creation: when a lot it formed expires."""
    return datetime.fromisoformat(tx["created_at"]) + timedelta(days=days)


async def test_credits_form_lots_and_balances_list_the_next_five(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection
) -> None:
    asset = await expiring_asset(client, api_keys, 7, transferable=True)
    user_id = await create_user(client, api_keys, "lot")
    credits = [await move(client, api_keys, "topup", user_id, amount, asset) for amount in (1, 2, 3)]
    credits.append(await move(client, api_keys, "bonus", user_id, 4, asset))
    # A reward in the asset (a purchase in GOLD) and a transfer in form lots too.
    await move(client, api_keys, "topup", user_id, 100)
    body = {"user_id": user_id, "asset": "GOLD", "amount": 10, "rewards": [{"asset": asset, "amount": 5}]}
    response = await post(client, api_keys, "/v1/purchases", body, idem())
    assert response.status_code == 201, response.text
    credits.append(response.json())
    sender = await create_user(client, api_keys, "lot")
    await move(client, api_keys, "topup", sender, 6, asset)
    sent = {"from_user_id": sender, "to_user_id": user_id, "asset": asset, "amount": 6}
    response = await post(client, api_keys, "/v1/transfers", sent, idem(), scope="transfer")
    assert response.status_code == 201, response.text
    credits.append(response.json())

    document = await balance_of(client, api_keys, user_id, asset)
    assert (document["balance"], document["held"], document["available"]) == (21, 0, 21)
    assert [lot["amount"] for lot in document["expiring"]] == [1, 2, 3, 4, 5]
    assert [datetime.fromisoformat(lot["expires_at"]) for lot in document["expiring"]] == [
        at(tx, 7) for tx in credits[:5]
    ]
    assert await lots_of(db, user_id, asset) == [
        (amount, at(tx, 7)) for amount, tx in zip(range(1, 7), credits, strict=True)
    ]
    # Assets without expiry have no `expiring`; the list of every balance carries it for this asset.
    assert "expiring" not in await balance_of(client, api_keys, user_id, "GOLD")
    response = await client.get(f"/v1/users/{user_id}/balances", headers=api_keys.headers("read"))
    by_asset = {item["asset"]: item for item in response.json()["balances"]}
    assert by_asset[asset]["expiring"] == document["expiring"]
    assert "expiring" not in by_asset["GOLD"]
    # A user never credited in the asset: balance 0, nothing expiring. Not with as_of (lots are now, not then).
    stranger = await create_user(client, api_keys, "lot")
    assert (await balance_of(client, api_keys, stranger, asset))["expiring"] == []
    as_of = await client.get(
        f"/v1/users/{user_id}/balances/{asset}", params={"as_of": credits[-1]["created_at"]}, headers=api_keys.headers()
    )
    assert set(as_of.json()) == {"user_id", "asset", "balance", "as_of"}


async def test_debits_take_the_lots_that_expire_first_and_holds_take_none(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection
) -> None:
    asset = await expiring_asset(client, api_keys, 30)
    user_id = await create_user(client, api_keys, "lot")
    late = await move(client, api_keys, "topup", user_id, 100, asset)  # expires in 30 days
    await set_expiry(client, api_keys, asset, 1)
    soon = await move(client, api_keys, "topup", user_id, 50, asset)  # later, but expires in 1 day: first
    assert await lots_of(db, user_id, asset) == [(50, at(soon, 1)), (100, at(late, 30))]

    purchase = await move(client, api_keys, "purchase", user_id, 60, asset)
    assert await lots_of(db, user_id, asset) == [(90, at(late, 30))]
    taken = await db.fetch(
        """SELECT l.transaction_id, u.amount FROM lot_uses u JOIN lots l ON l.id = u.lot_id
            WHERE u.transaction_id = $1 ORDER BY l.expires_at""",
        int(purchase["id"].rsplit("_", 1)[1], 16),
    )
    assert [row["amount"] for row in taken] == [50, 10]

    # A hold takes nothing from the lots; its capture does.
    response = await post(client, api_keys, "/v1/holds", {"user_id": user_id, "asset": asset, "amount": 80}, idem())
    assert response.status_code == 201, response.text
    hold = response.json()
    assert await lots_of(db, user_id, asset) == [(90, at(late, 30))]
    document = await balance_of(client, api_keys, user_id, asset)
    assert (document["balance"], document["held"], document["available"]) == (90, 80, 10)
    response = await post(client, api_keys, f"/v1/holds/{hold['id']}/capture", {"amount": 75}, idem())
    assert response.status_code == 201, response.text
    assert await lots_of(db, user_id, asset) == [(15, at(late, 30))]
    assert await lots_match_balance(db, user_id, asset) == (15, 15)


async def test_a_refund_gives_back_to_the_lots_its_purchase_took(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection
) -> None:
    asset = await expiring_asset(client, api_keys, 30)
    user_id = await create_user(client, api_keys, "lot")
    late = await move(client, api_keys, "topup", user_id, 100, asset)
    await set_expiry(client, api_keys, asset, 1)
    soon = await move(client, api_keys, "topup", user_id, 50, asset)
    before = await lots_of(db, user_id, asset)
    purchase = await move(client, api_keys, "purchase", user_id, 120, asset)  # takes 50 of `soon`, 70 of `late`
    assert await lots_of(db, user_id, asset) == [(30, at(late, 30))]

    # Given back in the reverse order of the taking: what was taken last (of the later lot) first. No new lot: a
    # refund does not renew the credits' dates.
    response = await refund(client, api_keys, purchase["id"], {"amount": 60, "reason": "Partly undelivered"})
    assert response.status_code == 201, response.text
    assert await lots_of(db, user_id, asset) == [(90, at(late, 30))]
    response = await refund(client, api_keys, purchase["id"], {"reason": "The rest"})
    assert response.status_code == 201, response.text
    assert await lots_of(db, user_id, asset) == before == [(50, at(soon, 1)), (100, at(late, 30))]
    assert await db.fetchval(
        "SELECT count(*) FROM lots l JOIN accounts a ON a.id = l.account_id WHERE a.name = $1 AND a.asset = $2",
        f"user:{user_id}",
        asset,
    ) == len(before)


async def test_a_reversal_takes_first_from_the_lot_its_original_formed(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection
) -> None:
    asset = await expiring_asset(client, api_keys, 10)
    user_id = await create_user(client, api_keys, "lot")
    first = await move(client, api_keys, "topup", user_id, 50, asset)
    second = await move(client, api_keys, "topup", user_id, 70, asset)
    # A chargeback of the second top-up takes its own lot, not the first (which expires sooner).
    response = await refund(client, api_keys, second["id"], {"reason": "Chargeback"}, scope="admin")
    assert response.status_code == 201, response.text
    assert await lots_of(db, user_id, asset) == [(50, at(first, 10))]

    # A refund of a purchase with a reward in the asset takes the reward back from the reward's own lot.
    await move(client, api_keys, "topup", user_id, 100)
    body = {"user_id": user_id, "asset": "GOLD", "amount": 40, "rewards": [{"asset": asset, "amount": 8}]}
    response = await post(client, api_keys, "/v1/purchases", body, idem())
    assert response.status_code == 201, response.text
    rewarded = response.json()
    assert await lots_of(db, user_id, asset) == [(50, at(first, 10)), (8, at(rewarded, 10))]
    response = await refund(client, api_keys, rewarded["id"], {"amount": 20, "reason": "Half undelivered"})
    assert response.status_code == 201, response.text
    assert await lots_of(db, user_id, asset) == [(50, at(first, 10)), (4, at(rewarded, 10))]


async def test_turning_expiry_on_keeps_earlier_balances_as_a_lot_that_never_expires(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection
) -> None:
    asset = await expiring_asset(client, api_keys, None)
    user_id = await create_user(client, api_keys, "lot")
    await move(client, api_keys, "topup", user_id, 100, asset)
    assert "expiring" not in await balance_of(client, api_keys, user_id, asset)
    assert await lots_of(db, user_id, asset) == []

    await set_expiry(client, api_keys, asset, 10)
    assert await lots_of(db, user_id, asset) == [(100, None)]
    assert (await balance_of(client, api_keys, user_id, asset))["expiring"] == []
    credit = await move(client, api_keys, "topup", user_id, 20, asset)
    document = await balance_of(client, api_keys, user_id, asset)
    assert [(lot["amount"], datetime.fromisoformat(lot["expires_at"])) for lot in document["expiring"]] == [
        (20, at(credit, 10))
    ]
    await move(client, api_keys, "purchase", user_id, 30, asset)  # the expiring lot first, then the lasting one
    assert [amount for amount, _ in await lots_of(db, user_id, asset)] == [90]

    # Off again: credits from now on last for ever; the account still keeps lots (and `expiring`, empty).
    await set_expiry(client, api_keys, asset, None)
    await move(client, api_keys, "topup", user_id, 5, asset)
    assert [amount for amount, _ in await lots_of(db, user_id, asset)] == [90, 5]
    assert (await balance_of(client, api_keys, user_id, asset))["expiring"] == []
    assert await lots_match_balance(db, user_id, asset) == (95, 95)


async def test_parallel_credits_and_debits_keep_the_lots_equal_to_the_balance(
    http: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection
) -> None:
    """200 top-ups, purchases, holds and refunds at once on one account of an expiring asset, through the real
    server: no 5xx, and the lots sum to the balance."""
    asset = await expiring_asset(http, api_keys, 5)
    user_id = await create_user(http, api_keys, "lot")
    await move(http, api_keys, "topup", user_id, 300, asset)
    purchases = [await move(http, api_keys, "purchase", user_id, 3, asset) for _ in range(20)]

    async def one(i: int) -> httpx.Response:
        kind = i % 4
        if kind == 0:
            return await post(http, api_keys, "/v1/topups", {"user_id": user_id, "asset": asset, "amount": 7}, idem())
        if kind == 1:
            return await post(
                http, api_keys, "/v1/purchases", {"user_id": user_id, "asset": asset, "amount": 9}, idem()
            )
        if kind == 2:
            body = {"user_id": user_id, "asset": asset, "amount": 4, "expires_in_s": 1}
            return await post(http, api_keys, "/v1/holds", body, idem())
        return await refund(http, api_keys, purchases[(i // 4) % 20]["id"], {"amount": 1, "reason": "r"})

    responses = await asyncio.gather(*(one(i) for i in range(200)))
    statuses = sorted({response.status_code for response in responses})
    assert set(statuses) <= {201, 409}, [r.text for r in responses if r.status_code not in (201, 409)]
    for response in responses:
        if response.status_code == 409:
            assert response.json()["code"] in ("insufficient_funds", "refund_exceeds_original"), response.text
    balance, lots = await lots_match_balance(db, user_id, asset)
    assert balance == lots == (await balance_of(http, api_keys, user_id, asset))["balance"]


@asynccontextmanager
async def later(database_url: str, days: int) -> AsyncIterator[httpx.AsyncClient]:
    """The service with its clock `days` ahead, sweeping every 100 ms: its maintenance loop expires lots as it will
    then. (Every lot of the test database due by then expires: tests of other modules do not count on theirs.)"""
    settings = Settings(database_url=database_url, api_key_cache_ttl_ms=0, hold_expiry_interval_ms=100)
    clock: Callable[[], datetime] = lambda: datetime.now(UTC) + timedelta(days=days)  # noqa: E731
    async with in_process(create_app(settings, clock=clock)) as http:
        yield http


async def eventually(condition: Callable[[], Any], what: str) -> float:
    """Seconds until `condition()` (awaited) is true; fails after EXPIRY_PROMISE_S."""
    started = time.monotonic()
    while not await condition():
        assert time.monotonic() - started < EXPIRY_PROMISE_S, f"not within {EXPIRY_PROMISE_S} s: {what}"
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def expiries(db: asyncpg.Connection, user_id: str, asset: str) -> list[int]:
    rows = await db.fetch(
        "SELECT amount FROM transactions WHERE type = 'expiry' AND user_id = $1 AND asset = $2 ORDER BY id",
        user_id,
        asset,
    )
    return [row["amount"] for row in rows]


async def test_what_is_left_of_expired_lots_moves_to_system_expired_within_60_s(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection, database_url: str
) -> None:
    asset = await expiring_asset(client, api_keys, 1)
    user_id = await create_user(client, api_keys, "lot")
    await move(client, api_keys, "topup", user_id, 100, asset)
    await move(client, api_keys, "purchase", user_id, 10, asset)
    response = await post(client, api_keys, "/v1/holds", {"user_id": user_id, "asset": asset, "amount": 30}, idem())
    assert response.status_code == 201, response.text
    hold = response.json()
    # A frozen user's credits expire too; a lot that lasts (no expiry when it formed) does not.
    sleeper = await create_user(client, api_keys, "lot")
    await move(client, api_keys, "topup", sleeper, 40, asset)
    lasting = await expiring_asset(client, api_keys, None)
    await move(client, api_keys, "topup", user_id, 5, lasting)
    await set_expiry(client, api_keys, lasting, 1)

    async with frozen(client, api_keys, sleeper), later(database_url, 2):
        # 90 left, 30 of it held: 60 expires; what the hold reserves stays for its capture.
        took_s = await eventually(lambda: expiries(db, user_id, asset), "the first expiry")
        await eventually(lambda: expiries(db, sleeper, asset), "the frozen user's expiry")
    assert await expiries(db, user_id, asset) == [60]
    assert await expiries(db, sleeper, asset) == [40]
    document = await balance_of(client, api_keys, user_id, asset)
    assert (document["balance"], document["held"], document["available"]) == (30, 30, 0)
    assert await balance_of(client, api_keys, user_id, lasting) == {
        "user_id": user_id,
        "asset": lasting,
        "balance": 5,
        "held": 0,
        "available": 5,
        "expiring": [],
    }
    expiry_id = await db.fetchval(
        "SELECT wallet_public_id(max(id)) FROM transactions WHERE type = 'expiry' AND user_id = $1", user_id
    )
    response = await client.get(f"/v1/transactions/{expiry_id}", headers=api_keys.headers("read"))
    tx = response.json()
    assert (tx["type"], tx["amount"], tx["balance_after"], tx["description"]) == ("expiry", 60, 30, "Expired credits")
    assert tx["entries"] == [
        {"account": f"user:{user_id}", "asset": asset, "amount": -60},
        {"account": "system:expired", "asset": asset, "amount": 60},
    ]
    history = await client.get(f"/v1/users/{user_id}/transactions", headers=api_keys.headers("read"))
    assert history.json()["items"][0] == tx
    # An expiry is not refundable.
    response = await refund(client, api_keys, expiry_id, {"reason": "no"}, scope="admin")
    assert (response.status_code, response.json()["code"]) == (409, "not_refundable")

    # The hold captured in part: its capture takes from the expired lot; the rest it released expires next.
    response = await post(client, api_keys, f"/v1/holds/{hold['id']}/capture", {"amount": 12}, idem())
    assert response.status_code == 201, response.text
    async with later(database_url, 2):
        await eventually(lambda: _equals(expiries(db, user_id, asset), [60, 18]), "the released rest's expiry")
    assert await lots_match_balance(db, user_id, asset) == (0, 0)
    print(f"\nfirst expiry {took_s:.2f} s after the service's clock passed the lot's date")


async def _equals(awaitable: Any, expected: Any) -> bool:
    return bool(await awaitable == expected)


async def test_the_sweep_and_parallel_purchases_never_take_a_unit_twice(
    http: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection, database_url: str
) -> None:
    """Purchases through the real server race the sweep of a clock two days ahead for the same expired lots: each
    unit goes once, to a purchase or to `system:expired`; the account ends at 0 with its lots."""
    asset = await expiring_asset(http, api_keys, 1)
    user_ids = [await create_user(http, api_keys, "lot") for _ in range(4)]
    for user_id in user_ids:
        for _ in range(5):
            await move(http, api_keys, "topup", user_id, 20, asset)

    async def buy(user_id: str) -> httpx.Response:
        body = {"user_id": user_id, "asset": asset, "amount": 7}
        return await post(http, api_keys, "/v1/purchases", body, idem(), scope="purchase")

    async with later(database_url, 2):
        responses = await asyncio.gather(*(buy(user_ids[i % 4]) for i in range(80)))
        for user_id in user_ids:
            await eventually(lambda u=user_id: _equals(lots_match_balance(db, u, asset), (0, 0)), "all expired")
    assert {r.status_code for r in responses} <= {201, 409}, [r.text for r in responses if r.status_code >= 500]
    for user_id in user_ids:
        bought = sum(7 for r in responses if r.status_code == 201 and r.json()["user_id"] == user_id)
        assert bought + sum(await expiries(db, user_id, asset)) == 100, user_id
