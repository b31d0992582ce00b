"""The seed: assets (closed loop: none transferable), system accounts, and demo users funded by ordinary top-ups.
Running it again changes nothing (an operator's later change of a seeded asset's policies included)."""

import uuid

import asyncpg

from wallet.kinds import KINDS, SYSTEM_ACCOUNTS
from wallet.ledger import Caller, Movement, Request, post_on
from wallet.reads import ensure_user

SEED_ASSETS = (("GOLD", "Gold Coins"), ("DIAMOND", "Diamonds"), ("LOYALTY", "Loyalty Points"))
SEED_FUNDING: dict[str, dict[str, int]] = {
    "alice": {"GOLD": 1_000, "DIAMOND": 50, "LOYALTY": 200},
    "bob": {"GOLD": 500, "DIAMOND": 10},
    "carol": {"GOLD": 250, "LOYALTY": 100},
}
SEED_KEY_NAME = "seed"


async def seed(conn: asyncpg.Connection) -> None:
    """Assets, system accounts and users funded by ordinary top-ups. Running it again changes nothing: the
    top-ups carry fixed idempotency keys of the `seed` key (revoked at birth, so it can never authenticate)."""
    async with conn.transaction():
        await conn.executemany(
            "INSERT INTO assets (code, name, scale) VALUES ($1, $2, 0) ON CONFLICT DO NOTHING", SEED_ASSETS
        )
        await conn.execute(
            """SELECT wallet_system_account('system:' || s.name, a.code)
                 FROM assets a CROSS JOIN unnest($1::text[]) s (name) ORDER BY a.code, s.name""",
            list(SYSTEM_ACCOUNTS),
        )
        # User accounts are not made here: a posting opens one when it first credits it (migration 0006).
        seed_key_id = await conn.fetchval(
            """INSERT INTO api_keys (name, secret_hash, scopes, revoked_at)
               VALUES ($1, sha256(gen_random_uuid()::text::bytea), '{topup}', clock_timestamp())
               ON CONFLICT (name) DO UPDATE SET name = excluded.name RETURNING id""",
            SEED_KEY_NAME,
        )
    for user_id, funding in SEED_FUNDING.items():
        await ensure_user(conn, user_id, user_id.capitalize())
        for asset, amount in funding.items():
            movement = Movement(KINDS["topup"], user_id, asset, amount, "Welcome credits", {"source": "seed"})
            caller = Caller(seed_key_id, SEED_KEY_NAME, uuid.uuid4())
            await post_on(conn, Request(caller, f"seed:{user_id}:{asset}", movement))
