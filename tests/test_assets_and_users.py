"""The HTTP contract of spec/API.md for assets and users: GET /v1/assets, and PUT and GET /v1/users/{user_id},
through the in-process app. Every test creates users of its own."""

from typing import Any

import httpx
import pytest

from tests.conftest import Keys
from tests.support import TIMESTAMP, assert_problem, assert_validation_error, fresh_id, media_type

# Assets ------------------------------------------------------------------------------------------------------------


SEEDED_ASSETS = [
    {"code": "DIAMOND", "name": "Diamonds", "scale": 0, "transferable": False, "expiry_days": None},
    {"code": "GOLD", "name": "Gold Coins", "scale": 0, "transferable": False, "expiry_days": None},
    {"code": "LOYALTY", "name": "Loyalty Points", "scale": 0, "transferable": False, "expiry_days": None},
]


async def test_assets_lists_the_seeded_assets(client: httpx.AsyncClient, api_keys: Keys) -> None:
    response = await client.get("/v1/assets", headers=api_keys.headers("read"))
    assert response.status_code == 200, response.text
    assert media_type(response) == "application/json"
    body = response.json()
    assert set(body) == {"items"}
    for asset in SEEDED_ASSETS:
        assert asset in body["items"], body
    for item in body["items"]:
        assert set(item) == {"code", "name", "scale", "transferable", "expiry_days"}, item


# Users -------------------------------------------------------------------------------------------------------------


async def test_put_user_creates_then_returns_existing(client: httpx.AsyncClient, api_keys: Keys) -> None:
    user_id = fresh_id()
    created = await client.put(f"/v1/users/{user_id}", headers=api_keys.headers("admin"))
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["user_id"] == user_id
    assert TIMESTAMP.fullmatch(body["created_at"]), body

    again = await client.put(f"/v1/users/{user_id}", headers=api_keys.headers("admin"))
    assert again.status_code == 200, again.text
    assert again.json()["user_id"] == user_id
    assert again.json()["created_at"] == body["created_at"]


async def test_put_user_with_display_name(client: httpx.AsyncClient, api_keys: Keys) -> None:
    user_id = fresh_id()
    created = await client.put(f"/v1/users/{user_id}", json={"display_name": "Dana"}, headers=api_keys.headers())
    assert created.status_code == 201, created.text
    assert created.json()["display_name"] == "Dana"

    renamed = await client.put(f"/v1/users/{user_id}", json={"display_name": "Dana B."}, headers=api_keys.headers())
    assert renamed.status_code == 200, renamed.text
    assert renamed.json()["display_name"] == "Dana B."
    assert renamed.json()["created_at"] == created.json()["created_at"]

    fetched = await client.get(f"/v1/users/{user_id}", headers=api_keys.headers("read"))
    assert fetched.status_code == 200, fetched.text
    assert fetched.json()["display_name"] == "Dana B."


@pytest.mark.parametrize(
    "body", [{"display_name": ""}, {"display_name": 7}, {"display_name": "x" * 201}, {"nickname": "x"}, [1]]
)
async def test_put_user_rejects_a_malformed_body(client: httpx.AsyncClient, api_keys: Keys, body: Any) -> None:
    user_id = fresh_id()
    response = await client.put(f"/v1/users/{user_id}", json=body, headers=api_keys.headers())
    assert_validation_error(response)
    missing = await client.get(f"/v1/users/{user_id}", headers=api_keys.headers("read"))
    assert_problem(missing, 404, "user_not_found")


async def test_get_user(client: httpx.AsyncClient, api_keys: Keys, new_user: str) -> None:
    response = await client.get(f"/v1/users/{new_user}", headers=api_keys.headers("read"))
    assert response.status_code == 200, response.text
    assert response.json()["user_id"] == new_user
    assert TIMESTAMP.fullmatch(response.json()["created_at"])


async def test_get_unknown_user_is_404(client: httpx.AsyncClient, api_keys: Keys) -> None:
    response = await client.get(f"/v1/users/{fresh_id()}", headers=api_keys.headers("read"))
    assert_problem(response, 404, "user_not_found")


@pytest.mark.parametrize("user_id", ["-starts-with-dash", "a" * 65, "has%20space", "semi;colon", "%C3%A9t%C3%A9"])
@pytest.mark.parametrize("method", ["GET", "PUT"])
async def test_malformed_user_id_in_path_is_422(
    client: httpx.AsyncClient, api_keys: Keys, user_id: str, method: str
) -> None:
    response = await client.request(method, f"/v1/users/{user_id}", headers=api_keys.headers("admin"))
    assert_validation_error(response, "user_id")
