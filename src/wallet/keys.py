"""API keys: stored as SHA-256 hashes, compared in constant time, carrying scopes; a short-lived cache."""

import hashlib
import hmac
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg

from wallet.kinds import POSTING_SCOPES

# read, then the scope of each posting kind of the registry, then admin (which holds them all).
SCOPES = ("read", *POSTING_SCOPES, "admin")
BOOTSTRAP_KEY_NAME = "bootstrap"
FIRST_ADMIN_KEY_NAME = "admin"
SECRET_LENGTH_MAX = 512


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: int
    name: str
    scopes: frozenset[str]
    rate_limit_per_s: int | None = None  # None: the service's default

    def allows(self, scope: str) -> bool:
        return "admin" in self.scopes or scope in self.scopes


def hash_secret(secret: str) -> bytes:
    # Secrets are 256-bit random (or chosen by the operator): a fast hash is right; a slow KDF would only
    # slow down every request.
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).digest()


def new_secret() -> str:
    return "wk_" + secrets.token_urlsafe(32)


async def create(conn: asyncpg.Connection, name: str, scopes: list[str], rate_limit_per_s: int | None = None) -> str:
    """Creates a key and returns its secret, which is not stored and cannot be shown again."""
    secret = new_secret()
    await conn.execute(
        "INSERT INTO api_keys (name, secret_hash, scopes, rate_limit_per_s) VALUES ($1, $2, $3, $4)",
        name,
        hash_secret(secret),
        sorted(set(scopes)),
        rate_limit_per_s,
    )
    return secret


async def revoke(conn: asyncpg.Connection, name: str) -> bool:
    status = await conn.execute(
        "UPDATE api_keys SET revoked_at = clock_timestamp() WHERE name = $1 AND revoked_at IS NULL", name
    )
    return status.endswith(" 1")


async def list_all(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    return list(
        await conn.fetch(
            "SELECT name, scopes, rate_limit_per_s, wallet_ts(created_at) AS created_at,"
            " wallet_ts(revoked_at) AS revoked_at"
            " FROM api_keys ORDER BY id"
        )
    )


async def ensure_bootstrap(conn: asyncpg.Connection, bootstrap_secret: str | None) -> str | None:
    """With a bootstrap secret, makes sure an admin key with it exists. Without one, creates a first admin key
    when no usable key exists and returns its secret, so that a new user can start at once."""
    if bootstrap_secret:
        await conn.execute(
            """INSERT INTO api_keys (name, secret_hash, scopes) VALUES ($1, $2, '{admin}')
               ON CONFLICT (name) DO UPDATE
               SET secret_hash = excluded.secret_hash, scopes = excluded.scopes, revoked_at = NULL""",
            BOOTSTRAP_KEY_NAME,
            hash_secret(bootstrap_secret),
        )
        return None
    async with conn.transaction():
        # Two servers starting at once on one database must not both mint a first key.
        await conn.execute("LOCK TABLE api_keys IN SHARE ROW EXCLUSIVE MODE")
        if await conn.fetchval("SELECT EXISTS (SELECT 1 FROM api_keys WHERE revoked_at IS NULL)"):
            return None
        return await create(conn, FIRST_ADMIN_KEY_NAME, ["admin"])


async def find(conn: asyncpg.Connection, digest: bytes) -> ApiKey | None:
    """The active key with this secret hash."""
    row = await conn.fetchrow(
        "SELECT id, name, scopes, rate_limit_per_s, secret_hash FROM api_keys"
        " WHERE secret_hash = $1 AND revoked_at IS NULL",
        digest,
    )
    if row is None or not hmac.compare_digest(bytes(row["secret_hash"]), digest):
        return None
    return ApiKey(row["id"], row["name"], frozenset(row["scopes"]), row["rate_limit_per_s"])


class KeyCache:
    """Resolves secrets to keys, remembering answers for `ttl_ms` so most requests skip the lookup.
    A revoked key stops working within `ttl_ms`."""

    def __init__(self, ttl_ms: int) -> None:
        self._ttl_s = ttl_ms / 1000
        self._entries: dict[bytes, tuple[float, ApiKey | None]] = {}

    async def resolve(self, secret: str, lookup: Callable[[bytes], Awaitable[ApiKey | None]]) -> ApiKey | None:
        """The key whose secret this is, from the cache or from `lookup` (given the secret's hash)."""
        if len(secret) > SECRET_LENGTH_MAX:
            return None
        digest = hash_secret(secret)
        now = time.monotonic()
        cached = self._entries.get(digest)
        if cached is not None and cached[0] > now:
            return cached[1]
        key = await lookup(digest)
        if len(self._entries) > 10_000:  # bounded: unknown secrets must not grow it without end
            self._entries.clear()
        self._entries[digest] = (now + self._ttl_s, key)
        return key
