"""Representations: a transaction as the API shows it. One renderer for the POST that created it, replays, GET and
history pages, so that all of them answer the same bytes."""

from dataclasses import dataclass
from datetime import UTC, datetime

import orjson

TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"  # RFC 3339, UTC, microseconds


def public_id(internal_id: int) -> str:
    return f"tx_{internal_id:016x}"


def timestamp(at: datetime) -> str:
    return at.astimezone(UTC).strftime(TIMESTAMP_FORMAT)


@dataclass(frozen=True, slots=True)
class TransactionView:
    """Everything a transaction's representation shows. `metadata` is the JSON text PostgreSQL stored (jsonb's
    own rendering), passed through untouched so that numbers come back exactly as they were sent."""

    id: int
    type: str
    user_id: str | None
    asset: str
    amount: int
    balance_after: int | None
    description: str | None
    metadata: str
    accounts: list[str]
    amounts: list[int]
    created_at: datetime

    def render(self) -> bytes:
        return orjson.dumps(
            {
                "id": public_id(self.id),
                "type": self.type,
                "status": "posted",
                "user_id": self.user_id,
                "asset": self.asset,
                "amount": self.amount,
                "balance_after": self.balance_after,
                "description": self.description,
                "metadata": orjson.Fragment(self.metadata),
                "entries": [
                    {"account": account, "amount": amount}
                    for account, amount in zip(self.accounts, self.amounts, strict=True)
                ],
                "created_at": timestamp(self.created_at),
            }
        )
