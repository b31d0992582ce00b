"""The Python client (wallet.client): the sync one against a real `wallet serve`, the async one in-process; typed
results, one exception per problem code, pages followed, and a call whose answer is lost retried with its same
Idempotency-Key, applied once."""

from typing import Any

import asyncpg
import httpx
import pytest

from tests.conftest import Keys
from tests.support import new_id
from wallet import client as wallet_client
from wallet.client import AsyncClient, Client, InsufficientFunds, Transaction, UserNotFound, WalletProblem
from wallet.config import Settings
from wallet.errors import CODES
from wallet.http.app import create_app


def test_every_problem_code_has_its_exception() -> None:
    assert set(wallet_client.PROBLEMS) == set(CODES)
    for code, cls in wallet_client.PROBLEMS.items():
        assert issubclass(cls, WalletProblem) and cls.code == code


def test_the_sync_client_against_a_real_server(server: str, api_keys: Keys) -> None:
    with Client(server, api_keys.secrets["admin"]) as wallet:
        user = wallet.create_user(new_id("cl"), "Client")
        assert (user.display_name, user.status) == ("Client", "active")
        top = wallet.topup(user.user_id, "GOLD", 100, description="Welcome", metadata={"order": 7})
        assert isinstance(top, Transaction) and (top.type, top.amount, top.balance_after) == ("topup", 100, 100)
        assert top.entries[0].account == f"user:{user.user_id}" and top.metadata == {"order": 7}
        with pytest.raises(InsufficientFunds) as refused:
            wallet.purchase(user.user_id, "GOLD", 500)
        assert refused.value.status == 409 and "less than the 500 requested" in refused.value.detail
        with pytest.raises(UserNotFound):
            wallet.balance(new_id("nobody"), "GOLD")
        bought = wallet.purchase(user.user_id, "GOLD", 30, idempotency_key="cl-" + user.user_id)
        again = wallet.purchase(user.user_id, "GOLD", 30, idempotency_key="cl-" + user.user_id)
        assert again == bought, "the same key replays the same transaction"
        hold = wallet.hold(user.user_id, "GOLD", 20, expires_in_s=60)
        captured = wallet.capture(hold.id, 15)
        assert (captured.hold_id, captured.amount) == (hold.id, 15)
        refund = wallet.refund(bought.id, "Not delivered", 10)
        assert refund.refund_of == bought.id
        balance = wallet.balance(user.user_id, "GOLD")
        assert (balance.balance, balance.held, balance.available) == (65, 0, 65)
        assert {b.asset for b in wallet.balances(user.user_id)} >= {"GOLD", "DIAMOND", "LOYALTY"}
        history = list(wallet.history(user.user_id, page_size=2))
        assert [tx.type for tx in history] == ["refund", "purchase", "purchase", "topup"]
        assert wallet.transaction(top.id) == top
        events, cursor = wallet.events(limit=5)
        assert len(events) == 5 and cursor.startswith("ev_")


class AnswerLost:
    """An ASGI wrapper: the first POST reaches the app (and applies), but its answer is replaced by a 503, as when a
    proxy times out after the service committed."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.lost = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or self.lost:
            await self.app(scope, receive, send)
            return
        self.lost += 1

        async def swallow(message: dict[str, Any]) -> None:
            pass

        await self.app(scope, receive, swallow)
        await send({"type": "http.response.start", "status": 503, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b'{"code": "unavailable", "detail": "proxy timeout"}'})


async def test_a_lost_answer_is_retried_with_the_same_key_and_applies_once(
    settings: Settings, db: asyncpg.Connection, api_keys: Keys
) -> None:
    app = create_app(settings)
    wrapper = AnswerLost(app)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=wrapper)
        async with AsyncClient("http://wallet.test", api_keys.secrets["admin"], transport=transport) as wallet:
            user = await wallet.create_user(new_id("cl"))
            assert wrapper.lost == 0  # a PUT
            tx = await wallet.topup(user.user_id, "GOLD", 40)
            assert wrapper.lost == 1
            count = await db.fetchval("SELECT count(*) FROM transactions WHERE user_id = $1", user.user_id)
            assert count == 1, "applied once, though sent twice"
            assert tx.balance_after == 40
            assert [t.id async for t in wallet.history(user.user_id)] == [tx.id]
            assert (await wallet.balance(user.user_id, "GOLD")).balance == 40
