"""The supply bound (spec/API.md, "Hardening"), at the bound, through the API: batches of top-ups of 10^15 fill
users until the treasury has issued 2^61 of GOLD; the top-up that would pass it is a 409 supply_limit_exceeded
that writes nothing, every read still answers, and `wallet verify` is clean. On a database of its own, since it
exhausts an asset's treasury."""

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import httpx
import pytest

from tests.conftest import in_process
from tests.support import own_database, wallet_verify
from wallet import keys
from wallet.config import Settings
from wallet.database import connect, migrate
from wallet.http.app import create_app
from wallet.seed import seed

ISSUANCE_MAX = 2**61  # what the treasury of an asset may issue, net (wallet_issuance_max())
BALANCE_MAX = 10**18
AMOUNT = 10**15  # the largest amount a request may carry
SECRET = "supply-test-secret"
HEADERS = {"Authorization": f"Bearer {SECRET}"}


@pytest.fixture(scope="module")
def supply_url(server_url: str) -> Iterator[str]:
    with own_database(server_url, "wallet_supply") as url:
        migrate(url)
        yield url


@pytest.fixture(scope="module")
async def supply(supply_url: str) -> AsyncIterator[tuple[httpx.AsyncClient, asyncpg.Connection]]:
    settings = Settings(database_url=supply_url, api_key_cache_ttl_ms=0)
    conn = await connect(supply_url, settings)
    await seed(conn)
    await keys.ensure_bootstrap(conn, SECRET)
    async with in_process(create_app(settings)) as http:
        yield http, conn
    await conn.close()


def topups(user_id: str, count: int, prefix: str) -> dict[str, Any]:
    return {
        "operations": [
            {"type": "topup", "user_id": user_id, "asset": "GOLD", "amount": AMOUNT, "idempotency_key": f"{prefix}-{i}"}
            for i in range(count)
        ]
    }


async def test_issuance_stops_at_the_bound_and_everything_still_reads(
    supply: tuple[httpx.AsyncClient, asyncpg.Connection], supply_url: str
) -> None:
    http, db = supply
    issued_before = -int(
        await db.fetchval("SELECT balance FROM account_balances WHERE name = 'system:treasury' AND asset = 'GOLD'")
    )
    users = [f"whale-{i}" for i in range(3)]
    statuses: list[int] = []
    codes: list[str] = []
    for user_id in users:
        assert (await http.put(f"/v1/users/{user_id}", headers=HEADERS)).status_code == 201
        answer = await http.post("/v1/batch", json=topups(user_id, 1000, user_id), headers=HEADERS)
        assert answer.status_code == 200, answer.text
        for result in answer.json()["results"]:
            statuses.append(result["status"])
            codes.extend([result["problem"]["code"]] if result["status"] != 201 else [])

    accepted = (ISSUANCE_MAX - issued_before) // AMOUNT
    assert statuses.count(201) == accepted, (statuses.count(201), accepted)
    assert set(codes) == {"supply_limit_exceeded"} and len(codes) == 3000 - accepted
    treasury = int(
        await db.fetchval("SELECT balance FROM account_balances WHERE name = 'system:treasury' AND asset = 'GOLD'")
    )
    assert -ISSUANCE_MAX <= treasury < -ISSUANCE_MAX + AMOUNT

    # The next top-up passes the bound: refused, recorded, replayed; nothing written.
    transactions = await db.fetchval("SELECT count(*) FROM transactions")
    body = {"user_id": users[2], "asset": "GOLD", "amount": AMOUNT}
    for _ in range(2):
        refused = await http.post("/v1/topups", json=body, headers={**HEADERS, "Idempotency-Key": "one-too-many"})
        assert refused.status_code == 409, refused.text
        assert refused.json()["code"] == "supply_limit_exceeded"
    assert await db.fetchval("SELECT count(*) FROM transactions") == transactions

    # Smaller issuance that fits still goes through, up to the last unit; bonuses come from a bound of their own.
    room = ISSUANCE_MAX + treasury
    if room:
        fits = {"user_id": users[2], "asset": "GOLD", "amount": room}
        assert (
            await http.post("/v1/topups", json=fits, headers={**HEADERS, "Idempotency-Key": "the-last"})
        ).status_code == 201
    one = {"user_id": users[2], "asset": "GOLD", "amount": 1}
    over = await http.post("/v1/topups", json=one, headers={**HEADERS, "Idempotency-Key": "one-unit-over"})
    assert (over.status_code, over.json()["code"]) == (409, "supply_limit_exceeded")
    bonus = await http.post("/v1/bonuses", json=one, headers={**HEADERS, "Idempotency-Key": "a-bonus"})
    assert bonus.status_code == 201, bonus.text

    # A purchase moves issued money to revenue: the supply is unchanged, nothing overflows.
    spend = {"user_id": users[0], "asset": "GOLD", "amount": AMOUNT}
    assert (
        await http.post("/v1/purchases", json=spend, headers={**HEADERS, "Idempotency-Key": "spend"})
    ).status_code == 201

    # Every read keeps working at the bound.
    for path in (
        f"/v1/users/{users[0]}/balances",
        f"/v1/users/{users[0]}/balances/GOLD",
        f"/v1/users/{users[2]}/transactions?limit=200",
    ):
        assert (await http.get(path, headers=HEADERS)).status_code == 200, path
    assert (await http.get(f"/v1/users/{users[0]}/balances/GOLD", headers=HEADERS)).json()[
        "balance"
    ] == BALANCE_MAX - AMOUNT
    sums = await db.fetch("SELECT asset, sum(balance) AS total FROM account_balances GROUP BY asset")
    assert {row["asset"]: row["total"] for row in sums} == {"DIAMOND": 0, "GOLD": 0, "LOYALTY": 0}

    verified = await asyncio.to_thread(wallet_verify, supply_url)
    print("\nwallet verify at the supply bound:\n" + verified.stdout)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "ledger is consistent" in verified.stdout
