"""The public error codes, their titles and statuses, and the one place that maps database errors to them."""

from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg

PROBLEM_TYPE_BASE = "https://wallet.example/problems/"
PROBLEM_MEDIA_TYPE = "application/problem+json"

# code -> (status, title). Every user-facing title lives here.
CODES: dict[str, tuple[int, str]] = {
    "idempotency_key_missing": (400, "Idempotency-Key header required"),
    "idempotency_key_invalid": (400, "Idempotency-Key header malformed"),
    "unauthenticated": (401, "Authentication required"),
    "forbidden": (403, "Scope missing"),
    "not_found": (404, "Not found"),
    "user_not_found": (404, "User not found"),
    "asset_not_found": (404, "Asset not found"),
    "transaction_not_found": (404, "Transaction not found"),
    "method_not_allowed": (405, "Method not allowed"),
    "insufficient_funds": (409, "Insufficient funds"),
    "balance_limit_exceeded": (409, "Balance limit exceeded"),
    "idempotency_key_in_flight": (409, "Request with this key in flight"),
    "payload_too_large": (413, "Payload too large"),
    "validation_error": (422, "Invalid request"),
    "idempotency_key_reused": (422, "Idempotency-Key reused with another request"),
    "batch_aborted": (424, "Batch aborted"),
    "rate_limited": (429, "Too many requests"),
    "internal_error": (500, "Internal error"),
    "unavailable": (503, "Service unavailable"),
}


def problem(code: str, detail: str, **extra: Any) -> dict[str, Any]:
    """An RFC 9457 problem document for one of the CODES."""
    status, title = CODES[code]
    return {"type": PROBLEM_TYPE_BASE + code, "title": title, "status": status, "detail": detail, "code": code, **extra}


class WalletError(Exception):
    """A failure with a public code; the HTTP layer renders every one the same way."""

    code = "internal_error"

    def __init__(self, detail: str, *, headers: Mapping[str, str] | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = dict(headers or {})
        self.extra = extra

    @property
    def status(self) -> int:
        return CODES[self.code][0]

    def to_problem(self) -> dict[str, Any]:
        return problem(self.code, self.detail, **self.extra)


class IdempotencyKeyMissing(WalletError):
    """The Idempotency-Key header is absent on a money-moving request."""

    code = "idempotency_key_missing"


class IdempotencyKeyInvalid(WalletError):
    """The Idempotency-Key header is not 1 to 255 visible ASCII characters."""

    code = "idempotency_key_invalid"


class Unauthenticated(WalletError):
    """No API key, or one that is unknown or revoked."""

    code = "unauthenticated"


class Forbidden(WalletError):
    """The API key lacks the scope the route needs."""

    code = "forbidden"


class NotFound(WalletError):
    """No such route or resource."""

    code = "not_found"


class UserNotFound(WalletError):
    """The user does not exist."""

    code = "user_not_found"


class AssetNotFound(WalletError):
    """The asset does not exist."""

    code = "asset_not_found"


class TransactionNotFound(WalletError):
    """No transaction has this id."""

    code = "transaction_not_found"


class PayloadTooLarge(WalletError):
    """The request body is over the size limit."""

    code = "payload_too_large"


class ValidationFailed(WalletError):
    """The payload is malformed; `errors` lists the offending fields."""

    code = "validation_error"

    def __init__(self, detail: str, errors: Sequence[Mapping[str, Any]]) -> None:
        super().__init__(detail, errors=list(errors))


class IdempotencyKeyReused(WalletError):
    """The key was first used for another request."""

    code = "idempotency_key_reused"


class Unavailable(WalletError):
    """The database cannot be reached or did not answer in time; nothing was written."""

    code = "unavailable"


class InternalError(WalletError):
    """A bug: an invariant of the ledger was about to break, and the write was refused."""

    code = "internal_error"


# SQLSTATE classes and codes that mean "the database is not there or not answering in time".
_UNAVAILABLE_SQLSTATE_PREFIXES = ("08", "53", "57P")  # connection, resources, shutdown/cannot connect
_UNAVAILABLE_SQLSTATES = {"55P03", "57014"}  # lock_not_available (lock_timeout), query_canceled (timeout)
RETRYABLE_SQLSTATES = {"40001", "40P01"}  # serialization failure, deadlock

# What the driver raises when the database fails, is unreachable, or the connection breaks.
DATABASE_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError, TimeoutError)


def from_database(exc: BaseException) -> WalletError:
    """Maps a driver or server error to the public error it stands for. The SQL text never leaves here."""
    if isinstance(exc, WalletError):
        return exc
    sqlstate = getattr(exc, "sqlstate", None)
    if isinstance(sqlstate, str):
        if sqlstate in _UNAVAILABLE_SQLSTATES or sqlstate.startswith(_UNAVAILABLE_SQLSTATE_PREFIXES):
            return Unavailable(
                "The database did not answer in time; nothing was written. Retry later.", headers={"Retry-After": "1"}
            )
        if sqlstate in RETRYABLE_SQLSTATES:
            return Unavailable(
                "The write kept conflicting with others; nothing was written. Retry.", headers={"Retry-After": "1"}
            )
        return InternalError(f"Unexpected database error (SQLSTATE {sqlstate}); nothing was written.")
    if isinstance(exc, OSError | TimeoutError | asyncpg.InterfaceError | asyncpg.InternalClientError):
        return Unavailable(
            "The database cannot be reached; nothing was written. Retry later.", headers={"Retry-After": "1"}
        )
    return InternalError("Unexpected error; nothing was written.")
