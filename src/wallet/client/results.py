"""What the client's calls return: the API's representations as dataclasses."""

from dataclasses import dataclass, field, fields
from typing import Any


def _named(cls: type, d: dict[str, Any]) -> dict[str, Any]:
    """The members of `d` that are fields of the dataclass `cls` (None for those missing); others are left out, so that
    a newer server's additions do not break an older client."""
    return {f.name: d.get(f.name) for f in fields(cls)}


@dataclass(frozen=True, slots=True)
class Entry:
    account: str
    asset: str
    amount: int


@dataclass(frozen=True, slots=True)
class Transaction:
    id: str
    type: str
    user_id: str | None
    asset: str
    amount: int
    balance_after: int | None
    description: str | None
    metadata: dict[str, Any]
    entries: list[Entry]
    rewards: list[dict[str, Any]]
    refund_of: str | None
    hold_id: str | None
    created_at: str
    to_user_id: str | None = None
    to_balance_after: int | None = None

    @classmethod
    def of(cls, d: dict[str, Any]) -> "Transaction":
        return cls(
            d["id"], d["type"], d.get("user_id"), d["asset"], d["amount"], d.get("balance_after"), d.get("description"),
            d.get("metadata") or {}, [Entry(**e) for e in d.get("entries", [])], d.get("rewards") or [],
            d.get("refund_of"), d.get("hold_id"), d["created_at"], d.get("to_user_id"), d.get("to_balance_after"),
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Lot:
    amount: int
    expires_at: str


@dataclass(frozen=True, slots=True)
class Balance:
    asset: str
    balance: int
    held: int | None = None
    available: int | None = None
    expiring: list[Lot] | None = None

    @classmethod
    def of(cls, d: dict[str, Any]) -> "Balance":
        expiring = [Lot(**lot) for lot in d["expiring"]] if d.get("expiring") is not None else None
        return cls(d["asset"], d["balance"], d.get("held"), d.get("available"), expiring)


@dataclass(frozen=True, slots=True)
class Hold:
    id: str
    status: str
    user_id: str
    asset: str
    amount: int
    captured_amount: int | None
    expires_at: str
    transaction_id: str | None
    created_at: str
    resolved_at: str | None
    description: str | None
    metadata: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, d: dict[str, Any]) -> "Hold":
        return cls(**_named(cls, d))


@dataclass(frozen=True, slots=True)
class User:
    user_id: str
    display_name: str | None
    status: str
    frozen_reason: str | None
    frozen_at: str | None
    created_at: str

    @classmethod
    def of(cls, d: dict[str, Any]) -> "User":
        return cls(**_named(cls, d))


@dataclass(frozen=True, slots=True)
class Event:
    id: str
    type: str
    created_at: str
    data: dict[str, Any]

    @classmethod
    def of(cls, d: dict[str, Any]) -> "Event":
        return cls(d["id"], d["type"], d["created_at"], d["data"])
