"""Balance monitors: a posting that takes a watched balance across a threshold emits balance.threshold_crossed
(the trigger of migration 0008), once per crossing: a balance that stays beyond the threshold emits nothing more
until it has come back and crosses again."""

from typing import Any

import asyncpg
import orjson

from wallet.database import Database
from wallet.errors import AssetNotFound, UserNotFound
from wallet.render import public_id, timestamp

ID_PREFIX = "mon"
_FIELDS = "id, asset, user_id, condition, threshold, created_at"


def _monitor(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": public_id(row["id"], ID_PREFIX),
        "asset": row["asset"],
        "user_id": row["user_id"],
        "condition": row["condition"],
        "threshold": row["threshold"],
        "created_at": timestamp(row["created_at"]),
    }


async def create(database: Database, asset: str, user_id: str | None, condition: str, threshold: int) -> bytes:
    """The monitor, and its accounts flagged. The asset's row is locked first: accounts being opened hold it FOR
    SHARE (wallet_open_accounts()), so those in flight are flagged here and later ones by their insert trigger."""

    async def work(conn: asyncpg.Connection) -> asyncpg.Record:
        async with conn.transaction():
            exists = "SELECT EXISTS (SELECT FROM users WHERE user_id = $1)"
            if user_id is not None and not await conn.fetchval(exists, user_id):
                raise UserNotFound(f"User {user_id} does not exist.")
            if await conn.fetchval("SELECT code FROM assets WHERE code = $1 FOR NO KEY UPDATE", asset) is None:
                raise AssetNotFound(f"Asset {asset} does not exist.")
            row = await conn.fetchrow(
                f"""INSERT INTO monitors (asset, user_id, condition, threshold) VALUES ($1, $2, $3, $4)
                    RETURNING {_FIELDS}""",
                asset,
                user_id,
                condition,
                threshold,
            )
            await conn.execute(
                """UPDATE accounts SET monitored = true
                    WHERE asset = $1 AND kind = 'user' AND ($2::text IS NULL OR user_id = $2) AND NOT monitored""",
                asset,
                user_id,
            )
            assert row is not None
            return row

    return orjson.dumps(_monitor(await database.run(work)))


async def list_all(database: Database) -> bytes:
    rows = await database.fetch(f"SELECT {_FIELDS} FROM monitors ORDER BY id")
    return orjson.dumps({"items": [_monitor(row) for row in rows], "next_cursor": None})
