"""Frozen users (spec/API.md, v1.1 "Frozen users"): while frozen, nothing can be taken from the user (purchases,
holds, captures, reversals: 409 account_frozen, nothing written); credits still apply; unfreezing restores. A
freeze is ordered with the debits in flight by the account locks: no debit commits after the freeze."""

import asyncio
from typing import Any

import asyncpg
import httpx
import pytest

from tests.conftest import Keys
from tests.support import (
    TIMESTAMP,
    assert_problem,
    assert_validation_error,
    create_user,
    idem,
    ledger_counts,
    move,
    post,
)


def freeze(client: httpx.AsyncClient, keys_: Keys, user_id: str, reason: str = "Chargeback review") -> Any:
    return client.post(f"/v1/users/{user_id}/freeze", json={"reason": reason}, headers=keys_.headers("admin"))


def unfreeze(client: httpx.AsyncClient, keys_: Keys, user_id: str) -> Any:
    return client.post(f"/v1/users/{user_id}/unfreeze", json={}, headers=keys_.headers("admin"))


def purchase(client: httpx.AsyncClient, keys_: Keys, user_id: str, amount: int, **extra: Any) -> Any:
    body = {"user_id": user_id, "asset": "GOLD", "amount": amount, **extra}
    return post(client, keys_, "/v1/purchases", body, idem(), scope="purchase")


async def test_freeze_and_unfreeze_show_on_the_user(client: httpx.AsyncClient, api_keys: Keys) -> None:
    user_id = await create_user(client, api_keys, display_name="Fay")
    read = api_keys.headers("read")
    active = (await client.get(f"/v1/users/{user_id}", headers=read)).json()
    assert (active["status"], active["frozen_reason"], active["frozen_at"]) == ("active", None, None)

    response = await freeze(client, api_keys, user_id, "Suspected fraud")
    assert response.status_code == 200, response.text
    frozen = response.json()
    assert (frozen["user_id"], frozen["display_name"], frozen["status"]) == (user_id, "Fay", "frozen")
    assert frozen["frozen_reason"] == "Suspected fraud"
    assert TIMESTAMP.fullmatch(frozen["frozen_at"])
    assert (await client.get(f"/v1/users/{user_id}", headers=read)).json() == frozen

    again = (await freeze(client, api_keys, user_id, "Confirmed fraud")).json()
    assert (again["frozen_reason"], again["frozen_at"]) == ("Confirmed fraud", frozen["frozen_at"])

    response = await unfreeze(client, api_keys, user_id)
    assert response.status_code == 200, response.text
    assert {k: response.json()[k] for k in ("status", "frozen_reason", "frozen_at")} == {
        "status": "active",
        "frozen_reason": None,
        "frozen_at": None,
    }
    no_body = await client.post(f"/v1/users/{user_id}/unfreeze", headers=api_keys.headers("admin"))
    assert no_body.status_code == 200, no_body.text


@pytest.mark.parametrize("body", [{}, {"reason": ""}, {"reason": "x" * 501}, {"reason": 7}, {"reason": "a", "b": 1}])
async def test_a_freeze_needs_a_reason(client: httpx.AsyncClient, api_keys: Keys, body: dict[str, Any]) -> None:
    user_id = await create_user(client, api_keys)
    response = await client.post(f"/v1/users/{user_id}/freeze", json=body, headers=api_keys.headers("admin"))
    assert_validation_error(response)
    assert (await client.get(f"/v1/users/{user_id}", headers=api_keys.headers("read"))).json()["status"] == "active"


async def test_freezing_takes_the_admin_scope_and_a_known_user(client: httpx.AsyncClient, api_keys: Keys) -> None:
    user_id = await create_user(client, api_keys)
    for scope in ("read", "topup", "bonus", "purchase"):
        response = await client.post(
            f"/v1/users/{user_id}/freeze", json={"reason": "r"}, headers=api_keys.headers(scope)
        )
        assert_problem(response, 403, "forbidden")
        assert_problem(
            await client.post(f"/v1/users/{user_id}/unfreeze", json={}, headers=api_keys.headers(scope)),
            403,
            "forbidden",
        )
    assert_problem(await freeze(client, api_keys, "nobody-here-at-all"), 404, "user_not_found")
    assert_problem(await unfreeze(client, api_keys, "nobody-here-at-all"), 404, "user_not_found")
    assert_problem(
        await client.post(f"/v1/users/{user_id}/unfreeze", json={"x": 1}, headers=api_keys.headers("admin")),
        422,
        "validation_error",
    )


async def test_a_frozen_user_can_be_paid_but_not_charged(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection
) -> None:
    user_id = await create_user(client, api_keys)
    await move(client, api_keys, "topup", user_id, 100)
    kept = await post(
        client, api_keys, "/v1/holds", {"user_id": user_id, "asset": "GOLD", "amount": 10}, idem(), scope="purchase"
    )
    released = await post(
        client, api_keys, "/v1/holds", {"user_id": user_id, "asset": "GOLD", "amount": 5}, idem(), scope="purchase"
    )
    assert kept.status_code == released.status_code == 201
    assert (await freeze(client, api_keys, user_id)).status_code == 200
    before = await ledger_counts(db, user_id)

    problem = assert_problem(await purchase(client, api_keys, user_id, 1), 409, "account_frozen")
    assert user_id in problem["detail"]
    hold = {"user_id": user_id, "asset": "GOLD", "amount": 1}
    assert_problem(await post(client, api_keys, "/v1/holds", hold, idem(), scope="purchase"), 409, "account_frozen")
    capture = await post(client, api_keys, f"/v1/holds/{kept.json()['id']}/capture", {}, idem(), scope="purchase")
    assert_problem(capture, 409, "account_frozen")
    operation = {"type": "purchase", "user_id": user_id, "asset": "GOLD", "amount": 1, "idempotency_key": idem()}
    batch = await client.post("/v1/batch", json={"operations": [operation]}, headers=api_keys.headers("purchase"))
    assert batch.json()["results"][0]["problem"]["code"] == "account_frozen"
    assert await ledger_counts(db, user_id) == before

    # Credits apply, and a void gives back what a hold reserved.
    await move(client, api_keys, "topup", user_id, 7)
    await move(client, api_keys, "bonus", user_id, 3)
    voided = await post(client, api_keys, f"/v1/holds/{released.json()['id']}/void", {}, idem(), scope="purchase")
    assert voided.status_code == 200, voided.text
    balance = (await client.get(f"/v1/users/{user_id}/balances/GOLD", headers=api_keys.headers("read"))).json()
    assert (balance["balance"], balance["held"], balance["available"]) == (110, 10, 100)

    assert (await unfreeze(client, api_keys, user_id)).status_code == 200
    assert (await purchase(client, api_keys, user_id, 1)).status_code == 201
    capture = await post(client, api_keys, f"/v1/holds/{kept.json()['id']}/capture", {}, idem(), scope="purchase")
    assert capture.status_code == 201, capture.text


async def test_a_failed_debit_of_a_frozen_user_replays_as_frozen_after_the_unfreeze(
    client: httpx.AsyncClient, api_keys: Keys
) -> None:
    """The refusal is recorded under the key like any other business error: the same request replays it."""
    user_id = await create_user(client, api_keys)
    await move(client, api_keys, "topup", user_id, 10)
    await freeze(client, api_keys, user_id)
    key = idem()
    body = {"user_id": user_id, "asset": "GOLD", "amount": 1}
    assert_problem(await post(client, api_keys, "/v1/purchases", body, key), 409, "account_frozen")
    await unfreeze(client, api_keys, user_id)
    replay = await post(client, api_keys, "/v1/purchases", body, key)
    assert_problem(replay, 409, "account_frozen")
    assert replay.headers["idempotent-replayed"] == "true"


async def test_no_debit_commits_after_the_freeze(
    http: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection
) -> None:
    """Purchases stream in while the user is frozen: those that went through all applied before the freeze (their
    created_at, taken under the account's lock, is earlier than the freeze's, taken under the same lock), the
    others were refused as frozen, and every one sent after the freeze answered is refused."""
    user_id = await create_user(http, api_keys)
    await move(http, api_keys, "topup", user_id, 1000)
    started, frozen = asyncio.Event(), asyncio.Event()
    successes = 0

    async def buyer() -> list[tuple[bool, httpx.Response]]:
        """Buys until three of its purchases were sent after the freeze answered (at most 100)."""
        nonlocal successes
        sent: list[tuple[bool, httpx.Response]] = []
        while len(sent) < 100 and sum(after for after, _ in sent) < 3:
            after_freeze = frozen.is_set()
            response = await purchase(http, api_keys, user_id, 1)
            sent.append((after_freeze, response))
            successes += response.status_code == 201
            if successes >= 20:
                started.set()
        return sent

    buyers = [asyncio.create_task(buyer()) for _ in range(8)]
    await asyncio.wait_for(started.wait(), 60)
    response = await freeze(http, api_keys, user_id)
    assert response.status_code == 200
    frozen.set()
    results = [result for task in buyers for result in await task]

    posted = [r.json() for _, r in results if r.status_code == 201]
    refused = [r.json()["code"] for _, r in results if r.status_code != 201]
    assert set(refused) <= {"account_frozen"}, refused
    assert posted and refused, "the freeze did not land among the purchases; nothing was tested"
    assert all(r.status_code == 409 for after, r in results if after)
    frozen_at = response.json()["frozen_at"]
    late = [tx["created_at"] for tx in posted if tx["created_at"] >= frozen_at]
    assert late == [], f"debits after the freeze at {frozen_at}: {late}"
    balance = await db.fetchval("SELECT balance FROM accounts WHERE name = $1 AND asset = 'GOLD'", f"user:{user_id}")
    assert balance == 1000 - len(posted)
