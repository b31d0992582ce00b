"""The registry of posting kinds: what each money-moving request is, where it is posted, who may post it, and
which legs it writes. Routes, scopes, request models, the OpenAPI document, the tests and the bench all read it;
adding a kind is one entry here plus its template (the legs below, or an SQL function for kinds whose legs come
from the ledger's own state)."""

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Kind:
    """One kind of posting between a user's account and a system account of the same asset."""

    type: str  # the transaction's `type`, and the batch item's `type`
    path: str  # the route that posts it
    scope: str  # the API key scope it needs (admin holds every scope)
    system_account: str  # the system account on the other side
    direction: int  # +1: the user's balance rises; -1: it falls
    summary: str
    codes: tuple[str, ...] = ()  # problem codes beyond those every posting can answer
    rewards: bool = False  # may carry rewards: other assets paid bonus_pool -> user in the same transaction

    @property
    def endpoint(self) -> str:
        """What the idempotency fingerprint records as the endpoint: a batch item of this kind and the single
        POST are the same request."""
        return f"POST {self.path}"

    def legs(self, user_id: str, amount: int) -> list[tuple[str, int]]:
        """The entries this posting writes: the user's leg first, then the system account's."""
        return [
            (f"user:{user_id}", self.direction * amount),
            (f"system:{self.system_account}", -self.direction * amount),
        ]


KINDS: dict[str, Kind] = {
    kind.type: kind
    for kind in (
        Kind("topup", "/v1/topups", "topup", "treasury", +1, "Top up: treasury -> user", ("supply_limit_exceeded",)),
        Kind(
            "bonus", "/v1/bonuses", "bonus", "bonus_pool", +1, "Bonus: bonus_pool -> user", ("supply_limit_exceeded",)
        ),
        Kind(
            "purchase",
            "/v1/purchases",
            "purchase",
            "revenue",
            -1,
            "Purchase: user -> revenue, with rewards: bonus_pool -> user",
            ("insufficient_funds", "account_frozen", "supply_limit_exceeded"),
            rewards=True,
        ),
    )
}
KINDS_BY_PATH: dict[str, Kind] = {kind.path: kind for kind in KINDS.values()}
EXPIRY_TYPE = "expiry"
"""The type of the transactions the ledger posts by itself when credits expire: user -> system:expired, for what is
left of expired lots (wallet_expire_lots() in migration 0006). No route posts it and no key can."""
SYSTEM_ACCOUNTS: tuple[str, ...] = tuple(dict.fromkeys([*(kind.system_account for kind in KINDS.values()), "expired"]))
"""The system accounts every asset has (PUT /v1/assets opens them with the asset, the seed for its assets)."""


@dataclass(frozen=True, slots=True)
class UserToUser:
    """A kind of posting from one user's account to another's, in one asset, with no system account. The engine
    locks the two accounts in id order, as it does for every posting with several user legs."""

    type: str
    path: str
    scope: str
    summary: str
    codes: tuple[str, ...] = ()

    @property
    def endpoint(self) -> str:
        return f"POST {self.path}"

    def legs(self, from_user_id: str, to_user_id: str, amount: int) -> list[tuple[str, int]]:
        """The sender's leg first, then the receiver's."""
        return [(f"user:{from_user_id}", -amount), (f"user:{to_user_id}", amount)]


TRANSFER = UserToUser(
    "transfer",
    "/v1/transfers",
    "transfer",
    "Transfer: user -> user, in a transferable asset",
    ("insufficient_funds", "account_frozen", "transfers_disabled"),
)
POSTING_SCOPES: tuple[str, ...] = tuple(dict.fromkeys([*(kind.scope for kind in KINDS.values()), TRANSFER.scope]))
"""The scope of each kind of posting (and of the batch items of that kind)."""
