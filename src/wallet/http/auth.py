"""Authentication: `Authorization: Bearer <key>`, scopes, and the rate limit of the key."""

from collections.abc import Awaitable, Callable

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from wallet import keys
from wallet.errors import Forbidden, Unauthenticated
from wallet.http.envelope import context
from wallet.http.services import services
from wallet.keys import ApiKey

bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer <key>`.")


async def authenticate(request: Request, credentials: HTTPAuthorizationCredentials | None) -> ApiKey:
    """The active key of the request, counted against its rate limit."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthenticated("Send an API key as `Authorization: Bearer <key>`.")
    shared = services(request)
    key = await shared.key_cache.resolve(
        credentials.credentials, lambda digest: shared.database.run(lambda conn: keys.find(conn, digest))
    )
    if key is None:
        raise Unauthenticated("The API key is unknown or revoked.")
    context(request.scope).key_name = key.name
    await shared.rate_limiter.check(key)
    return key


def require(*scopes: str) -> Callable[..., Awaitable[ApiKey]]:
    """A dependency admitting keys that hold any of `scopes` (admin holds them all)."""

    async def admitted(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> ApiKey:
        key = await authenticate(request, credentials)
        if not any(key.allows(scope) for scope in scopes):
            raise Forbidden(f"The key {key.name} lacks the {' or '.join(scopes)} scope.")
        return key

    return admitted
