"""Problem documents (RFC 9457): the one place that renders every failure the service answers with."""

from typing import Any

import orjson
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import Send

from wallet.errors import (
    PROBLEM_MEDIA_TYPE,
    IdempotencyKeyReused,
    InternalError,
    MethodNotAllowed,
    NotFound,
    ValidationFailed,
    WalletError,
    problem,
)
from wallet.holds import HoldOutcome
from wallet.ledger import Outcome, differences


def response(error: WalletError) -> Response:
    return Response(
        orjson.dumps(error.to_problem()), status_code=error.status, media_type=PROBLEM_MEDIA_TYPE, headers=error.headers
    )


async def send(send: Send, error: WalletError) -> None:
    """The same document, sent by ASGI middleware, below the app's exception handlers."""
    body = orjson.dumps(error.to_problem())
    headers = [(b"content-type", PROBLEM_MEDIA_TYPE.encode()), (b"content-length", str(len(body)).encode())]
    headers += [(name.lower().encode(), value.encode()) for name, value in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def of_outcome(
    outcome: Outcome | HoldOutcome, idempotency_key: str, endpoint: str, request: dict[str, Any]
) -> dict[str, Any]:
    """The problem document of an outcome that is not a success: recorded failures are rendered the same way on
    the first answer and on every replay."""
    stored = outcome.problem
    assert stored is not None
    if outcome.kind == "reused":
        found = differences(stored, endpoint, request)
        fields = ", ".join(d["field"] for d in found)
        return IdempotencyKeyReused(
            f"Idempotency-Key {idempotency_key} was first used for another request ({fields} differ).",
            differences=found,
        ).to_problem()
    extra = {name: value for name, value in stored.items() if name not in ("code", "detail")}  # a 422's errors
    return problem(stored["code"], stored["detail"], **extra)


def validation_failed(errors: Any, prefix: tuple[str | int, ...] = ()) -> ValidationFailed:
    """pydantic's errors as a 422, naming the offending fields (their first five in the detail)."""
    listed = [{"loc": [*prefix, *error["loc"]], "msg": error["msg"], "type": error["type"]} for error in errors]
    fields = ", ".join(".".join(str(part) for part in error["loc"]) or "body" for error in listed[:5])
    return ValidationFailed(f"The request is invalid: {fields}.", listed)


async def _wallet_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, WalletError)
    return response(exc)


async def _request_validation_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return response(validation_failed(exc.errors()))


def allowed_methods(request: Request) -> list[str]:
    """Every method some route of this path answers (each route answers one; HEAD comes with GET)."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches({**request.scope, "method": "OPTIONS"})  # a method no route has: path-only match
        if match != Match.NONE:
            methods.update(getattr(route, "methods", None) or ())
    if "GET" in methods:
        methods.add("HEAD")
    return sorted(methods)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    error: WalletError
    if exc.status_code == 405:
        allowed = ", ".join(allowed_methods(request))
        error = MethodNotAllowed(f"This path answers {allowed} only.", headers={"Allow": allowed})
    elif exc.status_code == 404:
        error = NotFound("No such route.")
    else:
        error = InternalError("Unexpected HTTP error.")
    return response(error)


def install(app: FastAPI) -> None:
    """Every failure becomes a problem document with a stable code."""
    app.add_exception_handler(WalletError, _wallet_error)
    app.add_exception_handler(RequestValidationError, _request_validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
