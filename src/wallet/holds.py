"""Holds: a part of a user's balance reserved for a later capture (a tournament buy-in, an escrow, a purchase
another system confirms). Creating or voiding one moves no money; capturing one is a purchase (ledger.Capture).

Each change is one call of an SQL function that locks the account before the hold, so that of any number of
concurrent captures and voids of one hold exactly one applies, and available funds are decided under the same
lock as every debit's.
"""

from dataclasses import dataclass
from typing import Any, Literal

import asyncpg
import orjson

from wallet import metrics
from wallet.database import Database
from wallet.errors import CODES, HoldNotFound, UserNotFound, ValidationFailed
from wallet.ledger import Caller, Posting, item
from wallet.render import HoldView, parse_public_id, public_id

HOLD_FIELDS = """h.id, CASE WHEN h.status = 'held' AND h.expires_at <= now() THEN 'expired' ELSE h.status END AS status,
    h.user_id, h.asset, h.amount, h.captured_amount, h.expires_at, h.transaction_id, h.created_at,
    coalesce(h.resolved_at, CASE WHEN h.status = 'held' AND h.expires_at <= now() THEN h.expires_at END)
        AS resolved_at, h.description, h.metadata::text AS metadata"""
VIEW_COLUMNS = (
    "id", "status", "user_id", "asset", "amount", "captured_amount", "expires_at", "transaction_id", "created_at",
    "resolved_at", "description", "metadata",
)  # fmt: skip


def _view(row: asyncpg.Record) -> HoldView:
    return HoldView(*(row[name] for name in VIEW_COLUMNS))


@dataclass(frozen=True, slots=True)
class NewHold:
    user_id: str
    asset: str
    amount: int
    expires_in_s: int
    description: str | None
    metadata: dict[str, Any]

    @property
    def endpoint(self) -> str:
        return "POST /v1/holds"

    def request(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "asset": self.asset,
            "amount": self.amount,
            "expires_in_s": self.expires_in_s,
            "description": self.description,
            "metadata": self.metadata,
        }

    def posting(self) -> tuple[Any, ...]:
        """The `wallet_posting` wallet_hold() reads: the user, asset, amount, description and metadata."""
        return ("hold", self.user_id, self.asset, self.amount, self.description, self.metadata, *(None,) * 7)


@dataclass(frozen=True, slots=True)
class Void:
    hold_id: int

    @property
    def endpoint(self) -> str:
        return f"POST /v1/holds/{public_id(self.hold_id, 'hold')}/void"

    def request(self) -> dict[str, Any]:
        return {}

    def posting(self) -> tuple[Any, ...]:
        return ("void", *(None,) * 12)


@dataclass(frozen=True, slots=True)
class HoldOutcome:
    """What a hold's creation or void came to (kinds as ledger.Outcome's), the hold, or the problem."""

    kind: Literal["created", "failed", "replayed", "reused"]
    hold: HoldView | None
    problem: dict[str, Any] | None

    @property
    def status(self) -> int:
        if self.hold is not None:
            return 201
        assert self.problem is not None
        return CODES["idempotency_key_reused" if self.kind == "reused" else self.problem["code"]][0]


def parse_hold_id(hold_id: str) -> int:
    internal_id = parse_public_id(hold_id, "hold")
    if internal_id is None:
        raise HoldNotFound(f"Hold {hold_id[:64]} does not exist.")
    return internal_id


async def _change(
    database: Database, sql: str, caller: Caller, idempotency_key: str, change: Posting, argument: int
) -> HoldOutcome:
    """Runs a hold's creation or void; a success (a replay included) answers the hold as the change left it."""

    async def work(conn: asyncpg.Connection) -> HoldOutcome:
        async with conn.transaction():
            row = await conn.fetchrow(sql, item(caller, idempotency_key, change), argument)
            assert row is not None
            if row["hold_id"] is None:
                return HoldOutcome(row["outcome"], None, row["problem"])
            found = await conn.fetchrow(f"SELECT {HOLD_FIELDS} FROM holds h WHERE h.id = $1", row["hold_id"])
            assert found is not None  # the key's record and the hold were written together
            hold = _view(found)
            return HoldOutcome(row["outcome"], hold.as_created() if isinstance(change, NewHold) else hold, None)

    outcome = await database.run(work)
    if outcome.kind == "replayed":
        metrics.REPLAYS.inc()
    return outcome


async def create(database: Database, caller: Caller, idempotency_key: str, hold: NewHold) -> HoldOutcome:
    sql = "SELECT * FROM wallet_hold($1, now() + make_interval(secs => $2))"
    return await _change(database, sql, caller, idempotency_key, hold, hold.expires_in_s)


async def void(database: Database, caller: Caller, idempotency_key: str, hold_id: int) -> HoldOutcome:
    """A void answers the hold as voided, then and on every replay (a voided hold never changes again)."""
    return await _change(
        database, "SELECT * FROM wallet_hold_void($1, $2)", caller, idempotency_key, Void(hold_id), hold_id
    )


async def get(database: Database, hold_id: str) -> bytes:
    internal_id = parse_hold_id(hold_id)
    row = await database.fetchrow(f"SELECT {HOLD_FIELDS} FROM holds h WHERE h.id = $1", internal_id)
    if row is None:
        raise HoldNotFound(f"Hold {hold_id[:64]} does not exist.")
    return _view(row).render()


HOLD_STATUSES = ("held", "captured", "voided", "expired")


async def list_for_user(database: Database, user_id: str, status: str | None, limit: int, cursor: str | None) -> bytes:
    """A page of the user's holds, newest first. `status` filters by the status readers see."""
    before = None
    if cursor is not None:
        before = parse_public_id(cursor, "hold")
        if before is None:
            raise ValidationFailed(
                "The cursor is not one this service handed out.",
                [{"loc": ["query", "cursor"], "msg": "malformed cursor", "type": "cursor"}],
            )
    rows = await database.fetch(
        f"""SELECT EXISTS (SELECT 1 FROM users WHERE user_id = $1) AS user_exists, page.*
              FROM (SELECT 1) one
              LEFT JOIN LATERAL (SELECT * FROM (SELECT {HOLD_FIELDS} FROM holds h
                                                 WHERE h.user_id = $1 AND h.id < coalesce($2, 9223372036854775807)
                                                 ORDER BY h.id DESC) all_holds
                                  WHERE $3::text IS NULL OR all_holds.status = $3
                                  LIMIT $4) page ON true""",
        user_id,
        before,
        status,
        limit + 1,
    )
    if not rows[0]["user_exists"]:
        raise UserNotFound(f"User {user_id} does not exist.")
    views = [_view(row) for row in rows if row["id"] is not None]
    next_cursor = None
    if len(views) > limit:
        views = views[:limit]
        next_cursor = public_id(views[-1].id, "hold")
    return orjson.dumps({"items": [v.document() for v in views], "next_cursor": next_cursor})
