"""`wallet verify` catches every violation it claims to check.

On a database of its own, a small ledger is built through the API (top-ups, bonuses, purchases, a purchase with
rewards, a hold still held, a captured hold, a voided hold, partial refunds and a reversal, an adjustment, a frozen
user, a transfer, lots of an expiring asset with a refund that gave back to them and an expiry) and verified
clean. Then, for every check of VERIFY_CHECKS, a minimal corruption is written with SQL and committed, `wallet
verify` runs as an operator runs it (its own process), and it must exit 1 with exactly the
intended check failing, plus the checks that the same corruption necessarily breaks too (each case names them and
says why). The corruption is undone, and the ledger is clean again.

A check added to VERIFY_CHECKS without a corruption case here fails its test.

No table of the ledger has a trigger, so no case needs `session_replication_role`. Where a CHECK constraint makes a
violation impossible, the case drops the constraint, corrupts, undoes and restores the constraint as it was.
"""

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pytest

from tests.conftest import in_process
from tests.support import own_database, wallet_verify
from wallet import keys
from wallet.config import Settings
from wallet.database import connect, migrate
from wallet.http.app import create_app
from wallet.seed import seed
from wallet.verify import VERIFY_CHECKS, verify

SECRET = "verify-test-secret"
HEADERS = {"Authorization": f"Bearer {SECRET}"}
NOWHERE = 10**12  # an id that no row has


def check(fragment: str) -> str:
    """The one check of VERIFY_CHECKS whose name contains `fragment`."""
    names = [name for name in VERIFY_CHECKS if fragment in name]
    assert len(names) == 1, (fragment, names)
    return names[0]


TRANSACTION_SUMS = check("every transaction's entries sum to 0")
ASSET_ENTRIES = check("every asset's entries sum to 0")
ASSET_BALANCES = check("every asset's balances sum to 0")
BALANCE_IS_ENTRIES = check("every balance equals the sum of its account's entries")
STRIPE_OF_ENTRY = check("every user entry is on no stripe")
USER_LATEST = check("every user balance equals its latest entry's balance_after")
STRIPE_BALANCE = check("every stripe's balance equals")
RUNNING = check("running sum of its series")
USER_BOUNDS = check("no user balance below 0")
SYSTEM_STRIPES = check("every system account is its stripes")
STRIPE_OWNER = check("every stripe belongs to a system account")
ENTRY_TRANSACTION = check("every entry belongs to a transaction")
ENTRY_ACCOUNT = check("every entry is on an account")
HELD = check("every account's held equals")
HOLD_ACCOUNT = check("every hold is on its user's account")
CAPTURE = check("every captured hold and its purchase")
REFUND_ORIGINAL = check("every refund's original is")
REFUND_TOTAL = check("refunds never add up to more")
REFUND_LEGS = check("every refund reverses its original's legs")
FROZEN = check("every account of a frozen user")
KEY_OUTCOME = check("every idempotency record names one outcome")
KEY_OWNER = check("every idempotency record belongs to an API key")
ASSET_SYSTEM = check("every asset has its system accounts")
ACCOUNT_OWNERS = check("every account's asset and user exist")
TRANSFER_LEGS = check("every transfer moves its amount")
LOTS_KEPT = check("keeps its balance as lots")
LOTS_SUM = check("the lots of every account sum to its balance")
LOT_AMOUNT = check("every lot holds what formed it")
LOT_CREDIT = check("every lot formed by a credit")
LOT_USES = check("what each debit took from lots")
EXPIRY_LEGS = check("every expiry moves its amount")


@dataclass(frozen=True)
class Case:
    """A corruption of one check: SQL that breaks it (committed), SQL that undoes it, the other checks it breaks
    too and why, and the CHECK constraint it has to drop first, if any (`table.constraint`). The SQL is formatted
    with the ledger's ids (see `ledger`)."""

    what: str
    corrupt: str
    undo: str
    also: frozenset[str] = frozenset()
    why_also: str = ""
    drop: str | None = None


CASES: dict[str, list[Case]] = {
    TRANSACTION_SUMS: [
        Case(
            "a unit moved from one top-up's user entry to another's on the same account (running balances kept):"
            " the account, the asset and every running balance still add up, the two transactions do not",
            """UPDATE entries SET amount = amount + 1, balance_after = balance_after + 1
                WHERE transaction_id = {dan_t1} AND account_id = {dan_gold};
               UPDATE entries SET amount = amount - 1 WHERE transaction_id = {dan_t2} AND account_id = {dan_gold}""",
            """UPDATE entries SET amount = amount - 1, balance_after = balance_after - 1
                WHERE transaction_id = {dan_t1} AND account_id = {dan_gold};
               UPDATE entries SET amount = amount + 1 WHERE transaction_id = {dan_t2} AND account_id = {dan_gold}""",
        ),
        Case(
            "a transaction whose asset has none of its legs",
            "UPDATE transactions SET asset = 'DIAMOND' WHERE id = {dan_t1}",
            "UPDATE transactions SET asset = 'GOLD' WHERE id = {dan_t1}",
        ),
    ],
    ASSET_ENTRIES: [
        Case(
            "one more unit credited by a top-up's user entry, with the balance and running balance that follow",
            """UPDATE entries SET amount = amount + 1, balance_after = balance_after + 1
                WHERE transaction_id = {dan_t2} AND account_id = {dan_gold};
               UPDATE accounts SET balance = balance + 1 WHERE id = {dan_gold}""",
            """UPDATE entries SET amount = amount - 1, balance_after = balance_after - 1
                WHERE transaction_id = {dan_t2} AND account_id = {dan_gold};
               UPDATE accounts SET balance = balance - 1 WHERE id = {dan_gold}""",
            also=frozenset({TRANSACTION_SUMS, ASSET_BALANCES}),
            why_also="entries of an asset sum over its transactions' entries, and balances equal entries",
        ),
    ],
    ASSET_BALANCES: [
        Case(
            "a user balance one unit above its entries",
            "UPDATE accounts SET balance = balance + 1 WHERE id = {dan_gold}",
            "UPDATE accounts SET balance = balance - 1 WHERE id = {dan_gold}",
            also=frozenset({BALANCE_IS_ENTRIES, USER_LATEST}),
            why_also="with every balance equal to its entries, the balances of an asset sum as its entries do",
        ),
    ],
    BALANCE_IS_ENTRIES: [
        Case(
            "a unit moved from one user's balance to another's, latest balance_after moved along: each asset still"
            " sums to 0, each balance is its latest balance_after, but not the sum of its entries",
            """UPDATE accounts SET balance = balance + 1 WHERE id = {dan_gold};
               UPDATE entries SET balance_after = balance_after + 1
                WHERE transaction_id = {dan_t2} AND account_id = {dan_gold};
               UPDATE accounts SET balance = balance - 1 WHERE id = {eve_gold};
               UPDATE entries SET balance_after = balance_after - 1
                WHERE transaction_id = {eve_t1} AND account_id = {eve_gold}""",
            """UPDATE accounts SET balance = balance - 1 WHERE id = {dan_gold};
               UPDATE entries SET balance_after = balance_after - 1
                WHERE transaction_id = {dan_t2} AND account_id = {dan_gold};
               UPDATE accounts SET balance = balance + 1 WHERE id = {eve_gold};
               UPDATE entries SET balance_after = balance_after + 1
                WHERE transaction_id = {eve_t1} AND account_id = {eve_gold}""",
            also=frozenset({RUNNING}),
            why_also="a latest balance_after that is the running sum of the entries is their sum",
        ),
    ],
    STRIPE_OF_ENTRY: [
        Case(
            "a user entry (not the account's latest) written on stripe 0",
            "UPDATE entries SET stripe = 0 WHERE transaction_id = {dan_t1} AND account_id = {dan_gold}",
            "UPDATE entries SET stripe = NULL WHERE transaction_id = {dan_t1} AND account_id = {dan_gold}",
        ),
        Case(
            "a system entry on a stripe that no account has (64)",
            "UPDATE entries SET stripe = 64 WHERE transaction_id = {treasury_first} AND account_id = {treasury_gold}",
            """UPDATE entries SET stripe = {treasury_first_stripe}
                WHERE transaction_id = {treasury_first} AND account_id = {treasury_gold}""",
            also=frozenset({STRIPE_BALANCE, RUNNING}),
            why_also="the entry leaves its stripe's sum, and the running balances of the stripe's later entries",
        ),
    ],
    USER_LATEST: [
        Case(
            "a user account's latest balance_after one unit off",
            """UPDATE entries SET balance_after = balance_after + 1
                WHERE transaction_id = {dan_t2} AND account_id = {dan_gold}""",
            """UPDATE entries SET balance_after = balance_after - 1
                WHERE transaction_id = {dan_t2} AND account_id = {dan_gold}""",
            also=frozenset({RUNNING}),
            why_also="with the balance equal to its entries, a wrong latest balance_after is a wrong running sum",
        ),
        Case(
            "a balance on a user account that has no entry at all",
            "UPDATE accounts SET balance = 1 WHERE id = {dan_diamond}",
            "UPDATE accounts SET balance = 0 WHERE id = {dan_diamond}",
            also=frozenset({ASSET_BALANCES, BALANCE_IS_ENTRIES}),
            why_also="a balance with no entry is not the sum of its entries, and nothing else in DIAMOND moved",
        ),
    ],
    STRIPE_BALANCE: [
        Case(
            "a stripe's latest balance_after one unit off",
            """UPDATE entries SET balance_after = balance_after + 1
                WHERE transaction_id = {treasury_last} AND account_id = {treasury_gold}""",
            """UPDATE entries SET balance_after = balance_after - 1
                WHERE transaction_id = {treasury_last} AND account_id = {treasury_gold}""",
            also=frozenset({RUNNING}),
            why_also="with the stripe equal to its entries, a wrong latest balance_after is a wrong running sum",
        ),
    ],
    RUNNING: [
        Case(
            "a user entry's balance_after one unit off, neither the account's first entry nor its latest",
            """UPDATE entries SET balance_after = balance_after + 1
                WHERE transaction_id = {ann_purchase} AND account_id = {ann_gold}""",
            """UPDATE entries SET balance_after = balance_after - 1
                WHERE transaction_id = {ann_purchase} AND account_id = {ann_gold}""",
        ),
        Case(
            "a user entry's balance_after lost (NULL: the CHECK on entries lets it through)",
            "UPDATE entries SET balance_after = NULL WHERE transaction_id = {ann_t1} AND account_id = {ann_gold}",
            """UPDATE entries SET balance_after = {ann_t1_after}
                WHERE transaction_id = {ann_t1} AND account_id = {ann_gold}""",
        ),
        Case(
            "a system entry's running balance off, not its stripe's latest",
            """UPDATE entries SET balance_after = balance_after + 1
                WHERE transaction_id = {treasury_first} AND account_id = {treasury_gold}""",
            """UPDATE entries SET balance_after = balance_after - 1
                WHERE transaction_id = {treasury_first} AND account_id = {treasury_gold}""",
        ),
    ],
    USER_BOUNDS: [
        Case(
            "an account holding more than its balance (its hold and held agree): account_kinds forbids it",
            """UPDATE holds SET amount = (SELECT balance + 1 FROM accounts WHERE id = {ann_gold})
                WHERE id = {hold_held};
               UPDATE accounts SET held = balance + 1 WHERE id = {ann_gold}""",
            """UPDATE holds SET amount = {hold_held_amount} WHERE id = {hold_held};
               UPDATE accounts SET held = {hold_held_amount} WHERE id = {ann_gold}""",
            drop="accounts.account_kinds",
        ),
        Case(
            "a user balance below 0: account_kinds forbids it",
            "UPDATE accounts SET balance = -1 WHERE id = {dan_gold}",
            "UPDATE accounts SET balance = {dan_balance} WHERE id = {dan_gold}",
            also=frozenset({ASSET_BALANCES, BALANCE_IS_ENTRIES, USER_LATEST}),
            why_also="the balance no longer agrees with its entries",
            drop="accounts.account_kinds",
        ),
    ],
    SYSTEM_STRIPES: [
        Case(
            "a stripe with one unit of room more than its account's distance from its floor",
            "UPDATE account_stripes SET room = room + 1 WHERE account_id = {treasury_gold} AND stripe = 5",
            "UPDATE account_stripes SET room = room - 1 WHERE account_id = {treasury_gold} AND stripe = 5",
        ),
        Case(
            "a system account with a balance of its own besides its stripes'",
            "UPDATE accounts SET balance = 7 WHERE id = {revenue_gold}",
            "UPDATE accounts SET balance = 0 WHERE id = {revenue_gold}",
        ),
        Case(
            "a system account missing a stripe (an empty one)",
            "DELETE FROM account_stripes WHERE account_id = {revenue_loyalty} AND stripe = {revenue_loyalty_empty}",
            """INSERT INTO account_stripes (account_id, stripe, balance, room)
               VALUES ({revenue_loyalty}, {revenue_loyalty_empty}, 0, 0)""",
        ),
        Case(
            "a system account with as many stripes as it should have, but one numbered past the last (64)",
            """UPDATE account_stripes SET stripe = 64
                WHERE account_id = {revenue_loyalty} AND stripe = {revenue_loyalty_empty}""",
            """UPDATE account_stripes SET stripe = {revenue_loyalty_empty}
                WHERE account_id = {revenue_loyalty} AND stripe = 64""",
        ),
    ],
    STRIPE_OWNER: [
        Case(
            "a stripe on a user account",
            "INSERT INTO account_stripes (account_id, stripe, balance, room) VALUES ({dan_gold}, 0, 0, 0)",
            "DELETE FROM account_stripes WHERE account_id = {dan_gold}",
        ),
    ],
    ENTRY_TRANSACTION: [
        Case(
            "two entries of no transaction on one account, +1 then -1, with their running balances",
            f"""INSERT INTO entries (transaction_id, leg, account_id, amount, balance_after)
               VALUES ({NOWHERE}, 1, {{dan_gold}}, 1, {{dan_balance}} + 1),
                      ({NOWHERE} + 1, 1, {{dan_gold}}, -1, {{dan_balance}})""",
            f"DELETE FROM entries WHERE transaction_id IN ({NOWHERE}, {NOWHERE} + 1)",
        ),
    ],
    ENTRY_ACCOUNT: [
        Case(
            "two more legs on a transaction, +5 and -5, on an account that does not exist",
            f"""INSERT INTO entries (transaction_id, leg, account_id, amount, balance_after)
               VALUES ({{dan_t1}}, 3, {NOWHERE}, 5, 5), ({{dan_t1}}, 4, {NOWHERE}, -5, 0)""",
            "DELETE FROM entries WHERE transaction_id = {dan_t1} AND leg IN (3, 4)",
        ),
    ],
    HELD: [
        Case(
            "a hold still held one unit larger than what its account holds",
            "UPDATE holds SET amount = amount + 1 WHERE id = {hold_held}",
            "UPDATE holds SET amount = amount - 1 WHERE id = {hold_held}",
        ),
    ],
    HOLD_ACCOUNT: [
        Case(
            "a voided hold naming another user than its account's",
            "UPDATE holds SET user_id = 'v-dan' WHERE id = {hold_voided}",
            "UPDATE holds SET user_id = 'v-ben' WHERE id = {hold_voided}",
        ),
        Case(
            "a voided hold on an account that does not exist",
            f"UPDATE holds SET account_id = {NOWHERE} WHERE id = {{hold_voided}}",
            "UPDATE holds SET account_id = {ben_gold} WHERE id = {hold_voided}",
        ),
    ],
    CAPTURE: [
        Case(
            "a captured hold that says one unit less was captured than its purchase took",
            "UPDATE holds SET captured_amount = captured_amount - 1 WHERE id = {hold_captured}",
            "UPDATE holds SET captured_amount = captured_amount + 1 WHERE id = {hold_captured}",
        ),
        Case(
            "a capture's purchase that no longer names its hold",
            "UPDATE transactions SET hold_id = NULL WHERE id = {capture}",
            "UPDATE transactions SET hold_id = {hold_captured} WHERE id = {capture}",
        ),
        Case(
            "a purchase naming a hold that is still held",
            "UPDATE transactions SET hold_id = {hold_held} WHERE id = {ann_purchase}",
            "UPDATE transactions SET hold_id = NULL WHERE id = {ann_purchase}",
        ),
    ],
    REFUND_ORIGINAL: [
        Case(
            "a refunded purchase that names another user than its refund",
            "UPDATE transactions SET user_id = 'v-eve' WHERE id = {ann_purchase}",
            "UPDATE transactions SET user_id = 'v-ann' WHERE id = {ann_purchase}",
        ),
        Case(
            "a refund that says it is a purchase",
            "UPDATE transactions SET type = 'purchase' WHERE id = {ann_refund}",
            "UPDATE transactions SET type = 'refund' WHERE id = {ann_refund}",
        ),
    ],
    REFUND_TOTAL: [
        Case(
            "the count of what is refunded one unit above the refunds",
            "UPDATE refunded SET amount = amount + 1 WHERE transaction_id = {ann_purchase}",
            "UPDATE refunded SET amount = amount - 1 WHERE transaction_id = {ann_purchase}",
        ),
        Case(
            "an original smaller than its refunds",
            "UPDATE transactions SET amount = {ann_refund_amount} - 1 WHERE id = {ann_purchase}",
            "UPDATE transactions SET amount = {ann_purchase_amount} WHERE id = {ann_purchase}",
        ),
        Case(
            "a count of refunds of a transaction that does not exist",
            f"INSERT INTO refunded (transaction_id, amount) VALUES ({NOWHERE}, 5)",
            f"DELETE FROM refunded WHERE transaction_id = {NOWHERE}",
        ),
    ],
    REFUND_LEGS: [
        Case(
            "a refund of a purchase (user +, revenue -) turned into a refund of a top-up of the same user and asset"
            " (treasury -, user +), its count moved along: it adds to the user leg instead of reversing it",
            """UPDATE transactions SET refund_of = {ann_t1} WHERE id = {ann_refund};
               UPDATE refunded SET transaction_id = {ann_t1} WHERE transaction_id = {ann_purchase}""",
            """UPDATE transactions SET refund_of = {ann_purchase} WHERE id = {ann_refund};
               UPDATE refunded SET transaction_id = {ann_purchase} WHERE transaction_id = {ann_t1}""",
        ),
        Case(
            "a refund's revenue leg moved to the bonus pool, an account its original has no leg on",
            """UPDATE entries SET account_id = {bonus_pool_gold}
                WHERE transaction_id = {ann_refund} AND account_id = {revenue_gold}""",
            """UPDATE entries SET account_id = {revenue_gold}
                WHERE transaction_id = {ann_refund} AND account_id = {bonus_pool_gold}""",
            also=frozenset({BALANCE_IS_ENTRIES, STRIPE_BALANCE, RUNNING}),
            why_also="the entry leaves the revenue's sums and running balances for the bonus pool's",
        ),
    ],
    FROZEN: [
        Case(
            "an account of a frozen user not flagged",
            "UPDATE accounts SET frozen = false WHERE id = {ben_diamond}",
            "UPDATE accounts SET frozen = true WHERE id = {ben_diamond}",
        ),
        Case(
            "an account of an active user flagged frozen",
            "UPDATE accounts SET frozen = true WHERE id = {dan_gold}",
            "UPDATE accounts SET frozen = false WHERE id = {dan_gold}",
        ),
    ],
    KEY_OUTCOME: [
        Case(
            "a record naming a transaction that does not exist",
            f"UPDATE idempotency_keys SET transaction_id = {NOWHERE} WHERE key = 'dan-t1'",
            "UPDATE idempotency_keys SET transaction_id = {dan_t1} WHERE key = 'dan-t1'",
        ),
        Case(
            "a record naming a hold that does not exist",
            f"UPDATE idempotency_keys SET hold_id = {NOWHERE} WHERE key = 'hold-held'",
            "UPDATE idempotency_keys SET hold_id = {hold_held} WHERE key = 'hold-held'",
        ),
        Case(
            "a record naming a transaction and a problem: idempotency_key_bounds forbids it",
            """UPDATE idempotency_keys SET problem = '{{"code": "insufficient_funds"}}' WHERE key = 'dan-t1'""",
            "UPDATE idempotency_keys SET problem = NULL WHERE key = 'dan-t1'",
            drop="idempotency_keys.idempotency_key_bounds",
        ),
    ],
    KEY_OWNER: [
        Case(
            "a record of an API key that does not exist",
            f"UPDATE idempotency_keys SET api_key_id = {NOWHERE} WHERE key = 'dan-t2'",
            "UPDATE idempotency_keys SET api_key_id = {admin_key} WHERE key = 'dan-t2'",
        ),
    ],
    ASSET_SYSTEM: [
        Case(
            "an asset made at runtime without its revenue account (here: renamed away, stripes and all)",
            "UPDATE accounts SET name = 'system:lost_revenue' WHERE id = {gem_revenue}",
            "UPDATE accounts SET name = 'system:revenue' WHERE id = {gem_revenue}",
        ),
    ],
    ACCOUNT_OWNERS: [
        Case(
            "an account (never credited) in an asset that does not exist: its foreign key forbids it",
            "UPDATE accounts SET asset = 'V_NOWHERE' WHERE id = {dan_diamond}",
            "UPDATE accounts SET asset = 'DIAMOND' WHERE id = {dan_diamond}",
            drop="accounts.accounts_asset_fkey",
        ),
        Case(
            "accounts of a user that does not exist (the user renamed under them): their foreign key forbids it",
            "UPDATE users SET user_id = 'v-gone' WHERE user_id = 'v-dan'",
            "UPDATE users SET user_id = 'v-dan' WHERE user_id = 'v-gone'",
            drop="accounts.accounts_user_id_fkey",
        ),
    ],
    TRANSFER_LEGS: [
        Case(
            "a transfer whose user is its receiver",
            "UPDATE transactions SET user_id = 'v-ann' WHERE id = {transfer}",
            "UPDATE transactions SET user_id = 'v-eve' WHERE id = {transfer}",
        ),
        Case(
            "a top-up (treasury -> user) recorded as a transfer",
            "UPDATE transactions SET type = 'transfer' WHERE id = {eve_t1}",
            "UPDATE transactions SET type = 'topup' WHERE id = {eve_t1}",
        ),
    ],
    LOTS_KEPT: [
        Case(
            "an account of an asset with lots that does not keep them",
            "UPDATE accounts SET lots = false WHERE id = {fay_pts}",
            "UPDATE accounts SET lots = true WHERE id = {fay_pts}",
            also=frozenset({LOTS_SUM}),
            why_also="its lots are now on an account that does not keep lots",
        ),
    ],
    LOTS_SUM: [
        Case(
            "a lot that no credit formed, on an account whose lots summed to its balance",
            "INSERT INTO lots (account_id, expires_at, original, amount) VALUES ({fay_pts}, 'infinity', 1, 1)",
            "DELETE FROM lots WHERE account_id = {fay_pts} AND transaction_id IS NULL",
        ),
    ],
    LOT_AMOUNT: [
        Case(
            "a unit of a debit's take marked given back, with no lot the richer",
            "UPDATE lot_uses SET restored = restored + 1 WHERE transaction_id = {fay_purchase2}",
            "UPDATE lot_uses SET restored = restored - 1 WHERE transaction_id = {fay_purchase2}",
        ),
    ],
    LOT_CREDIT: [
        Case(
            "a lot said to be formed by a purchase (a debit)",
            "UPDATE lots SET transaction_id = {fay_purchase2} WHERE id = {fay_lot}",
            "UPDATE lots SET transaction_id = {fay_t3} WHERE id = {fay_lot}",
        ),
    ],
    LOT_USES: [
        Case(
            "a debit that took one unit more from a lot than it debited, the lot's amount left as it was",
            "UPDATE lot_uses SET amount = amount + 1 WHERE transaction_id = {fay_purchase2}",
            "UPDATE lot_uses SET amount = amount - 1 WHERE transaction_id = {fay_purchase2}",
            also=frozenset({LOT_AMOUNT}),
            why_also="the lot now holds one unit more than its original less what was taken",
        ),
    ],
    EXPIRY_LEGS: [
        Case(
            "an expiry whose transaction says one unit more than its legs moved",
            "UPDATE transactions SET amount = amount + 1 WHERE id = {fay_expiry}",
            "UPDATE transactions SET amount = amount - 1 WHERE id = {fay_expiry}",
        ),
    ],
}


# The ledger ----------------------------------------------------------------------------------------------------------


def internal(public_id: str) -> int:
    """The internal id of a public one (tx_..., hold_...)."""
    return int(public_id.rsplit("_", 1)[1], 16)


async def send(http: httpx.AsyncClient, path: str, body: dict[str, Any], key: str | None = None) -> dict[str, Any]:
    headers = {**HEADERS, "Idempotency-Key": key} if key else HEADERS
    response = await http.post(path, json=body, headers=headers)
    assert response.status_code in (200, 201), (path, response.text)
    answer: dict[str, Any] = response.json()
    return answer


async def build(http: httpx.AsyncClient, db: asyncpg.Connection) -> dict[str, int]:
    """The ledger the cases corrupt, through the API; the ids (and a few values) the cases need."""
    for user in ("v-ann", "v-ben", "v-dan", "v-eve"):
        assert (await http.put(f"/v1/users/{user}", headers=HEADERS)).status_code == 201
    # Accounts appear with their first credit; v-ben and v-dan have one in every asset from the start, as users
    # created before migration 0006 do (some never credited: no entries).
    await db.execute(
        """INSERT INTO accounts (kind, name, asset, user_id, lots)
           SELECT 'user', 'user:' || u, a.code, u, a.lots FROM unnest(ARRAY['v-ben', 'v-dan']) u CROSS JOIN assets a"""
    )

    def move(user: str, amount: int, asset: str = "GOLD", **extra: Any) -> dict[str, Any]:
        return {"user_id": user, "asset": asset, "amount": amount, **extra}

    ann_t1 = await send(http, "/v1/topups", move("v-ann", 1000), "ann-t1")
    await send(http, "/v1/topups", move("v-ann", 100, "DIAMOND"), "ann-t2")
    await send(http, "/v1/bonuses", move("v-ann", 50, "LOYALTY"), "ann-bonus")
    purchase = await send(http, "/v1/purchases", move("v-ann", 100), "ann-purchase")
    rewarded = await send(
        http,
        "/v1/purchases",
        move("v-ann", 200, rewards=[{"asset": "LOYALTY", "amount": 20}, {"asset": "DIAMOND", "amount": 5}]),
        "ann-rewarded",
    )
    held = await send(http, "/v1/holds", move("v-ann", 50), "hold-held")
    captured = await send(http, "/v1/holds", move("v-ann", 80), "hold-captured")
    capture = await send(http, f"/v1/holds/{captured['id']}/capture", {"amount": 60}, "capture")
    refund = await send(
        http, f"/v1/transactions/{purchase['id']}/refunds", {"amount": 30, "reason": "late"}, "ann-refund"
    )
    for amount, key in ((100, "rewarded-refund-1"), (50, "rewarded-refund-2")):
        await send(http, f"/v1/transactions/{rewarded['id']}/refunds", {"amount": amount, "reason": "sorry"}, key)

    ben_t1 = await send(http, "/v1/topups", move("v-ben", 500), "ben-t1")
    voided = await send(http, "/v1/holds", move("v-ben", 30), "hold-voided")
    await send(http, f"/v1/holds/{voided['id']}/void", {}, "void")
    await send(http, f"/v1/transactions/{ben_t1['id']}/refunds", {"amount": 100, "reason": "chargeback"}, "ben-cb")
    adjustment = {
        "reason": "correction",
        "entries": [
            {"account": "user:v-ben", "asset": "GOLD", "amount": -10},
            {"account": "system:revenue", "asset": "GOLD", "amount": 10},
        ],
    }
    await send(http, "/v1/adjustments", adjustment, "adjustment")
    await send(http, "/v1/users/v-ben/freeze", {"reason": "under review"})

    dan_t1 = await send(http, "/v1/topups", move("v-dan", 1000), "dan-t1")
    dan_t2 = await send(http, "/v1/topups", move("v-dan", 100), "dan-t2")
    eve_t1 = await send(http, "/v1/topups", move("v-eve", 300), "eve-t1")
    # An asset made at runtime, transferable: v-eve's account in it is opened by a top-up, v-ann's by a transfer.
    gem = await http.put("/v1/assets/V_GEM", json={"name": "Verify gems", "transferable": True}, headers=HEADERS)
    assert gem.status_code == 201, gem.text
    await send(http, "/v1/topups", move("v-eve", 40, "V_GEM"), "eve-gem")
    transfer = await send(
        http,
        "/v1/transfers",
        {"from_user_id": "v-eve", "to_user_id": "v-ann", "asset": "V_GEM", "amount": 15},
        "eve-transfer",
    )

    # An asset whose credits expire after a day: v-fay's lots, a purchase that takes from the first, a refund that
    # gives back to it, an expiry of everything then left (the sweep run with its clock two days on), then a new lot
    # and a purchase from it.
    points = await http.put("/v1/assets/V_PTS", json={"name": "Verify points", "expiry_days": 1}, headers=HEADERS)
    assert points.status_code == 201, points.text
    assert (await http.put("/v1/users/v-fay", headers=HEADERS)).status_code == 201
    await send(http, "/v1/topups", move("v-fay", 100, "V_PTS"), "fay-t1")
    await send(http, "/v1/bonuses", move("v-fay", 50, "V_PTS"), "fay-t2")
    fay_purchase = await send(http, "/v1/purchases", move("v-fay", 30, "V_PTS"), "fay-purchase")
    await send(http, f"/v1/transactions/{fay_purchase['id']}/refunds", {"amount": 10, "reason": "r"}, "fay-refund")
    assert await db.fetchval("SELECT wallet_expire_lots(now() + interval '2 days', 100)") == 1
    fay_expiry = await db.fetchval("SELECT max(id) FROM transactions WHERE type = 'expiry' AND user_id = 'v-fay'")
    fay_t3 = await send(http, "/v1/topups", move("v-fay", 70, "V_PTS"), "fay-t3")
    fay_purchase2 = await send(http, "/v1/purchases", move("v-fay", 20, "V_PTS"), "fay-purchase2")

    async def account(name: str, asset: str) -> int:
        return int(await db.fetchval("SELECT id FROM accounts WHERE name = $1 AND asset = $2", name, asset))

    ids = {
        "ann_t1": internal(ann_t1["id"]),
        "ann_t1_after": ann_t1["balance_after"],
        "ann_purchase": internal(purchase["id"]),
        "ann_purchase_amount": purchase["amount"],
        "ann_refund": internal(refund["id"]),
        "ann_refund_amount": refund["amount"],
        "capture": internal(capture["id"]),
        "hold_held": internal(held["id"]),
        "hold_held_amount": held["amount"],
        "hold_captured": internal(captured["id"]),
        "hold_voided": internal(voided["id"]),
        "dan_t1": internal(dan_t1["id"]),
        "dan_t2": internal(dan_t2["id"]),
        "dan_balance": dan_t2["balance_after"],
        "eve_t1": internal(eve_t1["id"]),
        "transfer": internal(transfer["id"]),
        "gem_revenue": await account("system:revenue", "V_GEM"),
        "ann_gold": await account("user:v-ann", "GOLD"),
        "ben_gold": await account("user:v-ben", "GOLD"),
        "ben_diamond": await account("user:v-ben", "DIAMOND"),
        "dan_gold": await account("user:v-dan", "GOLD"),
        "dan_diamond": await account("user:v-dan", "DIAMOND"),
        "eve_gold": await account("user:v-eve", "GOLD"),
        "treasury_gold": await account("system:treasury", "GOLD"),
        "revenue_gold": await account("system:revenue", "GOLD"),
        "revenue_loyalty": await account("system:revenue", "LOYALTY"),
        "bonus_pool_gold": await account("system:bonus_pool", "GOLD"),
        "fay_pts": await account("user:v-fay", "V_PTS"),
        "fay_t3": internal(fay_t3["id"]),
        "fay_purchase2": internal(fay_purchase2["id"]),
        "fay_expiry": fay_expiry,
        "fay_lot": await db.fetchval("SELECT id FROM lots WHERE transaction_id = $1", internal(fay_t3["id"])),
        "admin_key": await db.fetchval("SELECT id FROM api_keys WHERE name = $1", keys.BOOTSTRAP_KEY_NAME),
    }
    # The treasury's (GOLD) latest entry, the latest of its stripe; and the first entry of its busiest stripe, on
    # which the stripe's later entries build their running balances.
    ids["treasury_last"] = await db.fetchval(
        "SELECT max(transaction_id) FROM entries WHERE account_id = $1", ids["treasury_gold"]
    )
    busiest = await db.fetchrow(
        """SELECT stripe, min(transaction_id) AS first, count(*) AS entries FROM entries WHERE account_id = $1
            GROUP BY stripe ORDER BY count(*) DESC, stripe LIMIT 1""",
        ids["treasury_gold"],
    )
    assert busiest["entries"] >= 2, dict(busiest)
    ids["treasury_first"], ids["treasury_first_stripe"] = busiest["first"], busiest["stripe"]
    ids["revenue_loyalty_empty"] = await db.fetchval(
        """SELECT min(s.stripe) FROM account_stripes s
            WHERE s.account_id = $1 AND s.balance = 0 AND s.room = 0
              AND NOT EXISTS (SELECT FROM entries e WHERE e.account_id = $1 AND e.stripe = s.stripe)""",
        ids["revenue_loyalty"],
    )
    assert None not in ids.values(), ids
    return {name: int(value) for name, value in ids.items()}


@pytest.fixture(scope="module")
def verify_url(server_url: str) -> Iterator[str]:
    with own_database(server_url, "wallet_verify") as url:
        migrate(url)
        yield url


@pytest.fixture(scope="module")
async def ledger(verify_url: str) -> AsyncIterator[tuple[asyncpg.Connection, dict[str, int]]]:
    settings = Settings(database_url=verify_url, api_key_cache_ttl_ms=0)
    conn = await connect(verify_url, settings)
    await seed(conn)
    await keys.ensure_bootstrap(conn, SECRET)
    async with in_process(create_app(settings)) as http:
        ids = await build(http, conn)
    yield conn, ids
    await conn.close()


# Verification --------------------------------------------------------------------------------------------------------


async def run_verify(url: str) -> tuple[int, set[str], str]:
    """`wallet verify` in its own process: its exit status, the checks it reports failed, and its report. Every check
    is reported once, as ok or as FAIL."""
    result = await asyncio.to_thread(wallet_verify, url)
    lines = result.stdout.splitlines()
    failed = set()
    for name in VERIFY_CHECKS:
        marks = [line[:4] for line in lines if line[5:] == name or line[5:].startswith(name + ": ")]
        assert marks in (["ok  "], ["FAIL"]), (name, result.stdout, result.stderr)
        if marks == ["FAIL"]:
            failed.add(name)
    return result.returncode, failed, result.stdout + result.stderr


async def last_report(conn: asyncpg.Connection) -> tuple[int, set[str]]:
    """What the last run kept for the console and /metrics: its count of failed checks, and their names."""
    row = await conn.fetchrow("SELECT failed, checks FROM verify_reports ORDER BY id DESC LIMIT 1")
    assert row is not None
    checks = row["checks"]
    assert [c["name"] for c in checks] == list(VERIFY_CHECKS)
    return row["failed"], {c["name"] for c in checks if c["violations"]}


async def violations(conn: asyncpg.Connection) -> dict[str, list[dict[str, Any]]]:
    """The checks that fail, run in-process (as `wallet verify` runs them), with their samples."""
    return {result.name: result.sample for result in await verify(conn) if result.violations}


async def test_the_ledger_with_every_kind_of_posting_verifies_clean(
    ledger: tuple[asyncpg.Connection, dict[str, int]], verify_url: str
) -> None:
    conn, _ = ledger
    kinds = {row["type"] for row in await conn.fetch("SELECT DISTINCT type FROM transactions")}
    assert kinds >= {"topup", "bonus", "purchase", "refund", "adjustment", "transfer"}, kinds
    statuses = {row["status"] for row in await conn.fetch("SELECT DISTINCT status FROM holds")}
    assert statuses == {"held", "captured", "voided"}
    assert await conn.fetchval("SELECT count(*) FROM accounts WHERE frozen") == 3
    status, failed, report = await run_verify(verify_url)
    assert (status, failed) == (0, set()), report
    assert "ledger is consistent" in report
    assert await last_report(conn) == (0, set())


def test_every_case_names_a_check_and_says_why_others_fail_too() -> None:
    assert set(CASES) <= set(VERIFY_CHECKS), set(CASES) - set(VERIFY_CHECKS)
    for name, cases in CASES.items():
        for case in cases:
            assert name not in case.also and case.also <= set(VERIFY_CHECKS), (name, case.what)
            assert bool(case.also) == bool(case.why_also), (name, case.what)


async def constraint_definition(conn: asyncpg.Connection, qualified: str) -> tuple[str, str, str]:
    table, name = qualified.split(".")
    definition = await conn.fetchval(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = $1::regclass AND conname = $2",
        table,
        name,
    )
    assert definition is not None, qualified
    return table, name, str(definition)


@pytest.mark.parametrize("name", list(VERIFY_CHECKS), ids=list(VERIFY_CHECKS))
async def test_verify_catches_a_corruption_of(
    name: str, ledger: tuple[asyncpg.Connection, dict[str, int]], verify_url: str
) -> None:
    conn, ids = ledger
    assert name in CASES, f"no corruption case for the check {name!r}: add one to CASES"
    for case in CASES[name]:
        dropped = await constraint_definition(conn, case.drop) if case.drop else None
        try:
            async with conn.transaction():
                if dropped:
                    await conn.execute(f"ALTER TABLE {dropped[0]} DROP CONSTRAINT {dropped[1]}")
                await conn.execute(case.corrupt.format(**ids))
            status, failed, report = await run_verify(verify_url)
        finally:
            async with conn.transaction():
                await conn.execute(case.undo.format(**ids))
                if dropped:
                    await conn.execute(f"ALTER TABLE {dropped[0]} ADD CONSTRAINT {dropped[1]} {dropped[2]}")
        assert status == 1, (case.what, report)
        assert failed == {name} | case.also, (case.what, report)
        assert await last_report(conn) == (len(failed), failed), case.what
        assert await violations(conn) == {}, case.what  # undone: clean again


async def test_the_ledger_verifies_clean_after_every_corruption_is_undone(
    ledger: tuple[asyncpg.Connection, dict[str, int]], verify_url: str
) -> None:
    conn, _ = ledger
    for qualified in ("accounts.account_kinds", "idempotency_keys.idempotency_key_bounds"):
        await constraint_definition(conn, qualified)  # restored
    status, failed, report = await run_verify(verify_url)
    assert (status, failed) == (0, set()), report
