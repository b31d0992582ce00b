"""Payload validation (spec/API.md, "Endpoints" and "Error codes"): amounts, descriptions, metadata, user ids and
assets in a movement's body, malformed JSON and content types, and the 64 KiB body limit (PUT /v1/users too).
Invalid input is a 422, a body past the limit a 413; where a test checks, nothing was written and no idempotency
record was stored."""

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from tests.conftest import Keys
from tests.support import (
    assert_problem,
    assert_validation_error,
    balance,
    fresh_id,
    idem,
    movement,
    post,
    stored_keys,
)

# Amounts -----------------------------------------------------------------------------------------------------------


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


# Descriptions and metadata -----------------------------------------------------------------------------------------


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


# User ids and assets in the body -----------------------------------------------------------------------------------


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


# JSON and content type ---------------------------------------------------------------------------------------------


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


# Body size ---------------------------------------------------------------------------------------------------------


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
