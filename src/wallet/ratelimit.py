"""Rate limits per API key, shared across workers through Redis when WALLET_REDIS_URL is set.

The `limits` library's sliding-window counter does the counting: a steady rate per key with a burst bounded by
one window, which is what a token bucket gives, at one Redis round trip per request.
"""

import logging
import math
import time

from limits import RateLimitItemPerSecond
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.errors import StorageError
from limits.storage import storage_from_string

from wallet import metrics
from wallet.errors import WalletError
from wallet.keys import ApiKey

log = logging.getLogger("wallet.ratelimit")


class RateLimited(WalletError):
    """The key has used its request rate; retry after the number of seconds in Retry-After."""

    code = "rate_limited"


class RateLimiter:
    def __init__(self, redis_url: str | None, default_per_s: int) -> None:
        uri = "async+" + redis_url if redis_url else "async+memory://"
        self._limiter = SlidingWindowCounterRateLimiter(storage_from_string(uri, wrap_exceptions=True))
        self._default_per_s = default_per_s
        self._items: dict[int, RateLimitItemPerSecond] = {}

    async def check(self, key: ApiKey) -> None:
        """Counts one request of `key`; raises RateLimited past its rate. With Redis down, requests pass:
        the ledger's correctness never depends on the limiter, only its protection from floods does."""
        per_s = key.rate_limit_per_s or self._default_per_s
        if per_s <= 0:
            return
        item = self._items.get(per_s)
        if item is None:
            item = self._items.setdefault(per_s, RateLimitItemPerSecond(per_s))
        try:
            if await self._limiter.hit(item, "key", key.name, str(key.id)):
                return
            stats = await self._limiter.get_window_stats(item, "key", key.name, str(key.id))
        except (OSError, TimeoutError, StorageError) as exc:
            log.warning(
                "rate limiter unavailable, request let through", extra={"fields": {"error": type(exc).__name__}}
            )
            return
        retry_after_s = max(1, math.ceil(stats.reset_time - time.time()))
        metrics.RATE_LIMITED.labels(key.name).inc()
        raise RateLimited(
            f"The key {key.name} is limited to {per_s} requests per second.",
            headers={"Retry-After": str(retry_after_s)},
        )
