"""The HTTP contract of spec/API.md, row by row, through the in-process app.

Every test uses its own users and idempotency keys, so the tests are independent of each other and of the order
in which they run. Checks of "nothing was written" read the database directly through the `db` fixture.
"""

import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from tests.conftest import Keys
from wallet import keys as wallet_keys
from wallet import ledger

PROBLEM = "application/problem+json"
SEEDED_ASSETS = [
    {"code": "DIAMOND", "name": "Diamonds", "scale": 0},
    {"code": "GOLD", "name": "Gold Coins", "scale": 0},
    {"code": "LOYALTY", "name": "Loyalty Points", "scale": 0},
]
TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")
TRANSACTION_FIELDS = {
    "id",
    "type",
    "status",
    "user_id",
    "asset",
    "amount",
    "balance_after",
    "description",
    "metadata",
    "entries",
    "created_at",
}
MOVEMENT_PATHS = {"topup": "/v1/topups", "bonus": "/v1/bonuses", "purchase": "/v1/purchases"}


# Helpers ---------------------------------------------------------------------------------------------------------


def idem() -> str:
    return f"k-{uuid.uuid4().hex}"


def fresh_id() -> str:
    return f"c-{uuid.uuid4().hex[:12]}"


def media_type(response: httpx.Response) -> str:
    return response.headers.get("content-type", "").split(";", 1)[0].strip()


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The response is an RFC 9457 problem document with this status and code."""
    assert response.status_code == status, (response.status_code, response.text)
    assert media_type(response) == PROBLEM, response.headers
    body = response.json()
    for field in ("type", "title", "detail", "code"):
        assert isinstance(body.get(field), str), (field, body)
        assert body[field], (field, body)
    assert body["status"] == status, body
    assert body["code"] == code, body
    assert response.headers.get("x-request-id"), response.headers
    return body


def error_locations(body: dict[str, Any]) -> set[str]:
    """Every name that appears in the `loc` of the problem's `errors`."""
    assert isinstance(body.get("errors"), list), body
    assert body["errors"], body
    return {str(part) for error in body["errors"] for part in error["loc"]}


def assert_validation_error(response: httpx.Response, field: str | None = None) -> dict[str, Any]:
    body = assert_problem(response, 422, "validation_error")
    locations = error_locations(body)
    if field is not None:
        assert field in locations, (field, body["errors"])
    return body


def assert_transaction(body: dict[str, Any]) -> None:
    assert set(body) == TRANSACTION_FIELDS, body
    assert isinstance(body["id"], str), body
    assert body["id"], body
    assert body["status"] == "posted"
    assert TIMESTAMP.fullmatch(body["created_at"]), body["created_at"]
    assert isinstance(body["amount"], int)
    assert sum(entry["amount"] for entry in body["entries"]) == 0, body["entries"]
    for entry in body["entries"]:
        assert set(entry) == {"account", "amount"}
        assert isinstance(entry["amount"], int)


def movement(user_id: str, amount: Any = 100, asset: str = "GOLD", **extra: Any) -> dict[str, Any]:
    return {"user_id": user_id, "asset": asset, "amount": amount, **extra}


def post(
    client: httpx.AsyncClient,
    keys: Keys,
    path: str,
    body: Any,
    key: str | None = None,
    scope: str = "admin",
    **headers: str,
):
    all_headers = {**keys.headers(scope), **headers}
    if key is not None:
        all_headers["Idempotency-Key"] = key
    return client.post(path, json=body, headers=all_headers)


async def move(
    client: httpx.AsyncClient, keys: Keys, kind: str, user_id: str, amount: int, asset: str = "GOLD"
) -> dict[str, Any]:
    response = await post(client, keys, MOVEMENT_PATHS[kind], movement(user_id, amount, asset), idem())
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def balance(client: httpx.AsyncClient, keys: Keys, user_id: str, asset: str = "GOLD") -> int:
    response = await client.get(f"/v1/users/{user_id}/balances/{asset}", headers=keys.headers("read"))
    assert response.status_code == 200, response.text
    value: int = response.json()["balance"]
    return value


async def ledger_counts(db: asyncpg.Connection, user_id: str) -> dict[str, int]:
    row = await db.fetchrow(
        """SELECT (SELECT count(*) FROM transactions) AS transactions,
                  (SELECT count(*) FROM entries) AS entries,
                  (SELECT count(*) FROM transactions WHERE user_id = $1) AS user_transactions,
                  (SELECT coalesce(sum(balance), 0) FROM accounts WHERE user_id = $1) AS user_total""",
        user_id,
    )
    assert row is not None
    return {name: int(value) for name, value in row.items()}


async def stored_keys(db: asyncpg.Connection, key: str) -> int:
    return int(await db.fetchval("SELECT count(*) FROM idempotency_keys WHERE key = $1", key))


@pytest.fixture
async def named_key(db: asyncpg.Connection) -> AsyncIterator[tuple[str, str]]:
    """An API key with the topup scope whose name this test knows: (name, secret)."""
    name = f"contract-{uuid.uuid4().hex[:10]}"
    secret = await wallet_keys.create(db, name, ["topup", "read"])
    yield name, secret
    await wallet_keys.revoke(db, name)


# Assets ------------------------------------------------------------------------------------------------------------


async def test_assets_lists_the_seeded_assets(client: httpx.AsyncClient, api_keys: Keys) -> None:
    response = await client.get("/v1/assets", headers=api_keys.headers("read"))
    assert response.status_code == 200, response.text
    assert media_type(response) == "application/json"
    body = response.json()
    assert set(body) == {"items"}
    for asset in SEEDED_ASSETS:
        assert asset in body["items"], body
    for item in body["items"]:
        assert set(item) == {"code", "name", "scale"}, item


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


# Balances ----------------------------------------------------------------------------------------------------------


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
    for item in after.json()["balances"]:
        assert set(item) == {"asset", "balance"}


async def test_single_balance(client: httpx.AsyncClient, api_keys: Keys, new_user: str) -> None:
    await move(client, api_keys, "bonus", new_user, 12, "DIAMOND")
    response = await client.get(f"/v1/users/{new_user}/balances/DIAMOND", headers=api_keys.headers("read"))
    assert response.status_code == 200, response.text
    assert response.json() == {"user_id": new_user, "asset": "DIAMOND", "balance": 12}
    zero = await client.get(f"/v1/users/{new_user}/balances/LOYALTY", headers=api_keys.headers("read"))
    assert zero.json() == {"user_id": new_user, "asset": "LOYALTY", "balance": 0}


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


# History -----------------------------------------------------------------------------------------------------------


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


# Movements and transactions ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "user_sign", "system"),
    [("topup", 1, "system:treasury"), ("bonus", 1, "system:bonus_pool"), ("purchase", -1, "system:revenue")],
)
async def test_movement_shape_and_get_returns_the_same_bytes(
    client: httpx.AsyncClient, api_keys: Keys, new_user: str, kind: str, user_sign: int, system: str
) -> None:
    await move(client, api_keys, "topup", new_user, 1000, "LOYALTY")
    body = movement(new_user, 250, "LOYALTY", description="Weekly allowance", metadata={"campaign": "w47"})
    response = await post(client, api_keys, MOVEMENT_PATHS[kind], body, idem())
    assert response.status_code == 201, response.text
    assert media_type(response) == "application/json"
    assert "idempotent-replayed" not in response.headers
    tx = response.json()
    assert_transaction(tx)
    assert tx["type"] == kind
    assert (tx["user_id"], tx["asset"], tx["amount"]) == (new_user, "LOYALTY", 250)
    assert tx["description"] == "Weekly allowance"
    assert tx["metadata"] == {"campaign": "w47"}
    assert tx["balance_after"] == 1000 + user_sign * 250
    assert tx["entries"] == [
        {"account": f"user:{new_user}", "amount": user_sign * 250},
        {"account": system, "amount": -user_sign * 250},
    ]

    fetched = await client.get(f"/v1/transactions/{tx['id']}", headers=api_keys.headers("read"))
    assert fetched.status_code == 200, fetched.text
    assert fetched.content == response.content


async def test_optional_fields_default(client: httpx.AsyncClient, api_keys: Keys, new_user: str) -> None:
    tx = await move(client, api_keys, "topup", new_user, 5)
    assert tx["description"] is None
    assert tx["metadata"] == {}


@pytest.mark.parametrize(
    "transaction_id",
    [
        "tx_0000000000000000",
        "tx_7fffffffffffffff",
        "tx_ffffffffffffffff",
        "tx_00000000000000001",
        "tx_123",
        "TX_0000000000000001",
        "garbage",
        "12345",
        "x" * 300,
        "caf%C3%A9",
        "%00",
    ],
)
async def test_unknown_transaction_is_404(client: httpx.AsyncClient, api_keys: Keys, transaction_id: str) -> None:
    response = await client.get(f"/v1/transactions/{transaction_id}", headers=api_keys.headers("read"))
    assert_problem(response, 404, "transaction_not_found")


async def test_movement_to_unknown_user_or_asset_is_404_and_writes_nothing(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection, new_user: str
) -> None:
    ghost = fresh_id()
    before = await ledger_counts(db, new_user)
    response = await post(client, api_keys, "/v1/topups", movement(ghost, 10), idem())
    assert_problem(response, 404, "user_not_found")
    response = await post(client, api_keys, "/v1/topups", movement(new_user, 10, "NOPE"), idem())
    assert_problem(response, 404, "asset_not_found")
    assert await ledger_counts(db, new_user) == before


async def test_purchase_beyond_balance_is_409(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection, new_user: str
) -> None:
    await move(client, api_keys, "topup", new_user, 40)
    before = await ledger_counts(db, new_user)
    response = await post(client, api_keys, "/v1/purchases", movement(new_user, 41), idem())
    assert_problem(response, 409, "insufficient_funds")
    assert await ledger_counts(db, new_user) == before
    assert await balance(client, api_keys, new_user) == 40


# Authentication and scopes ----------------------------------------------------------------------------------------


ROUTES: dict[str, str] = {
    "GET /v1/assets": "read",
    "PUT /v1/users/{new}": "admin",
    "GET /v1/users/{user}": "read",
    "GET /v1/users/{user}/balances": "read",
    "GET /v1/users/{user}/balances/GOLD": "read",
    "GET /v1/users/{user}/transactions": "read",
    "GET /v1/transactions/tx_7fffffffffffffff": "read",
    "POST /v1/topups": "topup",
    "POST /v1/bonuses": "bonus",
    "POST /v1/purchases": "purchase",
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


# Request ids, unknown routes, operations ----------------------------------------------------------------------------


async def test_request_id_is_echoed(client: httpx.AsyncClient, api_keys: Keys) -> None:
    for path, headers in (("/v1/assets", api_keys.headers("read")), ("/v1/assets", {}), ("/nope", {}), ("/health", {})):
        response = await client.get(path, headers={**headers, "X-Request-ID": "req-1234.abc:X_y"})
        assert response.headers.get("x-request-id") == "req-1234.abc:X_y", (path, response.headers)


async def test_request_id_is_generated(client: httpx.AsyncClient, api_keys: Keys) -> None:
    seen = set()
    for path, headers in (("/v1/assets", api_keys.headers("read")), ("/v1/assets", {}), ("/nope", {}), ("/health", {})):
        response = await client.get(path, headers=headers)
        request_id = response.headers.get("x-request-id")
        assert request_id, (path, response.headers)
        seen.add(request_id)
    assert len(seen) == 4, "each request gets its own id"


@pytest.mark.parametrize(("method", "path"), [("GET", "/nope"), ("GET", "/v1/nope"), ("POST", "/v1/unknown")])
async def test_unknown_route_is_404_not_found(
    client: httpx.AsyncClient, api_keys: Keys, method: str, path: str
) -> None:
    response = await client.request(method, path, headers=api_keys.headers("admin"))
    assert_problem(response, 404, "not_found")


async def test_health(client: httpx.AsyncClient) -> None:
    response = await client.get("/health")
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "ok", "database": "ok"}


async def test_docs_and_openapi(client: httpx.AsyncClient) -> None:
    docs = await client.get("/docs")
    assert docs.status_code == 200
    assert "text/html" in docs.headers["content-type"]
    spec = await client.get("/openapi.json")
    assert spec.status_code == 200
    assert spec.json()["paths"]


CONTRACT_ROUTES: dict[tuple[str, str], set[str]] = {
    ("/v1/assets", "get"): {"200", "401", "403"},
    ("/v1/users/{user_id}", "put"): {"200", "201", "401", "403", "422"},
    ("/v1/users/{user_id}", "get"): {"200", "401", "403", "404"},
    ("/v1/users/{user_id}/balances", "get"): {"200", "401", "403", "404"},
    ("/v1/users/{user_id}/balances/{asset}", "get"): {"200", "401", "403", "404"},
    ("/v1/users/{user_id}/transactions", "get"): {"200", "401", "403", "404", "422"},
    ("/v1/topups", "post"): {"201", "400", "401", "403", "404", "413", "422"},
    ("/v1/bonuses", "post"): {"201", "400", "401", "403", "404", "413", "422"},
    ("/v1/purchases", "post"): {"201", "400", "401", "403", "404", "409", "413", "422"},
    ("/v1/transactions/{transaction_id}", "get"): {"200", "401", "403", "404"},
    ("/health", "get"): {"200", "503"},
}


async def test_openapi_documents_the_responses_of_every_route(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    documented = {(path, method) for path, item in paths.items() for method in item}
    assert set(CONTRACT_ROUTES) <= documented, set(CONTRACT_ROUTES) - documented
    for path, item in paths.items():
        for method, operation in item.items():
            responses = operation.get("responses", {})
            assert any(status.startswith("2") for status in responses), (method, path, responses)
            for status, response in responses.items():
                assert response.get("description"), (method, path, status)
            expected = CONTRACT_ROUTES.get((path, method))
            if expected is not None:
                assert expected <= set(responses), (method, path, expected - set(responses))
    for path in ("/v1/topups", "/v1/bonuses", "/v1/purchases"):
        parameters = paths[path]["post"].get("parameters", [])
        assert any(p["name"] == "Idempotency-Key" and p["in"] == "header" and p["required"] for p in parameters)


async def test_openapi_documents_every_v1_error_as_a_problem(client: httpx.AsyncClient) -> None:
    """Every error the service sends is application/problem+json, so the document must say so."""
    paths = (await client.get("/openapi.json")).json()["paths"]
    wrong = [
        (method, path, status, sorted(response.get("content", {})))
        for path, item in paths.items()
        if path.startswith("/v1")
        for method, operation in item.items()
        for status, response in operation.get("responses", {}).items()
        if status.startswith(("4", "5")) and PROBLEM not in response.get("content", {})
    ]
    assert wrong == []


# Payload validation ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("amount", [10.0, "10", True, False, 0, -1, 10**15 + 1, 10**20, 2**64, None, [10], {"v": 1}])
async def test_invalid_amount_is_422(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection, new_user: str, amount: Any
) -> None:
    key = idem()
    response = await post(client, api_keys, "/v1/topups", movement(new_user, amount), key)
    assert_validation_error(response, "amount")
    assert await balance(client, api_keys, new_user) == 0
    assert await stored_keys(db, key) == 0


async def test_missing_amount_is_422(client: httpx.AsyncClient, api_keys: Keys, new_user: str) -> None:
    response = await post(client, api_keys, "/v1/topups", {"user_id": new_user, "asset": "GOLD"}, idem())
    assert_validation_error(response, "amount")


async def test_largest_amount_is_accepted(client: httpx.AsyncClient, api_keys: Keys, new_user: str) -> None:
    response = await post(client, api_keys, "/v1/topups", movement(new_user, 10**15), idem())
    assert response.status_code == 201, response.text
    assert response.json()["amount"] == 10**15
    assert await balance(client, api_keys, new_user) == 10**15


async def test_unknown_field_is_422(client: httpx.AsyncClient, api_keys: Keys, new_user: str) -> None:
    response = await post(client, api_keys, "/v1/topups", movement(new_user, 10, currency="EUR"), idem())
    assert_validation_error(response, "currency")


@pytest.mark.parametrize("description", ["x" * 500, "é" * 500, "😀" * 500, ""])
async def test_description_up_to_500_characters(
    client: httpx.AsyncClient, api_keys: Keys, new_user: str, description: str
) -> None:
    response = await post(client, api_keys, "/v1/topups", movement(new_user, 1, description=description), idem())
    assert response.status_code == 201, response.text
    assert response.json()["description"] == description


@pytest.mark.parametrize("description", ["x" * 501, "é" * 501, 5, ["a"]])
async def test_description_too_long_or_not_text_is_422(
    client: httpx.AsyncClient, api_keys: Keys, new_user: str, description: Any
) -> None:
    response = await post(client, api_keys, "/v1/topups", movement(new_user, 1, description=description), idem())
    assert_validation_error(response, "description")


def metadata_of_size(size: int) -> dict[str, str]:
    metadata = {"k": "x" * (size - len(orjson.dumps({"k": ""})))}
    assert len(orjson.dumps(metadata)) == size
    return metadata


async def test_metadata_of_4096_bytes_is_accepted(client: httpx.AsyncClient, api_keys: Keys, new_user: str) -> None:
    metadata = metadata_of_size(4096)
    response = await post(client, api_keys, "/v1/topups", movement(new_user, 1, metadata=metadata), idem())
    assert response.status_code == 201, response.text
    assert response.json()["metadata"] == metadata


@pytest.mark.parametrize("metadata", [metadata_of_size(4097), metadata_of_size(8000), [1, 2], "text", 3])
async def test_metadata_too_large_or_not_an_object_is_422(
    client: httpx.AsyncClient, api_keys: Keys, new_user: str, metadata: Any
) -> None:
    response = await post(client, api_keys, "/v1/topups", movement(new_user, 1, metadata=metadata), idem())
    assert_validation_error(response, "metadata")


@pytest.mark.parametrize("user_id", ["-bad", "", "a" * 65, "with space", "é", 42, None])
async def test_malformed_user_id_in_body_is_422(client: httpx.AsyncClient, api_keys: Keys, user_id: Any) -> None:
    response = await post(client, api_keys, "/v1/topups", movement(user_id, 1), idem())
    assert_validation_error(response, "user_id")


@pytest.mark.parametrize("asset", ["gold", "G", "GOLD-X", "A" * 17, "", 1, None])
async def test_malformed_asset_in_body_is_422(
    client: httpx.AsyncClient, api_keys: Keys, new_user: str, asset: Any
) -> None:
    response = await post(client, api_keys, "/v1/topups", movement(new_user, 1, asset), idem())
    assert_validation_error(response, "asset")


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b'{"user_id": "x", "asset": ', "application/json"),
        (b"not json", "application/json"),
        (b"", "application/json"),
        (b"[1, 2]", "application/json"),
        (b"null", "application/json"),
        (b'{"amount": NaN}', "application/json"),
        (b'{"user_id": "alice", "asset": "GOLD", "amount": 1}', "text/plain"),
        (b'{"user_id": "alice", "asset": "GOLD", "amount": 1}', "application/x-www-form-urlencoded"),
        (b'{"user_id": "alice", "asset": "GOLD", "amount": 1}', None),
    ],
)
async def test_malformed_json_or_wrong_content_type_is_422(
    client: httpx.AsyncClient, api_keys: Keys, content: bytes, content_type: str | None
) -> None:
    headers = {**api_keys.headers(), "Idempotency-Key": idem()}
    if content_type is not None:
        headers["Content-Type"] = content_type
    response = await client.post("/v1/topups", content=content, headers=headers)
    assert_validation_error(response)


async def test_json_with_charset_is_accepted(client: httpx.AsyncClient, api_keys: Keys, new_user: str) -> None:
    headers = {**api_keys.headers(), "Idempotency-Key": idem(), "Content-Type": "application/json; charset=utf-8"}
    response = await client.post("/v1/topups", content=orjson.dumps(movement(new_user, 3)), headers=headers)
    assert response.status_code == 201, response.text


def padded_body(user_id: str, size: int) -> bytes:
    """A valid top-up body of exactly `size` bytes (JSON whitespace before the closing brace)."""
    compact = orjson.dumps(movement(user_id, 1))
    body = compact[:-1] + b" " * (size - len(compact)) + b"}"
    assert len(body) == size
    return body


async def test_body_of_64_kib_is_accepted(client: httpx.AsyncClient, api_keys: Keys, new_user: str) -> None:
    headers = {**api_keys.headers(), "Idempotency-Key": idem(), "Content-Type": "application/json"}
    response = await client.post("/v1/topups", content=padded_body(new_user, 65536), headers=headers)
    assert response.status_code == 201, response.text


async def test_body_over_64_kib_is_413(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection, new_user: str
) -> None:
    key = idem()
    headers = {**api_keys.headers(), "Idempotency-Key": key, "Content-Type": "application/json"}
    response = await client.post("/v1/topups", content=padded_body(new_user, 65537), headers=headers)
    assert_problem(response, 413, "payload_too_large")
    assert await balance(client, api_keys, new_user) == 0
    assert await stored_keys(db, key) == 0


async def test_streamed_body_over_64_kib_is_413(client: httpx.AsyncClient, api_keys: Keys, new_user: str) -> None:
    """Without Content-Length (chunked), the limit holds on the bytes actually received."""
    body = padded_body(new_user, 70_000)

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 8192):
            yield body[start : start + 8192]

    headers = {**api_keys.headers(), "Idempotency-Key": idem(), "Content-Type": "application/json"}
    response = await client.post("/v1/topups", content=chunks(), headers=headers)
    assert "content-length" not in response.request.headers
    assert_problem(response, 413, "payload_too_large")
    assert await balance(client, api_keys, new_user) == 0


async def test_user_put_body_over_64_kib_is_413(client: httpx.AsyncClient, api_keys: Keys) -> None:
    content = b'{"display_name": "' + b"x" * 70_000 + b'"}'
    headers = {**api_keys.headers(), "Content-Type": "application/json"}
    response = await client.put(f"/v1/users/{fresh_id()}", content=content, headers=headers)
    assert_problem(response, 413, "payload_too_large")


# Idempotency -------------------------------------------------------------------------------------------------------


async def test_idempotency_key_missing_is_400(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection, new_user: str
) -> None:
    for path in MOVEMENT_PATHS.values():
        response = await post(client, api_keys, path, movement(new_user, 1))
        assert_problem(response, 400, "idempotency_key_missing")
    assert (await ledger_counts(db, new_user))["user_transactions"] == 0


@pytest.mark.parametrize("key", ["", "k" * 256, "clé".encode(), "with space", "tab\tkey", "\x7fdel"])
async def test_idempotency_key_malformed_is_400(
    client: httpx.AsyncClient, api_keys: Keys, new_user: str, key: str | bytes
) -> None:
    headers: dict[str, Any] = {**api_keys.headers(), "Idempotency-Key": key}
    response = await client.post("/v1/topups", json=movement(new_user, 1), headers=headers)
    assert_problem(response, 400, "idempotency_key_invalid")
    assert await balance(client, api_keys, new_user) == 0


@pytest.mark.parametrize("key", ["k", "k" * 255, "!~:/{}[]@#$%^&*()=+?<>|\\'\"`,;"])
async def test_idempotency_key_edge_values_are_accepted(
    client: httpx.AsyncClient, api_keys: Keys, new_user: str, key: str
) -> None:
    # Each value is used once per session by this API key (a fresh one per session, on a fresh database).
    response = await post(client, api_keys, "/v1/topups", movement(new_user, 1), key, scope="topup")
    assert response.status_code == 201, response.text
    replay = await post(client, api_keys, "/v1/topups", movement(new_user, 1), key, scope="topup")
    assert replay.headers.get("idempotent-replayed") == "true"
    assert await balance(client, api_keys, new_user) == 1


async def test_same_key_same_body_replays_and_writes_nothing(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection, new_user: str
) -> None:
    key = idem()
    body = movement(new_user, 75, description="Pack", metadata={"order": 7})
    first = await post(client, api_keys, "/v1/topups", body, key)
    assert first.status_code == 201, first.text
    assert "idempotent-replayed" not in first.headers
    before = await ledger_counts(db, new_user)

    for replay_body in (
        body,
        {"metadata": {"order": 7}, "description": "Pack", "amount": 75, "asset": "GOLD", "user_id": new_user},
    ):
        replay = await post(client, api_keys, "/v1/topups", replay_body, key)
        assert replay.status_code == 201, replay.text
        assert replay.headers.get("idempotent-replayed") == "true"
        assert replay.content == first.content
    assert await ledger_counts(db, new_user) == before
    assert await balance(client, api_keys, new_user) == 75
    assert await stored_keys(db, key) == 1


async def test_replay_with_defaults_spelled_out_is_the_same_request(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection, new_user: str
) -> None:
    key = idem()
    first = await post(client, api_keys, "/v1/topups", movement(new_user, 9), key)
    assert first.status_code == 201, first.text
    before = await ledger_counts(db, new_user)
    replay = await post(client, api_keys, "/v1/topups", movement(new_user, 9, description=None, metadata={}), key)
    assert replay.status_code == 201, replay.text
    assert replay.headers.get("idempotent-replayed") == "true"
    assert replay.content == first.content
    assert await ledger_counts(db, new_user) == before


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"amount": 76}, "amount"),
        ({"asset": "DIAMOND"}, "asset"),
        ({"description": "other"}, "description"),
        ({"metadata": {"order": 8}}, "metadata"),
    ],
)
async def test_same_key_different_body_is_422_reused(
    client: httpx.AsyncClient,
    api_keys: Keys,
    db: asyncpg.Connection,
    new_user: str,
    change: dict[str, Any],
    field: str,
) -> None:
    key = idem()
    body = movement(new_user, 75, description="Pack", metadata={"order": 7})
    first = await post(client, api_keys, "/v1/topups", body, key)
    assert first.status_code == 201, first.text
    before = await ledger_counts(db, new_user)

    reused = await post(client, api_keys, "/v1/topups", {**body, **change}, key)
    problem = assert_problem(reused, 422, "idempotency_key_reused")
    assert [d["field"] for d in problem["differences"]] == [field], problem
    assert await ledger_counts(db, new_user) == before
    assert await balance(client, api_keys, new_user) == 75
    assert await balance(client, api_keys, new_user, "DIAMOND") == 0

    # The key still belongs to the first request.
    replay = await post(client, api_keys, "/v1/topups", body, key)
    assert replay.headers.get("idempotent-replayed") == "true"
    assert replay.content == first.content


async def test_same_key_on_another_endpoint_is_422_reused(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection, new_user: str
) -> None:
    key = idem()
    body = movement(new_user, 20)
    assert (await post(client, api_keys, "/v1/topups", body, key)).status_code == 201
    before = await ledger_counts(db, new_user)
    for path in ("/v1/bonuses", "/v1/purchases"):
        reused = await post(client, api_keys, path, body, key)
        problem = assert_problem(reused, 422, "idempotency_key_reused")
        assert "endpoint" in [d["field"] for d in problem["differences"]], problem
    assert await ledger_counts(db, new_user) == before
    assert await balance(client, api_keys, new_user) == 20


async def test_insufficient_funds_is_stored_and_replayed(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection, new_user: str
) -> None:
    await move(client, api_keys, "topup", new_user, 10)
    key = idem()
    body = movement(new_user, 20)
    refused = await post(client, api_keys, "/v1/purchases", body, key)
    assert_problem(refused, 409, "insufficient_funds")
    assert "idempotent-replayed" not in refused.headers

    await move(client, api_keys, "topup", new_user, 50)  # now the purchase would fit
    before = await ledger_counts(db, new_user)
    replay = await post(client, api_keys, "/v1/purchases", body, key)
    assert_problem(replay, 409, "insufficient_funds")
    assert replay.headers.get("idempotent-replayed") == "true"
    assert replay.content == refused.content
    assert await ledger_counts(db, new_user) == before
    assert await balance(client, api_keys, new_user) == 60


async def test_user_not_found_is_stored_and_replayed(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection
) -> None:
    user_id = fresh_id()
    key = idem()
    body = movement(user_id, 5)
    missing = await post(client, api_keys, "/v1/topups", body, key)
    assert_problem(missing, 404, "user_not_found")

    assert (await client.put(f"/v1/users/{user_id}", headers=api_keys.headers())).status_code == 201
    replay = await post(client, api_keys, "/v1/topups", body, key)
    assert_problem(replay, 404, "user_not_found")
    assert replay.headers.get("idempotent-replayed") == "true"
    assert (await ledger_counts(db, user_id))["user_transactions"] == 0
    assert await balance(client, api_keys, user_id) == 0


async def test_validation_failure_stores_nothing_and_the_key_can_be_reused(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection, new_user: str
) -> None:
    key = idem()
    invalid = await post(client, api_keys, "/v1/topups", movement(new_user, 0), key)
    assert_validation_error(invalid, "amount")
    assert await stored_keys(db, key) == 0

    corrected = await post(client, api_keys, "/v1/topups", movement(new_user, 5), key)
    assert corrected.status_code == 201, corrected.text
    assert "idempotent-replayed" not in corrected.headers
    assert await balance(client, api_keys, new_user) == 5
    assert await stored_keys(db, key) == 1


async def test_idempotency_keys_are_scoped_per_api_key(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection, new_user: str
) -> None:
    key = idem()
    body = movement(new_user, 15)
    by_topup_key = await post(client, api_keys, "/v1/topups", body, key, scope="topup")
    by_admin_key = await post(client, api_keys, "/v1/topups", body, key, scope="admin")
    assert by_topup_key.status_code == 201, by_topup_key.text
    assert by_admin_key.status_code == 201, by_admin_key.text
    assert "idempotent-replayed" not in by_admin_key.headers
    assert by_topup_key.json()["id"] != by_admin_key.json()["id"]
    assert await balance(client, api_keys, new_user) == 30

    # And a different body under the same key of a third API key is not "reused".
    by_bonus_key = await post(client, api_keys, "/v1/bonuses", movement(new_user, 1), key, scope="bonus")
    assert by_bonus_key.status_code == 201, by_bonus_key.text
    assert await stored_keys(db, key) == 3


async def test_transaction_records_the_api_key_name(
    client: httpx.AsyncClient, db: asyncpg.Connection, new_user: str, named_key: tuple[str, str]
) -> None:
    name, secret = named_key
    headers = {"Authorization": f"Bearer {secret}", "Idempotency-Key": idem()}
    response = await client.post("/v1/topups", json=movement(new_user, 4), headers=headers)
    assert response.status_code == 201, response.text
    internal_id = ledger.parse_transaction_id(response.json()["id"])
    assert internal_id is not None
    recorded = await db.fetchval("SELECT api_key_name FROM transactions WHERE id = $1", internal_id)
    assert recorded == name
