"""Security: every route is closed by default, errors and logs leak nothing, keys are stored hashed, responses carry
security headers, CORS is closed, and every input has a limit that answers 4xx, never 5xx.
"""

import asyncio
import contextlib
import hashlib
import logging
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.routing import Route

from tests.conftest import Keys, in_process
from tests.support import free_port, idem
from wallet import keys
from wallet.config import Settings
from wallet.http.app import create_app
from wallet.logs import JsonFormatter

# Which scopes admit each /v1 route (admin admits everything). A new route fails
# test_every_v1_route_has_a_declared_scope until it is listed here: no route ships without a decision.
ROUTE_SCOPES: dict[tuple[str, str], set[str]] = {
    ("GET", "/v1/assets"): {"read"},
    ("PUT", "/v1/assets/{code}"): {"admin"},
    ("PUT", "/v1/users/{user_id}"): {"admin"},
    ("GET", "/v1/users/{user_id}"): {"read"},
    ("GET", "/v1/users/{user_id}/balances"): {"read"},
    ("GET", "/v1/users/{user_id}/balances/{asset}"): {"read"},
    ("GET", "/v1/users/{user_id}/transactions"): {"read"},
    ("GET", "/v1/users/{user_id}/statistics"): {"read"},
    ("GET", "/v1/users/{user_id}/statement.csv"): {"read"},
    ("GET", "/v1/transactions/{transaction_id}"): {"read"},
    ("POST", "/v1/topups"): {"topup"},
    ("POST", "/v1/bonuses"): {"bonus"},
    ("POST", "/v1/purchases"): {"purchase"},
    ("POST", "/v1/batch"): {"topup", "bonus", "purchase", "transfer"},
    ("POST", "/v1/transfers"): {"transfer"},
    ("POST", "/v1/adjustments"): {"admin"},
    ("POST", "/v1/users/{user_id}/freeze"): {"admin"},
    ("POST", "/v1/users/{user_id}/unfreeze"): {"admin"},
    ("POST", "/v1/holds"): {"purchase"},
    ("GET", "/v1/holds/{hold_id}"): {"read"},
    ("POST", "/v1/holds/{hold_id}/capture"): {"purchase"},
    ("POST", "/v1/holds/{hold_id}/void"): {"purchase"},
    ("GET", "/v1/users/{user_id}/holds"): {"read"},
    # Purchases are refunded with the purchase scope; reversing a top-up or a bonus takes admin (test_refunds.py).
    ("POST", "/v1/transactions/{transaction_id}/refunds"): {"purchase"},
    ("GET", "/v1/transactions/{transaction_id}/refunds"): {"read"},
    ("GET", "/v1/events"): {"read"},
    # Webhook endpoints name URLs and hold secrets; monitors watch any balance: the operator's.
    ("POST", "/v1/webhooks"): {"admin"},
    ("GET", "/v1/webhooks"): {"admin"},
    ("GET", "/v1/webhooks/{webhook_id}"): {"admin"},
    ("DELETE", "/v1/webhooks/{webhook_id}"): {"admin"},
    ("POST", "/v1/webhooks/{webhook_id}/rotate-secret"): {"admin"},
    ("GET", "/v1/webhooks/{webhook_id}/deliveries"): {"admin"},
    ("POST", "/v1/monitors"): {"admin"},
    ("GET", "/v1/monitors"): {"admin"},
    ("GET", "/v1/users"): {"read"},
    ("GET", "/v1/system-accounts"): {"read"},
    ("GET", "/v1/volume"): {"read"},
    ("GET", "/v1/verify-reports"): {"read"},
}
# Routes anyone may call, by the contract.
OPEN_PATHS = {
    "/health",
    "/metrics",  # Prometheus scrapes without a key (spec/API.md, "Operations")
    "/openapi.json",
    *("/docs", "/docs/init.js", "/docs/assets/{name}"),  # Swagger UI, served from this origin
    *("/console", "/console/{name}"),  # the operator console: a page that calls /v1 with the key pasted in it
}
PATH_VALUES = {
    "user_id": "alice",
    "asset": "GOLD",
    "transaction_id": "tx_0000000000000001",
    "hold_id": "hold_0000000000000001",
    "code": "GOLD",
    "webhook_id": "wh_0000000000000001",
}
SCOPES = ("read", "topup", "bonus", "purchase", "transfer")
LEAKS = ("Traceback", 'File "', ".py", "SELECT", "INSERT", "UPDATE ", "asyncpg", "psycopg", "wallet_request", "plpgsql")
SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}


@dataclass
class App:
    app: FastAPI
    http: httpx.AsyncClient
    log: list[str]


class Capture(logging.Handler):
    """Every log record, formatted as the service formats it, plus the raw message and exception text."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__(logging.DEBUG)
        self.lines = lines
        self.formatter_ = JsonFormatter()

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.formatter_.format(record))
        self.lines.append(repr(record.args) + repr(getattr(record, "fields", None)))


@contextlib.contextmanager
def captured_logs() -> Iterator[list[str]]:
    """Every log record emitted meanwhile, at DEBUG and above."""
    lines: list[str] = []
    handler = Capture(lines)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield lines
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


@pytest.fixture(scope="module")
async def secure(settings: Settings, db: asyncpg.Connection) -> AsyncIterator[App]:
    """The app in-process, with every log record captured at DEBUG."""
    with captured_logs() as lines:
        app = create_app(settings)
        async with in_process(app) as http:
            yield App(app, http, lines)


def _routes(app: FastAPI) -> Iterator[tuple[str, str]]:
    for route in app.routes:
        if isinstance(route, APIRoute | Route):
            for method in sorted(route.methods or ()):
                if method != "HEAD":
                    yield method, route.path


def _concrete(path: str) -> str:
    for name, value in PATH_VALUES.items():
        path = path.replace("{" + name + "}", value)
    assert "{" not in path, f"no sample value for a parameter of {path}"
    return path


def _assert_problem(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, (response.request.method, response.request.url, response.text)
    assert response.headers["content-type"].startswith("application/problem+json"), response.headers
    body = response.json()
    assert body["code"] == code and body["status"] == status, body
    assert {"type", "title", "detail"} <= set(body), body


# --- authentication and scopes on every route --------------------------------------------------------------------


async def test_every_v1_route_has_a_declared_scope(secure: App) -> None:
    routes = set(_routes(secure.app))
    v1 = {route for route in routes if route[1].startswith("/v1")}
    assert v1 == set(ROUTE_SCOPES), f"undeclared: {v1 - set(ROUTE_SCOPES)}, gone: {set(ROUTE_SCOPES) - v1}"
    others = {path for _, path in routes - v1}
    assert others <= OPEN_PATHS, f"routes outside /v1 (open to anyone): {others - OPEN_PATHS}"


async def test_every_v1_route_needs_a_key(secure: App) -> None:
    for method, path in _routes(secure.app):
        if not path.startswith("/v1"):
            continue
        url = _concrete(path)
        for headers in (
            {},
            {"Authorization": "Bearer wk_" + "0" * 43},
            {"Authorization": "Bearer "},
            {"Authorization": "Basic YWRtaW46YWRtaW4="},
            {"Authorization": "bearer"},
            {"Authorization": "Bearer " + "x" * 5000},
        ):
            response = await secure.http.request(method, url, headers={**headers, "Idempotency-Key": "k"}, json={})
            _assert_problem(response, 401, "unauthenticated")


async def test_every_v1_route_refuses_a_key_without_its_scope(secure: App, api_keys: Keys) -> None:
    for method, path in _routes(secure.app):
        if not path.startswith("/v1"):
            continue
        allowed = ROUTE_SCOPES[method, path]
        for scope in SCOPES:
            response = await secure.http.request(
                method, _concrete(path), headers={**api_keys.headers(scope), "Idempotency-Key": uuid.uuid4().hex}
            )
            if scope in allowed:
                assert response.status_code not in (401, 403), (method, path, scope, response.text)
            else:
                _assert_problem(response, 403, "forbidden")
        admin = await secure.http.request(
            method, _concrete(path), headers={**api_keys.headers("admin"), "Idempotency-Key": uuid.uuid4().hex}
        )
        assert admin.status_code not in (401, 403), (method, path, admin.text)


async def test_batch_items_need_the_scope_of_their_type(secure: App, api_keys: Keys) -> None:
    operation = {"type": "purchase", "user_id": "alice", "asset": "GOLD", "amount": 1, "idempotency_key": "b1"}
    response = await secure.http.post("/v1/batch", json={"operations": [operation]}, headers=api_keys.headers("topup"))
    _assert_problem(response, 403, "forbidden")


async def test_a_revoked_key_stops_working(secure: App, db: asyncpg.Connection) -> None:
    name = f"sec-revoked-{uuid.uuid4().hex[:8]}"
    secret = await keys.create(db, name, ["read"])
    headers = {"Authorization": f"Bearer {secret}"}
    assert (await secure.http.get("/v1/assets", headers=headers)).status_code == 200
    assert await keys.revoke(db, name)
    _assert_problem(await secure.http.get("/v1/assets", headers=headers), 401, "unauthenticated")


async def test_open_routes_are_only_the_documented_ones(secure: App) -> None:
    assert (await secure.http.get("/health")).status_code == 200
    assert (await secure.http.get("/openapi.json")).status_code == 200
    assert (await secure.http.get("/docs")).status_code == 200


# --- nothing leaks: errors, logs, the database ------------------------------------------------------------------


def _assert_no_leak(response: httpx.Response, *secrets: str) -> None:
    text = response.text
    for word in (*LEAKS, *secrets):
        assert word not in text, f"{response.request.method} {response.request.url} leaks {word!r}: {text[:500]}"
    for name, value in response.headers.items():
        for secret in secrets:
            assert secret not in value, f"header {name} carries a secret"


async def _error_requests(http: httpx.AsyncClient, headers: dict[str, str]) -> list[httpx.Response]:
    def post(path: str, body: Any, key: str | bytes | None = None, **extra: str) -> Any:
        hdrs = {**headers, "Idempotency-Key": key or idem(), **extra}
        if isinstance(body, bytes):
            return http.post(path, content=body, headers={"Content-Type": "application/json", **hdrs})
        return http.post(path, json=body, headers=hdrs)

    good = {"user_id": "alice", "asset": "GOLD", "amount": 1}
    return list(
        await asyncio.gather(
            post("/v1/topups", b"{not json"),
            post("/v1/topups", b'{"user_id": "alice", "asset": "GOLD", "amount": 1e999}'),
            post("/v1/topups", b"[" * 5000 + b"]" * 5000),
            post("/v1/topups", b'{"user_id": "\\ud800", "asset": "GOLD", "amount": 1}'),
            post("/v1/topups", {**good, "amount": 10**30}),
            post("/v1/topups", {**good, "amount": "1"}),
            post("/v1/topups", {**good, "user_id": "nobody-" + uuid.uuid4().hex[:8]}),
            post("/v1/topups", {**good, "asset": "NOPE"}),
            post("/v1/topups", {**good, "metadata": {"k": "\x00"}}),
            post("/v1/topups", {**good, "extra": 1}),
            post("/v1/topups", good, key="é".encode()),
            post("/v1/topups", good, **{"Content-Type": "text/plain"}),
            post("/v1/purchases", {**good, "amount": 10**15}),
            post("/v1/batch", {"operations": []}),
            post("/v1/batch", {"operations": [{**good, "type": "steal", "idempotency_key": "x"}]}),
            http.get("/v1/users/a'; DROP TABLE users;--", headers=headers),
            http.get("/v1/users/alice/balances/g0ld", headers=headers),
            http.get("/v1/users/alice/transactions", params={"cursor": "'; SELECT 1;--"}, headers=headers),
            http.get("/v1/users/alice/transactions", params={"limit": "abc"}, headers=headers),
            http.get("/v1/transactions/tx_'; DROP TABLE transactions;--", headers=headers),
            http.get("/v1/transactions/tx_ffffffffffffffff", headers=headers),
            http.get("/v1/transactions/" + "9" * 400, headers=headers),
            http.get("/v1/nope", headers=headers),
            http.delete("/v1/topups", headers=headers),
        )
    )


async def test_errors_leak_no_trace_sql_or_secret(secure: App, api_keys: Keys) -> None:
    secret = api_keys.secrets["admin"]
    responses = await _error_requests(secure.http, api_keys.headers("admin"))
    for response in responses:
        assert 400 <= response.status_code < 500, (response.request.url, response.status_code, response.text)
        assert response.headers["content-type"].startswith("application/problem+json"), response.request.url
        _assert_no_leak(response, secret)


async def test_a_huge_cursor_is_a_validation_error(secure: App, api_keys: Keys) -> None:
    """A cursor of the right shape but past the id range is malformed, not a database outage."""
    response = await secure.http.get(
        "/v1/users/alice/transactions", params={"cursor": "tx_ffffffffffffffff"}, headers=api_keys.headers("read")
    )
    _assert_problem(response, 422, "validation_error")


async def test_an_unreachable_database_leaks_neither_url_nor_password(settings: Settings) -> None:
    password = "pw-" + uuid.uuid4().hex
    port = free_port()  # nothing listens there
    url = f"postgresql://wallet:{password}@127.0.0.1:{port}/wallet"
    with captured_logs() as lines:
        app = create_app(settings.model_copy(update={"database_url": url}), url)
        async with in_process(app) as http:
            headers = {"Authorization": "Bearer wk_whatever", "Idempotency-Key": "k1"}
            responses = [
                await http.get("/v1/assets", headers=headers),
                await http.post("/v1/topups", json={"user_id": "a", "asset": "GOLD", "amount": 1}, headers=headers),
                await http.get("/health"),
            ]
    for response in responses:
        assert response.status_code == 503, response.text
        _assert_no_leak(response, password, str(port), "127.0.0.1")
    assert responses[0].json()["code"] == "unavailable"
    assert lines, "nothing was logged at all: the capture is broken"
    leaked = [line for line in lines if password in line or "wk_whatever" in line]
    assert not leaked, leaked[:3]


async def test_logs_never_carry_a_secret(secure: App, api_keys: Keys, db: asyncpg.Connection) -> None:
    secret = await keys.create(db, f"sec-log-{uuid.uuid4().hex[:8]}", ["admin"])
    headers = {"Authorization": f"Bearer {secret}"}
    unknown = "wk_unknown_" + uuid.uuid4().hex
    start = len(secure.log)
    user_id = f"sec-{uuid.uuid4().hex[:10]}"
    assert (await secure.http.put(f"/v1/users/{user_id}", headers=headers)).status_code == 201
    body = {"user_id": user_id, "asset": "GOLD", "amount": 5}
    posted = await secure.http.post("/v1/topups", json=body, headers={**headers, "Idempotency-Key": "l1"})
    assert posted.status_code == 201, posted.text
    await secure.http.post("/v1/topups", json=body, headers={**headers, "Idempotency-Key": "l1"})
    await secure.http.get(f"/v1/users/{user_id}/balances", headers=headers)
    await secure.http.get("/v1/assets", headers={"Authorization": f"Bearer {unknown}"})
    await secure.http.get("/v1/assets", headers={"Authorization": f"Basic {secret}"})
    await _error_requests(secure.http, headers)
    lines = secure.log[start:]
    assert sum('"event":"request"' in line for line in lines) >= 30, "request log lines were not captured"
    for needle in (secret, unknown, secret[3:20], hashlib.sha256(secret.encode()).hexdigest()):
        leaked = [line for line in lines if needle in line]
        assert not leaked, f"a log line carries {needle[:8]}...: {leaked[:2]}"
    for line in lines:
        assert "Traceback" not in line, line


async def test_keys_are_stored_hashed_and_secrets_nowhere(db: asyncpg.Connection, api_keys: Keys) -> None:
    rows = await db.fetch("SELECT name, secret_hash, row_to_json(k)::text AS whole FROM api_keys k")
    by_hash = {bytes(row["secret_hash"]): row for row in rows}
    for row in rows:
        assert len(row["secret_hash"]) == 32, row["name"]
    for secret in api_keys.secrets.values():
        digest = hashlib.sha256(secret.encode()).digest()
        assert digest in by_hash, "the key's hash is not SHA-256 of its secret"
        assert bytes(by_hash[digest]["secret_hash"]) != secret.encode()
        assert secret not in by_hash[digest]["whole"]
        assert secret.encode().hex() not in by_hash[digest]["whole"]
    # No table holds a secret in clear (idempotency records, transactions, anything).
    tables = await db.fetch(
        "SELECT quote_ident(table_name) AS t FROM information_schema.tables"
        " WHERE table_schema = 'public' AND table_type = 'BASE TABLE'"
    )
    for table in tables:
        for secret in api_keys.secrets.values():
            found = await db.fetchval(f"SELECT count(*) FROM {table['t']} x WHERE strpos(x::text, $1) > 0", secret)
            assert found == 0, f"table {table['t']} holds a key secret"


# --- headers and CORS ---------------------------------------------------------------------------------------------


async def test_security_headers_on_every_kind_of_response(secure: App, api_keys: Keys) -> None:
    headers = api_keys.headers("admin")
    responses = [
        await secure.http.get("/v1/assets", headers=headers),
        await secure.http.get("/v1/assets"),
        await secure.http.get("/v1/users/nobody-x", headers=headers),
        await secure.http.get("/v1/nope"),
        await secure.http.post("/v1/topups", content=b"x" * 70_000, headers=headers),
        await secure.http.post("/v1/topups", json={}, headers={**headers, "Idempotency-Key": "h"}),
        await secure.http.get("/health"),
        await secure.http.get("/openapi.json"),
        *await _error_requests(secure.http, headers),
    ]
    for response in responses:
        for name, value in SECURITY_HEADERS.items():
            assert response.headers.get(name) == value, (response.request.url, name, dict(response.headers))
        assert response.headers.get("x-request-id"), response.request.url
        assert "default-src 'none'" in response.headers.get("content-security-policy", ""), response.request.url
    docs = await secure.http.get("/docs")
    assert docs.headers.get("x-content-type-options") == "nosniff"
    assert docs.headers.get("x-frame-options") == "DENY"


def test_the_real_server_names_no_software(server: str) -> None:
    response = httpx.get(server + "/health", timeout=10)
    assert "server" not in response.headers, response.headers
    assert "x-powered-by" not in response.headers


async def test_cors_is_closed_by_default(secure: App, api_keys: Keys) -> None:
    origin = {"Origin": "https://evil.example"}
    simple = await secure.http.get("/v1/assets", headers={**api_keys.headers("read"), **origin})
    assert simple.status_code == 200
    preflight = await secure.http.options(
        "/v1/topups",
        headers={
            **origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, idempotency-key, content-type",
        },
    )
    assert not 200 <= preflight.status_code < 300, preflight.status_code
    for response in (simple, preflight, await secure.http.get("/health", headers=origin)):
        cors = {name for name in response.headers if name.startswith("access-control-")}
        assert not cors, (response.request.url, cors)


# --- input limits -------------------------------------------------------------------------------------------------


async def test_a_body_over_the_limit_is_413(secure: App, api_keys: Keys) -> None:
    headers = {**api_keys.headers("topup"), "Idempotency-Key": uuid.uuid4().hex, "Content-Type": "application/json"}
    declared = await secure.http.post("/v1/topups", content=b" " * (64 * 1024 + 1), headers=headers)
    _assert_problem(declared, 413, "payload_too_large")

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the limit must count what arrives
        for _ in range(20):
            yield b" " * 8192

    streamed = await secure.http.post("/v1/topups", content=chunks(), headers=headers)
    _assert_problem(streamed, 413, "payload_too_large")
    lying = await secure.http.post("/v1/topups", content=b"{}", headers={**headers, "Content-Length": "-1"})
    assert 400 <= lying.status_code < 500, lying.text
    # 1,000 batch operations do not fit in 64 KiB: /v1/batch has its own limit (WALLET_BATCH_BODY_SIZE_MAX_BYTES).
    batch_limit = secure.app.state.services.settings.batch_body_size_max_bytes
    batch = await secure.http.post(
        "/v1/batch", content=b" " * (batch_limit + 1), headers={**api_keys.headers("admin"), **headers}
    )
    _assert_problem(batch, 413, "payload_too_large")
    exactly = await secure.http.post("/v1/topups", content=b" " * (64 * 1024), headers=headers)
    _assert_problem(exactly, 422, "validation_error")  # at the limit: parsed (and found empty)


async def test_metadata_size_and_depth_and_description_limits(secure: App, api_keys: Keys, new_user: str) -> None:
    headers = api_keys.headers("topup")

    async def topup(**extra: Any) -> httpx.Response:
        body = {"user_id": new_user, "asset": "GOLD", "amount": 1, **extra}
        return await secure.http.post("/v1/topups", json=body, headers={**headers, "Idempotency-Key": uuid.uuid4().hex})

    fits = {"x": "a" * (4096 - len('{"x":""}'))}
    assert (await topup(metadata=fits)).status_code == 201
    _assert_problem(await topup(metadata={"x": "a" * 4096}), 422, "validation_error")
    deep: Any = {}
    for _ in range(7):
        deep = {"d": deep}
    assert (await topup(metadata=deep)).status_code == 201  # 8 levels
    _assert_problem(await topup(metadata={"d": deep}), 422, "validation_error")  # 9
    _assert_problem(await topup(metadata=[1]), 422, "validation_error")
    assert (await topup(description="d" * 500)).status_code == 201
    _assert_problem(await topup(description="d" * 501), 422, "validation_error")
    balance = await secure.http.get(f"/v1/users/{new_user}/balances/GOLD", headers=api_keys.headers("read"))
    assert balance.json()["balance"] == 3  # the refused ones wrote nothing


async def test_page_size_limits(secure: App, api_keys: Keys) -> None:
    headers = api_keys.headers("read")
    for limit in ("201", "0", "-1", "1000000000000", "1.5", ""):
        response = await secure.http.get("/v1/users/alice/transactions", params={"limit": limit}, headers=headers)
        _assert_problem(response, 422, "validation_error")
    for limit in ("1", "200"):
        response = await secure.http.get("/v1/users/alice/transactions", params={"limit": limit}, headers=headers)
        assert response.status_code == 200, response.text
        assert len(response.json()["items"]) <= int(limit)


async def test_idempotency_key_limits(secure: App, api_keys: Keys, new_user: str) -> None:
    body = {"user_id": new_user, "asset": "GOLD", "amount": 1}
    headers = api_keys.headers("topup")
    longest = (uuid.uuid4().hex * 8)[:255]  # unique: the session's keys are shared with other tests
    ok = await secure.http.post("/v1/topups", json=body, headers={**headers, "Idempotency-Key": longest})
    assert ok.status_code == 201, ok.text
    for key in ("k" * 256, "a b", "\t", "é".encode(), b"a\x7f"):
        response = await secure.http.post("/v1/topups", json=body, headers={**headers, "Idempotency-Key": key})
        _assert_problem(response, 400, "idempotency_key_invalid")
    _assert_problem(await secure.http.post("/v1/topups", json=body, headers=headers), 400, "idempotency_key_missing")


def _raw_request(base_url: str, request: bytes) -> bytes:
    """Sends raw bytes and returns whatever comes back before the server closes (or b"")."""
    parts = urlsplit(base_url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        try:
            sock.sendall(request)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except (ConnectionResetError, TimeoutError):
            pass
    return b"".join(chunks)


def _status(raw: bytes) -> int | None:
    if not raw.startswith(b"HTTP/1."):
        return None
    return int(raw.split(b" ", 2)[1])


@pytest.mark.parametrize(
    ("name", "header"),
    [
        ("one huge header", b"X-Big: " + b"a" * 1_000_000 + b"\r\n"),
        ("a huge Authorization", b"Authorization: Bearer " + b"a" * 200_000 + b"\r\n"),
        ("many headers", b"".join(b"X-H%d: v\r\n" % i for i in range(10_000))),
        ("a huge Idempotency-Key", b"Idempotency-Key: " + b"k" * 300_000 + b"\r\n"),
    ],
)
def test_huge_headers_never_get_a_5xx(server: str, name: str, header: bytes) -> None:
    request = b"GET /v1/assets HTTP/1.1\r\nHost: wallet.test\r\n" + header + b"Connection: close\r\n\r\n"
    status = _status(_raw_request(server, request))
    print(f"{name}: {status or 'connection closed without an answer'}")
    assert status is None or 400 <= status < 500, f"{name}: {status}"
    assert httpx.get(server + "/health", timeout=10).status_code == 200, "the server did not survive"


def test_a_huge_url_never_gets_a_5xx(server: str, api_keys: Keys) -> None:
    auth = api_keys.headers("read")["Authorization"].encode()
    for path in (b"/v1/users/" + b"a" * 60_000, b"/v1/users/alice/transactions?cursor=" + b"c" * 1_000_000):
        request = b"GET " + path + b" HTTP/1.1\r\nHost: wallet.test\r\nAuthorization: " + auth
        raw = _raw_request(server, request + b"\r\nConnection: close\r\n\r\n")
        status = _status(raw)
        assert status is None or 400 <= status < 500, (path[:40], raw[:300])
    assert httpx.get(server + "/health", timeout=10).status_code == 200, "the server did not survive"
