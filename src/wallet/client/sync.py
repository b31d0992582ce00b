"""The sync client."""

import time
from collections.abc import Iterator
from typing import Any

import httpx

from wallet.client.calls import RETRIED_STATUSES, Base, Call, Calls, T, delay_s, request_args
from wallet.client.results import Balance, Event, Hold, Transaction, User


class Client(Base):
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
                response = self.http.request(**request_args(call, key))
                if response.status_code not in RETRIED_STATUSES or attempt == self.retries:
                    return self._answer(call, response)
            except (httpx.TimeoutException, httpx.TransportError):
                if attempt == self.retries:
                    raise
            time.sleep(delay_s(attempt, response))
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
        return self.run(Calls.movement("/v1/topups", user_id, asset, amount, idempotency_key, extra))

    def bonus(
        self, user_id: str, asset: str, amount: int, *, idempotency_key: str | None = None, **extra: Any
    ) -> Transaction:
        return self.run(Calls.movement("/v1/bonuses", user_id, asset, amount, idempotency_key, extra))

    def purchase(
        self, user_id: str, asset: str, amount: int, *, idempotency_key: str | None = None, **extra: Any
    ) -> Transaction:
        return self.run(Calls.movement("/v1/purchases", user_id, asset, amount, idempotency_key, extra))

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
        return self.run(Calls.transfer(from_user_id, to_user_id, asset, amount, idempotency_key, extra))

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
