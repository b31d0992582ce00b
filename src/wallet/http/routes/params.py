"""Path and query parameters that several routes share."""

import re
from datetime import datetime
from typing import Annotated

from fastapi import Path, Query

from wallet.errors import ValidationFailed
from wallet.models import ASSET_PATTERN, PAGE_LIMIT_DEFAULT, PAGE_LIMIT_MAX, USER_ID_PATTERN

UserIdPath = Annotated[str, Path(pattern=USER_ID_PATTERN, max_length=64, examples=["alice"])]
AssetPath = Annotated[str, Path(pattern=ASSET_PATTERN, max_length=16, examples=["GOLD"])]
AssetQuery = Annotated[str | None, Query(pattern=ASSET_PATTERN, max_length=16)]
LimitQuery = Annotated[
    int, Query(ge=1, le=PAGE_LIMIT_MAX, description=f"Items a page, at most (default {PAGE_LIMIT_DEFAULT}).")
]
RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})")


def as_of(
    as_of: Annotated[
        str | None,
        Query(
            description="An RFC 3339 instant with its offset (`Z`, or `%2B01:00` in a URL): the posted balances as"
            " they were then.",
            examples=["2026-11-22T10:00:00.123456Z"],
            json_schema_extra={"format": "date-time"},
        ),
    ] = None,
) -> datetime | None:
    """The instant of `?as_of=`: RFC 3339 only (no Unix seconds, no date alone, no instant without its offset).
    Digits past the microsecond are dropped: times are stored to the microsecond, so an entry is at or before the
    instant exactly when it is at or before the instant cut to the microsecond."""
    if as_of is None:
        return None
    match = RFC3339.fullmatch(as_of)
    try:
        if match is None:
            raise ValueError("not an RFC 3339 date-time with an offset, such as 2026-11-22T10:00:00.123456Z")
        fraction = match.group(1) or ""
        text = as_of.replace(fraction, fraction[:7], 1) if fraction else as_of
        return datetime.fromisoformat(text.upper().replace("Z", "+00:00"))
    except ValueError as exc:  # the pattern admits 2026-02-30 and 25:00
        raise ValidationFailed(
            f"as_of is not an instant: {exc}.", [{"loc": ["query", "as_of"], "msg": str(exc), "type": "datetime"}]
        ) from None
