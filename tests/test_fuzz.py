"""Fuzzing: schemathesis against the app's own OpenAPI document, and Hypothesis properties of the validators.

The schemathesis part sends generated requests (valid and invalid) to every documented operation of a real
`wallet serve` process with an admin key, and checks that no answer is a 5xx, that every status is documented
and every body conforms to its documented schema.
"""

import json
import math
import re
from collections import Counter
from typing import Any

import orjson
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from pydantic import ValidationError
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import Keys
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

REQUESTS_MIN = 1000
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
# Generated examples per operation and mode; operations with few inputs exhaust theirs sooner.
EXAMPLES = {GenerationMode.POSITIVE: 80, GenerationMode.NEGATIVE: 40}


def _without_examples(node: Any) -> Any:
    """The schema less its examples, so that fuzzing never moves the seeded users' money (`alice`...)."""
    if isinstance(node, dict):
        return {k: _without_examples(v) for k, v in node.items() if k not in ("example", "examples")}
    if isinstance(node, list):
        return [_without_examples(v) for v in node]
    return node


def test_fuzz_every_operation_against_the_real_server(server: str, api_keys: Keys) -> None:
    served = requests.get(f"{server}/openapi.json", timeout=30)
    assert served.status_code == 200
    schema = schemathesis.openapi.from_dict(_without_examples(served.json()))
    auth = api_keys.headers("admin")
    made: Counter[str] = Counter()
    statuses: Counter[str] = Counter()
    failures: dict[str, str] = {}
    unsatisfiable: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 11, [op.label for op in operations]

    with requests.Session() as session:

        def fuzz(operation: Any, mode: GenerationMode, examples: int) -> None:
            @settings(
                max_examples=examples,
                deadline=None,
                database=None,
                phases=[Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(generation_mode=mode))
            def one(case: schemathesis.Case) -> None:
                response = case.call(base_url=server, session=session, headers=auth, timeout=30)
                made[operation.label] += 1
                statuses[f"{response.status_code}"] += 1
                case.validate_response(response, checks=CHECKS, headers=auth)

            one()

        for operation in operations:
            for mode, examples in EXAMPLES.items():
                try:
                    fuzz(operation, mode, examples)
                except Unsatisfiable:  # nothing to make invalid (GET /health has no input at all)
                    unsatisfiable.append(f"{operation.label} ({mode.value})")
                except Exception as exc:  # every operation is fuzzed; failures are reported together
                    failures[f"{operation.label} ({mode.value})"] = str(exc)[:3000]

    total = sum(made.values())
    print(f"\nschemathesis: {total} requests over {len(made)} operations; statuses {dict(sorted(statuses.items()))}")
    for label, count in sorted(made.items()):
        print(f"  {count:5d}  {label}")
    print(f"  no invalid input possible: {unsatisfiable}")
    assert set(unsatisfiable) <= {"GET /health (negative)"}
    assert not failures, "\n\n".join(f"== {label}\n{text}" for label, text in failures.items())
    assert total >= REQUESTS_MIN, f"only {total} requests were generated"
    assert "500" not in statuses


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
    try:
        MovementRequest.model_validate(orjson.loads(text))
    except (ValidationError, orjson.JSONDecodeError):
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
    for body in (
        f'{{"user_id":"alice","asset":"GOLD","amount":1,"metadata":{{"k":"{escaped}"}}}}',
        f'{{"user_id":"alice","asset":"GOLD","amount":1,"metadata":{{"{escaped}":1}}}}',
        f'{{"user_id":"alice","asset":"GOLD","amount":1,"description":"{escaped}"}}',
    ):
        assert not parses_json_text(body.encode())
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
