"""The ledger's postings: what each money-moving request asks of the engine in SQL, and what it came to.

A request is one call of `wallet_request()` (or `wallet_batch()` for many), so one request is one database
transaction and nothing here commits by itself. The kinds of the registry build their legs here (top-ups,
bonuses, purchases with their rewards, adjustments); captures and refunds get theirs from the engine's templates,
which read the hold or the original transaction under its lock.
"""

import dataclasses
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import asyncpg
import orjson

from wallet import metrics
from wallet.database import Database
from wallet.errors import CODES
from wallet.kinds import KINDS, TRANSFER, Kind
from wallet.render import TransactionView, public_id

REQUEST_SQL = "SELECT * FROM wallet_request($1)"
BATCH_SQL = "SELECT * FROM wallet_batch($1, $2)"
HOT_STATEMENTS = (REQUEST_SQL, BATCH_SQL)  # prepared on every pooled connection at start (Database.warm)


@dataclass(frozen=True, slots=True)
class Caller:
    """Who posts: the API key (idempotency keys are scoped to it, transactions record its name), and the id of
    this HTTP request, the same across the service's own retries of it."""

    api_key_id: int
    api_key_name: str
    attempt_id: uuid.UUID


class Posting(Protocol):
    """A money-moving request as validated: where it was sent, the canonical body its idempotency key binds
    (defaults filled in), and the `wallet_posting` it asks the engine for."""

    @property
    def endpoint(self) -> str: ...

    def request(self) -> dict[str, Any]: ...

    def posting(self) -> tuple[Any, ...]: ...


def _posting(
    type_: str,
    user_id: str | None,
    asset: str | None,
    amount: int | None,
    description: str | None,
    metadata: dict[str, Any],
    legs: list[tuple[str, str, int]] = (),  # type: ignore[assignment]
    *,
    hold_id: int | None = None,
    refund_of: int | None = None,
    frozen_ok: bool = False,
) -> tuple[Any, ...]:
    """A `wallet_posting`: the transaction's own fields, its legs (account, asset, amount), what it captures or
    refunds, and whether it may take from frozen accounts."""
    return (
        type_,
        user_id,
        asset,
        amount,
        description,
        metadata,
        [account for account, _, _ in legs],
        [asset for _, asset, _ in legs],
        [amount for _, _, amount in legs],
        None,
        hold_id,
        refund_of,
        frozen_ok,
    )


@dataclass(frozen=True, slots=True)
class Reward:
    asset: str
    amount: int


@dataclass(frozen=True, slots=True)
class Movement:
    """A top-up, bonus or purchase: a kind of the registry, with a purchase's rewards (bonus_pool -> user, in
    other assets, in the same transaction)."""

    kind: Kind
    user_id: str
    asset: str
    amount: int
    description: str | None
    metadata: dict[str, Any]
    rewards: tuple[Reward, ...] = ()

    @property
    def endpoint(self) -> str:
        return self.kind.endpoint

    def request(self) -> dict[str, Any]:
        body = {
            "user_id": self.user_id,
            "asset": self.asset,
            "amount": self.amount,
            "description": self.description,
            "metadata": self.metadata,
        }
        if self.rewards:  # absent when none, so that keys recorded before rewards existed still replay
            body["rewards"] = [{"asset": r.asset, "amount": r.amount} for r in self.rewards]
        return body

    def posting(self) -> tuple[Any, ...]:
        legs = [(account, self.asset, amount) for account, amount in self.kind.legs(self.user_id, self.amount)]
        bonus_pool = KINDS["bonus"]
        for reward in self.rewards:
            legs += [
                (account, reward.asset, amount) for account, amount in bonus_pool.legs(self.user_id, reward.amount)
            ]
        return _posting(self.kind.type, self.user_id, self.asset, self.amount, self.description, self.metadata, legs)


@dataclass(frozen=True, slots=True)
class Transfer:
    """A transfer from one user to another (the registry's TRANSFER): the transaction is the sender's (its
    `user_id`, and `balance_after` is the sender's); the receiver's account is opened by its first credit."""

    from_user_id: str
    to_user_id: str
    asset: str
    amount: int
    description: str | None
    metadata: dict[str, Any]

    @property
    def endpoint(self) -> str:
        return TRANSFER.endpoint

    def request(self) -> dict[str, Any]:
        return {
            "from_user_id": self.from_user_id,
            "to_user_id": self.to_user_id,
            "asset": self.asset,
            "amount": self.amount,
            "description": self.description,
            "metadata": self.metadata,
        }

    def posting(self) -> tuple[Any, ...]:
        legs = [
            (account, self.asset, amount)
            for account, amount in TRANSFER.legs(self.from_user_id, self.to_user_id, self.amount)
        ]
        return _posting(
            TRANSFER.type, self.from_user_id, self.asset, self.amount, self.description, self.metadata, legs
        )


@dataclass(frozen=True, slots=True)
class Capture:
    """A capture of a hold, whole (amount None) or in part; the rest is released."""

    hold_id: int
    amount: int | None
    description: str | None
    metadata: dict[str, Any]

    @property
    def endpoint(self) -> str:
        return f"POST /v1/holds/{public_id(self.hold_id, 'hold')}/capture"

    def request(self) -> dict[str, Any]:
        return {"amount": self.amount, "description": self.description, "metadata": self.metadata}

    def posting(self) -> tuple[Any, ...]:
        return _posting("purchase", None, None, self.amount, self.description, self.metadata, hold_id=self.hold_id)


@dataclass(frozen=True, slots=True)
class Refund:
    """A refund of a purchase, or a reversal of a top-up (chargeback) or bonus (clawback): amount None refunds
    what is left."""

    transaction_id: int
    amount: int | None
    reason: str

    @property
    def endpoint(self) -> str:
        return f"POST /v1/transactions/{public_id(self.transaction_id)}/refunds"

    def request(self) -> dict[str, Any]:
        return {"amount": self.amount, "reason": self.reason}

    def posting(self) -> tuple[Any, ...]:
        return _posting("refund", None, None, self.amount, self.reason, {}, refund_of=self.transaction_id)


@dataclass(frozen=True, slots=True)
class Adjustment:
    """An operator's correction: signed entries that sum to 0 per asset. It applies to frozen users too."""

    reason: str
    entries: tuple[tuple[str, str, int], ...]  # (account, asset, amount)
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def endpoint(self) -> str:
        return "POST /v1/adjustments"

    def request(self) -> dict[str, Any]:
        entries = [{"account": account, "asset": asset, "amount": amount} for account, asset, amount in self.entries]
        return {"reason": self.reason, "entries": entries, "metadata": self.metadata}

    def posting(self) -> tuple[Any, ...]:
        users = {account[5:] for account, _, _ in self.entries if account.startswith("user:")}
        asset = self.entries[0][1]
        amount = sum(n for _, a, n in self.entries if a == asset and n > 0)
        user_id = users.pop() if len(users) == 1 else None
        return _posting(
            "adjustment", user_id, asset, amount, self.reason, self.metadata, list(self.entries), frozen_ok=True
        )


OutcomeKind = Literal["created", "failed", "replayed", "reused", "aborted", "rejected"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a money-moving request came to: `created`, `failed` (a recorded business error), `replayed` (the
    key's first outcome, success or failure), or `reused` (the key belongs to another request; `problem` holds
    what that request was: its endpoint and request). Batches add `aborted` (atomic batch, not written because
    another item failed) and `rejected` (atomic batch, failed and not recorded)."""

    kind: OutcomeKind
    transaction: TransactionView | None
    problem: dict[str, Any] | None  # the business error (code, detail...), or for `reused` the first request

    @property
    def status(self) -> int:
        if self.transaction is not None:
            return 201
        assert self.problem is not None
        code = "idempotency_key_reused" if self.kind == "reused" else self.problem["code"]
        return CODES[code][0]


def outcome(row: asyncpg.Record) -> Outcome:
    """A `wallet_outcome` row: the transaction, with the posting the engine wrote (its legs included)."""
    if row["outcome"] == "replayed":
        metrics.REPLAYS.inc()
    if row["transaction_id"] is None:
        return Outcome(row["outcome"], None, row["problem"])
    p = row["posting"]
    if row["outcome"] == "created":
        metrics.POSTINGS.labels(p["type"], p["asset"]).inc()
        metrics.AMOUNTS.labels(p["type"], p["asset"]).inc(p["amount"])
    transaction = TransactionView(
        id=row["transaction_id"],
        type=p["type"],
        user_id=p["user_id"],
        asset=p["asset"],
        amount=p["amount"],
        description=p["description"],
        metadata=row["metadata"],
        accounts=p["accounts"],
        assets=p["assets"],
        amounts=p["amounts"],
        balances=row["balances"] or [None] * len(p["accounts"]),
        refund_of=p["refund_of"],
        hold_id=p["hold_id"],
        created_at=row["created_at"],
    )
    return Outcome(row["outcome"], transaction, None)


def item(caller: Caller, idempotency_key: str | None, posting: Posting) -> tuple[Any, ...]:
    """A `wallet_item`: who sends it, the key, the fingerprint it is bound to, and the posting."""
    return (
        caller.api_key_id,
        caller.api_key_name,
        caller.attempt_id,
        idempotency_key,
        posting.endpoint,
        posting.request(),
        posting.posting(),
    )


@dataclass(frozen=True, slots=True)
class Request:
    """One money-moving request, alone, as a batch item, or coalesced with others."""

    caller: Caller
    idempotency_key: str
    posting: Posting


async def post_on(conn: asyncpg.Connection, request: Request) -> Outcome:
    """Posts one request under its idempotency key, or replays what the key recorded, on a connection of the
    caller's (the seed's)."""
    row = await conn.fetchrow(REQUEST_SQL, item(request.caller, request.idempotency_key, request.posting))
    assert row is not None
    return outcome(row)


async def post(database: Database, request: Request) -> Outcome:
    return await database.run(lambda conn: post_on(conn, request))


async def post_batch(database: Database, atomic: bool, requests: list[Request]) -> list[Outcome]:
    """Posts every request in one statement (one transaction), each through the item path; outcomes in order."""
    items = [item(r.caller, r.idempotency_key, r.posting) for r in requests]
    return [outcome(row) for row in await database.fetch(BATCH_SQL, atomic, items)]


def differences(stored: dict[str, Any], endpoint: str, request: dict[str, Any]) -> list[dict[str, Any]]:
    """Which fields of a request differ from the one its idempotency key was first used for."""
    if stored["endpoint"] != endpoint:
        return [{"field": "endpoint", "first": stored["endpoint"], "now": endpoint}]
    first = stored["request"]
    request = orjson.loads(orjson.dumps(request))  # numbers as the stored request reads back (kept text included)
    return [
        {"field": name, "first": first.get(name), "now": request.get(name)}
        for name in sorted(set(first) | set(request))
        if first.get(name) != request.get(name)
    ]


VIEW_FIELDS = tuple(f.name for f in dataclasses.fields(TransactionView))


def view(row: asyncpg.Record) -> TransactionView:
    """A row of wallet_transactions()."""
    return TransactionView(**{name: row[name] for name in VIEW_FIELDS})
