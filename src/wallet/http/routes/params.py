"""Path and query parameters that several routes share."""

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
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


def _instant(name: str, text: str, round_up: bool = False) -> datetime:
    """An RFC 3339 instant (no Unix seconds, no date alone, no instant without its offset), to the microsecond, as
    times are stored. Digits past the microsecond are dropped, or, with `round_up`, round it up: then an entry is at
    or before the instant exactly when it is at or before the instant cut, and at or after it (or before it) exactly
    when it is at or after (before) the instant rounded up."""
    match = RFC3339.fullmatch(text)
    try:
        if match is None:
            raise ValueError("not an RFC 3339 date-time with an offset, such as 2026-11-22T10:00:00.123456Z")
        fraction = match.group(1) or ""
        cut = text.replace(fraction, fraction[:7], 1) if fraction else text
        at = datetime.fromisoformat(cut.upper().replace("Z", "+00:00"))
        if round_up and fraction[7:].strip("0"):
            at += timedelta(microseconds=1)
        at.astimezone(UTC)  # 0001-01-01T00:00:00+01:00 is before the first instant a datetime holds
    except (ValueError, OverflowError) as exc:  # the pattern admits 2026-02-30 and 25:00
        raise ValidationFailed(
            f"{name} is not an instant: {exc}.", [{"loc": ["query", name], "msg": str(exc), "type": "datetime"}]
        ) from None
    return at


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
    """The instant of `?as_of=`."""
    return None if as_of is None else _instant("as_of", as_of)


@dataclass(frozen=True, slots=True)
class Window:
    """`[start, end)`, each end open when None."""

    start: datetime | None
    end: datetime | None


def window(
    start: Annotated[
        str | None,
        Query(
            alias="from",
            description="RFC 3339 instant with its offset: the window's start, included (default: the beginning).",
            examples=["2026-11-01T00:00:00Z"],
            json_schema_extra={"format": "date-time"},
        ),
    ] = None,
    end: Annotated[
        str | None,
        Query(
            alias="to",
            description="RFC 3339 instant with its offset: the window's end, excluded (default: now and after).",
            examples=["2026-12-01T00:00:00Z"],
            json_schema_extra={"format": "date-time"},
        ),
    ] = None,
) -> Window:
    """The window `[from, to)` of `?from=&to=`; from must come before to."""
    found = Window(
        None if start is None else _instant("from", start, round_up=True),
        None if end is None else _instant("to", end, round_up=True),
    )
    if found.start is not None and found.end is not None and found.start >= found.end:
        raise ValidationFailed(
            "from must be before to.", [{"loc": ["query", "from"], "msg": "not before to", "type": "window"}]
        )
    return found
