"""A Python client of the wallet service, sync (`Client`) and async (`AsyncClient`).

    from wallet.client import Client, InsufficientFunds
    with Client("http://localhost:8000", api_key) as wallet:
        wallet.topup("alice", "GOLD", 100)
        try:
            wallet.purchase("alice", "GOLD", 500, description="Sword")
        except InsufficientFunds as problem:
            print(problem.detail)
        for tx in wallet.history("alice"):
            print(tx.id, tx.type, tx.amount, tx.balance_after)

Results are typed (dataclasses); every problem code of the API is an exception class (`WalletProblem` and one
subclass per code). Every money-moving call carries an `Idempotency-Key` (a new one per call unless given), and is
retried with that same key on a 503, a 429, a timeout or a broken connection: the service applies it at most once.
Pages are iterated by following `next_cursor`.
"""

from wallet.client.aio import AsyncClient
from wallet.client.problems import (
    PROBLEMS,
    AccountFrozen,
    AssetNotFound,
    AssetScaleImmutable,
    BalanceLimitExceeded,
    BatchAborted,
    Forbidden,
    HoldExpired,
    HoldNotActive,
    HoldNotFound,
    IdempotencyKeyInvalid,
    IdempotencyKeyMissing,
    IdempotencyKeyReused,
    InsufficientFunds,
    InternalError,
    MethodNotAllowed,
    NotFound,
    NotRefundable,
    PayloadTooLarge,
    RateLimited,
    RefundExceedsOriginal,
    SupplyLimitExceeded,
    TransactionNotFound,
    TransfersDisabled,
    Unauthenticated,
    Unavailable,
    UserNotFound,
    ValidationError,
    WalletProblem,
    WebhookNotFound,
    problem,
)
from wallet.client.results import Balance, Entry, Event, Hold, Lot, Transaction, User
from wallet.client.sync import Client

__all__ = [
    "PROBLEMS",
    "AccountFrozen",
    "AssetNotFound",
    "AssetScaleImmutable",
    "AsyncClient",
    "Balance",
    "BalanceLimitExceeded",
    "BatchAborted",
    "Client",
    "Entry",
    "Event",
    "Forbidden",
    "Hold",
    "HoldExpired",
    "HoldNotActive",
    "HoldNotFound",
    "IdempotencyKeyInvalid",
    "IdempotencyKeyMissing",
    "IdempotencyKeyReused",
    "InsufficientFunds",
    "InternalError",
    "Lot",
    "MethodNotAllowed",
    "NotFound",
    "NotRefundable",
    "PayloadTooLarge",
    "RateLimited",
    "RefundExceedsOriginal",
    "SupplyLimitExceeded",
    "Transaction",
    "TransactionNotFound",
    "TransfersDisabled",
    "Unauthenticated",
    "Unavailable",
    "User",
    "UserNotFound",
    "ValidationError",
    "WalletProblem",
    "WebhookNotFound",
    "problem",
]
