"""Statistics and statements (spec/API.md, v1.1 "Statistics and statements"): `GET /v1/users/{id}/statistics` and
`GET /v1/users/{id}/statement.csv` over `[from, to)`.

- Statistics are exact against a brute-force computation over the user's entries, for random postings of every
  kind across assets, over windows whose ends fall on, just before and just after entries: before the rollup
  (raw entries), with the history rolled up in small chunks that the windows cut, and with a raw tail after chunks.
- Statements parse back with the csv module, descriptions with commas, quotes, newlines and unicode included, one row
  per entry, oldest first, with the ids, amounts and balances the API gives; windows; an empty one is the header.
- The window's and the asset's validation, and the one precedence of an unknown user before an unknown asset.
"""

import csv
import io
import random
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import asyncpg
import httpx
import orjson
import pytest

from tests.conftest import Keys
from tests.support import assert_problem, assert_validation_error, create_user, idem, move, post
from wallet import statistics
from wallet.render import public_id

MICROSECOND = timedelta(microseconds=1)
ASSETS = ("DIAMOND", "GOLD", "LOYALTY")
HEADER = ["created_at", "transaction_id", "type", "asset", "amount", "balance_after", "description"]


def rfc3339(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def window_query(start: datetime | None, end: datetime | None, asset: str | None = None) -> str:
    parts = [f"{name}={quote(rfc3339(at))}" for name, at in (("from", start), ("to", end)) if at is not None]
    if asset is not None:
        parts.append(f"asset={asset}")
    return "?" + "&".join(parts) if parts else ""


async def entries_of(db: asyncpg.Connection, user_id: str) -> list[asyncpg.Record]:
    """The user's entries, straight from the ledger, in the order they applied."""
    return await db.fetch(
        """SELECT t.created_at, e.transaction_id, t.type, a.asset, e.amount, e.balance_after, t.description
             FROM entries e JOIN accounts a ON a.id = e.account_id JOIN transactions t ON t.id = e.transaction_id
            WHERE a.name = 'user:' || $1 ORDER BY e.transaction_id, e.leg""",
        user_id,
    )


def brute_force(
    entries: list[asyncpg.Record], asset: str, start: datetime | None, end: datetime | None
) -> dict[str, Any]:
    """The statistics of one asset as the contract defines them, from every entry."""
    mine = [e for e in entries if e["asset"] == asset]
    inside = [e for e in mine if (start is None or e["created_at"] >= start) and (end is None or e["created_at"] < end)]
    before_end = [e for e in mine if end is None or e["created_at"] < end]
    by_type: dict[str, dict[str, int]] = {}
    for e in inside:
        tally = by_type.setdefault(e["type"], {"count": 0, "amount": 0})
        tally["count"] += 1
        tally["amount"] += e["amount"]
    return {
        "asset": asset,
        "balance": before_end[-1]["balance_after"] if before_end else 0,
        "credits": {
            "count": sum(e["amount"] > 0 for e in inside),
            "amount": sum(e["amount"] for e in inside if e["amount"] > 0),
        },
        "debits": {
            "count": sum(e["amount"] < 0 for e in inside),
            "amount": -sum(e["amount"] for e in inside if e["amount"] < 0),
        },
        "by_type": dict(sorted(by_type.items())),
        "first_at": rfc3339(inside[0]["created_at"]) if inside else None,
        "last_at": rfc3339(inside[-1]["created_at"]) if inside else None,
    }


async def get_statistics(
    client: httpx.AsyncClient, keys: Keys, user_id: str, start: datetime | None = None, end: datetime | None = None
) -> dict[str, Any]:
    response = await client.get(
        f"/v1/users/{user_id}/statistics{window_query(start, end)}", headers=keys.headers("read")
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def random_history(client: httpx.AsyncClient, keys: Keys, user_id: str, rng: random.Random, n: int) -> None:
    """n postings of every kind a user's balance can see, across assets."""
    balances = dict.fromkeys(ASSETS, 0)
    purchases: list[str] = []
    for _ in range(n):
        asset = rng.choice(ASSETS)
        roll = rng.random()
        if roll < 0.3 or balances[asset] < 10:
            kind = rng.choice(["topup", "bonus"])
            tx = await move(client, keys, kind, user_id, rng.randint(10, 500), asset)
        elif roll < 0.6:
            others = [a for a in ASSETS if a != asset]
            body = {
                "user_id": user_id,
                "asset": asset,
                "amount": rng.randint(1, balances[asset]),
                "rewards": [{"asset": rng.choice(others), "amount": rng.randint(1, 20)}] if rng.random() < 0.5 else [],
            }
            response = await post(client, keys, "/v1/purchases", body, idem())
            assert response.status_code == 201, response.text
            tx = response.json()
            purchases.append(tx["id"])
        elif roll < 0.75 and purchases:
            original = purchases.pop(rng.randrange(len(purchases)))
            response = await post(
                client, keys, f"/v1/transactions/{original}/refunds", {"amount": 1, "reason": "partial"}, idem()
            )
            assert response.status_code in (201, 409), response.text  # 409: a reward's reversal needs its balance
            if response.status_code != 201:
                continue
            tx = response.json()
        else:
            amount = rng.randint(1, balances[asset]) * rng.choice([1, -1])
            entries = [
                {"account": f"user:{user_id}", "asset": asset, "amount": amount},
                {"account": "system:treasury", "asset": asset, "amount": -amount},
            ]
            response = await post(client, keys, "/v1/adjustments", {"reason": "correction", "entries": entries}, idem())
            assert response.status_code == 201, response.text
            tx = response.json()
        for entry in tx["entries"]:
            if entry["account"] == f"user:{user_id}":
                balances[entry["asset"]] += entry["amount"]


def windows(
    entries: list[asyncpg.Record], rng: random.Random, count: int
) -> list[tuple[datetime | None, datetime | None]]:
    """Windows whose ends fall on entries, a microsecond either side of them, or nowhere (open)."""
    instants = [e["created_at"] + d for e in entries for d in (-MICROSECOND, timedelta(0), MICROSECOND)]
    found: list[tuple[datetime | None, datetime | None]] = [(None, None)]
    while len(found) < count:
        start, end = rng.choice([None, *instants]), rng.choice([None, *instants])
        if start is not None and end is not None and start >= end:
            continue
        found.append((start, end))
    return found


async def every_asset(db: asyncpg.Connection) -> list[str]:
    """Every asset, in code order, as statistics list them: the seeded ones and any other test's made at runtime."""
    return [row["code"] for row in await db.fetch("SELECT code FROM assets ORDER BY code")]


async def assert_exact(
    client: httpx.AsyncClient, keys: Keys, db: asyncpg.Connection, user_id: str, rng: random.Random
) -> None:
    entries = await entries_of(db, user_id)
    for start, end in windows(entries, rng, 25):
        body = await get_statistics(client, keys, user_id, start, end)
        assert body["user_id"] == user_id
        assert (body["from"], body["to"]) == (start and rfc3339(start), end and rfc3339(end))
        expected = [brute_force(entries, asset, start, end) for asset in await every_asset(db)]
        assert body["assets"] == expected, (start, end)


async def test_statistics_are_exact_raw_rolled_up_and_with_a_tail(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection
) -> None:
    rng = random.Random(20261203)
    user_id = await create_user(client, api_keys, "stats")
    await random_history(client, api_keys, user_id, rng, 60)
    await assert_exact(client, api_keys, db, user_id, rng)  # before any rollup: raw entries only

    accounts = await db.fetch("SELECT id FROM accounts WHERE name = 'user:' || $1", user_id)
    written = [await statistics.roll(db, row["id"], chunk=3) for row in accounts]
    assert sum(written) >= 10, written  # chunks of 3 transactions, which the windows cut
    await assert_exact(client, api_keys, db, user_id, rng)

    await random_history(client, api_keys, user_id, rng, 10)  # a raw tail past the chunks
    await assert_exact(client, api_keys, db, user_id, rng)


async def test_statistics_of_a_user_without_entries_list_every_asset_at_zero(
    client: httpx.AsyncClient, api_keys: Keys, new_user: str, db: asyncpg.Connection
) -> None:
    body = await get_statistics(client, api_keys, new_user)
    empty = {"count": 0, "amount": 0}
    assert body == {
        "user_id": new_user,
        "from": None,
        "to": None,
        "assets": [
            {
                "asset": a,
                "balance": 0,
                "credits": empty,
                "debits": empty,
                "by_type": {},
                "first_at": None,
                "last_at": None,
            }
            for a in await every_asset(db)
        ],
    }


async def test_statistics_of_one_asset_and_the_balance_at_the_end_of_the_window(
    client: httpx.AsyncClient, api_keys: Keys, new_user: str
) -> None:
    first = await move(client, api_keys, "topup", new_user, 500, "GOLD")
    second = await move(client, api_keys, "purchase", new_user, 120, "GOLD")
    await move(client, api_keys, "bonus", new_user, 7, "LOYALTY")
    second_at = datetime.fromisoformat(second["created_at"].replace("Z", "+00:00"))
    response = await client.get(
        f"/v1/users/{new_user}/statistics{window_query(None, second_at, 'GOLD')}", headers=api_keys.headers("read")
    )
    assert response.status_code == 200, response.text
    assert response.json()["assets"] == [
        {
            "asset": "GOLD",
            "balance": 500,  # after the top-up; the purchase at `to` is outside the window
            "credits": {"count": 1, "amount": 500},
            "debits": {"count": 0, "amount": 0},
            "by_type": {"topup": {"count": 1, "amount": 500}},
            "first_at": first["created_at"],
            "last_at": first["created_at"],
        }
    ]
    whole = await client.get(f"/v1/users/{new_user}/statistics?asset=GOLD", headers=api_keys.headers("read"))
    gold = whole.json()["assets"][0]
    assert (gold["balance"], gold["by_type"]["purchase"]) == (380, {"count": 1, "amount": -120})


async def test_sums_past_64_bits_are_exact_integers(client: httpx.AsyncClient, api_keys: Keys, new_user: str) -> None:
    """Gross credits and debits are not bounded by any balance: ten top-ups and purchases of 10^15 make no more than
    10^15 of balance, but a history can sum past 2^63; the answer stays an exact JSON integer."""
    for _ in range(3):
        await move(client, api_keys, "topup", new_user, 10**15, "DIAMOND")
        await move(client, api_keys, "purchase", new_user, 10**15, "DIAMOND")
    body = await get_statistics(client, api_keys, new_user)
    diamond = next(a for a in body["assets"] if a["asset"] == "DIAMOND")
    assert diamond["credits"] == {"count": 3, "amount": 3 * 10**15}
    assert diamond["debits"] == {"count": 3, "amount": 3 * 10**15}
    # The rendering itself, past 64 bits: what orjson cannot render as an int is written as the digits.
    assert orjson.loads(orjson.dumps({"a": statistics._amount(2**70)})) == {"a": 2**70}


@pytest.mark.parametrize("route", ["statistics", "statement.csv"])
@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("from=2026-12-01T00:00:00Z&to=2026-12-01T00:00:00Z", "from"),
        ("from=2026-12-02T00:00:00Z&to=2026-12-01T00:00:00Z", "from"),
        ("from=2026-12-01", "from"),
        ("to=1733011200", "to"),
        ("to=2026-02-30T00:00:00Z", "to"),
        ("from=0001-01-01T00:00:00%2B01:00", "from"),
        ("to=9999-12-31T23:59:59.9999995Z", "to"),
        ("asset=gold", "asset"),
    ],
)
async def test_bad_windows_and_assets_are_a_422(
    client: httpx.AsyncClient, api_keys: Keys, new_user: str, route: str, query: str, field: str
) -> None:
    response = await client.get(f"/v1/users/{new_user}/{route}?{query}", headers=api_keys.headers("read"))
    assert_validation_error(response, field)


@pytest.mark.parametrize("route", ["statistics", "statement.csv"])
async def test_unknown_user_before_unknown_asset(
    client: httpx.AsyncClient, api_keys: Keys, new_user: str, route: str
) -> None:
    read = api_keys.headers("read")
    assert_problem(
        await client.get(f"/v1/users/nobody-{idem()[2:14]}/{route}?asset=PEARL", headers=read), 404, "user_not_found"
    )
    assert_problem(await client.get(f"/v1/users/{new_user}/{route}?asset=PEARL", headers=read), 404, "asset_not_found")


# Statements ----------------------------------------------------------------------------------------------------------

NASTY = [
    "plain",
    "comma, inside",
    'a "quoted" word',
    "two\nlines",
    "carriage\r\nreturn",
    "Ünïcødé ✓ 金币 🎮",
    '=HYPERLINK("http://evil")',
    "+1",
    "-5% off",
    "@SUM(A1)",
    "",
]


async def get_statement(client: httpx.AsyncClient, keys: Keys, user_id: str, query: str = "") -> list[list[str]]:
    response = await client.get(f"/v1/users/{user_id}/statement.csv{query}", headers=keys.headers("read"))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    assert response.text.startswith(",".join(HEADER) + "\r\n")
    rows = list(csv.reader(io.StringIO(response.text, newline="")))
    assert rows[0] == HEADER
    return rows[1:]


def expected_rows(entries: list[asyncpg.Record]) -> list[list[str]]:
    def cell(description: str | None) -> str:
        if description is None:
            return ""
        return "'" + description if description[:1] in ("=", "+", "-", "@", "\t", "\r") else description

    return [
        [
            rfc3339(e["created_at"]),
            public_id(e["transaction_id"]),
            e["type"],
            e["asset"],
            str(e["amount"]),
            str(e["balance_after"]),
            cell(e["description"]),
        ]
        for e in entries
    ]


async def test_statement_parses_back_oldest_first_with_nasty_descriptions(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection, new_user: str
) -> None:
    ids = []
    for i, description in enumerate(NASTY):
        asset = ASSETS[i % 3]
        body = {"user_id": new_user, "asset": asset, "amount": 100 + i, "description": description or None}
        response = await post(client, api_keys, "/v1/topups", body, idem())
        assert response.status_code == 201, response.text
        ids.append(response.json()["id"])
    purchase = await post(
        client,
        api_keys,
        "/v1/purchases",
        {"user_id": new_user, "asset": "GOLD", "amount": 50, "rewards": [{"asset": "LOYALTY", "amount": 3}]},
        idem(),
    )
    assert purchase.status_code == 201, purchase.text
    rows = await get_statement(client, api_keys, new_user)
    entries = await entries_of(db, new_user)
    assert rows == expected_rows(entries)
    assert [r[1] for r in rows][: len(ids)] == ids  # the ids as every other route renders them, oldest first
    assert [r[2:5] for r in rows[-2:]] == [["purchase", "GOLD", "-50"], ["purchase", "LOYALTY", "3"]]
    described = {r[1]: r[6] for r in rows}
    assert described[ids[3]] == "two\nlines"
    assert described[ids[5]] == "Ünïcødé ✓ 金币 🎮"
    assert described[ids[6]] == '\'=HYPERLINK("http://evil")'  # a formula is never a formula in a spreadsheet
    assert described[ids[8]] == "'-5% off"
    assert all(int(r[4]) and int(r[5]) >= 0 for r in rows)  # signed amounts are never prefixed: they stay numbers

    gold = await get_statement(client, api_keys, new_user, "?asset=GOLD")
    assert gold == [r for r in rows if r[3] == "GOLD"]


async def test_statement_windows_and_empty_statements(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection, new_user: str
) -> None:
    assert await get_statement(client, api_keys, new_user) == []  # the header alone
    for amount in range(1, 8):
        await move(client, api_keys, "topup", new_user, amount, ASSETS[amount % 3])
    entries = await entries_of(db, new_user)
    rng = random.Random(7)
    for start, end in windows(entries, rng, 15):
        rows = await get_statement(client, api_keys, new_user, window_query(start, end))
        inside = [
            e for e in entries if (start is None or e["created_at"] >= start) and (end is None or e["created_at"] < end)
        ]
        assert rows == expected_rows(inside), (start, end)
    last = entries[-1]["created_at"]
    assert await get_statement(client, api_keys, new_user, window_query(last + MICROSECOND, None)) == []


async def test_a_statement_longer_than_a_fetch_streams_every_row_once(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection, new_user: str
) -> None:
    """More rows than one FETCH of the cursor: the chunks follow each other without a gap or a repeat, and the
    balances run on from row to row."""
    total = statistics.STATEMENT_FETCH_ROWS + 500
    for start in range(0, total, 1000):
        operations = [
            {"type": "topup", "user_id": new_user, "asset": "GOLD", "amount": 1, "idempotency_key": idem()}
            for _ in range(min(1000, total - start))
        ]
        response = await client.post("/v1/batch", json={"operations": operations}, headers=api_keys.headers())
        assert response.status_code == 200, response.text
    rows = await get_statement(client, api_keys, new_user)
    assert [int(r[5]) for r in rows] == list(range(1, total + 1))
    assert len({r[1] for r in rows}) == total


async def test_head_of_a_statement_is_its_status_and_headers(
    client: httpx.AsyncClient, api_keys: Keys, new_user: str
) -> None:
    head = await client.head(f"/v1/users/{new_user}/statement.csv", headers=api_keys.headers("read"))
    assert (head.status_code, head.content) == (200, b"")
    assert head.headers["content-type"] == "text/csv; charset=utf-8"
    assert head.headers["content-disposition"] == f'attachment; filename="{new_user}-statement.csv"'
