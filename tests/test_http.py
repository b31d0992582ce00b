"""The HTTP layer around the contract: request ids, unknown routes, /health, the docs, and the OpenAPI document
(every route's responses documented, every /v1 error as a problem document)."""

import httpx
import pytest

from tests.conftest import Keys
from tests.support import PROBLEM, assert_problem

# Request ids -------------------------------------------------------------------------------------------------------


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


# Unknown routes, health, docs --------------------------------------------------------------------------------------


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


# The OpenAPI document ----------------------------------------------------------------------------------------------


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
