"""The HTTP contract of spec/API.md for a user's history, GET /v1/users/{user_id}/transactions: newest first,
filtered by asset, limits, cursor pagination. Through the in-process app, each test on a user of its own."""

from typing import Any

import httpx
import pytest

from tests.conftest import Keys
from tests.support import assert_problem, assert_validation_error, fresh_id, move


async def test_history_is_newest_first_and_matches_the_posts(
    client: httpx.AsyncClient, api_keys: Keys, new_user: str
) -> None:
    posted = [
        await move(client, api_keys, "topup", new_user, 100, "GOLD"),
        await move(client, api_keys, "bonus", new_user, 5, "DIAMOND"),
        await move(client, api_keys, "purchase", new_user, 30, "GOLD"),
    ]
    ids = [tx["id"] for tx in posted]
    assert ids == sorted(ids), "transaction ids sort by creation time"
    assert len(set(ids)) == 3

    response = await client.get(f"/v1/users/{new_user}/transactions", headers=api_keys.headers("read"))
    assert response.status_code == 200, response.text
    page = response.json()
    assert set(page) == {"items", "next_cursor"}
    assert page["next_cursor"] is None
    assert page["items"] == list(reversed(posted))
    assert [tx["type"] for tx in page["items"]] == ["purchase", "bonus", "topup"]
    assert [tx["balance_after"] for tx in page["items"]] == [70, 5, 100]


async def test_history_filtered_by_asset(client: httpx.AsyncClient, api_keys: Keys, new_user: str) -> None:
    gold_1 = await move(client, api_keys, "topup", new_user, 10, "GOLD")
    await move(client, api_keys, "topup", new_user, 20, "DIAMOND")
    gold_2 = await move(client, api_keys, "topup", new_user, 30, "GOLD")
    read = api_keys.headers("read")

    gold = await client.get(f"/v1/users/{new_user}/transactions", params={"asset": "GOLD"}, headers=read)
    assert gold.status_code == 200, gold.text
    assert [tx["id"] for tx in gold.json()["items"]] == [gold_2["id"], gold_1["id"]]

    loyalty = await client.get(f"/v1/users/{new_user}/transactions", params={"asset": "LOYALTY"}, headers=read)
    assert loyalty.json() == {"items": [], "next_cursor": None}


async def test_history_errors(client: httpx.AsyncClient, api_keys: Keys, new_user: str) -> None:
    read = api_keys.headers("read")
    assert_problem(await client.get(f"/v1/users/{fresh_id()}/transactions", headers=read), 404, "user_not_found")
    response = await client.get(f"/v1/users/{new_user}/transactions", params={"asset": "NOPE"}, headers=read)
    assert_problem(response, 404, "asset_not_found")
    response = await client.get(f"/v1/users/{new_user}/transactions", params={"asset": "gold"}, headers=read)
    assert_validation_error(response, "asset")


@pytest.mark.parametrize("limit", ["0", "201", "-1", "abc", "1.5"])
async def test_history_limit_out_of_bounds_is_422(
    client: httpx.AsyncClient, api_keys: Keys, new_user: str, limit: str
) -> None:
    response = await client.get(
        f"/v1/users/{new_user}/transactions", params={"limit": limit}, headers=api_keys.headers("read")
    )
    assert_validation_error(response, "limit")


@pytest.mark.parametrize("limit", [1, 200])
async def test_history_limit_bounds_are_accepted(
    client: httpx.AsyncClient, api_keys: Keys, new_user: str, limit: int
) -> None:
    await move(client, api_keys, "topup", new_user, 1)
    await move(client, api_keys, "topup", new_user, 2)
    response = await client.get(
        f"/v1/users/{new_user}/transactions", params={"limit": limit}, headers=api_keys.headers("read")
    )
    assert response.status_code == 200, response.text
    assert len(response.json()["items"]) == min(limit, 2)
    assert (response.json()["next_cursor"] is None) == (limit >= 2)


async def test_history_default_limit_is_50(client: httpx.AsyncClient, api_keys: Keys, new_user: str) -> None:
    for _ in range(51):
        await move(client, api_keys, "topup", new_user, 1)
    response = await client.get(f"/v1/users/{new_user}/transactions", headers=api_keys.headers("read"))
    assert response.status_code == 200, response.text
    assert len(response.json()["items"]) == 50
    assert response.json()["next_cursor"] is not None


async def _pages(client: httpx.AsyncClient, keys: Keys, user_id: str, limit: int) -> list[list[dict[str, Any]]]:
    pages: list[list[dict[str, Any]]] = []
    params: dict[str, Any] = {"limit": limit}
    while True:
        response = await client.get(f"/v1/users/{user_id}/transactions", params=params, headers=keys.headers("read"))
        assert response.status_code == 200, response.text
        body = response.json()
        pages.append(body["items"])
        if body["next_cursor"] is None:
            return pages
        assert isinstance(body["next_cursor"], str)
        assert len(pages) < 20, "pagination does not end"
        params = {"limit": limit, "cursor": body["next_cursor"]}


async def test_history_cursor_pagination(client: httpx.AsyncClient, api_keys: Keys, new_user: str) -> None:
    posted = [await move(client, api_keys, "topup", new_user, amount) for amount in range(1, 8)]
    newest_first = [tx["id"] for tx in reversed(posted)]

    pages = await _pages(client, api_keys, new_user, 3)
    assert [len(page) for page in pages] == [3, 3, 1]
    assert [tx["id"] for page in pages for tx in page] == newest_first

    # A last page that is exactly full still ends the walk with next_cursor null.
    pages = await _pages(client, api_keys, new_user, 7)
    assert [len(page) for page in pages] == [7]
    pages = await _pages(client, api_keys, new_user, 6)
    assert [len(page) for page in pages] == [6, 1]
    assert [tx["id"] for page in pages for tx in page] == newest_first


@pytest.mark.parametrize("cursor", ["garbage", "tx_zzzz", "tx_" + "0" * 70, "12345", ""])
async def test_history_malformed_cursor_is_422(
    client: httpx.AsyncClient, api_keys: Keys, new_user: str, cursor: str
) -> None:
    response = await client.get(
        f"/v1/users/{new_user}/transactions", params={"cursor": cursor}, headers=api_keys.headers("read")
    )
    assert_validation_error(response, "cursor")
