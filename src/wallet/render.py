"""Representations: a transaction and a hold as the API shows them. One renderer each, for the POST that created
it, replays, GET and pages, so that all of them answer the same bytes."""

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"  # RFC 3339, UTC, microseconds
PUBLIC_ID = re.compile(r"(tx|hold|wh|whd)_([0-9a-f]{16})")


def public_id(internal_id: int, prefix: str = "tx") -> str:
    return f"{prefix}_{internal_id:016x}"


def parse_public_id(text: str, prefix: str = "tx") -> int | None:
    """The internal id of a public one of this prefix, or None for anything the service never handed out."""
    match = PUBLIC_ID.fullmatch(text)
    if match is None or match.group(1) != prefix:
        return None
    internal_id = int(match.group(2), 16)
    return internal_id if internal_id < 2**63 else None  # ids are bigint


def timestamp(at: datetime | None) -> str | None:
    return None if at is None else at.astimezone(UTC).strftime(TIMESTAMP_FORMAT)


@dataclass(frozen=True, slots=True)
class TransactionView:
    """Everything a transaction's representation shows. `metadata` is the JSON text PostgreSQL stored (jsonb's
    own rendering), passed through untouched so that numbers come back exactly as they were sent. Legs come in
    order, each with its account, asset, amount and, on a user's account, the balance it left."""

    id: int
    type: str
    user_id: str | None
    asset: str
    amount: int
    description: str | None
    metadata: str
    accounts: list[str]
    assets: list[str]
    amounts: list[int]
    balances: list[int | None]
    refund_of: int | None
    hold_id: int | None
    created_at: datetime

    def _reward(self, account: str, asset: str, user: str | None) -> bool:
        """A leg of the user's in another asset than the transaction's, on a purchase: a reward (on a refund of
        one, its reversal)."""
        return self.type in ("purchase", "refund") and account == user and asset != self.asset

    def _receiver(self, user: str | None) -> dict[str, Any]:
        """On a transfer, the receiving user and their balance after it (`balance_after` is the sender's)."""
        if self.type != "transfer":
            return {}
        legs = zip(self.accounts, self.assets, self.amounts, self.balances, strict=True)
        to = next(((a, b) for a, s, n, b in legs if a != user and a.startswith("user:") and n > 0), None)
        return {"to_user_id": to[0][5:] if to else None, "to_balance_after": to[1] if to else None}

    def render(self) -> bytes:
        user = f"user:{self.user_id}" if self.user_id is not None else None
        legs = list(zip(self.accounts, self.assets, self.amounts, self.balances, strict=True))
        balance_after = next((b for a, s, _, b in legs if a == user and s == self.asset), None)
        return orjson.dumps(
            {
                "id": public_id(self.id),
                "type": self.type,
                "status": "posted",
                "user_id": self.user_id,
                "asset": self.asset,
                "amount": self.amount,
                "balance_after": balance_after,
                "description": self.description,
                "metadata": orjson.Fragment(self.metadata),
                "entries": [{"account": a, "asset": s, "amount": n} for a, s, n, _ in legs],
                "rewards": [
                    {"asset": s, "amount": n, "balance_after": b} for a, s, n, b in legs if self._reward(a, s, user)
                ],
                "refund_of": None if self.refund_of is None else public_id(self.refund_of),
                "hold_id": None if self.hold_id is None else public_id(self.hold_id, "hold"),
                "created_at": timestamp(self.created_at),
                **self._receiver(user),
            }
        )


@dataclass(frozen=True, slots=True)
class HoldView:
    """A hold as the API shows it. `status` is what the hold is now: one past its expiry is `expired` at once,
    whether or not the expiry job has marked it yet."""

    id: int
    status: str
    user_id: str
    asset: str
    amount: int
    captured_amount: int | None
    expires_at: datetime
    transaction_id: int | None
    created_at: datetime
    resolved_at: datetime | None
    description: str | None
    metadata: str

    def as_created(self) -> "HoldView":
        """The hold as its creation answered (what a replay of the creation answers)."""
        return HoldView(
            self.id,
            "held",
            self.user_id,
            self.asset,
            self.amount,
            None,
            self.expires_at,
            None,
            self.created_at,
            None,
            self.description,
            self.metadata,
        )

    def document(self) -> dict[str, Any]:
        return {
            "id": public_id(self.id, "hold"),
            "status": self.status,
            "user_id": self.user_id,
            "asset": self.asset,
            "amount": self.amount,
            "captured_amount": self.captured_amount,
            "expires_at": timestamp(self.expires_at),
            "transaction_id": None if self.transaction_id is None else public_id(self.transaction_id),
            "created_at": timestamp(self.created_at),
            "resolved_at": timestamp(self.resolved_at),
            "description": self.description,
            "metadata": orjson.Fragment(self.metadata),
        }

    def render(self) -> bytes:
        return orjson.dumps(self.document())
