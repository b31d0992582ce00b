"""The API's calls, described once for both clients, and what the two share: the request each sends, when a
call is tried again, and how an answer becomes a result or an exception."""

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import httpx

from wallet.client.problems import problem
from wallet.client.results import Balance, Hold, Transaction, User

T = TypeVar("T")
RETRIED_STATUSES = frozenset({429, 503})


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


def movement_body(user_id: str, asset: str, amount: int, **extra: Any) -> dict[str, Any]:
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
    def movement(
        path: str, user_id: str, asset: str, amount: int, key: str | None, extra: dict[str, Any]
    ) -> Call[Transaction]:
        body = movement_body(user_id, asset, amount, **extra)
        return Call("POST", path, Transaction.of, json=body, keyed=True, idempotency_key=key)

    @staticmethod
    def transfer(
        from_user_id: str, to_user_id: str, asset: str, amount: int, key: str | None, extra: dict[str, Any]
    ) -> Call[Transaction]:
        body = {"from_user_id": from_user_id, "to_user_id": to_user_id, "asset": asset, "amount": amount, **extra}
        return Call("POST", "/v1/transfers", Transaction.of, json=body, keyed=True, idempotency_key=key)

    @staticmethod
    def hold(user_id: str, asset: str, amount: int, expires_in_s: int | None, key: str | None) -> Call[Hold]:
        body = movement_body(user_id, asset, amount, expires_in_s=expires_in_s)
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


def request_args(call: Call[Any], key: str | None) -> dict[str, Any]:
    headers = {"Idempotency-Key": key} if key else {}
    return {"method": call.method, "url": call.path, "json": call.json, "params": call.params, "headers": headers}


def delay_s(attempt: int, response: httpx.Response | None) -> float:
    after = response.headers.get("Retry-After") if response is not None else None
    if after and after.isdigit():
        return min(float(after), 10.0)
    return float(min(0.1 * 2**attempt, 5.0))


class Base:
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
