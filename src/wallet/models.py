"""Request and response models. Requests are strict: an amount of 10.0, "10" or true is a validation error."""

from typing import Annotated, Any, Literal, get_args

import orjson
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from wallet.kinds import KINDS, SYSTEM_ACCOUNTS

AMOUNT_MAX = 10**15
BALANCE_MAX = 10**18  # a user's balance in one asset (SQL: wallet_balance_max())
ISSUANCE_MAX = 2**61  # what one issuer account may issue, net (SQL: wallet_issuance_max())
DESCRIPTION_LENGTH_MAX = 500
METADATA_BYTES_MAX = 4096
METADATA_DEPTH_MAX = 8
DISPLAY_NAME_LENGTH_MAX = 200
BATCH_OPERATIONS_MAX = 1000
PAGE_LIMIT_MAX = 200
PAGE_LIMIT_DEFAULT = 50

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


NO_NUL = {"pattern": "^[^\\u0000]*$"}  # documented; _storable_text() checks it, with a clearer message
Description = Annotated[
    str,
    StringConstraints(max_length=DESCRIPTION_LENGTH_MAX),
    AfterValidator(_storable_text),
    Field(json_schema_extra=NO_NUL),
]
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


Reason = Annotated[
    str,
    StringConstraints(min_length=1, max_length=DESCRIPTION_LENGTH_MAX),
    AfterValidator(_storable_text),
    Field(json_schema_extra=NO_NUL),
]
REWARDS_MAX = 5
HOLD_EXPIRY_S_MAX = 2_592_000  # 30 days
HOLD_EXPIRY_S_DEFAULT = 900
ADJUSTMENT_ENTRIES_MIN = 2
ADJUSTMENT_ENTRIES_MAX = 20
# A user's account, or one of the system accounts the seed opens in every asset: an adjustment naming any other
# is a 422 that names the entry, not an engine error (WL901, a 500) on an account that does not exist.
ACCOUNT_PATTERN = rf"^(user:[A-Za-z0-9][A-Za-z0-9_.:@-]{{0,63}}|system:({'|'.join(SYSTEM_ACCOUNTS)}))$"
HOLD_ID_PATTERN = r"^hold_[0-7][0-9a-f]{15}$"
TRANSACTION_ID_PATTERN = r"^tx_[0-7][0-9a-f]{15}$"


class RewardRequest(Strict):
    asset: AssetCode
    amount: Amount


class PurchaseRequest(MovementRequest):
    """A purchase, with rewards paid in other assets in the same transaction (bonus_pool -> user)."""

    rewards: Annotated[list[RewardRequest], Field(max_length=REWARDS_MAX)] = Field(default_factory=list)

    @model_validator(mode="after")
    def _rewards_in_other_assets(self) -> "PurchaseRequest":
        assets = [reward.asset for reward in self.rewards]
        if len(set(assets)) < len(assets):
            raise ValueError("rewards: each asset at most once")
        if self.asset in assets:
            raise ValueError("rewards: in assets other than the purchase's")
        return self


class HoldRequest(MovementRequest):
    """A hold of part of a user's available balance, until it is captured, voided, or expires."""

    expires_in_s: Annotated[int, Field(ge=1, le=HOLD_EXPIRY_S_MAX)] = HOLD_EXPIRY_S_DEFAULT


class CaptureRequest(Strict):
    """All of the hold (no amount) or part of it; the rest is released."""

    amount: Amount | None = None
    description: Description | None = None
    metadata: Metadata = Field(default_factory=dict)


class EmptyRequest(Strict):
    """No fields."""


class RefundRequest(Strict):
    """What is left to refund (no amount) or part of it, and why."""

    amount: Amount | None = None
    reason: Reason


class AdjustmentEntry(Strict):
    account: Annotated[str, StringConstraints(pattern=ACCOUNT_PATTERN)]
    asset: AssetCode
    amount: Annotated[int, Field(ge=-AMOUNT_MAX, le=AMOUNT_MAX, json_schema_extra={"not": {"const": 0}})]

    @field_validator("amount")
    @classmethod
    def _not_zero(cls, value: int) -> int:
        if value == 0:
            raise ValueError("must not be 0")
        return value


class AdjustmentRequest(Strict):
    """An operator's correction: signed entries summing to 0 per asset, each account at most once per asset."""

    reason: Reason
    entries: Annotated[
        list[AdjustmentEntry], Field(min_length=ADJUSTMENT_ENTRIES_MIN, max_length=ADJUSTMENT_ENTRIES_MAX)
    ]
    metadata: Metadata = Field(default_factory=dict)

    @model_validator(mode="after")
    def _balanced(self) -> "AdjustmentRequest":
        totals: dict[str, int] = {}
        for entry in self.entries:
            totals[entry.asset] = totals.get(entry.asset, 0) + entry.amount
        unbalanced = sorted(asset for asset, total in totals.items() if total != 0)
        if unbalanced:
            raise ValueError(f"entries: they must sum to 0 in every asset, and do not in {', '.join(unbalanced)}")
        if len({(e.account, e.asset) for e in self.entries}) < len(self.entries):
            raise ValueError("entries: each account at most once per asset")
        return self


class FreezeRequest(Strict):
    reason: Reason


class TransferRequest(Strict):
    """A transfer from one user to another, in a transferable asset."""

    model_config = ConfigDict(
        strict=True,
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "from_user_id": "alice",
                    "to_user_id": "bob",
                    "asset": "GEM",
                    "amount": 25,
                    "description": "Split the loot",
                    "metadata": {"raid": 12},
                }
            ]
        },
    )

    from_user_id: UserId
    to_user_id: UserId
    asset: AssetCode
    amount: Amount
    description: Description | None = None
    metadata: Metadata = Field(default_factory=dict)

    @model_validator(mode="after")
    def _two_users(self) -> "TransferRequest":
        if self.from_user_id == self.to_user_id:
            raise ValueError("to_user_id: must be another user than from_user_id")
        return self


ASSET_NAME_LENGTH_MAX = 100
SCALE_MAX = 18
EXPIRY_DAYS_MAX = 3650


class AssetRequest(Strict):
    """An asset's name and policies. On creation, what is left out takes its default (scale 0, not transferable, no
    expiry); on a change, what is left out stays as it is. `expiry_days: null` removes the expiry. The scale
    cannot change once the asset exists."""

    model_config = ConfigDict(
        strict=True,
        extra="forbid",
        json_schema_extra={"examples": [{"name": "Gems", "scale": 0, "transferable": True, "expiry_days": 90}]},
    )

    name: Annotated[
        str,
        StringConstraints(min_length=1, max_length=ASSET_NAME_LENGTH_MAX),
        AfterValidator(_storable_text),
        Field(json_schema_extra=NO_NUL),
    ]
    scale: Annotated[int, Field(ge=0, le=SCALE_MAX, description="Decimal places of the minor unit.")] = 0
    transferable: bool = False
    expiry_days: Annotated[int, Field(ge=1, le=EXPIRY_DAYS_MAX)] | None = None


def _known_kind(value: str) -> str:
    if value not in KINDS:
        raise ValueError(f"must be one of {', '.join(KINDS)}")
    return value


IdempotencyKey = Annotated[str, StringConstraints(pattern=IDEMPOTENCY_KEY_PATTERN)]


class BatchOperation(PurchaseRequest):
    """A top-up, bonus or purchase (rewards only on a purchase) with its own idempotency key."""

    type: Annotated[str, AfterValidator(_known_kind), Field(json_schema_extra={"enum": list(KINDS)})]
    idempotency_key: IdempotencyKey

    @model_validator(mode="after")
    def _rewards_on_purchases(self) -> "BatchOperation":
        if self.rewards and self.type != "purchase":
            raise ValueError("rewards: only purchases have rewards")
        return self


class BatchCapture(CaptureRequest):
    type: Literal["capture"]
    hold_id: Annotated[str, StringConstraints(pattern=HOLD_ID_PATTERN)]
    idempotency_key: IdempotencyKey


class BatchRefund(RefundRequest):
    type: Literal["refund"]
    transaction_id: Annotated[str, StringConstraints(pattern=TRANSACTION_ID_PATTERN)]
    idempotency_key: IdempotencyKey


class BatchTransfer(TransferRequest):
    type: Literal["transfer"]
    idempotency_key: IdempotencyKey


class BatchBody(Strict):
    """As sent: each operation is validated on its own by its type (operation()), so that a problem names the
    item's own fields (operations.3.amount)."""

    operations: Annotated[list[dict[str, Any]], Field(min_length=1, max_length=BATCH_OPERATIONS_MAX)]
    atomic: bool = False


class BatchRequest(Strict):
    """A batch, as the OpenAPI document describes it."""

    operations: Annotated[
        list[BatchOperation | BatchCapture | BatchRefund | BatchTransfer],
        Field(min_length=1, max_length=BATCH_OPERATIONS_MAX),
    ]
    atomic: bool = False


BatchItem = BatchOperation | BatchCapture | BatchRefund | BatchTransfer
BATCH_MODELS: dict[str, type[BatchItem]] = {
    "capture": BatchCapture,
    "refund": BatchRefund,
    "transfer": BatchTransfer,
}


def operation(data: Any) -> BatchItem:
    """One item of a batch, by its type (a movement kind of the registry, a capture, a refund or a transfer)."""
    kind = data.get("type") if isinstance(data, dict) else None
    model = BATCH_MODELS.get(kind, BatchOperation) if isinstance(kind, str) else BatchOperation
    return model.model_validate(data)


class UserRequest(Strict):
    display_name: (
        Annotated[
            str,
            StringConstraints(min_length=1, max_length=DISPLAY_NAME_LENGTH_MAX),
            AfterValidator(_storable_text),
            Field(json_schema_extra=NO_NUL),
        ]
        | None
    ) = None


EventType = Literal[
    "transaction.posted",
    "hold.created",
    "hold.captured",
    "hold.voided",
    "hold.expired",
    "user.created",
    "user.frozen",
    "user.unfrozen",
    "balance.threshold_crossed",
    "webhook.disabled",
]


class WebhookRequest(Strict):
    """An endpoint to POST events of these types to (http or https; the service's allow-list may narrow the hosts)."""

    model_config = ConfigDict(
        strict=True,
        extra="forbid",
        json_schema_extra={
            "examples": [{"url": "https://game.example/wallet-events", "types": ["transaction.posted"]}]
        },
    )

    url: Annotated[str, StringConstraints(min_length=8, max_length=2000, pattern=r"^https?://\S+$")]
    types: Annotated[list[EventType], Field(min_length=1, max_length=len(get_args(EventType)))]
    description: Description | None = None


class MonitorRequest(Strict):
    """Emit `balance.threshold_crossed` when a posting takes a balance of the asset (one user's, or any user's)
    across the threshold: below it (from at or above), or above it (from at or below)."""

    asset: AssetCode
    user_id: UserId | None = None
    condition: Literal["below", "above"]
    threshold: Annotated[int, Field(ge=0, le=AMOUNT_MAX * 1000)]
