"""Asset policies (spec/API.md, v1.1 "Asset policies", without expiring lots): PUT /v1/assets/{code} creates an
asset with its system accounts (201) or changes its policies (200); the scale never changes. User accounts appear
with their first credit, not with the user nor with the asset; a frozen user's appear frozen, also when the freeze
races the credit that opens them."""

import asyncio
import uuid
from typing import Any

import asyncpg
import httpx
import pytest

from tests.conftest import Keys
from tests.support import (
    assert_problem,
    assert_validation_error,
    create_user,
    idem,
    move,
    post,
)
from wallet.kinds import SYSTEM_ACCOUNTS


def new_code(prefix: str = "A") -> str:
    """An asset code no other test uses."""
    return f"{prefix}{uuid.uuid4().hex[:10].upper()}"


def put_asset(client: httpx.AsyncClient, keys: Keys, code: str, body: Any, scope: str = "admin") -> Any:
    return client.put(f"/v1/assets/{code}", json=body, headers=keys.headers(scope))


async def created_asset(client: httpx.AsyncClient, keys: Keys, **policies: Any) -> str:
    code = new_code()
    response = await put_asset(client, keys, code, {"name": f"Asset {code}", **policies})
    assert response.status_code == 201, response.text
    return code


async def accounts_of(db: asyncpg.Connection, user_id: str) -> dict[str, tuple[int, bool]]:
    """The user's accounts that exist, by asset: (balance, frozen)."""
    rows = await db.fetch("SELECT asset, balance, frozen FROM accounts WHERE name = 'user:' || $1", user_id)
    return {row["asset"]: (int(row["balance"]), bool(row["frozen"])) for row in rows}


async def test_an_asset_is_created_with_its_system_accounts_and_defaults(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection
) -> None:
    code = new_code()
    response = await put_asset(client, api_keys, code, {"name": "Gems"})
    assert response.status_code == 201, response.text
    assert response.headers["content-type"] == "application/json"
    asset = {"code": code, "name": "Gems", "scale": 0, "transferable": False, "expiry_days": None}
    assert response.json() == asset
    listed = (await client.get("/v1/assets", headers=api_keys.headers("read"))).json()["items"]
    assert asset in listed

    rows = await db.fetch(
        """SELECT a.name, a.balance_min, count(s.stripe) AS stripes, sum(s.room) AS room
             FROM accounts a LEFT JOIN account_stripes s ON s.account_id = a.id
            WHERE a.asset = $1 GROUP BY a.id ORDER BY a.name""",
        code,
    )
    assert sorted(row["name"] for row in rows) == sorted(f"system:{name}" for name in SYSTEM_ACCOUNTS)
    stripes = await db.fetchval("SELECT wallet_stripe_count()")
    assert {row["stripes"] for row in rows} == {stripes}
    for row in rows:  # the rooms add up to the distance from the floor
        assert row["room"] == -row["balance_min"], dict(row)


async def test_policies_change_and_what_is_left_out_stays(client: httpx.AsyncClient, api_keys: Keys) -> None:
    code = new_code()
    first = await put_asset(client, api_keys, code, {"name": "Tokens", "scale": 2, "expiry_days": 30})
    assert first.status_code == 201, first.text
    assert first.json() == {"code": code, "name": "Tokens", "scale": 2, "transferable": False, "expiry_days": 30}

    changed = await put_asset(client, api_keys, code, {"name": "Trade tokens", "transferable": True})
    assert changed.status_code == 200, changed.text
    assert changed.json() == {"code": code, "name": "Trade tokens", "scale": 2, "transferable": True, "expiry_days": 30}

    cleared = await put_asset(client, api_keys, code, {"name": "Trade tokens", "scale": 2, "expiry_days": None})
    assert cleared.status_code == 200, cleared.text
    assert cleared.json()["expiry_days"] is None and cleared.json()["transferable"] is True

    closed = await put_asset(client, api_keys, code, {"name": "Trade tokens", "transferable": False})
    assert closed.json()["transferable"] is False


async def test_the_scale_cannot_change(client: httpx.AsyncClient, api_keys: Keys) -> None:
    code = await created_asset(client, api_keys, scale=2)
    problem = assert_problem(
        await put_asset(client, api_keys, code, {"name": "Other", "scale": 3}), 409, "asset_scale_immutable"
    )
    assert code in problem["detail"]
    listed = (await client.get("/v1/assets", headers=api_keys.headers("read"))).json()["items"]
    assert {"code": code, "name": f"Asset {code}", "scale": 2, "transferable": False, "expiry_days": None} in listed
    seeded = await put_asset(client, api_keys, "GOLD", {"name": "Gold Coins", "scale": 1})
    assert_problem(seeded, 409, "asset_scale_immutable")


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"name": ""},
        {"name": "x" * 101},
        {"name": "A\u0000B"},
        {"name": 7},
        {"name": "N", "scale": 19},
        {"name": "N", "scale": -1},
        {"name": "N", "scale": "2"},
        {"name": "N", "transferable": "yes"},
        {"name": "N", "transferable": None},
        {"name": "N", "expiry_days": 0},
        {"name": "N", "expiry_days": 3651},
        {"name": "N", "expiry_days": 1.5},
        {"name": "N", "colour": "gold"},
    ],
)
async def test_bad_bodies_are_422_and_create_nothing(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection, body: dict[str, Any]
) -> None:
    code = new_code()
    assert_validation_error(await put_asset(client, api_keys, code, body))
    assert await db.fetchval("SELECT count(*) FROM assets WHERE code = $1", code) == 0


@pytest.mark.parametrize("code", ["gold", "G", "GOLD-1", "ABCDEFGHIJKLMNOPQ", "1GOLD"])
async def test_bad_codes_are_422(client: httpx.AsyncClient, api_keys: Keys, code: str) -> None:
    assert_validation_error(await put_asset(client, api_keys, code, {"name": "N"}))


async def test_only_admin_puts_assets(client: httpx.AsyncClient, api_keys: Keys) -> None:
    for scope in ("read", "topup", "bonus", "purchase", "transfer"):
        assert_problem(await put_asset(client, api_keys, new_code(), {"name": "N"}, scope), 403, "forbidden")
    response = await client.put(f"/v1/assets/{new_code()}", json={"name": "N"})
    assert_problem(response, 401, "unauthenticated")


async def test_parallel_puts_of_one_new_asset_create_it_once(
    http: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection
) -> None:
    code = new_code()
    responses = await asyncio.gather(*(put_asset(http, api_keys, code, {"name": "Race"}) for _ in range(20)))
    assert sorted(r.status_code for r in responses) == [200] * 19 + [201], [r.text for r in responses]
    count = await db.fetchval("SELECT count(*) FROM accounts WHERE asset = $1 AND kind = 'system'", code)
    assert count == len(SYSTEM_ACCOUNTS)


async def test_a_runtime_asset_is_topped_up_bought_and_listed(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection
) -> None:
    code = await created_asset(client, api_keys)
    user_id = await create_user(client, api_keys)
    before = (await client.get(f"/v1/users/{user_id}/balances", headers=api_keys.headers("read"))).json()
    assert {"asset": code, "balance": 0, "held": 0, "available": 0} in before["balances"]
    assert await accounts_of(db, user_id) == {}

    topped = await move(client, api_keys, "topup", user_id, 100, code)
    assert (topped["balance_after"], topped["entries"][1]["account"]) == (100, "system:treasury")
    bought = await post(client, api_keys, "/v1/purchases", {"user_id": user_id, "asset": code, "amount": 30}, idem())
    assert bought.status_code == 201, bought.text
    assert bought.json()["balance_after"] == 70
    await move(client, api_keys, "bonus", user_id, 5, code)
    balance = (await client.get(f"/v1/users/{user_id}/balances/{code}", headers=api_keys.headers("read"))).json()
    assert (balance["balance"], balance["available"]) == (75, 75)
    history = (
        await client.get(f"/v1/users/{user_id}/transactions?asset={code}", headers=api_keys.headers("read"))
    ).json()
    assert [item["type"] for item in history["items"]] == ["bonus", "purchase", "topup"]
    assert await accounts_of(db, user_id) == {code: (75, False)}


async def test_an_account_appears_with_its_first_credit_only(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection
) -> None:
    """A debit from an account that does not exist is a debit from 0: refused, and nothing is opened; the first
    credit opens it; the user's other assets stay without accounts."""
    code = await created_asset(client, api_keys)
    user_id = await create_user(client, api_keys)
    body = {"user_id": user_id, "asset": code, "amount": 1}
    refused = assert_problem(await post(client, api_keys, "/v1/purchases", body, idem()), 409, "insufficient_funds")
    assert f"user:{user_id}" in refused["detail"]
    assert_problem(await post(client, api_keys, "/v1/holds", body, idem()), 409, "insufficient_funds")
    history = await client.get(f"/v1/users/{user_id}/transactions", headers=api_keys.headers("read"))
    assert history.json() == {"items": [], "next_cursor": None}
    assert await accounts_of(db, user_id) == {}

    await move(client, api_keys, "topup", user_id, 10, code)
    assert await accounts_of(db, user_id) == {code: (10, False)}
    await move(client, api_keys, "topup", user_id, 10, code)
    assert await db.fetchval("SELECT count(*) FROM accounts WHERE user_id = $1", user_id) == 1


async def test_a_purchase_refused_for_funds_opens_no_reward_account(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection
) -> None:
    code = await created_asset(client, api_keys)
    user_id = await create_user(client, api_keys)
    await move(client, api_keys, "topup", user_id, 5)
    body = {"user_id": user_id, "asset": "GOLD", "amount": 10, "rewards": [{"asset": code, "amount": 1}]}
    assert_problem(await post(client, api_keys, "/v1/purchases", body, idem()), 409, "insufficient_funds")
    assert await accounts_of(db, user_id) == {"GOLD": (5, False)}
    body["amount"] = 5
    response = await post(client, api_keys, "/v1/purchases", body, idem())
    assert response.status_code == 201, response.text
    assert response.json()["rewards"] == [{"asset": code, "amount": 1, "balance_after": 1}]
    assert await accounts_of(db, user_id) == {"GOLD": (0, False), code: (1, False)}


async def test_a_frozen_users_new_account_is_frozen(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection
) -> None:
    code = await created_asset(client, api_keys)
    user_id = await create_user(client, api_keys)
    frozen = await client.post(f"/v1/users/{user_id}/freeze", json={"reason": "r"}, headers=api_keys.headers("admin"))
    assert frozen.status_code == 200, frozen.text
    body = {"user_id": user_id, "asset": code, "amount": 1}
    # A debit from the frozen user's missing account is refused as frozen, as from an existing one.
    assert_problem(await post(client, api_keys, "/v1/purchases", body, idem()), 409, "account_frozen")
    await move(client, api_keys, "bonus", user_id, 3, code)  # credits apply, and open the account frozen
    assert await accounts_of(db, user_id) == {code: (3, True)}
    assert_problem(await post(client, api_keys, "/v1/purchases", body, idem()), 409, "account_frozen")
    unfrozen = await client.post(f"/v1/users/{user_id}/unfreeze", headers=api_keys.headers("admin"))
    assert unfrozen.status_code == 200, unfrozen.text
    assert await accounts_of(db, user_id) == {code: (3, False)}
    assert (await post(client, api_keys, "/v1/purchases", body, idem())).status_code == 201


async def test_a_freeze_racing_first_credits_leaves_no_account_unfrozen(
    http: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection
) -> None:
    """First credits in several new assets, sent with a freeze of their user, round after round: whatever their
    order, when the freeze has answered every account of the user is frozen (those the credits opened after it
    included), and after the unfreeze none is."""
    codes = [await created_asset(http, api_keys) for _ in range(4)]
    for _ in range(5):
        user_id = await create_user(http, api_keys)
        credits = [
            post(http, api_keys, "/v1/topups", {"user_id": user_id, "asset": code, "amount": 1}, idem(), scope="topup")
            for code in codes
        ]
        freeze = http.post(f"/v1/users/{user_id}/freeze", json={"reason": "race"}, headers=api_keys.headers("admin"))
        *answers, frozen = await asyncio.gather(*credits, freeze)
        assert frozen.status_code == 200, frozen.text
        assert [a.status_code for a in answers] == [201] * len(codes), [a.text for a in answers]
        accounts = await accounts_of(db, user_id)
        assert set(accounts) == set(codes)
        assert all(is_frozen for _, is_frozen in accounts.values()), accounts
        late = await post(http, api_keys, "/v1/topups", {"user_id": user_id, "asset": "GOLD", "amount": 1}, idem())
        assert late.status_code == 201, late.text
        assert (await accounts_of(db, user_id))["GOLD"] == (1, True)
