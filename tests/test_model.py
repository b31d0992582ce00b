"""Model-based test: Hypothesis drives a real `wallet serve` process with random top-ups, bonuses, purchases,
replays and reused idempotency keys, and checks every answer and every balance against an in-memory model."""

from collections import defaultdict
from dataclasses import dataclass
from typing import Any, ClassVar

import httpx
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from tests.conftest import Keys
from tests.support import PATHS, SYSTEM_SIDE, USER_SIGN, idem, new_id

ASSETS = ("GOLD", "DIAMOND", "LOYALTY")
# kind -> (path, sign of the user's leg, system account on the other side)
KINDS: dict[str, tuple[str, int, str]] = {kind: (PATHS[kind], USER_SIGN[kind], SYSTEM_SIDE[kind]) for kind in PATHS}
USERS = 3

descriptions = st.none() | st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=20)
metadata = st.dictionaries(st.text("abcxyz", min_size=1, max_size=3), st.integers(-5, 5) | st.text("pq", max_size=3))


@dataclass(frozen=True)
class Sent:
    """A request whose outcome the service stored under its idempotency key."""

    kind: str
    key: str
    body: dict[str, Any]
    status: int
    content: bytes


class WalletMachine(RuleBasedStateMachine):
    base_url: ClassVar[str]
    keys: ClassVar[Keys]

    def __init__(self) -> None:
        super().__init__()
        self.http = httpx.Client(base_url=self.base_url, timeout=30)
        self.users: list[str] = []
        self.balances: dict[tuple[str, str], int] = {}
        self.history: dict[str, list[str]] = defaultdict(list)  # user -> transaction ids, oldest first
        self.sent: list[Sent] = []

    def teardown(self) -> None:
        self.http.close()

    @initialize()
    def create_users(self) -> None:
        for _ in range(USERS):
            user_id = new_id("m")
            response = self.http.put(f"/v1/users/{user_id}", headers=self.keys.headers("admin"))
            assert response.status_code == 201, response.text
            self.users.append(user_id)
            for asset in ASSETS:
                self.balances[(user_id, asset)] = 0

    def post(self, kind: str, key: str, body: dict[str, Any]) -> httpx.Response:
        # One API key for every kind: idempotency keys are scoped to the API key, and reuse_key sends a key
        # to another endpoint.
        headers = {**self.keys.headers("admin"), "Idempotency-Key": key}
        return self.http.post(KINDS[kind][0], json=body, headers=headers)

    def move(self, kind: str, user_id: str, asset: str, amount: int, description: str | None, meta: dict) -> None:
        body: dict[str, Any] = {"user_id": user_id, "asset": asset, "amount": amount, "metadata": meta}
        if description is not None:
            body["description"] = description
        key = idem()
        response = self.post(kind, key, body)
        assert "idempotent-replayed" not in response.headers
        _, sign, system_account = KINDS[kind]
        before = self.balances[(user_id, asset)]
        if sign < 0 and amount > before:
            assert response.status_code == 409, response.text
            problem = response.json()
            assert problem["code"] == "insufficient_funds"
            assert problem["status"] == 409
        else:
            assert response.status_code == 201, response.text
            tx = response.json()
            after = before + sign * amount
            assert tx["type"] == kind and tx["status"] == "posted"
            assert (tx["user_id"], tx["asset"], tx["amount"]) == (user_id, asset, amount)
            assert tx["balance_after"] == after
            assert tx["description"] == description
            assert tx["metadata"] == meta
            assert tx["entries"] == [
                {"account": f"user:{user_id}", "asset": asset, "amount": sign * amount},
                {"account": system_account, "asset": asset, "amount": -sign * amount},
            ]
            self.balances[(user_id, asset)] = after
            self.history[user_id].append(tx["id"])
        self.sent.append(Sent(kind, key, body, response.status_code, response.content))

    @rule(
        kind=st.sampled_from(["topup", "bonus"]),
        user=st.integers(0, USERS - 1),
        asset=st.sampled_from(ASSETS),
        amount=st.integers(1, 1_000) | st.integers(1, 10**15 // 100),
        description=descriptions,
        meta=metadata,
    )
    def credit(self, kind: str, user: int, asset: str, amount: int, description: str | None, meta: dict) -> None:
        self.move(kind, self.users[user], asset, amount, description, meta)

    @rule(
        user=st.integers(0, USERS - 1),
        asset=st.sampled_from(ASSETS),
        data=st.data(),
        description=descriptions,
        meta=metadata,
    )
    def purchase(self, user: int, asset: str, data: st.DataObject, description: str | None, meta: dict) -> None:
        balance = self.balances[(self.users[user], asset)]
        # Around the balance (exactly it, one more), well below, and far beyond it.
        amount = data.draw(
            st.sampled_from([max(balance, 1), balance + 1]) | st.integers(1, max(balance, 1)) | st.integers(1, 10**15),
            label="amount",
        )
        self.move("purchase", self.users[user], asset, amount, description, meta)

    @rule(kind=st.sampled_from(sorted(KINDS)), asset=st.sampled_from(ASSETS), amount=st.integers(1, 100))
    def unknown_user(self, kind: str, asset: str, amount: int) -> None:
        key = idem()
        body = {"user_id": new_id("ghost"), "asset": asset, "amount": amount}
        response = self.post(kind, key, body)
        assert response.status_code == 404, response.text
        assert response.json()["code"] == "user_not_found"
        self.sent.append(Sent(kind, key, body, response.status_code, response.content))

    @precondition(lambda self: self.sent)
    @rule(data=st.data())
    def replay(self, data: st.DataObject) -> None:
        sent = data.draw(st.sampled_from(self.sent), label="replayed")
        response = self.post(sent.kind, sent.key, sent.body)
        assert response.status_code == sent.status, response.text
        assert response.headers.get("idempotent-replayed") == "true"
        assert response.content == sent.content

    @precondition(lambda self: self.sent)
    @rule(data=st.data(), change=st.sampled_from(["amount", "asset", "user_id", "description", "metadata", "kind"]))
    def reuse_key(self, data: st.DataObject, change: str) -> None:
        sent = data.draw(st.sampled_from(self.sent), label="reused")
        body = dict(sent.body)
        kind = sent.kind
        if change == "amount":
            body["amount"] += 1
        elif change == "asset":
            body["asset"] = next(a for a in ASSETS if a != body["asset"])
        elif change == "user_id":
            body["user_id"] = next((u for u in self.users if u != body["user_id"]), self.users[0])
        elif change == "description":
            body["description"] = (body.get("description") or "") + "!"
        elif change == "metadata":
            body["metadata"] = {**body.get("metadata", {}), "changed": True}
        else:
            kind = next(k for k in sorted(KINDS) if k != kind)
        response = self.post(kind, sent.key, body)
        assert response.status_code == 422, response.text
        assert response.json()["code"] == "idempotency_key_reused"
        assert "idempotent-replayed" not in response.headers

    @precondition(lambda self: self.users)
    @rule(user=st.integers(0, USERS - 1))
    def history_matches(self, user: int) -> None:
        user_id = self.users[user]
        response = self.http.get(
            f"/v1/users/{user_id}/transactions", params={"limit": 200}, headers=self.keys.headers("read")
        )
        assert response.status_code == 200, response.text
        page = response.json()
        assert [item["id"] for item in page["items"]] == self.history[user_id][::-1]
        assert page["next_cursor"] is None

    @invariant()
    def balances_match(self) -> None:
        for user_id in self.users:
            response = self.http.get(f"/v1/users/{user_id}/balances", headers=self.keys.headers("read"))
            assert response.status_code == 200, response.text
            got = {item["asset"]: item["balance"] for item in response.json()["balances"]}
            expected = {asset: self.balances[(user_id, asset)] for asset in ASSETS}
            assert {asset: got.get(asset) for asset in ASSETS} == expected, user_id


def test_service_behaves_like_the_model(server: str, api_keys: Keys) -> None:
    class Machine(WalletMachine):
        base_url = server
        keys = api_keys

    run_state_machine_as_test(
        Machine,
        settings=settings(
            max_examples=15,
            stateful_step_count=25,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow],
            # No shrinking: every step is HTTP round trips, and shrinking a failure could take minutes. A
            # failure prints its (at most 25) steps all the same.
            phases=[Phase.explicit, Phase.reuse, Phase.generate],
        ),
    )
