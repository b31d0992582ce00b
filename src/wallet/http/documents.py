"""Response models: documentation only (the OpenAPI document). Handlers answer JSON rendered by render.py or
PostgreSQL straight through."""

from typing import Any, Literal

from pydantic import BaseModel, Field

TIMESTAMP_EXAMPLE = "2026-11-22T10:00:00.123456Z"


class Asset(BaseModel):
    code: str = Field(examples=["GOLD"])
    name: str = Field(examples=["Gold Coins"])
    scale: int = Field(examples=[0])
    transferable: bool = Field(examples=[False], description="Whether credits may move between users.")
    expiry_days: int | None = Field(examples=[None], description="How long a credit lasts; null: for ever.")


class AssetList(BaseModel):
    items: list[Asset]


class User(BaseModel):
    user_id: str = Field(examples=["alice"])
    display_name: str | None = Field(examples=["Alice"])
    status: Literal["active", "frozen"]
    frozen_reason: str | None = Field(examples=[None])
    frozen_at: str | None = Field(examples=[None], description="Since when the user is frozen.")
    created_at: str = Field(examples=[TIMESTAMP_EXAMPLE])


class Lot(BaseModel):
    amount: int = Field(examples=[40], description="What is left of the credit that formed it.")
    expires_at: str = Field(examples=[TIMESTAMP_EXAMPLE])


EXPIRING_DESCRIPTION = (
    "Assets whose credits expire only, not with as_of: the next five lots to expire, soonest first (debits take them"
    " in this order; what is left of one at its date is moved to system:expired within 60 s)."
)


class Balance(BaseModel):
    user_id: str = Field(examples=["alice"])
    asset: str = Field(examples=["GOLD"])
    balance: int = Field(examples=[1100], description="Posted.")
    held: int | None = Field(default=None, examples=[100], description="Sum of active holds; not with as_of.")
    available: int | None = Field(default=None, examples=[1000], description="balance - held; not with as_of.")
    expiring: list[Lot] | None = Field(default=None, description=EXPIRING_DESCRIPTION)
    as_of: str | None = Field(default=None, examples=[TIMESTAMP_EXAMPLE], description="Only with as_of.")


class AssetBalance(BaseModel):
    asset: str = Field(examples=["GOLD"])
    balance: int = Field(examples=[1100])
    held: int | None = Field(default=None, examples=[100])
    available: int | None = Field(default=None, examples=[1000])
    expiring: list[Lot] | None = Field(default=None, description=EXPIRING_DESCRIPTION)


class Balances(BaseModel):
    user_id: str = Field(examples=["alice"])
    balances: list[AssetBalance]
    as_of: str | None = Field(default=None, examples=[TIMESTAMP_EXAMPLE], description="Only with as_of.")


class Entry(BaseModel):
    account: str = Field(examples=["user:alice"])
    asset: str = Field(examples=["GOLD"])
    amount: int = Field(examples=[100])


class Reward(BaseModel):
    asset: str = Field(examples=["LOYALTY"])
    amount: int = Field(examples=[10])
    balance_after: int | None = Field(examples=[210])


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
    rewards: list[Reward]
    refund_of: str | None = Field(examples=[None])
    hold_id: str | None = Field(examples=[None])
    created_at: str = Field(examples=[TIMESTAMP_EXAMPLE])
    to_user_id: str | None = Field(
        default=None, examples=["bob"], description="Transfers only: the receiver (`user_id` is the sender)."
    )
    to_balance_after: int | None = Field(
        default=None, examples=[125], description="Transfers only: the receiver's balance after it."
    )


class TransactionPage(BaseModel):
    items: list[Transaction]
    next_cursor: str | None = Field(examples=["tx_00000000000004d2"])


class Refunds(BaseModel):
    transaction_id: str = Field(examples=["tx_00000000000004d2"])
    amount: int = Field(examples=[100])
    refunded_amount: int = Field(examples=[30])
    refundable_amount: int = Field(examples=[70])
    items: list[Transaction]


class Hold(BaseModel):
    id: str = Field(examples=["hold_000000000000002a"])
    status: Literal["held", "captured", "voided", "expired"]
    user_id: str = Field(examples=["alice"])
    asset: str = Field(examples=["GOLD"])
    amount: int = Field(examples=[100])
    captured_amount: int | None = Field(examples=[None])
    expires_at: str = Field(examples=[TIMESTAMP_EXAMPLE])
    transaction_id: str | None = Field(examples=[None])
    created_at: str = Field(examples=[TIMESTAMP_EXAMPLE])
    resolved_at: str | None = Field(examples=[None])
    description: str | None = Field(examples=["Tournament buy-in"])
    metadata: dict[str, Any] = Field(examples=[{"tournament": 7}])


class HoldPage(BaseModel):
    items: list[Hold]
    next_cursor: str | None = Field(examples=["hold_000000000000002a"])


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


class Tally(BaseModel):
    count: int = Field(examples=[3])
    amount: int = Field(examples=[1500])


class AssetStatistics(BaseModel):
    asset: str = Field(examples=["GOLD"])
    balance: int = Field(examples=[1100], description="Posted, at the end of the window (now, without `to`).")
    credits: Tally = Field(description="Entries that raised the balance; amount positive.")
    debits: Tally = Field(description="Entries that lowered the balance; amount positive.")
    by_type: dict[str, Tally] = Field(
        examples=[{"topup": {"count": 2, "amount": 1500}, "purchase": {"count": 1, "amount": -400}}],
        description="Per transaction type: entries, and the net change they made (credits - debits).",
    )
    first_at: str | None = Field(examples=[TIMESTAMP_EXAMPLE], description="The window's first entry.")
    last_at: str | None = Field(examples=[TIMESTAMP_EXAMPLE], description="The window's last entry.")


class Statistics(BaseModel):
    user_id: str = Field(examples=["alice"])
    from_: str | None = Field(alias="from", examples=[None], description="The window's start, included.")
    to: str | None = Field(examples=[None], description="The window's end, excluded.")
    assets: list[AssetStatistics]


class Event(BaseModel):
    id: str = Field(examples=["evt_tx_0000000000000008"])
    type: str = Field(examples=["transaction.posted"], description="One of the event types (spec/API.md).")
    created_at: str = Field(examples=[TIMESTAMP_EXAMPLE])
    data: dict[str, Any] = Field(description="The object as the API shows it at the change: a transaction, a hold…")


class EventPage(BaseModel):
    items: list[Event]
    next_cursor: str = Field(
        examples=["ev_1234_0_8"], description="Never null: where to ask from next, also when `items` is empty."
    )


class Webhook(BaseModel):
    id: str = Field(examples=["wh_0000000000000001"])
    url: str = Field(examples=["https://game.example/wallet-events"])
    types: list[str] = Field(examples=[["transaction.posted"]])
    description: str | None = None
    status: Literal["active", "disabled"]
    created_at: str = Field(examples=[TIMESTAMP_EXAMPLE])
    failing_since: str | None = Field(default=None, description="The first failure since the last delivery.")
    disabled_at: str | None = Field(default=None, description="Set when it had failed for 72 hours.")
    secret: str | None = Field(
        default=None, description="Only in the answers of its creation and of a rotation: it is never shown again."
    )


class WebhookList(BaseModel):
    items: list[Webhook]
    next_cursor: str | None


class DeliveryAttempt(BaseModel):
    attempt: int
    started_at: str
    duration_ms: int
    status_code: int | None = Field(description="The receiver's HTTP status; null when there was no answer.")
    error: str | None


class Delivery(BaseModel):
    id: str = Field(examples=["whd_0000000000000001"])
    event_id: str
    event_type: str
    status: Literal["pending", "delivered"]
    attempts: list[DeliveryAttempt]
    next_attempt_at: str | None
    created_at: str
    delivered_at: str | None


class DeliveryPage(BaseModel):
    items: list[Delivery]
    next_cursor: str | None


class Monitor(BaseModel):
    id: str = Field(examples=["mon_0000000000000001"])
    asset: str = Field(examples=["GOLD"])
    user_id: str | None = Field(description="null: every user's balance of the asset.")
    condition: Literal["below", "above"]
    threshold: int
    created_at: str


class MonitorList(BaseModel):
    items: list[Monitor]
    next_cursor: str | None


class UserPage(BaseModel):
    items: list[User]
    next_cursor: str | None = Field(examples=["alice"])


class SystemAccount(BaseModel):
    asset: str = Field(examples=["GOLD"])
    account: str = Field(examples=["system:treasury"])
    balance: int = Field(examples=[-125_000], description="The sum of its stripes; treasury and bonus_pool go below 0.")


class SystemAccountList(BaseModel):
    items: list[SystemAccount]


class VolumeRow(BaseModel):
    asset: str = Field(examples=["GOLD"])
    hour: str = Field(examples=["2026-12-03T15:00:00.000000Z"], description="The start of the hour.")
    type: str = Field(examples=["topup"])
    count: int = Field(examples=[12])
    amount: int = Field(examples=[3400], description="The sum of the transactions' amounts, in their asset.")


class Volume(BaseModel):
    from_: str = Field(alias="from", examples=["2026-12-02T16:00:00.000000Z"])
    to: str = Field(examples=[TIMESTAMP_EXAMPLE])
    items: list[VolumeRow] = Field(description="Hours without transactions of an asset and type are left out.")


class VerifyCheck(BaseModel):
    name: str
    violations: int
    sample: list[dict[str, Any]] = Field(description="Up to five violating rows.")


class VerifyReport(BaseModel):
    id: str = Field(examples=["vr_1"])
    started_at: str
    finished_at: str
    ok: bool
    failed: int = Field(description="Checks with violations.")
    totals: dict[str, int] = Field(examples=[{"transactions": 10, "entries": 20, "accounts": 9, "users": 3}])
    checks: list[VerifyCheck]


class VerifyReportPage(BaseModel):
    items: list[VerifyReport]
    next_cursor: str | None = Field(examples=["vr_1"])
