"""Authentication and scopes (spec/API.md, "Conventions"): every route of the contract without a key, with an
unknown or revoked key, and with a key of each scope. A refused movement writes nothing."""

import uuid

import asyncpg
import httpx
import pytest

from tests.conftest import Keys
from tests.support import assert_problem, balance, fresh_id, idem, movement, post, stored_keys
from wallet import keys as wallet_keys

ROUTES: dict[str, str] = {
    "GET /v1/assets": "read",
    "PUT /v1/users/{new}": "admin",
    "GET /v1/users/{user}": "read",
    "GET /v1/users/{user}/balances": "read",
    "GET /v1/users/{user}/balances/GOLD": "read",
    "GET /v1/users/{user}/transactions": "read",
    "GET /v1/users/{user}/statistics": "read",
    "GET /v1/users/{user}/statement.csv": "read",
    "GET /v1/transactions/tx_7fffffffffffffff": "read",
    "POST /v1/topups": "topup",
    "POST /v1/bonuses": "bonus",
    "POST /v1/purchases": "purchase",
    "POST /v1/transfers": "transfer",
    "PUT /v1/assets/GOLD": "admin",
}


def call(client: httpx.AsyncClient, route: str, user_id: str, headers: dict[str, str]):
    method, template = route.split(" ", 1)
    path = template.format(new=fresh_id(), user=user_id)
    if method == "POST":
        # An amount of 0 is refused after authentication, so an authorised call writes nothing.
        return client.post(path, json=movement(user_id, 0), headers={**headers, "Idempotency-Key": idem()})
    return client.request(method, path, headers=headers)


@pytest.mark.parametrize("route", list(ROUTES))
async def test_missing_or_unknown_key_is_401(client: httpx.AsyncClient, new_user: str, route: str) -> None:
    for headers in (
        {},
        {"Authorization": "Bearer wk_not-a-key"},
        {"Authorization": "Bearer " + "x" * 600},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer"},
    ):
        response = await call(client, route, new_user, headers)
        assert_problem(response, 401, "unauthenticated")


@pytest.mark.parametrize("scope", list(wallet_keys.SCOPES))
@pytest.mark.parametrize("route", list(ROUTES))
async def test_scopes(client: httpx.AsyncClient, api_keys: Keys, new_user: str, route: str, scope: str) -> None:
    """A key may call a route when it has the route's scope or `admin`; otherwise 403."""
    response = await call(client, route, new_user, api_keys.headers(scope))
    if scope in (ROUTES[route], "admin"):
        assert response.status_code not in (401, 403), response.text
        expected = {"POST": 422, "PUT": 201}.get(route.split(" ", 1)[0], 200)
        if route.startswith("PUT /v1/assets/"):
            expected = 422  # no body: an authorised call changes nothing
        if "transactions/tx_" in route:
            expected = 404
        assert response.status_code == expected, response.text
    else:
        assert_problem(response, 403, "forbidden")


async def test_revoked_key_is_401(client: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    name = f"contract-revoked-{uuid.uuid4().hex[:8]}"
    secret = await wallet_keys.create(db, name, ["read"])
    headers = {"Authorization": f"Bearer {secret}"}
    assert (await client.get("/v1/assets", headers=headers)).status_code == 200
    assert await wallet_keys.revoke(db, name)
    assert_problem(await client.get("/v1/assets", headers=headers), 401, "unauthenticated")


async def test_forbidden_movement_writes_nothing(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection, new_user: str
) -> None:
    key = idem()
    response = await post(client, api_keys, "/v1/topups", movement(new_user, 10), key, scope="purchase")
    assert_problem(response, 403, "forbidden")
    assert await balance(client, api_keys, new_user) == 0
    assert await stored_keys(db, key) == 0
