"""Request bodies and headers as the service reads them: strict JSON, validated models, the Idempotency-Key."""

import json
import re
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError

from wallet.errors import IdempotencyKeyInvalid, IdempotencyKeyMissing, ValidationFailed
from wallet.http.problems import validation_failed
from wallet.models import IDEMPOTENCY_KEY_PATTERN, JsonNumber

JSON = "application/json"
M = TypeVar("M", bound=BaseModel)
IDEMPOTENCY_KEY_RE = re.compile(IDEMPOTENCY_KEY_PATTERN)


def parse(raw: bytes, content_type: str | None, model: type[M]) -> M:
    """The body as `model`, or a 422 naming what is wrong. Stricter than JSON parsers are by default: UTF-8 only,
    no NaN or Infinity, no member name twice in one object, and numbers kept as their text (see models.JsonNumber),
    so that what is stored is exactly what was sent."""
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type != JSON:
        raise ValidationFailed(
            "The body must be JSON, sent with Content-Type: application/json.",
            [{"loc": ["header", "content-type"], "msg": "expected application/json", "type": "content_type"}],
        )
    try:
        data = json.loads(
            raw.decode("utf-8"),
            object_pairs_hook=_unique_members,
            parse_constant=_no_constants,
            parse_float=JsonNumber,
            parse_int=_integer,
        )
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        message = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise ValidationFailed(
            f"The body is not valid JSON: {message}.", [{"loc": ["body"], "msg": message, "type": "json_invalid"}]
        ) from None
    try:
        return model.model_validate(data)
    except PydanticValidationError as exc:
        raise validation_failed(exc.errors(include_url=False, include_input=False)) from None


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    members = dict(pairs)
    if len(members) < len(pairs):
        seen: set[str] = set()
        repeated = next(name for name, _ in pairs if name in seen or seen.add(name))  # type: ignore[func-returns-value]
        raise ValueError(f"the member {repeated!r} appears twice in one object")
    return members


def _no_constants(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def _integer(text: str) -> int | JsonNumber:
    """Integers as Python ints (exact at any size), but "-0", which no integer type keeps, as a JsonNumber."""
    return JsonNumber(text) if text == "-0" else int(text)


async def read(request: Request, model: type[M]) -> M:
    return parse(await request.body(), request.headers.get("content-type"), model)


async def read_optional(request: Request, model: type[M]) -> M:
    """A body that may be left out (or empty): the model's defaults then."""
    raw = await request.body()
    if not raw:  # whitespace is not left out: it is a body, and not JSON
        return model()
    return parse(raw, request.headers.get("content-type"), model)


def idempotency_key(request: Request) -> str:
    values = request.headers.getlist("idempotency-key")
    if not values:
        raise IdempotencyKeyMissing("Money-moving requests need an Idempotency-Key header.")
    if len(values) > 1:
        raise IdempotencyKeyInvalid(f"Send one Idempotency-Key header, not {len(values)}.")
    value = values[0]
    if not IDEMPOTENCY_KEY_RE.fullmatch(value):
        raise IdempotencyKeyInvalid("The Idempotency-Key must be 1 to 255 visible ASCII characters.")
    return value
