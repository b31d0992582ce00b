"""The public error codes, their titles and statuses, and the one place that maps database errors to them."""

from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg

PROBLEM_TYPE_BASE = "https://wallet.example/problems/"
PROBLEM_MEDIA_TYPE = "application/problem+json"
_RETRY = "Retry with the same Idempotency-Key: it never applies twice."

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
    "hold_not_found": (404, "Hold not found"),
    "webhook_not_found": (404, "Webhook not found"),
    "method_not_allowed": (405, "Method not allowed"),
    "insufficient_funds": (409, "Insufficient funds"),
    "balance_limit_exceeded": (409, "Balance limit exceeded"),
    "supply_limit_exceeded": (409, "Supply limit exceeded"),
    "hold_not_active": (409, "Hold not active"),
    "hold_expired": (409, "Hold expired"),
    "account_frozen": (409, "Account frozen"),
    "refund_exceeds_original": (409, "Refund exceeds the original"),
    "not_refundable": (409, "Not refundable"),
    "transfers_disabled": (409, "Transfers disabled"),
    "asset_scale_immutable": (409, "Asset scale cannot change"),
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


class MethodNotAllowed(WalletError):
    """The path exists, not with this method; the Allow header lists those it has."""

    code = "method_not_allowed"


class UserNotFound(WalletError):
    """The user does not exist."""

    code = "user_not_found"


class AssetNotFound(WalletError):
    """The asset does not exist."""

    code = "asset_not_found"


class TransactionNotFound(WalletError):
    """No transaction has this id."""

    code = "transaction_not_found"


class HoldNotFound(WalletError):
    """No hold has this id."""

    code = "hold_not_found"


class WebhookNotFound(WalletError):
    """No webhook endpoint has this id (or it was deleted)."""

    code = "webhook_not_found"


class AssetScaleImmutable(WalletError):
    """A PUT of an existing asset asked for another scale: amounts already posted are in the scale it has."""

    code = "asset_scale_immutable"


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


class OutcomeUnknown(Unavailable):
    """The connection broke after the request was sent and did not come back in time: it may have committed."""

    def __init__(self) -> None:
        super().__init__(
            "The database connection broke and did not come back in time; the request may have been written. " + _RETRY,
            headers={"Retry-After": "1"},
        )


class InternalError(WalletError):
    """A bug: an invariant of the ledger was about to break, and the write was refused."""

    code = "internal_error"


# SQLSTATEs by what they mean for the caller (TimeoutError is an OSError, so DATABASE_ERRORS covers it).
_CONNECTION_LOST_SQLSTATE_PREFIXES = ("08", "57P")  # connection exception; admin/crash shutdown, cannot connect now
_TIMEOUT_SQLSTATES = {"55P03", "57014"}  # lock_not_available (lock_timeout), query_canceled (statement_timeout)
_NOT_READY_SQLSTATES = {"42P01", "42883", "53300"}  # schema not migrated yet; too many connections
_CONFLICT_SQLSTATES = {"40001", "40P01"}  # serialization failure, deadlock: the transaction was rolled back
# A request that raced another with the same idempotency key: its record lost on the primary key when the other
# committed, which rolled it back whole. Run again, it replays the other's outcome.
_KEY_RACE = ("23505", "idempotency_keys_pkey")

# What the driver raises when the database fails, is unreachable, or the connection breaks.
DATABASE_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError)


class NotSent(Exception):
    """The work never reached the database: no connection could be had. Nothing was written."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(type(cause).__name__)
        self.cause = cause


def is_outcome_unknown(exc: BaseException) -> bool:
    """Sent, then no answer: the connection broke, the server went down, or the answer did not come in time.
    The work may have committed."""
    sqlstate = getattr(exc, "sqlstate", None)
    if isinstance(sqlstate, str):
        return sqlstate.startswith(_CONNECTION_LOST_SQLSTATE_PREFIXES)
    return isinstance(exc, OSError | asyncpg.InterfaceError | asyncpg.InternalClientError)  # TimeoutError included


def is_conflict(exc: BaseException) -> bool:
    """A serialization failure, a deadlock, or a lost race for an idempotency key: the transaction was rolled back
    and may simply run again."""
    sqlstate = getattr(exc, "sqlstate", None)
    return sqlstate in _CONFLICT_SQLSTATES or (sqlstate, getattr(exc, "constraint_name", None)) == _KEY_RACE


def from_database(exc: BaseException) -> WalletError:
    """Maps a driver or server error to the public error it stands for. The SQL text never leaves here."""
    if isinstance(exc, WalletError):
        return exc
    retry_later = {"Retry-After": "1"}
    sqlstate = getattr(exc, "sqlstate", None)
    if isinstance(exc, NotSent):
        if isinstance(exc.cause, TimeoutError):
            return Unavailable(
                f"No database connection could be had in time (the database is slow, unreachable, or every"
                f" connection is busy); nothing was written. {_RETRY}",
                headers=retry_later,
            )
        return Unavailable(f"The database cannot be reached; nothing was written. {_RETRY}", headers=retry_later)
    if is_outcome_unknown(exc):
        return OutcomeUnknown()
    if sqlstate in _TIMEOUT_SQLSTATES:
        return Unavailable(f"The database did not answer in time; nothing was written. {_RETRY}", headers=retry_later)
    if sqlstate in _NOT_READY_SQLSTATES or (isinstance(sqlstate, str) and sqlstate.startswith("53")):
        return Unavailable(f"The database is not ready; nothing was written. {_RETRY}", headers=retry_later)
    if is_conflict(exc):
        return Unavailable(
            f"The write kept conflicting with others; nothing was written. {_RETRY}", headers=retry_later
        )
    if isinstance(sqlstate, str):
        return InternalError(f"Unexpected database error (SQLSTATE {sqlstate}); nothing was written.")
    return InternalError("Unexpected error; nothing was written.")
