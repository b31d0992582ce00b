"""Rate limits per API key: 429 rate_limited with Retry-After, per key, shared across workers through Redis."""

import os
import socket
import uuid
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest

from tests.conftest import in_process
from wallet import keys
from wallet.config import Settings
from wallet.http.app import create_app

REDIS_URL = os.environ.get("WALLET_TEST_REDIS_URL", "redis://127.0.0.1:6379")


async def limited_key(db: asyncpg.Connection, per_s: int) -> str:
    return await keys.create(db, f"limited-{uuid.uuid4().hex[:8]}", ["read"], rate_limit_per_s=per_s)


async def test_a_key_past_its_rate_gets_429_with_retry_after(client: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    secret = await limited_key(db, 3)
    statuses = []
    for _ in range(6):
        response = await client.get("/v1/assets", headers={"Authorization": f"Bearer {secret}"})
        statuses.append(response.status_code)
    assert statuses[:3] == [200, 200, 200]
    assert 429 in statuses[3:]
    refused = await client.get("/v1/assets", headers={"Authorization": f"Bearer {secret}"})
    assert refused.status_code == 429
    assert refused.json()["code"] == "rate_limited"
    assert int(refused.headers["Retry-After"]) >= 1


async def test_limits_are_per_key(client: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    exhausted, fresh = await limited_key(db, 2), await limited_key(db, 2)
    for _ in range(4):
        await client.get("/v1/assets", headers={"Authorization": f"Bearer {exhausted}"})
    assert (await client.get("/v1/assets", headers={"Authorization": f"Bearer {exhausted}"})).status_code == 429
    assert (await client.get("/v1/assets", headers={"Authorization": f"Bearer {fresh}"})).status_code == 200


def _redis_reachable() -> bool:
    parts = urlsplit(REDIS_URL)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.mark.skipif(not _redis_reachable(), reason=f"no Redis at {REDIS_URL} (set WALLET_TEST_REDIS_URL)")
async def test_two_workers_share_one_budget_through_redis(settings: Settings, db: asyncpg.Connection) -> None:
    secret = await limited_key(db, 4)
    shared = settings.model_copy(update={"redis_url": REDIS_URL})
    workers = [create_app(shared), create_app(shared)]
    statuses = []
    for app in workers:
        async with in_process(app) as http:
            for _ in range(3):
                response = await http.get("/v1/assets", headers={"Authorization": f"Bearer {secret}"})
                statuses.append(response.status_code)
    # Each worker alone would allow all three; together they share four.
    assert statuses.count(200) == 4, statuses
    assert statuses.count(429) == 2, statuses


async def test_unreachable_redis_lets_requests_through(settings: Settings, db: asyncpg.Connection) -> None:
    secret = await limited_key(db, 100)
    app = create_app(settings.model_copy(update={"redis_url": "redis://127.0.0.1:1"}))
    async with in_process(app) as http:
        response = await http.get("/v1/assets", headers={"Authorization": f"Bearer {secret}"})
    assert response.status_code == 200
