"""Fuzzing: schemathesis against the app's own OpenAPI document, and Hypothesis properties of the validators.

The schemathesis part runs `st run --checks all` through every phase (examples, coverage, fuzzing, stateful)
against a real `wallet serve` process with an admin key, after the served document passed an OpenAPI validator.
"""

import asyncio
import json
import math
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from openapi_spec_validator import validate
from pydantic import ValidationError

from tests.conftest import serving
from tests.support import own_database, wallet_verify
from wallet import keys
from wallet.config import Settings
from wallet.database import connect, migrate
from wallet.errors import ValidationFailed
from wallet.http import body
from wallet.models import (
    AMOUNT_MAX,
    IDEMPOTENCY_KEY_PATTERN,
    METADATA_BYTES_MAX,
    METADATA_DEPTH_MAX,
    USER_ID_PATTERN,
    BatchOperation,
    MovementRequest,
    UserRequest,
)
from wallet.seed import seed

REQUESTS_MIN = 500  # test cases schemathesis generates, at least
SCHEMATHESIS_EXAMPLES = 40  # per operation and phase


def _without_examples(node: Any) -> Any:
    """The schema less its examples, so that fuzzing never moves the seeded users' money (`alice`...)."""
    if isinstance(node, dict):
        return {k: _without_examples(v) for k, v in node.items() if k not in ("example", "examples")}
    if isinstance(node, list):
        return [_without_examples(v) for v in node]
    return node


def test_the_served_openapi_document_is_valid_and_every_reference_resolves(server: str) -> None:
    """Validated by an OpenAPI validator (openapi-spec-validator): a reference to an undefined schema (as
    BatchRequest once was) fails here, before client generators or fuzzers stop on it."""
    document = requests.get(f"{server}/openapi.json", timeout=30).json()
    validate(document)
    for name in ("MovementRequest", "BatchRequest", "UserRequest", "TransferRequest", "AssetRequest", "Problem"):
        assert name in document["components"]["schemas"], name


@pytest.fixture
def fuzzed(server_url: str) -> Iterator[tuple[str, str, str]]:
    """A `wallet serve` on a database of its own, and an admin key: an admin fuzzed by schemathesis changes asset
    policies (`PUT /v1/assets/GOLD` making the seeded GOLD transferable, say), which other tests rely on. Yields the
    database URL, the server's base URL and the key's secret."""
    with own_database(server_url, "wallet_fuzz") as database_url:
        migrate(database_url)

        async def setup() -> str:
            conn = await connect(database_url, Settings(database_url=database_url))
            try:
                await seed(conn)
                return await keys.create(conn, "fuzz-admin", ["admin"])
            finally:
                await conn.close()

        secret = asyncio.run(setup())
        with serving(database_url) as base:
            yield database_url, base, secret


def test_schemathesis_every_check_every_phase(fuzzed: tuple[str, str, str], tmp_path: Path) -> None:
    """`st run --checks all` through every phase, the stateful one included, against a real `wallet serve`: no 5xx,
    every status and body as documented, valid data accepted and invalid data refused, auth enforced, Allow
    headers right; and `wallet verify` finds the fuzzed ledger consistent after. The document is given without
    its examples, so that fuzzing never moves the seeded users' money (`alice`...)."""
    database_url, server, secret = fuzzed
    served = requests.get(f"{server}/openapi.json", timeout=30)
    document = tmp_path / "openapi.json"
    document.write_bytes(orjson.dumps(_without_examples(served.json())))
    command = [
        str(Path(sys.executable).with_name("st")),
        "--config-file",
        str(Path(__file__).with_name("schemathesis.toml")),
        "run",
        str(document),
        "--url",
        server,
        "--checks",
        "all",
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--max-examples",
        str(SCHEMATHESIS_EXAMPLES),
        "--header",
        f"Authorization: Bearer {secret}",
        "--workers",  # one: CPython 3.11's ast.parse is not thread-safe, and Hypothesis parses lambdas with it
        "1",
        "--no-color",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    summary = done.stdout[done.stdout.rfind("SUMMARY") :]
    print(f"\nschemathesis, every check, every phase:\n{summary}")
    assert done.returncode == 0, done.stdout[-20_000:] + done.stderr[-5_000:]
    generated = re.search(r"(\d+) generated", summary)
    assert generated and int(generated.group(1)) >= REQUESTS_MIN, summary
    verified = wallet_verify(database_url)
    assert verified.returncode == 0, verified.stdout + verified.stderr


# --- Hypothesis properties of the validators ----------------------------------------------------------------------

PROPERTY_SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
USER_ID_RE = re.compile(USER_ID_PATTERN)
IDEMPOTENCY_KEY_RE = re.compile(IDEMPOTENCY_KEY_PATTERN)


def movement(**overrides: Any) -> dict[str, Any]:
    return {"user_id": "alice", "asset": "GOLD", "amount": 1, **overrides}


def parses(model: type[MovementRequest] | type[UserRequest], data: Any) -> bool:
    """Validates the way the API does: JSON text through orjson, then the strict model."""
    try:
        model.model_validate(orjson.loads(orjson.dumps(data)))
    except ValidationError:
        return False
    return True


def parses_json_text(text: bytes) -> bool:
    """Whether the service's own body parser accepts `text` as a movement."""
    try:
        body.parse(text, "application/json", MovementRequest)
    except ValidationFailed:
        return False
    return True


@PROPERTY_SETTINGS
@given(st.integers(min_value=1, max_value=AMOUNT_MAX))
def test_any_amount_in_range_is_accepted(amount: int) -> None:
    assert MovementRequest.model_validate(movement(amount=amount)).amount == amount
    assert parses_json_text(orjson.dumps(movement(amount=amount)))


@PROPERTY_SETTINGS
@given(st.one_of(st.integers(max_value=0), st.integers(min_value=AMOUNT_MAX + 1)))
def test_amounts_out_of_range_are_rejected(amount: int) -> None:
    with pytest.raises(ValidationError):
        MovementRequest.model_validate(movement(amount=amount))
    # Beyond 64 bits orjson refuses the number itself; either way the request is rejected.
    assert not parses_json_text(json.dumps(movement(amount=amount)).encode())


@PROPERTY_SETTINGS
@given(
    st.one_of(
        st.floats(allow_nan=True, allow_infinity=True),
        st.integers(min_value=1, max_value=AMOUNT_MAX).map(float),
        st.integers(min_value=1, max_value=AMOUNT_MAX).map(str),
        st.booleans(),
        st.none(),
        st.text(max_size=20),
        st.lists(st.integers(min_value=1, max_value=10), max_size=3),
        st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
    )
)
def test_amounts_that_are_not_integers_are_rejected(amount: Any) -> None:
    with pytest.raises(ValidationError):
        MovementRequest.model_validate(movement(amount=amount))
    text = json.dumps(movement(amount=amount)).encode()  # NaN/Infinity as JavaScript literals
    assert not parses_json_text(text)


@pytest.mark.parametrize("text", [b"1.0", b"1e3", b"1E0", b"100.00", b"-0", b"0", b'"100"', b"true", b"1e400"])
def test_amount_json_spellings_that_are_not_plain_integers_are_rejected(text: bytes) -> None:
    body = b'{"user_id":"alice","asset":"GOLD","amount":' + text + b"}"
    assert not parses_json_text(body)


@PROPERTY_SETTINGS
@given(st.text(max_size=80))
def test_user_ids_are_accepted_exactly_when_they_match_the_pattern(user_id: str) -> None:
    expected = USER_ID_RE.fullmatch(user_id) is not None
    assert parses(MovementRequest, movement(user_id=user_id)) is expected


@PROPERTY_SETTINGS
@given(st.from_regex(USER_ID_PATTERN, fullmatch=True))
def test_user_ids_matching_the_pattern_are_accepted(user_id: str) -> None:
    assume(not user_id.endswith("\n"))  # `$` matches before a final newline; the API must not accept one
    assert parses(MovementRequest, movement(user_id=user_id))


@pytest.mark.parametrize(
    "user_id", ["", "-a", "_a", ".a", "a b", "a/b", "a" * 65, "é", "a\n", "a\x00", "\uff41", "a#", "a?b", "a%2F"]
)
def test_malformed_user_ids_are_rejected(user_id: str) -> None:
    assert not parses(MovementRequest, movement(user_id=user_id))


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


JSON_LEAVES = st.one_of(st.none(), st.booleans(), st.integers(-(2**53), 2**53), st.text(max_size=30))
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=40,
)


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


def _texts(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [*value.keys(), *(t for v in value.values() for t in _texts(v))]
    if isinstance(value, list):
        return [t for v in value for t in _texts(v)]
    return [value] if isinstance(value, str) else []


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.text(max_size=10), JSON_VALUES, max_size=6))
def test_metadata_is_accepted_exactly_within_its_limits(metadata: dict[str, Any]) -> None:
    texts = _texts(metadata)
    assume(all(_encodable(t) for t in texts))  # lone surrogates cannot even be sent as JSON text
    expected = (
        _depth(metadata) <= METADATA_DEPTH_MAX
        and len(orjson.dumps(metadata)) <= METADATA_BYTES_MAX
        and not any("\x00" in t for t in texts)
    )
    assert parses(MovementRequest, movement(metadata=metadata)) is expected


@PROPERTY_SETTINGS
@given(st.integers(min_value=1, max_value=40))
def test_metadata_depth_limit(depth: int) -> None:
    value: Any = {"leaf": 1}
    for _ in range(depth - 1):
        value = {"n": value}
    assert _depth(value) == depth
    assert parses(MovementRequest, movement(metadata=value)) is (depth <= METADATA_DEPTH_MAX)
    listed: Any = [1]
    for _ in range(depth - 1):
        listed = [listed]
    assert parses(MovementRequest, movement(metadata={"l": listed})) is (depth + 1 <= METADATA_DEPTH_MAX)


@PROPERTY_SETTINGS
@given(st.integers(min_value=0, max_value=2 * METADATA_BYTES_MAX))
def test_metadata_size_limit(filler: int) -> None:
    metadata = {"x": "a" * filler}
    size = len(orjson.dumps(metadata))
    assert parses(MovementRequest, movement(metadata=metadata)) is (size <= METADATA_BYTES_MAX)


@PROPERTY_SETTINGS
@given(st.text(max_size=20), st.text(max_size=20), st.integers(min_value=0, max_value=20))
def test_metadata_and_descriptions_refuse_nul(before: str, after: str, where: int) -> None:
    assume(_encodable(before + after))
    text = before + "\x00" + after
    assert not parses(MovementRequest, movement(metadata={"k": text}))
    assert not parses(MovementRequest, movement(metadata={text: 1}))
    assert not parses(MovementRequest, movement(metadata={"deep": [{"k": text}]}))
    assert not parses(MovementRequest, movement(description=text))
    assert not parses(UserRequest, {"display_name": text})


@PROPERTY_SETTINGS
@given(st.integers(min_value=0xD800, max_value=0xDFFF), st.text(max_size=10))
def test_lone_surrogates_are_refused_in_json_text(surrogate: int, prefix: str) -> None:
    """Escaped in JSON (\\udXXX), a lone surrogate must be refused, by the parser or by the validator."""
    assume(_encodable(prefix))
    escaped = json.dumps(prefix)[1:-1] + f"\\u{surrogate:04x}"
    for text in (
        f'{{"user_id":"alice","asset":"GOLD","amount":1,"metadata":{{"k":"{escaped}"}}}}',
        f'{{"user_id":"alice","asset":"GOLD","amount":1,"metadata":{{"{escaped}":1}}}}',
        f'{{"user_id":"alice","asset":"GOLD","amount":1,"description":"{escaped}"}}',
    ):
        assert not parses_json_text(text.encode())
    # Reaching the validator directly (not through JSON), it is refused too.
    with pytest.raises(ValidationError):
        MovementRequest.model_validate(movement(metadata={"k": prefix + chr(surrogate)}))
    with pytest.raises(ValidationError):
        MovementRequest.model_validate(movement(description=prefix + chr(surrogate)))


@PROPERTY_SETTINGS
@given(st.text(min_size=0, max_size=300))
def test_idempotency_keys_in_batches_match_the_header_rule(key: str) -> None:
    """1 to 255 visible ASCII characters: the batch item field and the header share one pattern."""
    expected = 1 <= len(key) <= 255 and all(0x21 <= ord(c) <= 0x7E for c in key)
    item = {**movement(), "type": "topup", "idempotency_key": key}
    try:
        BatchOperation.model_validate(item)
        accepted = True
    except ValidationError:
        accepted = False
    assert accepted is expected
    assert (IDEMPOTENCY_KEY_RE.fullmatch(key) is not None) is expected


@PROPERTY_SETTINGS
@given(st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=255))
def test_visible_ascii_idempotency_keys_are_valid(key: str) -> None:
    assert IDEMPOTENCY_KEY_RE.fullmatch(key)
    BatchOperation.model_validate({**movement(), "type": "bonus", "idempotency_key": key})


@pytest.mark.parametrize("key", ["", " ", "a b", "a\tb", "é", "a\x7f", "k" * 256, "a\n", "\x00"])
def test_malformed_idempotency_keys_are_rejected(key: str) -> None:
    with pytest.raises(ValidationError):
        BatchOperation.model_validate({**movement(), "type": "topup", "idempotency_key": key})


def test_float_amount_close_to_an_integer_is_still_a_float() -> None:
    assert not parses_json_text(
        b'{"user_id":"alice","asset":"GOLD","amount":' + repr(math.nextafter(1, 2)).encode() + b"}"
    )
