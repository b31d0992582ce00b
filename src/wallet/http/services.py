"""What handlers share, kept on the app: settings, the database, the API key cache, the rate limiter, group commit."""

from dataclasses import dataclass

from fastapi import Request

from wallet.config import Settings
from wallet.database import Database
from wallet.groupcommit import GroupCommit
from wallet.keys import KeyCache
from wallet.ratelimit import RateLimiter


@dataclass(frozen=True, slots=True)
class Services:
    settings: Settings
    database: Database
    key_cache: KeyCache
    rate_limiter: RateLimiter
    group_commit: GroupCommit

    @classmethod
    def create(cls, settings: Settings, database_url: str) -> "Services":
        database = Database(database_url, settings)
        return cls(
            settings,
            database,
            KeyCache(settings.api_key_cache_ttl_ms),
            RateLimiter(settings.redis_url, settings.rate_limit_per_s),
            GroupCommit(database, settings.group_commit_items_max, settings.group_commit_groups_max),
        )


def services(request: Request) -> Services:
    found: Services = request.app.state.services
    return found


def database(request: Request) -> Database:
    return services(request).database
