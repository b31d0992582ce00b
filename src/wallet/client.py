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

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import httpx

T = TypeVar("T")
RETRIED_STATUSES = frozenset({429, 503})


# --- problems ---------------------------------------------------------------------------------------------------


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


# --- results ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Entry:
    account: str
    asset: str
    amount: int


@dataclass(frozen=True, slots=True)
class Transaction:
    id: str
    type: str
    user_id: str | None
    asset: str
    amount: int
    balance_after: int | None
    description: str | None
    metadata: dict[str, Any]
    entries: list[Entry]
    rewards: list[dict[str, Any]]
    refund_of: str | None
    hold_id: str | None
    created_at: str
    to_user_id: str | None = None
    to_balance_after: int | None = None

    @classmethod
    def of(cls, d: dict[str, Any]) -> "Transaction":
        return cls(
            d["id"], d["type"], d.get("user_id"), d["asset"], d["amount"], d.get("balance_after"), d.get("description"),
            d.get("metadata") or {}, [Entry(**e) for e in d.get("entries", [])], d.get("rewards") or [],
            d.get("refund_of"), d.get("hold_id"), d["created_at"], d.get("to_user_id"), d.get("to_balance_after"),
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Lot:
    amount: int
    expires_at: str


@dataclass(frozen=True, slots=True)
class Balance:
    asset: str
    balance: int
    held: int | None = None
    available: int | None = None
    expiring: list[Lot] | None = None

    @classmethod
    def of(cls, d: dict[str, Any]) -> "Balance":
        expiring = [Lot(**lot) for lot in d["expiring"]] if d.get("expiring") is not None else None
        return cls(d["asset"], d["balance"], d.get("held"), d.get("available"), expiring)


@dataclass(frozen=True, slots=True)
class Hold:
    id: str
    status: str
    user_id: str
    asset: str
    amount: int
    captured_amount: int | None
    expires_at: str
    transaction_id: str | None
    created_at: str
    resolved_at: str | None
    description: str | None
    metadata: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, d: dict[str, Any]) -> "Hold":
        fields: dict[str, Any] = {name: d.get(name) for name in cls.__dataclass_fields__}
        return cls(**fields)


@dataclass(frozen=True, slots=True)
class User:
    user_id: str
    display_name: str | None
    status: str
    frozen_reason: str | None
    frozen_at: str | None
    created_at: str

    @classmethod
    def of(cls, d: dict[str, Any]) -> "User":
        fields: dict[str, Any] = {name: d.get(name) for name in cls.__dataclass_fields__}
        return cls(**fields)


@dataclass(frozen=True, slots=True)
class Event:
    id: str
    type: str
    created_at: str
    data: dict[str, Any]

    @classmethod
    def of(cls, d: dict[str, Any]) -> "Event":
        return cls(d["id"], d["type"], d["created_at"], d["data"])


# --- calls ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One request: what to send, whether it needs an Idempotency-Key, and how to read the answer."""

    method: str
    path: str
    read: Callable[[Any], T]
    json: Any = None
    params: dict[str, Any] | None = None
    keyed: bool = False
    idempotency_key: str | None = None


def _movement(user_id: str, asset: str, amount: int, **extra: Any) -> dict[str, Any]:
    return {"user_id": user_id, "asset": asset, "amount": amount, **{k: v for k, v in extra.items() if v is not None}}


class Calls:
    """The API's calls, described once for both clients."""

    @staticmethod
    def create_user(user_id: str, display_name: str | None = None) -> Call[User]:
        body = {"display_name": display_name} if display_name is not None else None
        return Call("PUT", f"/v1/users/{user_id}", User.of, json=body)

    @staticmethod
    def user(user_id: str) -> Call[User]:
        return Call("GET", f"/v1/users/{user_id}", User.of)

    @staticmethod
    def freeze(user_id: str, reason: str) -> Call[User]:
        return Call("POST", f"/v1/users/{user_id}/freeze", User.of, json={"reason": reason})

    @staticmethod
    def unfreeze(user_id: str) -> Call[User]:
        return Call("POST", f"/v1/users/{user_id}/unfreeze", User.of, json={})

    @staticmethod
    def balances(user_id: str) -> Call[list[Balance]]:
        return Call("GET", f"/v1/users/{user_id}/balances", lambda d: [Balance.of(b) for b in d["balances"]])

    @staticmethod
    def balance(user_id: str, asset: str) -> Call[Balance]:
        return Call("GET", f"/v1/users/{user_id}/balances/{asset}", Balance.of)

    @staticmethod
    def movement(path: str, body: dict[str, Any], idempotency_key: str | None) -> Call[Transaction]:
        return Call("POST", path, Transaction.of, json=body, keyed=True, idempotency_key=idempotency_key)

    @staticmethod
    def hold(user_id: str, asset: str, amount: int, expires_in_s: int | None, key: str | None) -> Call[Hold]:
        body = _movement(user_id, asset, amount, expires_in_s=expires_in_s)
        return Call("POST", "/v1/holds", Hold.of, json=body, keyed=True, idempotency_key=key)

    @staticmethod
    def capture(hold_id: str, amount: int | None, key: str | None) -> Call[Transaction]:
        body = {"amount": amount} if amount is not None else {}
        return Call("POST", f"/v1/holds/{hold_id}/capture", Transaction.of, json=body, keyed=True, idempotency_key=key)

    @staticmethod
    def void(hold_id: str, key: str | None) -> Call[Hold]:
        return Call("POST", f"/v1/holds/{hold_id}/void", Hold.of, json={}, keyed=True, idempotency_key=key)

    @staticmethod
    def refund(transaction_id: str, reason: str, amount: int | None, key: str | None) -> Call[Transaction]:
        body = {"reason": reason, **({"amount": amount} if amount is not None else {})}
        path = f"/v1/transactions/{transaction_id}/refunds"
        return Call("POST", path, Transaction.of, json=body, keyed=True, idempotency_key=key)

    @staticmethod
    def transaction(transaction_id: str) -> Call[Transaction]:
        return Call("GET", f"/v1/transactions/{transaction_id}", Transaction.of)

    @staticmethod
    def history_page(user_id: str, asset: str | None, limit: int, cursor: str | None) -> Call[dict[str, Any]]:
        params = {"limit": limit, **({"asset": asset} if asset else {}), **({"cursor": cursor} if cursor else {})}
        return Call("GET", f"/v1/users/{user_id}/transactions", dict, params=params)

    @staticmethod
    def events_page(after: str | None, types: list[str] | None, limit: int) -> Call[dict[str, Any]]:
        params = {
            "limit": limit,
            **({"after": after} if after else {}),
            **({"types": ",".join(types)} if types else {}),
        }
        return Call("GET", "/v1/events", dict, params=params)


def _request_args(call: Call[Any], key: str | None) -> dict[str, Any]:
    headers = {"Idempotency-Key": key} if key else {}
    return {"method": call.method, "url": call.path, "json": call.json, "params": call.params, "headers": headers}


def _delay_s(attempt: int, response: httpx.Response | None) -> float:
    after = response.headers.get("Retry-After") if response is not None else None
    if after and after.isdigit():
        return min(float(after), 10.0)
    return float(min(0.1 * 2**attempt, 5.0))


class _Base:
    def __init__(self, retries: int) -> None:
        self.retries = retries

    @staticmethod
    def _key(call: Call[Any]) -> str | None:
        return (call.idempotency_key or f"py-{uuid.uuid4()}") if call.keyed else None

    @staticmethod
    def _answer(call: Call[T], response: httpx.Response) -> T:
        if response.status_code >= 400:
            raise problem(response)
        return call.read(response.json())


class Client(_Base):
    """The sync client. `retries`: further attempts of a call, with its same Idempotency-Key, after a 503, a 429, a
    timeout or a broken connection."""

    def __init__(self, base_url: str, api_key: str, *, timeout_s: float = 10.0, retries: int = 3) -> None:
        super().__init__(retries)
        headers = {"Authorization": f"Bearer {api_key}"}
        self.http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout_s)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def run(self, call: Call[T]) -> T:
        key = self._key(call)
        for attempt in range(self.retries + 1):
            response = None
            try:
                response = self.http.request(**_request_args(call, key))
                if response.status_code not in RETRIED_STATUSES or attempt == self.retries:
                    return self._answer(call, response)
            except (httpx.TimeoutException, httpx.TransportError):
                if attempt == self.retries:
                    raise
            time.sleep(_delay_s(attempt, response))
        raise AssertionError("unreachable")

    def create_user(self, user_id: str, display_name: str | None = None) -> User:
        return self.run(Calls.create_user(user_id, display_name))

    def user(self, user_id: str) -> User:
        return self.run(Calls.user(user_id))

    def freeze(self, user_id: str, reason: str) -> User:
        return self.run(Calls.freeze(user_id, reason))

    def unfreeze(self, user_id: str) -> User:
        return self.run(Calls.unfreeze(user_id))

    def balances(self, user_id: str) -> list[Balance]:
        return self.run(Calls.balances(user_id))

    def balance(self, user_id: str, asset: str) -> Balance:
        return self.run(Calls.balance(user_id, asset))

    def topup(
        self, user_id: str, asset: str, amount: int, *, idempotency_key: str | None = None, **extra: Any
    ) -> Transaction:
        return self.run(Calls.movement("/v1/topups", _movement(user_id, asset, amount, **extra), idempotency_key))

    def bonus(
        self, user_id: str, asset: str, amount: int, *, idempotency_key: str | None = None, **extra: Any
    ) -> Transaction:
        return self.run(Calls.movement("/v1/bonuses", _movement(user_id, asset, amount, **extra), idempotency_key))

    def purchase(
        self, user_id: str, asset: str, amount: int, *, idempotency_key: str | None = None, **extra: Any
    ) -> Transaction:
        return self.run(Calls.movement("/v1/purchases", _movement(user_id, asset, amount, **extra), idempotency_key))

    def transfer(
        self,
        from_user_id: str,
        to_user_id: str,
        asset: str,
        amount: int,
        *,
        idempotency_key: str | None = None,
        **extra: Any,
    ) -> Transaction:
        body = {"from_user_id": from_user_id, "to_user_id": to_user_id, "asset": asset, "amount": amount, **extra}
        return self.run(Calls.movement("/v1/transfers", body, idempotency_key))

    def hold(
        self,
        user_id: str,
        asset: str,
        amount: int,
        *,
        expires_in_s: int | None = None,
        idempotency_key: str | None = None,
    ) -> Hold:
        return self.run(Calls.hold(user_id, asset, amount, expires_in_s, idempotency_key))

    def capture(self, hold_id: str, amount: int | None = None, *, idempotency_key: str | None = None) -> Transaction:
        return self.run(Calls.capture(hold_id, amount, idempotency_key))

    def void(self, hold_id: str, *, idempotency_key: str | None = None) -> Hold:
        return self.run(Calls.void(hold_id, idempotency_key))

    def refund(
        self, transaction_id: str, reason: str, amount: int | None = None, *, idempotency_key: str | None = None
    ) -> Transaction:
        return self.run(Calls.refund(transaction_id, reason, amount, idempotency_key))

    def transaction(self, transaction_id: str) -> Transaction:
        return self.run(Calls.transaction(transaction_id))

    def history(self, user_id: str, asset: str | None = None, page_size: int = 50) -> Iterator[Transaction]:
        """Every transaction of the user, newest first, page after page."""
        cursor = None
        while True:
            page = self.run(Calls.history_page(user_id, asset, page_size, cursor))
            yield from (Transaction.of(item) for item in page["items"])
            cursor = page["next_cursor"]
            if cursor is None:
                return

    def events(
        self, after: str | None = None, types: list[str] | None = None, limit: int = 200
    ) -> tuple[list[Event], str]:
        """One page of the event feed after `after`, and the cursor to ask from next."""
        page = self.run(Calls.events_page(after, types, limit))
        return [Event.of(item) for item in page["items"]], str(page["next_cursor"])


class AsyncClient(_Base):
    """The async client: the same calls as `Client`, awaited."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout_s: float = 10.0,
        retries: int = 3,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(retries)
        headers = {"Authorization": f"Bearer {api_key}"}
        self.http = httpx.AsyncClient(base_url=base_url, headers=headers, timeout=timeout_s, transport=transport)

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.http.aclose()

    async def run(self, call: Call[T]) -> T:
        key = self._key(call)
        for attempt in range(self.retries + 1):
            response = None
            try:
                response = await self.http.request(**_request_args(call, key))
                if response.status_code not in RETRIED_STATUSES or attempt == self.retries:
                    return self._answer(call, response)
            except (httpx.TimeoutException, httpx.TransportError):
                if attempt == self.retries:
                    raise
            await asyncio.sleep(_delay_s(attempt, response))
        raise AssertionError("unreachable")

    async def create_user(self, user_id: str, display_name: str | None = None) -> User:
        return await self.run(Calls.create_user(user_id, display_name))

    async def user(self, user_id: str) -> User:
        return await self.run(Calls.user(user_id))

    async def freeze(self, user_id: str, reason: str) -> User:
        return await self.run(Calls.freeze(user_id, reason))

    async def unfreeze(self, user_id: str) -> User:
        return await self.run(Calls.unfreeze(user_id))

    async def balances(self, user_id: str) -> list[Balance]:
        return await self.run(Calls.balances(user_id))

    async def balance(self, user_id: str, asset: str) -> Balance:
        return await self.run(Calls.balance(user_id, asset))

    async def topup(
        self, user_id: str, asset: str, amount: int, *, idempotency_key: str | None = None, **extra: Any
    ) -> Transaction:
        return await self.run(Calls.movement("/v1/topups", _movement(user_id, asset, amount, **extra), idempotency_key))

    async def bonus(
        self, user_id: str, asset: str, amount: int, *, idempotency_key: str | None = None, **extra: Any
    ) -> Transaction:
        return await self.run(
            Calls.movement("/v1/bonuses", _movement(user_id, asset, amount, **extra), idempotency_key)
        )

    async def purchase(
        self, user_id: str, asset: str, amount: int, *, idempotency_key: str | None = None, **extra: Any
    ) -> Transaction:
        return await self.run(
            Calls.movement("/v1/purchases", _movement(user_id, asset, amount, **extra), idempotency_key)
        )

    async def transfer(
        self,
        from_user_id: str,
        to_user_id: str,
        asset: str,
        amount: int,
        *,
        idempotency_key: str | None = None,
        **extra: Any,
    ) -> Transaction:
        body = {"from_user_id": from_user_id, "to_user_id": to_user_id, "asset": asset, "amount": amount, **extra}
        return await self.run(Calls.movement("/v1/transfers", body, idempotency_key))

    async def hold(
        self,
        user_id: str,
        asset: str,
        amount: int,
        *,
        expires_in_s: int | None = None,
        idempotency_key: str | None = None,
    ) -> Hold:
        return await self.run(Calls.hold(user_id, asset, amount, expires_in_s, idempotency_key))

    async def capture(
        self, hold_id: str, amount: int | None = None, *, idempotency_key: str | None = None
    ) -> Transaction:
        return await self.run(Calls.capture(hold_id, amount, idempotency_key))

    async def void(self, hold_id: str, *, idempotency_key: str | None = None) -> Hold:
        return await self.run(Calls.void(hold_id, idempotency_key))

    async def refund(
        self, transaction_id: str, reason: str, amount: int | None = None, *, idempotency_key: str | None = None
    ) -> Transaction:
        return await self.run(Calls.refund(transaction_id, reason, amount, idempotency_key))

    async def transaction(self, transaction_id: str) -> Transaction:
        return await self.run(Calls.transaction(transaction_id))

    async def history(self, user_id: str, asset: str | None = None, page_size: int = 50) -> AsyncIterator[Transaction]:
        cursor = None
        while True:
            page = await self.run(Calls.history_page(user_id, asset, page_size, cursor))
            for item in page["items"]:
                yield Transaction.of(item)
            cursor = page["next_cursor"]
            if cursor is None:
                return

    async def events(
        self, after: str | None = None, types: list[str] | None = None, limit: int = 200
    ) -> tuple[list[Event], str]:
        page = await self.run(Calls.events_page(after, types, limit))
        return [Event.of(item) for item in page["items"]], str(page["next_cursor"])
