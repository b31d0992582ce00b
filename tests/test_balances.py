"""The HTTP contract of spec/API.md for balances: GET /v1/users/{user_id}/balances and
/v1/users/{user_id}/balances/{asset}, through the in-process app."""

import httpx
import pytest

from tests.conftest import Keys
from tests.support import assert_problem, assert_validation_error, fresh_id, move


async def test_balances_list_every_asset_including_zero(
    client: httpx.AsyncClient, api_keys: Keys, new_user: str
) -> None:
    assets = (await client.get("/v1/assets", headers=api_keys.headers("read"))).json()["items"]
    empty = await client.get(f"/v1/users/{new_user}/balances", headers=api_keys.headers("read"))
    assert empty.status_code == 200, empty.text
    assert empty.json()["user_id"] == new_user
    assert sorted(b["asset"] for b in empty.json()["balances"]) == sorted(a["code"] for a in assets)
    assert all(b["balance"] == 0 for b in empty.json()["balances"])

    await move(client, api_keys, "topup", new_user, 70, "GOLD")
    after = await client.get(f"/v1/users/{new_user}/balances", headers=api_keys.headers("read"))
    balances = {b["asset"]: b["balance"] for b in after.json()["balances"]}
    assert balances == {a["code"]: (70 if a["code"] == "GOLD" else 0) for a in assets}
    expires = {a["code"] for a in assets if a["expiry_days"] is not None}  # made by other tests
    for item in after.json()["balances"]:
        assert set(item) - {"expiring"} == {"asset", "balance", "held", "available"}
        assert item["asset"] not in expires or item["expiring"] == [], item
        assert item["asset"] in expires or item["asset"] not in ("GOLD", "DIAMOND", "LOYALTY") or "expiring" not in item


async def test_single_balance(client: httpx.AsyncClient, api_keys: Keys, new_user: str) -> None:
    await move(client, api_keys, "bonus", new_user, 12, "DIAMOND")
    response = await client.get(f"/v1/users/{new_user}/balances/DIAMOND", headers=api_keys.headers("read"))
    assert response.status_code == 200, response.text
    assert response.json() == {"user_id": new_user, "asset": "DIAMOND", "balance": 12, "held": 0, "available": 12}
    zero = await client.get(f"/v1/users/{new_user}/balances/LOYALTY", headers=api_keys.headers("read"))
    assert zero.json() == {"user_id": new_user, "asset": "LOYALTY", "balance": 0, "held": 0, "available": 0}


async def test_balances_of_unknown_user_or_asset_are_404(
    client: httpx.AsyncClient, api_keys: Keys, new_user: str
) -> None:
    read = api_keys.headers("read")
    assert_problem(await client.get(f"/v1/users/{fresh_id()}/balances", headers=read), 404, "user_not_found")
    assert_problem(await client.get(f"/v1/users/{fresh_id()}/balances/GOLD", headers=read), 404, "user_not_found")
    assert_problem(await client.get(f"/v1/users/{new_user}/balances/NOPE", headers=read), 404, "asset_not_found")


@pytest.mark.parametrize("asset", ["gold", "G", "GOLD-X", "A" * 17, "1GOLD"])
async def test_malformed_asset_in_path_is_422(
    client: httpx.AsyncClient, api_keys: Keys, new_user: str, asset: str
) -> None:
    response = await client.get(f"/v1/users/{new_user}/balances/{asset}", headers=api_keys.headers("read"))
    assert_validation_error(response, "asset")
