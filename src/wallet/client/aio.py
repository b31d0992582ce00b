"""The async client: the same calls as the sync one, awaited."""

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx

from wallet.client.calls import RETRIED_STATUSES, Base, Call, Calls, T, delay_s, request_args
from wallet.client.results import Balance, Event, Hold, Transaction, User


class AsyncClient(Base):
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
                response = await self.http.request(**request_args(call, key))
                if response.status_code not in RETRIED_STATUSES or attempt == self.retries:
                    return self._answer(call, response)
            except (httpx.TimeoutException, httpx.TransportError):
                if attempt == self.retries:
                    raise
            await asyncio.sleep(delay_s(attempt, response))
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
        return await self.run(Calls.movement("/v1/topups", user_id, asset, amount, idempotency_key, extra))

    async def bonus(
        self, user_id: str, asset: str, amount: int, *, idempotency_key: str | None = None, **extra: Any
    ) -> Transaction:
        return await self.run(Calls.movement("/v1/bonuses", user_id, asset, amount, idempotency_key, extra))

    async def purchase(
        self, user_id: str, asset: str, amount: int, *, idempotency_key: str | None = None, **extra: Any
    ) -> Transaction:
        return await self.run(Calls.movement("/v1/purchases", user_id, asset, amount, idempotency_key, extra))

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
        return await self.run(Calls.transfer(from_user_id, to_user_id, asset, amount, idempotency_key, extra))

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
