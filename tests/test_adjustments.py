"""Adjustments (spec/API.md, v1.1 "Adjustments"): an operator's correction, POST /v1/adjustments with 2..20 signed
entries on user and system accounts that sum to 0 per asset, admin only. In accounting terms: the transaction
posts exactly the entries sent, user balances never go below 0, a frozen user is adjusted all the same, and every
refusal writes nothing ("nothing" read in the database through the `db` fixture)."""

import asyncio
from collections import Counter
from typing import Any

import asyncpg
import httpx
import pytest

from tests.conftest import Keys
from tests.support import (
    assert_books_balance,
    assert_problem,
    assert_transaction,
    assert_validation_error,
    create_user,
    fresh_id,
    frozen,
    idem,
    ledger_counts,
    move,
    post,
    refund,
    stored_balance,
    stored_keys,
    user_balances,
)
from wallet.kinds import SYSTEM_ACCOUNTS

PATH = "/v1/adjustments"


def entry(account: str, amount: Any, asset: str = "GOLD") -> dict[str, Any]:
    return {"account": account, "asset": asset, "amount": amount}


def adjustment(*entries: dict[str, Any], reason: str = "Support ticket 4711", **extra: Any) -> dict[str, Any]:
    return {"reason": reason, "entries": list(entries), **extra}


def adjust(client: httpx.AsyncClient, keys: Keys, body: Any, key: str | None = None, scope: str = "admin") -> Any:
    """POST /v1/adjustments with a new key (or `key`); a coroutine of the response."""
    return post(client, keys, PATH, body, key or idem(), scope=scope)


async def funded_user(client: httpx.AsyncClient, keys: Keys, gold: int = 0, loyalty: int = 0) -> str:
    user_id = await create_user(client, keys, "adj")
    if gold:
        await move(client, keys, "topup", user_id, gold, "GOLD")
    if loyalty:
        await move(client, keys, "topup", user_id, loyalty, "LOYALTY")
    return user_id


async def books(db: asyncpg.Connection, *user_ids: str) -> dict[str, Any]:
    """What an adjustment among these users and the system accounts could change."""
    systems = await db.fetch("SELECT name, asset, balance FROM account_balances WHERE kind = 'system'")
    return {
        "counts": await ledger_counts(db, user_ids[0] if user_ids else ""),
        "users": {user_id: await user_balances(db, user_id) for user_id in user_ids},
        "systems": {(row["name"], row["asset"]): int(row["balance"]) for row in systems},
    }


# Posted -----------------------------------------------------------------------------------------------------------


async def test_adjustment_posts_the_entries_sent_balanced_in_two_assets(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection
) -> None:
    user_id = await funded_user(client, api_keys, loyalty=20)
    treasury_before = await stored_balance(db, "system:treasury", "GOLD")
    pool_before = await stored_balance(db, "system:bonus_pool", "LOYALTY")
    body = adjustment(
        entry(f"user:{user_id}", 50, "GOLD"),
        entry("system:treasury", -50, "GOLD"),
        entry(f"user:{user_id}", -5, "LOYALTY"),
        entry("system:bonus_pool", 5, "LOYALTY"),
        reason="Compensation for outage #12, minus the duplicate loyalty grant",
        metadata={"ticket": 12, "by": "ops"},
    )
    response = await adjust(client, api_keys, body)
    assert response.status_code == 201, response.text
    tx = response.json()
    assert_transaction(tx)
    assert tx["type"] == "adjustment"
    assert tx["user_id"] == user_id
    assert tx["entries"] == body["entries"]
    assert tx["description"] == body["reason"]
    assert tx["metadata"] == {"ticket": 12, "by": "ops"}
    assert tx["refund_of"] is None and tx["hold_id"] is None and tx["rewards"] == []

    assert await user_balances(db, user_id) == {"GOLD": 50, "LOYALTY": 15}
    assert await stored_balance(db, "system:treasury", "GOLD") == treasury_before - 50
    assert await stored_balance(db, "system:bonus_pool", "LOYALTY") == pool_before + 5

    fetched = await client.get(f"/v1/transactions/{tx['id']}", headers=api_keys.headers("read"))
    assert fetched.status_code == 200, fetched.text
    assert fetched.content == response.content
    history = await client.get(f"/v1/users/{user_id}/transactions", headers=api_keys.headers("read"))
    assert history.json()["items"][0] == tx
    await assert_books_balance(db)


async def test_user_id_is_null_with_no_user_or_with_two_users(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection
) -> None:
    # No user: treasury -> revenue (a correction between system accounts).
    revenue_before = await stored_balance(db, "system:revenue", "DIAMOND")
    response = await adjust(
        client, api_keys, adjustment(entry("system:treasury", -3, "DIAMOND"), entry("system:revenue", 3, "DIAMOND"))
    )
    assert response.status_code == 201, response.text
    assert_transaction(response.json())
    assert response.json()["user_id"] is None
    assert response.json()["balance_after"] is None
    assert await stored_balance(db, "system:revenue", "DIAMOND") == revenue_before + 3

    # Two users: credits moved from one to the other.
    giver = await funded_user(client, api_keys, gold=30)
    taker = await funded_user(client, api_keys)
    body = adjustment(entry(f"user:{giver}", -30), entry(f"user:{taker}", 30), reason="Wrong account credited")
    response = await adjust(client, api_keys, body)
    assert response.status_code == 201, response.text
    tx = response.json()
    assert_transaction(tx)
    assert tx["user_id"] is None
    assert tx["entries"] == body["entries"]
    assert (await user_balances(db, giver))["GOLD"] == 0
    assert (await user_balances(db, taker))["GOLD"] == 30
    # Both users see it in their history.
    for user_id in (giver, taker):
        page = await client.get(f"/v1/users/{user_id}/transactions", headers=api_keys.headers("read"))
        assert page.json()["items"][0]["id"] == tx["id"]


async def test_twenty_entries_are_accepted(client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection) -> None:
    users = [await funded_user(client, api_keys) for _ in range(10)]
    entries = [entry(f"user:{u}", n + 1) for n, u in enumerate(users)]
    entries += [entry(f"user:{u}", -(n + 1), "LOYALTY") for n, u in enumerate(users[:8])]
    entries.append(entry("system:treasury", -sum(range(1, 11))))
    entries.append(entry("system:bonus_pool", sum(range(1, 9)), "LOYALTY"))
    for n, user_id in enumerate(users[:8]):
        await move(client, api_keys, "topup", user_id, n + 1, "LOYALTY")
    assert len(entries) == 20
    response = await adjust(client, api_keys, adjustment(*entries))
    assert response.status_code == 201, response.text
    assert response.json()["entries"] == entries
    for n, user_id in enumerate(users):
        loyalty = {"LOYALTY": 0} if n < 8 else {}  # the others never had any: no account
        assert await user_balances(db, user_id) == {"GOLD": n + 1, **loyalty}


async def test_replay_is_byte_identical_and_a_changed_body_is_refused(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection
) -> None:
    user_id = await funded_user(client, api_keys)
    key = idem()
    body = adjustment(entry(f"user:{user_id}", 7), entry("system:treasury", -7))
    first = await adjust(client, api_keys, body, key)
    assert first.status_code == 201, first.text
    assert "idempotent-replayed" not in first.headers
    before = await books(db, user_id)

    again = await adjust(client, api_keys, body, key)
    assert again.status_code == 201, again.text
    assert again.headers.get("idempotent-replayed") == "true"
    assert again.content == first.content

    changed = adjustment(entry(f"user:{user_id}", 8), entry("system:treasury", -8))
    reused = await adjust(client, api_keys, changed, key)
    problem = assert_problem(reused, 422, "idempotency_key_reused")
    assert [d["field"] for d in problem["differences"]] == ["entries"], problem
    assert await books(db, user_id) == before


# Refused, nothing written ------------------------------------------------------------------------------------------


INVALID_BODIES: dict[str, tuple[Any, str | None]] = {
    # name: (body, with {u} for the user, a field the problem names)
    "one entry": ({"reason": "r", "entries": [entry("user:{u}", 1)]}, "entries"),
    "no entries": ({"reason": "r", "entries": []}, "entries"),
    "entries missing": ({"reason": "r"}, "entries"),
    "reason missing": ({"entries": [entry("user:{u}", 1), entry("system:treasury", -1)]}, "reason"),
    "reason empty": ({"reason": "", "entries": [entry("user:{u}", 1), entry("system:treasury", -1)]}, "reason"),
    "reason too long": (
        {"reason": "x" * 501, "entries": [entry("user:{u}", 1), entry("system:treasury", -1)]},
        "reason",
    ),
    "unbalanced": ({"reason": "r", "entries": [entry("user:{u}", 2), entry("system:treasury", -1)]}, None),
    "unbalanced in one of two assets": (
        {
            "reason": "r",
            "entries": [
                entry("user:{u}", 2),
                entry("system:treasury", -2),
                entry("user:{u}", 1, "LOYALTY"),
                entry("system:treasury", -2, "LOYALTY"),
            ],
        },
        None,
    ),
    "balanced across assets only": (
        {"reason": "r", "entries": [entry("user:{u}", 1, "GOLD"), entry("system:treasury", -1, "LOYALTY")]},
        None,
    ),
    "amount 0": (
        {"reason": "r", "entries": [entry("user:{u}", 0), entry("system:treasury", 0), entry("system:revenue", 0)]},
        "amount",
    ),
    "amount float": ({"reason": "r", "entries": [entry("user:{u}", 1.0), entry("system:treasury", -1.0)]}, "amount"),
    "amount string": ({"reason": "r", "entries": [entry("user:{u}", "1"), entry("system:treasury", "-1")]}, "amount"),
    "amount above 10^15": (
        {"reason": "r", "entries": [entry("user:{u}", 10**15 + 1), entry("system:treasury", -(10**15) - 1)]},
        "amount",
    ),
    "same account and asset twice": (
        {
            "reason": "r",
            "entries": [entry("user:{u}", 1), entry("user:{u}", 1), entry("system:treasury", -2)],
        },
        None,
    ),
    "account without a kind": ({"reason": "r", "entries": [entry("{u}", 1), entry("system:treasury", -1)]}, "account"),
    "system account in capitals": (
        {"reason": "r", "entries": [entry("user:{u}", 1), entry("system:TREASURY", -1)]},
        "account",
    ),
    "malformed asset": (
        {"reason": "r", "entries": [entry("user:{u}", 1, "gold"), entry("system:treasury", -1, "gold")]},
        "asset",
    ),
    "unknown field": (
        {"reason": "r", "entries": [entry("user:{u}", 1), entry("system:treasury", -1)], "user_id": "{u}"},
        "user_id",
    ),
    "unknown field in an entry": (
        {"reason": "r", "entries": [{**entry("user:{u}", 1), "memo": "x"}, entry("system:treasury", -1)]},
        "memo",
    ),
}


def _with_user(value: Any, user_id: str) -> Any:
    if isinstance(value, str):
        return value.replace("{u}", user_id)
    if isinstance(value, list):
        return [_with_user(v, user_id) for v in value]
    if isinstance(value, dict):
        return {k: _with_user(v, user_id) for k, v in value.items()}
    return value


@pytest.mark.parametrize("case", list(INVALID_BODIES))
async def test_invalid_adjustment_is_422_and_stores_nothing(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection, case: str
) -> None:
    user_id = await funded_user(client, api_keys, gold=10)
    body, field = INVALID_BODIES[case]
    key = idem()
    before = await books(db, user_id)
    response = await adjust(client, api_keys, _with_user(body, user_id), key)
    assert_validation_error(response, field)
    assert await books(db, user_id) == before
    assert await stored_keys(db, key) == 0

    # Nothing was stored under the key: it takes the corrected request.
    corrected = adjustment(entry(f"user:{user_id}", 1), entry("system:treasury", -1))
    response = await adjust(client, api_keys, corrected, key)
    assert response.status_code == 201, response.text
    assert "idempotent-replayed" not in response.headers


@pytest.mark.parametrize("count", [2, 21])
async def test_entry_count_bounds(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection, count: int
) -> None:
    """2 entries is the least; 21, one more than the most, is refused (20 are accepted: see above)."""
    users = [await funded_user(client, api_keys) for _ in range(count - 1)]
    entries = [entry(f"user:{u}", 1) for u in users] + [entry("system:treasury", -(count - 1))]
    assert len(entries) == count
    before = await books(db, *users)
    response = await adjust(client, api_keys, adjustment(*entries))
    if count == 21:
        assert_validation_error(response, "entries")
        assert await books(db, *users) == before
    else:
        assert response.status_code == 201, response.text


async def test_a_user_never_goes_below_zero(client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection) -> None:
    user_id = await funded_user(client, api_keys, gold=10)
    before = await books(db, user_id)
    key = idem()
    response = await adjust(
        client, api_keys, adjustment(entry(f"user:{user_id}", -11), entry("system:treasury", 11)), key
    )
    assert_problem(response, 409, "insufficient_funds")
    assert await books(db, user_id) == before
    # A business refusal is recorded under its key and replayed.
    again = await adjust(client, api_keys, adjustment(entry(f"user:{user_id}", -11), entry("system:treasury", 11)), key)
    assert_problem(again, 409, "insufficient_funds")
    assert again.headers.get("idempotent-replayed") == "true"
    assert again.content == response.content

    response = await adjust(client, api_keys, adjustment(entry(f"user:{user_id}", -10), entry("system:treasury", 10)))
    assert response.status_code == 201, response.text
    assert response.json()["balance_after"] == 0


async def test_one_user_short_writes_nothing_for_the_others(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection
) -> None:
    """Several user legs commit together or not at all: the credit to one user is not written when another user's
    debit is refused, in either order of the entries."""
    rich = await funded_user(client, api_keys, gold=100, loyalty=100)
    poor = await funded_user(client, api_keys, gold=5)
    credited = await funded_user(client, api_keys)
    before = await books(db, rich, poor, credited)
    bodies = [
        adjustment(entry(f"user:{credited}", 6), entry(f"user:{poor}", -6)),
        adjustment(entry(f"user:{poor}", -6), entry(f"user:{credited}", 6)),
        adjustment(
            entry(f"user:{rich}", -50),
            entry(f"user:{credited}", 50),
            entry(f"user:{poor}", 6, "LOYALTY"),
            entry(f"user:{rich}", -6, "LOYALTY"),
            entry(f"user:{poor}", -6),
            entry("system:revenue", 6),
        ),
    ]
    for body in bodies:
        response = await adjust(client, api_keys, body)
        assert_problem(response, 409, "insufficient_funds")
        assert await books(db, rich, poor, credited) == before


async def test_adjustments_apply_to_frozen_users_debits_included(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection
) -> None:
    user_id = await funded_user(client, api_keys, gold=40)
    async with frozen(client, api_keys, user_id):
        purchase = await post(
            client, api_keys, "/v1/purchases", {"user_id": user_id, "asset": "GOLD", "amount": 1}, idem()
        )
        assert_problem(purchase, 409, "account_frozen")  # the freeze is real
        debit = await adjust(client, api_keys, adjustment(entry(f"user:{user_id}", -15), entry("system:treasury", 15)))
        assert debit.status_code == 201, debit.text
        assert debit.json()["balance_after"] == 25
        credit = await adjust(client, api_keys, adjustment(entry(f"user:{user_id}", 5), entry("system:treasury", -5)))
        assert credit.status_code == 201, credit.text
        assert credit.json()["balance_after"] == 30
        # Frozen or not, the floor holds.
        short = await adjust(client, api_keys, adjustment(entry(f"user:{user_id}", -31), entry("system:treasury", 31)))
        assert_problem(short, 409, "insufficient_funds")
    assert (await user_balances(db, user_id))["GOLD"] == 30


# Who may, and what must exist --------------------------------------------------------------------------------------


@pytest.mark.parametrize("scope", ["read", "topup", "bonus", "purchase"])
async def test_only_admin_may_adjust(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection, scope: str
) -> None:
    user_id = await funded_user(client, api_keys)
    before = await books(db, user_id)
    key = idem()
    response = await adjust(
        client, api_keys, adjustment(entry(f"user:{user_id}", 1), entry("system:treasury", -1)), key, scope
    )
    assert_problem(response, 403, "forbidden")
    assert await books(db, user_id) == before
    assert await stored_keys(db, key) == 0


async def test_key_and_idempotency_key_are_required(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection
) -> None:
    user_id = await funded_user(client, api_keys)
    body = adjustment(entry(f"user:{user_id}", 1), entry("system:treasury", -1))
    before = await books(db, user_id)
    response = await client.post(PATH, json=body, headers={"Idempotency-Key": idem()})
    assert_problem(response, 401, "unauthenticated")
    response = await client.post(PATH, json=body, headers=api_keys.headers("admin"))
    assert_problem(response, 400, "idempotency_key_missing")
    assert await books(db, user_id) == before


async def test_unknown_user_or_asset_is_404_and_writes_nothing(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection
) -> None:
    user_id = await funded_user(client, api_keys, gold=10)
    ghost = fresh_id()
    before = await books(db, user_id)
    cases = [
        (adjustment(entry(f"user:{ghost}", 1), entry("system:treasury", -1)), "user_not_found"),
        (adjustment(entry(f"user:{user_id}", -1), entry(f"user:{ghost}", 1)), "user_not_found"),
        (adjustment(entry(f"user:{user_id}", 1, "NOPE"), entry("system:treasury", -1, "NOPE")), "asset_not_found"),
        # An unknown user is reported before an unknown asset.
        (adjustment(entry(f"user:{ghost}", 1, "NOPE"), entry("system:treasury", -1, "NOPE")), "user_not_found"),
    ]
    for body, code in cases:
        response = await adjust(client, api_keys, body)
        problem = assert_problem(response, 404, code)
        assert (ghost if code == "user_not_found" else "NOPE") in problem["detail"]
        assert await books(db, user_id) == before


@pytest.mark.parametrize("account", ["system:nowhere", "system:expiry", "system:user"])
async def test_unknown_system_account_is_a_4xx_and_writes_nothing(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection, account: str
) -> None:
    user_id = await funded_user(client, api_keys, gold=10)
    before = await books(db, user_id)
    key = idem()
    response = await adjust(client, api_keys, adjustment(entry(f"user:{user_id}", -1), entry(account, 1)), key)
    problem = assert_validation_error(response, "account")
    assert [e["loc"] for e in problem["errors"]] == [["entries", 1, "account"]], problem
    assert f"system:({'|'.join(SYSTEM_ACCOUNTS)})" in problem["errors"][0]["msg"], problem  # names those there are
    assert await books(db, user_id) == before
    assert await stored_keys(db, key) == 0


async def test_an_adjustment_is_not_refundable(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection
) -> None:
    user_id = await funded_user(client, api_keys)
    response = await adjust(client, api_keys, adjustment(entry(f"user:{user_id}", 9), entry("system:treasury", -9)))
    assert response.status_code == 201, response.text
    tx_id = response.json()["id"]
    before = await books(db, user_id)
    refused = await refund(client, api_keys, tx_id, {"reason": "undo"}, scope="admin")
    assert_problem(refused, 409, "not_refundable")
    assert await books(db, user_id) == before
    listed = await client.get(f"/v1/transactions/{tx_id}/refunds", headers=api_keys.headers("read"))
    assert listed.status_code == 200, listed.text
    assert listed.json() == {
        "transaction_id": tx_id,
        "amount": response.json()["amount"],
        "refunded_amount": 0,
        "refundable_amount": 0,
        "items": [],
    }


# Concurrency -------------------------------------------------------------------------------------------------------


async def test_parallel_adjustments_between_two_users_in_both_directions(
    http: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection
) -> None:
    """Adjustments that move credits A -> B and B -> A at once lock both users' accounts: in one order, so none
    deadlocks into a 503, and none overdraws."""
    a = await create_user(http, api_keys, "adj")
    b = await create_user(http, api_keys, "adj")
    for user_id in (a, b):
        response = await post(http, api_keys, "/v1/topups", {"user_id": user_id, "asset": "GOLD", "amount": 10}, idem())
        assert response.status_code == 201, response.text

    def one(src: str, dst: str) -> Any:
        return adjust(http, api_keys, adjustment(entry(f"user:{src}", -3), entry(f"user:{dst}", 3)))

    directions = [(a, b) if n % 2 == 0 else (b, a) for n in range(60)]
    responses = await asyncio.gather(*(one(src, dst) for src, dst in directions))
    outcomes = Counter((r.status_code, r.json().get("code")) for r in responses)
    assert set(outcomes) <= {(201, None), (409, "insufficient_funds")}, outcomes
    assert outcomes[(201, None)] >= 2, outcomes  # at the least the first in each direction applied

    moved = Counter()
    for (src, dst), response in zip(directions, responses, strict=True):
        if response.status_code == 201:
            moved[src] -= 3
            moved[dst] += 3
    balances = {u: (await user_balances(db, u))["GOLD"] for u in (a, b)}
    assert balances == {a: 10 + moved[a], b: 10 + moved[b]}
    assert min(balances.values()) >= 0
    written = await db.fetchval(
        "SELECT count(*) FROM transactions WHERE type = 'adjustment' AND id IN"
        " (SELECT e.transaction_id FROM entries e JOIN accounts x ON x.id = e.account_id WHERE x.user_id = $1)",
        a,
    )
    assert written == outcomes[(201, None)]
    await assert_books_balance(db)
