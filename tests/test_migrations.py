"""Released migrations are never edited: a change is a new revision, and it must upgrade a database made by the
previous release with data in it. Here the previous release is revision 0003: its own SQL interface writes
top-ups, bonuses, purchases (one refused), a batch and pending system deltas (some rolled up, some not), then the
database is upgraded to the newest revision, and nothing of it may change: balances, idempotency records that
replay, transactions that read the same, a clean `wallet verify`, and new postings on top."""

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest

from tests.conftest import in_process
from tests.support import own_database, wallet_verify
from wallet import keys
from wallet.config import Settings
from wallet.database import connect, migrate
from wallet.http.app import create_app

PREVIOUS_RELEASE = "0003"
SECRET = "upgrade-test-secret"
HEADERS = {"Authorization": f"Bearer {SECRET}"}
SIDES = {"topup": ("system:treasury", 1), "bonus": ("system:bonus_pool", 1), "purchase": ("system:revenue", -1)}
ENDPOINTS = {"topup": "POST /v1/topups", "bonus": "POST /v1/bonuses", "purchase": "POST /v1/purchases"}


def request(user_id: str, asset: str, amount: int, metadata: dict[str, Any]) -> dict[str, Any]:
    return {"user_id": user_id, "asset": asset, "amount": amount, "description": None, "metadata": metadata}


async def old_request(conn: asyncpg.Connection, key_id: int, kind: str, user_id: str, asset: str, amount: int) -> Any:
    """A request through 0003's wallet_request(), as that release's service made it."""
    system, sign = SIDES[kind]
    metadata = {"n": 1.50} if kind == "bonus" else {}
    return await conn.fetchrow(
        """SELECT * FROM wallet_request($1, $2, 'old-key', $3, $4, $5::jsonb, $6, $7, $8, $9, $10, $11, NULL, $12)""",
        uuid.uuid4(),
        key_id,
        f"{kind}-{user_id}-{asset}-{amount}",
        ENDPOINTS[kind],
        orjson.dumps(request(user_id, asset, amount, metadata)).decode(),
        kind,
        asset,
        user_id,
        amount,
        [f"user:{user_id}", system],
        [sign * amount, -sign * amount],
        orjson.dumps(metadata).decode(),
    )


async def make_previous_release_data(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            """INSERT INTO assets (code, name) VALUES ('GOLD', 'Gold Coins'), ('DIAMOND', 'Diamonds');
               INSERT INTO accounts (kind, name, asset)
               SELECT 'system', 'system:' || s, a.code FROM assets a,
                      unnest(ARRAY['treasury', 'bonus_pool', 'revenue']) s;
               INSERT INTO users (user_id) VALUES ('old-ann'), ('old-ben');
               INSERT INTO accounts (kind, name, asset, user_id)
               SELECT 'user', 'user:' || u.user_id, a.code, u.user_id FROM users u, assets a"""
        )
        key_id = int(
            await conn.fetchval(
                "INSERT INTO api_keys (name, secret_hash, scopes) VALUES ('old-key', sha256($1::bytea), '{admin}')"
                " RETURNING id",
                SECRET.encode(),
            )
        )
        for kind, user_id, asset, amount in [
            ("topup", "old-ann", "GOLD", 1000),
            ("bonus", "old-ann", "DIAMOND", 30),
            ("purchase", "old-ann", "GOLD", 250),
        ]:
            assert (await old_request(conn, key_id, kind, user_id, asset, amount))["status"] == 201
        assert await conn.fetchval("SELECT wallet_rollup()") > 0  # some deltas folded, the rest left pending
        assert (await old_request(conn, key_id, "topup", "old-ben", "GOLD", 70))["status"] == 201
        refused = await old_request(conn, key_id, "purchase", "old-ben", "GOLD", 5000)
        assert (refused["status"], orjson.loads(refused["body"])["code"]) == (409, "insufficient_funds")
        items = [
            {
                "key": f"old-batch-{i}",
                "endpoint": ENDPOINTS["topup"],
                "request": request("old-ben", "DIAMOND", 5 + i, {}),
                "type": "topup",
                "asset": "DIAMOND",
                "user_id": "old-ben",
                "amount": 5 + i,
                "accounts": ["user:old-ben", "system:treasury"],
                "amounts": [5 + i, -(5 + i)],
                "description": None,
                "metadata": {},
            }
            for i in range(3)
        ]
        results = await conn.fetch(
            "SELECT status FROM wallet_batch($1, $2, 'old-key', false, $3::jsonb)",
            uuid.uuid4(),
            key_id,
            orjson.dumps(items).decode(),
        )
        assert [row["status"] for row in results] == [201, 201, 201]
        assert await conn.fetchval("SELECT count(*) FROM account_deltas") > 0
        return key_id
    finally:
        await conn.close()


async def snapshot(url: str) -> dict[str, Any]:
    """What an upgrade must keep: every balance, every idempotency record, every transaction as rendered."""
    conn = await asyncpg.connect(url)
    try:
        balances = await conn.fetch("SELECT name, asset, balance FROM account_balances")
        records = await conn.fetch("SELECT key, status, transaction_id FROM idempotency_keys")
        rendered = await conn.fetch("SELECT t.id, wallet_transaction_json(t.id)::text AS body FROM transactions t")
    finally:
        await conn.close()
    return {
        "balances": {(row["name"], row["asset"]): row["balance"] for row in balances},
        "records": {row["key"]: (row["status"], row["transaction_id"]) for row in records},
        "rendered": {row["id"]: orjson.loads(row["body"]) for row in rendered},
    }


def with_v1_1_fields(rendered: dict[str, Any]) -> dict[str, Any]:
    """A transaction of the old release as it reads now: v1.1 adds fields to every transaction (spec/API.md: an
    `asset` on each entry, `rewards`, `refund_of`, `hold_id`), and changes none of the old ones."""
    asset = rendered["asset"]
    entries = [{"account": e["account"], "asset": asset, "amount": e["amount"]} for e in rendered["entries"]]
    return {**rendered, "entries": entries, "rewards": [], "refund_of": None, "hold_id": None}


@pytest.fixture(scope="module")
def upgraded(server_url: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """A database made by the previous release, with data, then upgraded; and what it held before."""
    with own_database(server_url, "wallet_upgrade") as url:
        migrate(url, PREVIOUS_RELEASE)
        asyncio.run(make_previous_release_data(url))
        before = asyncio.run(snapshot(url))
        migrate(url)
        yield url, before


async def test_upgrade_keeps_every_balance_and_verify_is_clean(upgraded: tuple[str, dict[str, Any]]) -> None:
    url, before = upgraded
    conn = await asyncpg.connect(url)
    try:
        after = {
            tuple(row[:2]): row[2] for row in await conn.fetch("SELECT name, asset, balance FROM account_balances")
        }
    finally:
        await conn.close()
    # Every balance as it was; new are only the accounts of expired credits (0006), one per asset, empty.
    assets = {asset for _, asset in before["balances"]}
    assert {k: v for k, v in after.items() if k not in before["balances"]} == {
        ("system:expired", asset): 0 for asset in assets
    }
    assert {k: v for k, v in after.items() if k in before["balances"]} == before["balances"]
    assert after[("system:treasury", "GOLD")] == -1070
    verified = await asyncio.to_thread(wallet_verify, url)
    assert verified.returncode == 0, verified.stdout + verified.stderr


async def test_after_the_upgrade_old_keys_replay_old_transactions_read_the_same_and_new_postings_work(
    upgraded: tuple[str, dict[str, Any]],
) -> None:
    url, before = upgraded
    settings = Settings(database_url=url, api_key_cache_ttl_ms=0)
    conn = await connect(url, settings)
    await keys.ensure_bootstrap(conn, "upgrade-admin")
    await conn.close()
    async with in_process(create_app(settings)) as http:
        for internal_id, rendered in before["rendered"].items():
            public_id = f"tx_{internal_id:016x}"
            fetched = await http.get(f"/v1/transactions/{public_id}", headers=HEADERS)
            assert fetched.status_code == 200
            assert fetched.json() == with_v1_1_fields(rendered)

        # A key of the old release replays its transaction, and its recorded failure, through the new engine.
        replay = await http.post(
            "/v1/topups",
            json={"user_id": "old-ann", "asset": "GOLD", "amount": 1000},
            headers={**HEADERS, "Idempotency-Key": "topup-old-ann-GOLD-1000"},
        )
        assert replay.status_code == 201 and replay.headers["idempotent-replayed"] == "true"
        status, transaction_id = before["records"]["topup-old-ann-GOLD-1000"]
        assert (status, replay.json()) == (201, with_v1_1_fields(before["rendered"][transaction_id]))
        refused = await http.post(
            "/v1/purchases",
            json={"user_id": "old-ben", "asset": "GOLD", "amount": 5000},
            headers={**HEADERS, "Idempotency-Key": "purchase-old-ben-GOLD-5000"},
        )
        assert (refused.status_code, refused.json()["code"]) == (409, "insufficient_funds")
        assert refused.headers["idempotent-replayed"] == "true"

        # New postings on the upgraded ledger, then the books are still right.
        for path, amount in (("/v1/topups", 40), ("/v1/purchases", 100)):
            body = {"user_id": "old-ben", "asset": "GOLD", "amount": amount}
            posted = await http.post(path, json=body, headers={**HEADERS, "Idempotency-Key": uuid.uuid4().hex})
            assert posted.status_code == 201, posted.text
        balance = await http.get("/v1/users/old-ben/balances/GOLD", headers=HEADERS)
        assert (balance.json()["held"], balance.json()["available"]) == (0, 70 + 40 - 100)
        assert balance.json()["balance"] == 70 + 40 - 100
    verified = await asyncio.to_thread(wallet_verify, url)
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_migrations_started_at_once_apply_once(server_url: str) -> None:
    """Four `migrate()` side by side on an empty database (several workers or servers starting together): they take
    turns on one transaction-level advisory lock, so every revision applies once and all four succeed."""
    with own_database(server_url, "wallet_migrate") as url:

        async def all_at_once() -> None:
            await asyncio.gather(*(asyncio.to_thread(migrate, url) for _ in range(4)))

        asyncio.run(all_at_once())

        async def revision() -> str:
            conn = await asyncpg.connect(url)
            try:
                return str(await conn.fetchval("SELECT version_num FROM alembic_version"))
            finally:
                await conn.close()

        assert (
            asyncio.run(revision())
            == sorted(
                path.name[:4]
                for path in (Path(migrate.__code__.co_filename).parent / "migrations" / "versions").glob("0*.py")
            )[-1]
        )
