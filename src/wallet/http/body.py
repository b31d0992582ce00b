"""Request bodies and headers as the service reads them: strict JSON, validated models, the Idempotency-Key."""

import re
from typing import TypeVar

import orjson
from fastapi import Request
from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError

from wallet.errors import IdempotencyKeyInvalid, IdempotencyKeyMissing, ValidationFailed
from wallet.http.problems import validation_failed
from wallet.models import IDEMPOTENCY_KEY_PATTERN

JSON = "application/json"
M = TypeVar("M", bound=BaseModel)
IDEMPOTENCY_KEY_RE = re.compile(IDEMPOTENCY_KEY_PATTERN)


def parse(raw: bytes, content_type: str | None, model: type[M]) -> M:
    """Our own JSON parsing: orjson rejects NaN, lone surrogates and nesting past 1,024 levels, where the
    standard library would accept them or overflow the stack."""
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type != JSON:
        raise ValidationFailed(
            "The body must be JSON, sent with Content-Type: application/json.",
            [{"loc": ["header", "content-type"], "msg": "expected application/json", "type": "content_type"}],
        )
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValidationFailed(
            "The body is not valid JSON.", [{"loc": ["body"], "msg": str(exc), "type": "json_invalid"}]
        ) from None
    try:
        return model.model_validate(data)
    except PydanticValidationError as exc:
        raise validation_failed(exc.errors(include_url=False, include_input=False)) from None


async def read(request: Request, model: type[M]) -> M:
    return parse(await request.body(), request.headers.get("content-type"), model)


def idempotency_key(request: Request) -> str:
    value = request.headers.get("idempotency-key")
    if value is None:
        raise IdempotencyKeyMissing("Money-moving requests need an Idempotency-Key header.")
    if not IDEMPOTENCY_KEY_RE.fullmatch(value):
        raise IdempotencyKeyInvalid("The Idempotency-Key must be 1 to 255 visible ASCII characters.")
    return value
