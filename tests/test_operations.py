"""What the operator console reads beside users (beyond the contract; README "Beyond the contract"): users found by
the start of their id, system accounts and their balances, transactions per asset, hour and type over the last
hours, and the reports `wallet verify` keeps."""

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx

from tests.conftest import Keys
from tests.support import assert_problem, assert_validation_error, move, wallet_verify
from wallet.verify import VERIFY_CHECKS


async def test_users_are_found_by_the_start_of_their_id_a_page_at_a_time(
    client: httpx.AsyncClient, api_keys: Keys
) -> None:
    prefix = f"find{uuid.uuid4().hex[:6]}"
    ids = sorted(f"{prefix}{suffix}" for suffix in ("", "-b", ".c", "0", "A", "_z", "zz"))
    for user_id in ids:
        response = await client.put(f"/v1/users/{user_id}", headers=api_keys.headers("admin"))
        assert response.status_code == 201, response.text
    await client.put(f"/v1/users/{prefix[:-1]}", headers=api_keys.headers("admin"))  # one short of the prefix

    found: list[str] = []
    cursor = None
    while True:
        params = {"prefix": prefix, "limit": 3} | ({"cursor": cursor} if cursor else {})
        response = await client.get("/v1/users", params=params, headers=api_keys.headers("read"))
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page["items"]) <= 3
        found += [user["user_id"] for user in page["items"]]
        assert {"user_id", "status", "created_at"} <= set(page["items"][0])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert found == ids  # in byte order: '-' < '.' < '0' < 'A' < '_' < 'z'

    none = await client.get("/v1/users", params={"prefix": f"{prefix}~"}, headers=api_keys.headers("read"))
    assert_validation_error(none, "prefix")
    nobody = await client.get("/v1/users", params={"prefix": f"{prefix}q"}, headers=api_keys.headers("read"))
    assert nobody.json() == {"items": [], "next_cursor": None}
    for bad in ({"prefix": "a%"}, {"prefix": "a b"}, {"limit": 0}, {"cursor": "-x"}):
        assert_validation_error(await client.get("/v1/users", params=bad, headers=api_keys.headers("read")))


async def new_asset(client: httpx.AsyncClient, keys: Keys) -> str:
    code = f"OP{uuid.uuid4().hex[:8].upper()}"
    response = await client.put(f"/v1/assets/{code}", json={"name": "Ops test"}, headers=keys.headers("admin"))
    assert response.status_code == 201, response.text
    return code


async def test_system_accounts_show_the_sum_of_their_stripes(
    client: httpx.AsyncClient, api_keys: Keys, new_user: str
) -> None:
    asset = await new_asset(client, api_keys)
    await asyncio.gather(*(move(client, api_keys, "topup", new_user, 100, asset) for _ in range(10)))
    await move(client, api_keys, "purchase", new_user, 30, asset)
    await move(client, api_keys, "bonus", new_user, 7, asset)

    response = await client.get("/v1/system-accounts", params={"asset": asset}, headers=api_keys.headers("read"))
    assert response.status_code == 200, response.text
    balances = {item["account"]: item["balance"] for item in response.json()["items"]}
    assert balances == {
        "system:bonus_pool": -7,
        "system:expired": 0,
        "system:revenue": 30,
        "system:treasury": -1000,
    }
    every = await client.get("/v1/system-accounts", headers=api_keys.headers("read"))
    assets = {item["asset"] for item in every.json()["items"]}
    assert {"GOLD", "DIAMOND", "LOYALTY", asset} <= assets
    missing = await client.get("/v1/system-accounts", params={"asset": "NOPE"}, headers=api_keys.headers("read"))
    assert_problem(missing, 404, "asset_not_found")


async def test_volume_counts_the_last_hours_by_asset_hour_and_type(
    client: httpx.AsyncClient, api_keys: Keys, new_user: str, db: asyncpg.Connection
) -> None:
    asset = await new_asset(client, api_keys)
    for amount in (100, 250):
        await move(client, api_keys, "topup", new_user, amount, asset)
    purchase = await move(client, api_keys, "purchase", new_user, 40, asset)
    old = await move(client, api_keys, "topup", new_user, 5, asset)
    # One top-up from a day and a half ago: outside 24 hours, inside 48.
    await db.execute(
        "UPDATE transactions SET created_at = created_at - interval '36 hours' WHERE id = $1",
        int(old["id"].removeprefix("tx_"), 16),
    )

    response = await client.get("/v1/volume", params={"asset": asset}, headers=api_keys.headers("read"))
    assert response.status_code == 200, response.text
    volume = response.json()
    hour = datetime.fromisoformat(purchase["created_at"]).replace(minute=0, second=0, microsecond=0)
    stamp = hour.strftime("%Y-%m-%dT%H:%M:%S.000000Z")
    assert volume["items"] == [
        {"asset": asset, "hour": stamp, "type": "purchase", "count": 1, "amount": 40},
        {"asset": asset, "hour": stamp, "type": "topup", "count": 2, "amount": 350},
    ]
    start, end = (datetime.fromisoformat(volume[k]) for k in ("from", "to"))
    assert end - start <= timedelta(hours=24) and start.minute == 0 and start.tzinfo == UTC

    wider = await client.get("/v1/volume", params={"asset": asset, "hours": 48}, headers=api_keys.headers("read"))
    assert sum(item["amount"] for item in wider.json()["items"] if item["type"] == "topup") == 355
    every = await client.get("/v1/volume", headers=api_keys.headers("read"))
    assert asset in {item["asset"] for item in every.json()["items"]}
    for bad in ({"hours": 0}, {"hours": 169}, {"hours": "1.5"}, {"asset": "gold"}):
        assert_validation_error(await client.get("/v1/volume", params=bad, headers=api_keys.headers("read")))


async def test_every_verify_run_keeps_its_report(client: httpx.AsyncClient, api_keys: Keys, database_url: str) -> None:
    for _ in range(2):
        result = await asyncio.to_thread(wallet_verify, database_url)
        assert result.returncode == 0, result.stdout + result.stderr

    response = await client.get("/v1/verify-reports", params={"limit": 1}, headers=api_keys.headers("read"))
    assert response.status_code == 200, response.text
    page = response.json()
    [report] = page["items"]
    assert report["ok"] is True and report["failed"] == 0
    assert [check["name"] for check in page["items"][0]["checks"]] == list(VERIFY_CHECKS)
    assert all(check["violations"] == 0 and check["sample"] == [] for check in report["checks"])
    assert report["totals"]["transactions"] > 0 and report["started_at"] <= report["finished_at"]
    older = await client.get(
        "/v1/verify-reports", params={"limit": 1, "cursor": page["next_cursor"]}, headers=api_keys.headers("read")
    )
    [before] = older.json()["items"]
    assert before["id"] != report["id"] and before["finished_at"] <= report["started_at"]
    assert_validation_error(
        await client.get("/v1/verify-reports", params={"cursor": "vr_x"}, headers=api_keys.headers("read"))
    )
