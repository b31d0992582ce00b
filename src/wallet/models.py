"""Request and response models. Requests are strict: an amount of 10.0, "10" or true is a validation error."""

from typing import Annotated, Any, Literal

import orjson
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from wallet.kinds import KINDS

AMOUNT_MAX = 10**15
BALANCE_MAX = 10**18  # a user's balance in one asset (SQL: wallet_balance_max())
ISSUANCE_MAX = 2**61  # what one issuer account may issue, net (SQL: wallet_issuance_max())
DESCRIPTION_LENGTH_MAX = 500
METADATA_BYTES_MAX = 4096
METADATA_DEPTH_MAX = 8
DISPLAY_NAME_LENGTH_MAX = 200
BATCH_OPERATIONS_MAX = 1000
PAGE_LIMIT_MAX = 200

USER_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,63}$"
ASSET_PATTERN = r"^[A-Z][A-Z0-9_]{1,15}$"
IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e]{1,255}$"
CURSOR_PATTERN = r"^tx_[0-7][0-9a-f]{15}$"  # a transaction id: 16 hex digits of a bigint

UserId = Annotated[str, StringConstraints(pattern=USER_ID_PATTERN)]
AssetCode = Annotated[str, StringConstraints(pattern=ASSET_PATTERN)]
Amount = Annotated[int, Field(ge=1, le=AMOUNT_MAX, description="Minor units of the asset.", examples=[100])]


def _storable_text(value: str) -> str:
    """PostgreSQL text cannot hold NUL, and UTF-8 cannot hold lone surrogates."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode (no lone surrogates)") from None
    return value


class JsonNumber:
    """A number of a request body with a fraction or an exponent, as the text it was sent as: Python's float would
    round it (0.10 becomes 0.1; 1e400 becomes inf). In metadata it is stored as that text (PostgreSQL's jsonb keeps
    decimals exactly) when jsonb would show it back unchanged; anywhere else a field that wants an integer or a
    string refuses it as it refuses any other number."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def exact_in_jsonb(self) -> bool:
        """jsonb writes numbers back without exponent and without the sign of a zero ("1e2" comes back as 100)."""
        if "e" in self.text.lower():
            return False
        negative_zero = self.text.startswith("-") and not self.text.strip("-0.")
        return not negative_zero

    def __repr__(self) -> str:
        return self.text


INT64_MAX = 2**63 - 1


def _stored_exactly(value: Any) -> Any:
    """A metadata value as it will be stored: numbers orjson cannot write (fractions kept as text, integers past 64
    bits) become their text; one that jsonb would show back otherwise is refused."""
    if isinstance(value, JsonNumber):
        if not value.exact_in_jsonb():
            raise ValueError(
                f"has the number {value.text}, which would be stored and shown back as another spelling:"
                " write numbers without an exponent, and zero without a sign"
            )
        return orjson.Fragment(value.text)
    if isinstance(value, int) and not isinstance(value, bool) and not -INT64_MAX - 1 <= value <= INT64_MAX:
        return orjson.Fragment(str(value))
    return value


def _walk_metadata(value: dict[str, Any]) -> None:
    """Checks depth, strings and numbers without recursion (the body parser allows deep nesting, Python's stack
    less), turning numbers into what is stored, in place."""
    stack: list[tuple[dict[str, Any] | list[Any], int]] = [(value, 1)]
    while stack:
        container, depth = stack.pop()
        if depth > METADATA_DEPTH_MAX:
            raise ValueError(f"must be nested at most {METADATA_DEPTH_MAX} levels deep")
        slots: list[tuple[Any, Any]] = list(container.items() if isinstance(container, dict) else enumerate(container))
        for slot, item in slots:
            if isinstance(slot, str):
                _storable_text(slot)
            if isinstance(item, str):
                _storable_text(item)
            elif isinstance(item, dict | list):
                stack.append((item, depth + 1))
            else:
                container[slot] = _stored_exactly(item)


def _valid_metadata(value: dict[str, Any]) -> dict[str, Any]:
    _walk_metadata(value)
    if len(orjson.dumps(value)) > METADATA_BYTES_MAX:
        raise ValueError(f"must be at most {METADATA_BYTES_MAX} bytes serialized")
    return value


Description = Annotated[str, StringConstraints(max_length=DESCRIPTION_LENGTH_MAX), AfterValidator(_storable_text)]
Metadata = Annotated[
    dict[str, Any],
    AfterValidator(_valid_metadata),
    Field(description=f"Any JSON object, at most {METADATA_BYTES_MAX} bytes serialized.", examples=[{"order": 7}]),
]


class Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class MovementRequest(Strict):
    """The body of a top-up, bonus or purchase."""

    model_config = ConfigDict(
        strict=True,
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "user_id": "alice",
                    "asset": "GOLD",
                    "amount": 100,
                    "description": "Weekly allowance",
                    "metadata": {"campaign": "w47"},
                }
            ]
        },
    )

    user_id: UserId
    asset: AssetCode
    amount: Amount
    description: Description | None = None
    metadata: Metadata = Field(default_factory=dict)


def _known_kind(value: str) -> str:
    if value not in KINDS:
        raise ValueError(f"must be one of {', '.join(KINDS)}")
    return value


class BatchOperation(MovementRequest):
    type: Annotated[str, AfterValidator(_known_kind), Field(json_schema_extra={"enum": list(KINDS)})]
    idempotency_key: Annotated[str, StringConstraints(pattern=IDEMPOTENCY_KEY_PATTERN)]


class BatchRequest(Strict):
    operations: Annotated[list[BatchOperation], Field(min_length=1, max_length=BATCH_OPERATIONS_MAX)]
    atomic: bool = False


class UserRequest(Strict):
    display_name: (
        Annotated[
            str, StringConstraints(min_length=1, max_length=DISPLAY_NAME_LENGTH_MAX), AfterValidator(_storable_text)
        ]
        | None
    ) = None


# Response models: documentation only. Handlers pass JSON rendered by PostgreSQL straight through.
class Asset(BaseModel):
    code: str = Field(examples=["GOLD"])
    name: str = Field(examples=["Gold Coins"])
    scale: int = Field(examples=[0])


class AssetList(BaseModel):
    items: list[Asset]


class User(BaseModel):
    user_id: str = Field(examples=["alice"])
    display_name: str | None = Field(examples=["Alice"])
    created_at: str = Field(examples=["2026-11-22T10:00:00.123456Z"])


class Balance(BaseModel):
    user_id: str = Field(examples=["alice"])
    asset: str = Field(examples=["GOLD"])
    balance: int = Field(examples=[1100])


class AssetBalance(BaseModel):
    asset: str = Field(examples=["GOLD"])
    balance: int = Field(examples=[1100])


class Balances(BaseModel):
    user_id: str = Field(examples=["alice"])
    balances: list[AssetBalance]


class Entry(BaseModel):
    account: str = Field(examples=["user:alice"])
    amount: int = Field(examples=[100])


class Transaction(BaseModel):
    id: str = Field(examples=["tx_00000000000004d2"])
    type: str = Field(examples=["topup"])
    status: Literal["posted"]
    user_id: str | None = Field(examples=["alice"])
    asset: str = Field(examples=["GOLD"])
    amount: int = Field(examples=[100])
    balance_after: int | None = Field(examples=[1100])
    description: str | None = Field(examples=["Weekly allowance"])
    metadata: dict[str, Any] = Field(examples=[{"campaign": "w47"}])
    entries: list[Entry]
    created_at: str = Field(examples=["2026-11-22T10:00:00.123456Z"])


class TransactionPage(BaseModel):
    items: list[Transaction]
    next_cursor: str | None = Field(examples=["tx_00000000000004d2"])


class Problem(BaseModel):
    type: str = Field(examples=["https://wallet.example/problems/insufficient_funds"])
    title: str = Field(examples=["Insufficient funds"])
    status: int = Field(examples=[409])
    detail: str = Field(examples=["Balance of user:alice in GOLD is 50, less than the 100 requested."])
    code: str = Field(examples=["insufficient_funds"])
    errors: list[dict[str, Any]] | None = Field(default=None, description="Offending fields, on 422.")


class BatchResult(BaseModel):
    status: int = Field(examples=[201])
    transaction: Transaction | None = None
    problem: Problem | None = None


class BatchResponse(BaseModel):
    results: list[BatchResult]


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    database: Literal["ok", "unavailable"]
