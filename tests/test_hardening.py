"""spec/API.md, "Hardening": what applies to every route. Member names given twice, trailing slashes, HEAD and
405 with Allow, two Idempotency-Key headers, numbers in metadata kept exactly, one precedence of unknown user
over unknown asset, and PUT of a user saying what it did."""

from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute

from tests.conftest import Keys
from tests.support import PATHS, assert_problem, assert_validation_error, fresh_id, idem, ledger_counts, move

SAMPLES = {"user_id": "alice", "asset": "GOLD", "transaction_id": "tx_0000000000000001"}


def routes(app: FastAPI) -> list[tuple[str, str]]:
    """(method, path with sample values) of every route the app has."""
    found = []
    for route in app.routes:
        if isinstance(route, APIRoute):
            path = route.path
            for name, value in SAMPLES.items():
                path = path.replace("{" + name + "}", value)
            found.extend((method, path) for method in sorted(route.methods))
    return found


def app_of(client: httpx.AsyncClient) -> FastAPI:
    app: FastAPI = client._transport.app  # type: ignore[attr-defined]
    return app


# Bodies -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        '{"user_id":"%s","asset":"GOLD","amount":1,"amount":2}',
        '{"user_id":"%s","asset":"GOLD","amount":1,"metadata":{"a":1,"a":2}}',
        '{"user_id":"%s","asset":"GOLD","amount":1,"metadata":{"list":[{"x":1,"x":1}]}}',
    ],
    ids=["top-level", "in-metadata", "deep"],
)
async def test_a_member_name_given_twice_is_422_and_writes_nothing(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection, new_user: str, text: str
) -> None:
    key = idem()
    headers = {**api_keys.headers(), "Idempotency-Key": key, "Content-Type": "application/json"}
    response = await client.post(PATHS["topup"], content=(text % new_user).encode(), headers=headers)
    body = assert_validation_error(response, "body")
    assert "twice" in body["detail"], body
    assert (await ledger_counts(db, new_user))["user_transactions"] == 0
    assert await db.fetchval("SELECT count(*) FROM idempotency_keys WHERE key = $1", key) == 0


@pytest.mark.parametrize(
    "number", ["123456789012345678901234567890", "-98765432109876543210", "0.10", "1.50", "-2.25", "3.0", "0"]
)
async def test_numbers_in_metadata_come_back_exactly(
    client: httpx.AsyncClient, api_keys: Keys, new_user: str, number: str
) -> None:
    text = f'{{"user_id":"{new_user}","asset":"GOLD","amount":5,"metadata":{{"n":{number},"l":[{number}]}}}}'
    headers = {**api_keys.headers(), "Idempotency-Key": idem(), "Content-Type": "application/json"}
    created = await client.post(PATHS["topup"], content=text.encode(), headers=headers)
    assert created.status_code == 201, created.text
    assert f'"metadata":{{"l":[{number}],"n":{number}}}' in created.text.replace(" ", ""), created.text
    fetched = await client.get(f"/v1/transactions/{created.json()['id']}", headers=api_keys.headers("read"))
    assert fetched.content == created.content
    replayed = await client.post(PATHS["topup"], content=text.encode(), headers=headers)
    assert replayed.headers.get("idempotent-replayed") == "true"
    assert replayed.content == created.content


@pytest.mark.parametrize("number", ["1e2", "1E-3", "2.5e+10", "-0", "-0.0", "1e400"])
async def test_numbers_in_metadata_that_would_come_back_otherwise_are_422(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection, new_user: str, number: str
) -> None:
    text = f'{{"user_id":"{new_user}","asset":"GOLD","amount":5,"metadata":{{"n":{number}}}}}'
    headers = {**api_keys.headers(), "Idempotency-Key": idem(), "Content-Type": "application/json"}
    response = await client.post(PATHS["topup"], content=text.encode(), headers=headers)
    assert_validation_error(response, "metadata")
    assert (await ledger_counts(db, new_user))["user_transactions"] == 0


@pytest.mark.parametrize("number", ["1e2", "10.0", "1E3", "-0"])
async def test_amounts_written_as_other_numbers_are_422(
    client: httpx.AsyncClient, api_keys: Keys, new_user: str, number: str
) -> None:
    text = f'{{"user_id":"{new_user}","asset":"GOLD","amount":{number}}}'
    headers = {**api_keys.headers(), "Idempotency-Key": idem(), "Content-Type": "application/json"}
    assert_validation_error(await client.post(PATHS["topup"], content=text.encode(), headers=headers), "amount")


# Routes -----------------------------------------------------------------------------------------------------------


async def test_a_trailing_slash_is_a_404_on_every_route_never_a_redirect(
    client: httpx.AsyncClient, api_keys: Keys
) -> None:
    checked = 0
    for method, path in routes(app_of(client)):
        response = await client.request(method, path + "/", headers=api_keys.headers())
        assert "location" not in response.headers, (method, path, response.headers)
        assert_problem(response, 404, "not_found")
        checked += 1
    assert checked >= 12


async def test_head_answers_every_get_route_like_get_without_a_body(client: httpx.AsyncClient, api_keys: Keys) -> None:
    gets = [path for method, path in routes(app_of(client)) if method == "GET"]
    assert len(gets) >= 7
    for path in [*gets, "/nope"]:
        for headers in (api_keys.headers("read"), {}):
            got = await client.get(path, headers=headers)
            head = await client.head(path, headers=headers)
            assert head.status_code == got.status_code, (path, head.status_code, got.status_code)
            assert head.content == b"", path
            for name in ("content-type", "content-length"):
                # The OpenAPI document differs by key; /metrics counts the GET just answered.
                if name in got.headers and path not in ("/openapi.json", "/metrics"):
                    assert head.headers.get(name) == got.headers[name], (path, name)


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("DELETE", "/v1/users/alice", "GET, HEAD, PUT"),
        ("POST", "/v1/assets", "GET, HEAD"),
        ("GET", "/v1/topups", "POST"),
        ("HEAD", "/v1/purchases", "POST"),
        ("PATCH", "/v1/transactions/tx_0000000000000001", "GET, HEAD"),
    ],
)
async def test_405_names_every_method_of_the_path_in_allow(
    client: httpx.AsyncClient, api_keys: Keys, method: str, path: str, allowed: str
) -> None:
    response = await client.request(method, path, headers=api_keys.headers())
    assert response.status_code == 405, response.text
    assert response.headers.get("allow") == allowed
    if method != "HEAD":
        assert_problem(response, 405, "method_not_allowed")


async def test_two_idempotency_key_headers_are_400_and_write_nothing(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection, new_user: str
) -> None:
    for keys in ([idem(), idem()], ["same-twice", "same-twice"]):
        headers = [*api_keys.headers().items(), *(("Idempotency-Key", key) for key in keys)]
        response = await client.post(
            PATHS["topup"], json={"user_id": new_user, "asset": "GOLD", "amount": 1}, headers=headers
        )
        assert_problem(response, 400, "idempotency_key_invalid")
    assert (await ledger_counts(db, new_user))["user_transactions"] == 0


# One precedence: an unknown user before an unknown asset -----------------------------------------------------------


async def test_an_unknown_user_is_reported_before_an_unknown_asset_on_every_route(
    client: httpx.AsyncClient, api_keys: Keys
) -> None:
    ghost, headers = fresh_id(), api_keys.headers()
    for path in PATHS.values():
        body = {"user_id": ghost, "asset": "NOPE", "amount": 1}
        response = await client.post(path, json=body, headers={**headers, "Idempotency-Key": idem()})
        assert_problem(response, 404, "user_not_found")
    batch = {
        "operations": [{"type": "purchase", "user_id": ghost, "asset": "NOPE", "amount": 1, "idempotency_key": idem()}]
    }
    result = (await client.post("/v1/batch", json=batch, headers=headers)).json()["results"][0]
    assert result["problem"]["code"] == "user_not_found", result
    for path in (f"/v1/users/{ghost}/balances/NOPE", f"/v1/users/{ghost}/transactions?asset=NOPE"):
        assert_problem(await client.get(path, headers=headers), 404, "user_not_found")


# PUT of a user -----------------------------------------------------------------------------------------------------


async def test_put_user_sets_clears_or_keeps_the_display_name_and_answers_the_user_as_it_now_is(
    client: httpx.AsyncClient, api_keys: Keys
) -> None:
    user_id, headers = fresh_id(), api_keys.headers()

    async def put(body: Any = None) -> httpx.Response:
        if body is None:
            return await client.put(f"/v1/users/{user_id}", headers=headers)
        return await client.put(f"/v1/users/{user_id}", json=body, headers=headers)

    created = await put({"display_name": "Erin"})
    assert (created.status_code, created.json()["display_name"]) == (201, "Erin")
    renamed = await put({"display_name": "Erin B."})
    assert (renamed.status_code, renamed.json()["display_name"]) == (200, "Erin B.")
    kept = await put()
    assert (kept.status_code, kept.json()["display_name"]) == (200, "Erin B.")
    kept = await put({})
    assert (kept.status_code, kept.json()["display_name"]) == (200, "Erin B.")
    cleared = await put({"display_name": None})
    assert (cleared.status_code, cleared.json()["display_name"]) == (200, None)
    fetched = await client.get(f"/v1/users/{user_id}", headers=api_keys.headers("read"))
    assert fetched.json() == cleared.json()
    assert created.json()["created_at"] == cleared.json()["created_at"]


async def test_movements_still_work_after_the_hardening(
    client: httpx.AsyncClient, api_keys: Keys, new_user: str
) -> None:
    """The stricter parser accepts what it always accepted."""
    posted = await move(client, api_keys, "topup", new_user, 7)
    assert posted["amount"] == 7
