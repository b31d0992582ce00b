"""The HTTP layer: routes, authentication, idempotency headers, problem documents, request logs."""

import asyncio
import contextlib
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar, cast

import asyncpg
import orjson
from fastapi import Depends, FastAPI, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from wallet import __version__, keys, ledger
from wallet.config import Settings, get_settings
from wallet.database import create_pool, with_retries
from wallet.errors import (
    CODES,
    DATABASE_ERRORS,
    PROBLEM_MEDIA_TYPE,
    Forbidden,
    IdempotencyKeyInvalid,
    IdempotencyKeyMissing,
    IdempotencyKeyReused,
    InternalError,
    NotSent,
    PayloadTooLarge,
    Unauthenticated,
    ValidationFailed,
    WalletError,
    from_database,
    problem,
)
from wallet.keys import ApiKey, KeyCache
from wallet.logs import log_request
from wallet.models import (
    ASSET_PATTERN,
    IDEMPOTENCY_KEY_PATTERN,
    PAGE_LIMIT_MAX,
    USER_ID_PATTERN,
    AssetList,
    Balance,
    Balances,
    BatchRequest,
    BatchResponse,
    Health,
    MovementRequest,
    Problem,
    Transaction,
    TransactionPage,
    User,
    UserRequest,
)
from wallet.ratelimit import RateLimiter

log = logging.getLogger("wallet.api")

JSON = "application/json"
MOVEMENT_SCOPES = ("topup", "bonus", "purchase")
M = TypeVar("M", bound=BaseModel)
REQUEST_ID_PATTERN = re.compile(r"[\x21-\x7e]{1,200}")  # echoed as given when visible ASCII of sane length
IDEMPOTENCY_KEY_RE = re.compile(IDEMPOTENCY_KEY_PATTERN)
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]
API_CSP = (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'")


class RequestContext:
    """Per-request facts the log line reports, filled in by handlers."""

    __slots__ = ("key_name", "request_id", "transaction_id")

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.key_name: str | None = None
        self.transaction_id: str | None = None


class Envelope:
    """Pure ASGI middleware: request ids, the body size limit, security headers, one log line per request."""

    def __init__(self, app: ASGIApp, body_size_max_bytes: int, body_size_max_bytes_by_path: dict[str, int]) -> None:
        self.app = app
        self.body_size_max_bytes = body_size_max_bytes
        self.body_size_max_bytes_by_path = body_size_max_bytes_by_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = dict(scope["headers"])
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        context = RequestContext(given if REQUEST_ID_PATTERN.fullmatch(given) else uuid.uuid4().hex)
        scope.setdefault("state", {})["context"] = context
        status_holder = [500]
        response_started = [False]
        extra_headers = [(b"x-request-id", context.request_id.encode()), *SECURITY_HEADERS]
        if not scope["path"].startswith("/docs"):
            extra_headers.append(API_CSP)

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                response_started[0] = True
                status_holder[0] = message["status"]
                message["headers"] = [*message.get("headers", []), *extra_headers]
            await send(message)

        body_max = self.body_size_max_bytes_by_path.get(scope["path"], self.body_size_max_bytes)
        try:
            length = headers.get(b"content-length")
            if length is not None and (not length.isdigit() or int(length) > body_max):
                await self._reject_too_large(send_wrapper, body_max)
                return
            await self.app(scope, self._limited(receive, body_max), send_wrapper)
        except PayloadTooLarge:
            await self._reject_too_large(send_wrapper, body_max)
        except ClientDisconnect:
            status_holder[0] = 499  # the client went away before sending its whole body; nothing to answer
        except Exception:
            log.exception("unhandled error", extra={"fields": {"request_id": context.request_id}})
            if not response_started[0]:
                await self._send_problem(send_wrapper, InternalError("Unexpected error; nothing was written."))
        finally:
            log_request(
                method=scope["method"],
                path=scope["path"],
                status=status_holder[0],
                duration_ms=round((time.perf_counter() - started) * 1000, 3),
                request_id=context.request_id,
                key=context.key_name,
                transaction_id=context.transaction_id,
            )

    @staticmethod
    def _limited(receive: Receive, body_max: int) -> Receive:
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > body_max:
                    raise PayloadTooLarge("body too large")
            return message

        return limited_receive

    async def _reject_too_large(self, send: Send, body_max: int) -> None:
        await self._send_problem(send, PayloadTooLarge(f"The body is over {body_max} bytes."))

    @staticmethod
    async def _send_problem(send: Send, error: WalletError) -> None:
        body = orjson.dumps(error.to_problem())
        await send(
            {
                "type": "http.response.start",
                "status": error.status,
                "headers": [
                    (b"content-type", PROBLEM_MEDIA_TYPE.encode()),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _problem_response(error: WalletError) -> Response:
    return Response(
        orjson.dumps(error.to_problem()), status_code=error.status, media_type=PROBLEM_MEDIA_TYPE, headers=error.headers
    )


def _outcome_problem(
    outcome: ledger.Outcome, idempotency_key: str, endpoint: str, request: dict[str, Any]
) -> dict[str, Any]:
    """The problem document of an outcome that is not a success: recorded failures are rendered the same way
    on the first answer and on every replay."""
    if outcome.kind == "reused":
        differences = _differences(orjson.loads(outcome.body), endpoint, request)
        fields = ", ".join(d["field"] for d in differences)
        return IdempotencyKeyReused(
            f"Idempotency-Key {idempotency_key} was first used for another request ({fields} differ).",
            differences=differences,
        ).to_problem()
    stored = orjson.loads(outcome.body)
    return problem(stored["code"], stored["detail"])


def _context(request: Request) -> RequestContext:
    context: RequestContext = request.scope["state"]["context"]
    return context


# Documentation of responses: every route lists each status it can answer with, with an example.
def _problem_doc(*codes: str) -> dict[int | str, dict[str, Any]]:
    docs: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        status, title = CODES[code]
        entry = docs.setdefault(
            status,
            {
                "description": title,
                "model": Problem,
                "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}, "examples": {}}},
            },
        )
        if title not in entry["description"]:
            entry["description"] += f" / {title}"
        entry["content"][PROBLEM_MEDIA_TYPE]["examples"][code] = {"value": problem(code, f"Example: {title.lower()}.")}
    return docs


def _docs(status: int, model: type[BaseModel], description: str, *codes: str) -> dict[int | str, dict[str, Any]]:
    return {
        status: {"model": model, "description": description},
        **_problem_doc("unauthenticated", "forbidden", "rate_limited", "unavailable", *codes),
    }


def _body_doc(model: type[BaseModel], required: bool = True) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": required,
            "content": {JSON: {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}},
        }
    }


def _parse_body(raw: bytes, content_type: str | None, model: type[M]) -> M:
    """Our own JSON parsing: orjson rejects NaN, lone surrogates and nesting past 1,024 levels, where the
    standard library would accept them or overflow the stack."""
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type != JSON:
        raise ValidationFailed(
            "The body must be JSON, sent with Content-Type: application/json.",
            [{"loc": ["header", "content-type"], "msg": "expected application/json", "type": "content_type"}],
        )
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValidationFailed(
            "The body is not valid JSON.", [{"loc": ["body"], "msg": str(exc), "type": "json_invalid"}]
        ) from None
    try:
        return model.model_validate(data)
    except PydanticValidationError as exc:
        raise _validation_failed(exc.errors(include_url=False, include_input=False), ()) from None


def _validation_failed(errors: Any, prefix: tuple[str, ...]) -> ValidationFailed:
    listed = [{"loc": [*prefix, *error["loc"]], "msg": error["msg"], "type": error["type"]} for error in errors]
    fields = ", ".join(".".join(str(part) for part in error["loc"]) or "body" for error in listed[:5])
    return ValidationFailed(f"The request is invalid: {fields}.", listed)


def _idempotency_key(request: Request) -> str:
    value = request.headers.get("idempotency-key")
    if value is None:
        raise IdempotencyKeyMissing("Money-moving requests need an Idempotency-Key header.")
    if not IDEMPOTENCY_KEY_RE.fullmatch(value):
        raise IdempotencyKeyInvalid("The Idempotency-Key must be 1 to 255 visible ASCII characters.")
    return value


def _differences(stored: dict[str, Any], endpoint: str, request: dict[str, Any]) -> list[dict[str, Any]]:
    if stored["endpoint"] != endpoint:
        return [{"field": "endpoint", "first": stored["endpoint"], "now": endpoint}]
    first = stored["request"]
    return [
        {"field": name, "first": first.get(name), "now": request.get(name)}
        for name in sorted(set(first) | set(request))
        if first.get(name) != request.get(name)
    ]


class Service:
    """What handlers share: settings, the pool, the key cache."""

    def __init__(self, settings: Settings, database_url: str) -> None:
        self.settings = settings
        self.database_url = database_url
        self.key_cache = KeyCache(settings.api_key_cache_ttl_ms)
        self.rate_limiter = RateLimiter(settings.redis_url, settings.rate_limit_per_s)
        self._pool: asyncpg.Pool | None = None

    async def open(self) -> None:
        self._pool = await create_pool(self.database_url, self.settings)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()

    @property
    def pool(self) -> asyncpg.Pool:
        assert self._pool is not None, "the service is not open"
        return self._pool

    async def run(self, operation: Callable[[asyncpg.Connection], Awaitable[Any]]) -> Any:
        """Runs one unit of work on a pooled connection, retried on serialization failures and deadlocks,
        with database failures turned into public errors."""

        async def attempt() -> Any:
            try:
                conn = await self.pool.acquire(timeout=self.settings.pool_acquire_timeout_ms / 1000)
            except DATABASE_ERRORS as exc:
                raise NotSent(exc) from exc
            try:
                return await operation(cast(asyncpg.Connection, conn))
            finally:
                await self.pool.release(conn)

        try:
            settings = self.settings
            return await with_retries(settings.retry_attempts_max, settings.reconnect_window_ms / 1000, attempt)
        except WalletError:
            raise
        except (NotSent, *DATABASE_ERRORS) as exc:
            error = from_database(exc)
            if isinstance(error, InternalError):
                log.error("database error", extra={"fields": {"sqlstate": getattr(exc, "sqlstate", None)}})
            raise error from None

    async def maintain(self) -> None:
        """Background loop: folds system-account deltas and purges old idempotency keys. Survives outages."""
        interval_s = self.settings.rollup_interval_ms / 1000
        retention_days = self.settings.idempotency_retention_days
        purged_at = 0.0
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.run(ledger.rollup)
                if time.monotonic() - purged_at > 3600:
                    await self.run(lambda conn: ledger.purge_idempotency_keys(conn, retention_days))
                    purged_at = time.monotonic()
            except WalletError as exc:
                log.warning("maintenance skipped: %s", exc.detail)


def create_app(settings: Settings | None = None, database_url: str | None = None) -> FastAPI:
    settings = settings or get_settings()
    url = database_url or settings.database_url
    if not url:
        raise RuntimeError("create_app needs a database URL (WALLET_DATABASE_URL); `wallet serve` sets it.")
    service = Service(settings, url)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await service.open()
        maintenance = asyncio.create_task(service.maintain())
        try:
            yield
        finally:
            maintenance.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await maintenance
            await service.close()

    app = FastAPI(
        title="Wallet service",
        version=__version__,
        lifespan=lifespan,
        description="Double-entry wallet for virtual credits. Errors are RFC 9457 problem documents.",
    )
    app.state.service = service
    bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer <key>`.")

    def require(*scopes: str) -> Callable[..., Awaitable[ApiKey]]:
        """A dependency admitting keys that hold any of `scopes` (admin holds them all)."""

        async def authenticate(
            request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)
        ) -> ApiKey:
            if credentials is None or credentials.scheme.lower() != "bearer":
                raise Unauthenticated("Send an API key as `Authorization: Bearer <key>`.")
            secret = credentials.credentials
            key = await service.key_cache.resolve(
                secret, lambda digest: service.run(lambda conn: keys.find(conn, digest))
            )
            if key is None:
                raise Unauthenticated("The API key is unknown or revoked.")
            _context(request).key_name = key.name
            await service.rate_limiter.check(key)
            if not any(key.allows(scope) for scope in scopes):
                raise Forbidden(f"The key {key.name} lacks the {' or '.join(scopes)} scope.")
            return key

        return authenticate

    def json_response(body: str, status: int = 200, headers: dict[str, str] | None = None) -> Response:
        return Response(body.encode(), status_code=status, media_type=JSON, headers=headers)

    # Error rendering: every failure becomes a problem document with a stable code.
    @app.exception_handler(WalletError)
    async def wallet_error(_: Request, exc: WalletError) -> Response:
        return _problem_response(exc)

    @app.exception_handler(RequestValidationError)
    async def request_validation_error(_: Request, exc: RequestValidationError) -> Response:
        return _problem_response(_validation_failed(exc.errors(), ()))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 405:
            error: WalletError = WalletError("This method is not allowed on this path.")
            error.code = "method_not_allowed"
        elif exc.status_code == 404:
            error = WalletError("No such route.")
            error.code = "not_found"
        else:
            error = InternalError("Unexpected HTTP error.")
        return _problem_response(error)

    # Routes.
    @app.get(
        "/health",
        response_model=Health,
        tags=["operations"],
        responses={503: {"model": Health, "description": "The database cannot be reached."}},
    )
    async def health() -> Response:
        try:
            async with asyncio.timeout(1.0):
                async with service.pool.acquire() as conn:
                    await conn.fetchval("SELECT 1")
        except DATABASE_ERRORS:
            return json_response('{"status":"unavailable","database":"unavailable"}', 503)
        return json_response('{"status":"ok","database":"ok"}')

    @app.get("/v1/assets", response_model=AssetList, tags=["assets"], responses=_docs(200, AssetList, "Every asset."))
    async def list_assets(_: ApiKey = Depends(require("read"))) -> Response:
        return json_response(await service.run(ledger.list_assets))

    user_path = {"pattern": USER_ID_PATTERN, "max_length": 64, "examples": ["alice"]}

    @app.put(
        "/v1/users/{user_id}",
        response_model=User,
        tags=["users"],
        openapi_extra=_body_doc(UserRequest, False),
        responses={
            **_docs(201, User, "Created, with one account per asset.", "validation_error"),
            200: {"model": User, "description": "The user was already there."},
        },
    )
    async def put_user(
        request: Request, user_id: str = _path(user_path), _: ApiKey = Depends(require("admin"))
    ) -> Response:
        raw = await request.body()
        display_name = None
        if raw.strip():
            display_name = _parse_body(raw, request.headers.get("content-type"), UserRequest).display_name
        created, body = await service.run(lambda conn: ledger.ensure_user(conn, user_id, display_name))
        return json_response(body, 201 if created else 200)

    @app.get(
        "/v1/users/{user_id}",
        response_model=User,
        tags=["users"],
        responses=_docs(200, User, "The user.", "user_not_found", "validation_error"),
    )
    async def get_user(user_id: str = _path(user_path), _: ApiKey = Depends(require("read"))) -> Response:
        return json_response(await service.run(lambda conn: ledger.get_user(conn, user_id)))

    @app.get(
        "/v1/users/{user_id}/balances",
        response_model=Balances,
        tags=["balances"],
        responses=_docs(200, Balances, "Every asset's balance, 0 included.", "user_not_found", "validation_error"),
    )
    async def get_balances(user_id: str = _path(user_path), _: ApiKey = Depends(require("read"))) -> Response:
        return json_response(await service.run(lambda conn: ledger.get_balances(conn, user_id)))

    asset_path = {"pattern": ASSET_PATTERN, "max_length": 16, "examples": ["GOLD"]}

    @app.get(
        "/v1/users/{user_id}/balances/{asset}",
        response_model=Balance,
        tags=["balances"],
        responses=_docs(200, Balance, "The balance.", "user_not_found", "asset_not_found", "validation_error"),
    )
    async def get_balance(
        user_id: str = _path(user_path), asset: str = _path(asset_path), _: ApiKey = Depends(require("read"))
    ) -> Response:
        return json_response(await service.run(lambda conn: ledger.get_balance(conn, user_id, asset)))

    @app.get(
        "/v1/users/{user_id}/transactions",
        response_model=TransactionPage,
        tags=["transactions"],
        responses=_docs(
            200,
            TransactionPage,
            "A page of transactions, newest first.",
            "user_not_found",
            "asset_not_found",
            "validation_error",
        ),
    )
    async def get_history(
        user_id: str = _path(user_path),
        asset: str | None = Query(None, pattern=ASSET_PATTERN, max_length=16),
        limit: int = Query(50, ge=1, le=PAGE_LIMIT_MAX),
        cursor: str | None = Query(None, max_length=64, description="`next_cursor` of the previous page."),
        _: ApiKey = Depends(require("read")),
    ) -> Response:
        return json_response(await service.run(lambda conn: ledger.get_history(conn, user_id, asset, limit, cursor)))

    @app.get(
        "/v1/transactions/{transaction_id}",
        response_model=Transaction,
        tags=["transactions"],
        responses=_docs(200, Transaction, "The transaction, as its POST returned it.", "transaction_not_found"),
    )
    async def get_transaction(transaction_id: str, _: ApiKey = Depends(require("read"))) -> Response:
        return json_response(await service.run(lambda conn: ledger.get_transaction(conn, transaction_id)))

    def movement_route(operation: ledger.OperationType, path: str, summary: str) -> None:
        endpoint = f"POST {path}"
        codes = [
            "idempotency_key_missing",
            "idempotency_key_invalid",
            "user_not_found",
            "asset_not_found",
            "validation_error",
            "idempotency_key_reused",
            "payload_too_large",
            "balance_limit_exceeded",
        ]
        if operation == "purchase":
            codes.append("insufficient_funds")

        async def move(request: Request, key: ApiKey = Depends(require(operation))) -> Response:
            idempotency_key = _idempotency_key(request)
            body = _parse_body(await request.body(), request.headers.get("content-type"), MovementRequest)
            movement = ledger.Movement(
                operation, body.user_id, body.asset, body.amount, body.description, body.metadata
            )
            attempt_id = uuid.uuid4()  # the same across the service's own retries of this request
            outcome: ledger.Outcome = await service.run(
                lambda conn: ledger.execute(conn, attempt_id, key.id, key.name, idempotency_key, endpoint, movement)
            )
            headers = {"Idempotent-Replayed": "true"} if outcome.kind == "replayed" else {}
            if outcome.status >= 400:
                failure = _outcome_problem(outcome, idempotency_key, endpoint, movement.request())
                return Response(
                    orjson.dumps(failure), status_code=failure["status"], media_type=PROBLEM_MEDIA_TYPE, headers=headers
                )
            _context(request).transaction_id = outcome.transaction_id
            return json_response(outcome.body, outcome.status, headers)

        app.post(
            path,
            response_model=Transaction,
            status_code=201,
            tags=["movements"],
            summary=summary,
            openapi_extra={
                **_body_doc(MovementRequest),
                "parameters": [
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": True,
                        "schema": {"type": "string", "pattern": IDEMPOTENCY_KEY_PATTERN, "maxLength": 255},
                        "description": "Makes retries safe: the same key and body replay the first response.",
                    }
                ],
            },
            responses=_docs(201, Transaction, "Posted.", *codes),
        )(move)

    movement_route("topup", "/v1/topups", "Top up: treasury -> user")
    movement_route("bonus", "/v1/bonuses", "Bonus: bonus_pool -> user")
    movement_route("purchase", "/v1/purchases", "Purchase: user -> revenue")

    @app.post(
        "/v1/batch",
        response_model=BatchResponse,
        tags=["movements"],
        summary="Many movements, one transaction",
        openapi_extra=_body_doc(BatchRequest),
        responses=_docs(
            200, BatchResponse, "One result per operation, in request order.", "validation_error", "payload_too_large"
        ),
    )
    async def batch(request: Request, key: ApiKey = Depends(require(*MOVEMENT_SCOPES))) -> Response:
        body = _parse_body(await request.body(), request.headers.get("content-type"), BatchRequest)
        missing = sorted({op.type for op in body.operations if not key.allows(op.type)})
        if missing:
            raise Forbidden(f"The key {key.name} lacks the {', '.join(missing)} scope(s) this batch needs.")
        seen: dict[str, int] = {}
        for index, op in enumerate(body.operations):
            first = seen.setdefault(op.idempotency_key, index)
            if first != index:
                raise ValidationFailed(
                    f"operations.{index}.idempotency_key repeats operations.{first}'s.",
                    [
                        {
                            "loc": ["operations", index, "idempotency_key"],
                            "msg": f"repeats item {first}",
                            "type": "duplicate",
                        }
                    ],
                )
        items = [
            ledger.BatchItem(
                op.idempotency_key,
                ledger.Movement(op.type, op.user_id, op.asset, op.amount, op.description, op.metadata),
            )
            for op in body.operations
        ]
        attempt_id = uuid.uuid4()
        outcomes: list[ledger.Outcome] = await service.run(
            lambda conn: ledger.execute_batch(conn, attempt_id, key.id, key.name, body.atomic, items)
        )
        results = []
        for item, outcome in zip(items, outcomes, strict=True):
            replayed = ',"replayed":true' if outcome.kind == "replayed" else ""
            if outcome.status < 400:
                results.append(f'{{"status":{outcome.status},"transaction":{outcome.body}{replayed}}}')
            else:
                endpoint = ledger.ENDPOINTS[item.movement.type]
                failure = _outcome_problem(outcome, item.idempotency_key, endpoint, item.movement.request())
                results.append(f'{{"status":{failure["status"]},"problem":{orjson.dumps(failure).decode()}{replayed}}}')
        return json_response('{"results":[' + ",".join(results) + "]}")

    _register_schemas(app, MovementRequest, UserRequest, Problem)
    app.add_middleware(
        Envelope,
        body_size_max_bytes=settings.body_size_max_bytes,
        # 1,000 operations do not fit in 64 KiB: batches get their own limit.
        body_size_max_bytes_by_path={"/v1/batch": settings.batch_body_size_max_bytes},
    )
    return app


def _path(spec: dict[str, Any]) -> Any:
    return Path(..., pattern=spec["pattern"], max_length=spec["max_length"], examples=spec["examples"])


def _register_schemas(app: FastAPI, *models: type[BaseModel]) -> None:
    """Adds models that routes reference by $ref (bodies we parse ourselves) to the OpenAPI components."""
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = original()
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            # FastAPI documents a default 422 (HTTPValidationError as application/json) that this service never
            # sends: its 422s are problem documents, documented per route where they can happen.
            for operations in schema["paths"].values():
                for operation in operations.values():
                    content = operation.get("responses", {}).get("422", {}).get("content", {})
                    content.pop("application/json", None)
                    if "422" in operation.get("responses", {}) and not content:
                        del operation["responses"]["422"]
            for unused in ("HTTPValidationError", "ValidationError"):
                components.pop(unused, None)
            for model in models:
                model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(model_schema.pop("$defs", {}))
                components[model.__name__] = model_schema
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def app_from_env() -> FastAPI:
    """Factory for uvicorn workers: reads WALLET_DATABASE_URL, which `wallet serve` sets."""
    from wallet.logs import configure

    settings = Settings()  # not the cached instance: `wallet serve` set the URL after reading its own
    configure(settings.log_level)
    return create_app(settings)
