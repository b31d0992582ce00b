"""The client's exceptions: `WalletProblem`, and one subclass per problem code of the API (errors.CODES; a test
checks that they agree)."""

from typing import Any

import httpx


class WalletProblem(Exception):
    """A problem document the service answered with (RFC 9457): `status`, `code`, `detail`, and the whole document."""

    code = ""

    def __init__(self, status: int, document: dict[str, Any]) -> None:
        self.status = status
        self.document = document
        self.detail = str(document.get("detail", ""))
        super().__init__(f"{status} {document.get('code', '')}: {self.detail}")


class IdempotencyKeyMissing(WalletProblem):
    code = "idempotency_key_missing"


class IdempotencyKeyInvalid(WalletProblem):
    code = "idempotency_key_invalid"


class Unauthenticated(WalletProblem):
    code = "unauthenticated"


class Forbidden(WalletProblem):
    code = "forbidden"


class NotFound(WalletProblem):
    code = "not_found"


class UserNotFound(WalletProblem):
    code = "user_not_found"


class AssetNotFound(WalletProblem):
    code = "asset_not_found"


class TransactionNotFound(WalletProblem):
    code = "transaction_not_found"


class HoldNotFound(WalletProblem):
    code = "hold_not_found"


class WebhookNotFound(WalletProblem):
    code = "webhook_not_found"


class MethodNotAllowed(WalletProblem):
    code = "method_not_allowed"


class InsufficientFunds(WalletProblem):
    code = "insufficient_funds"


class BalanceLimitExceeded(WalletProblem):
    code = "balance_limit_exceeded"


class SupplyLimitExceeded(WalletProblem):
    code = "supply_limit_exceeded"


class HoldNotActive(WalletProblem):
    code = "hold_not_active"


class HoldExpired(WalletProblem):
    code = "hold_expired"


class AccountFrozen(WalletProblem):
    code = "account_frozen"


class RefundExceedsOriginal(WalletProblem):
    code = "refund_exceeds_original"


class NotRefundable(WalletProblem):
    code = "not_refundable"


class TransfersDisabled(WalletProblem):
    code = "transfers_disabled"


class AssetScaleImmutable(WalletProblem):
    code = "asset_scale_immutable"


class PayloadTooLarge(WalletProblem):
    code = "payload_too_large"


class ValidationError(WalletProblem):
    code = "validation_error"


class IdempotencyKeyReused(WalletProblem):
    code = "idempotency_key_reused"


class BatchAborted(WalletProblem):
    code = "batch_aborted"


class RateLimited(WalletProblem):
    code = "rate_limited"


class InternalError(WalletProblem):
    code = "internal_error"


class Unavailable(WalletProblem):
    code = "unavailable"


PROBLEMS: dict[str, type[WalletProblem]] = {cls.code: cls for cls in WalletProblem.__subclasses__()}
"""The exception class of each problem code."""


def problem(response: httpx.Response) -> WalletProblem:
    try:
        document = response.json()
    except ValueError:
        document = {"detail": response.text[:500]}
    if not isinstance(document, dict):
        document = {"detail": str(document)[:500]}
    cls = PROBLEMS.get(str(document.get("code")), WalletProblem)
    return cls(response.status_code, document)
