"""Balances as of an instant (spec/API.md, v1.1 "Balances: posted, held, available"):
`GET /v1/users/{id}/balances?as_of=<RFC 3339>` and `/balances/{asset}?as_of=` answer the posted balances as they
were then, exactly, and as fast as a current balance.

- Each posting's created_at, as of which the balance is that posting's balance_after; a microsecond before the first
  nothing; now, the current balances.
- The formats: RFC 3339 with its offset only, cut to the microsecond (never rounded).
- Exactness under concurrency, for every kind of account: postings run side by side through the real server, so that
  ids and created_at interleave across users and system stripes; then, for every instant at which something
  happened and every instant between, wallet_balance_as_of() of every user and system account is the brute-force sum
  of the entries of the transactions created at or before it.
- Ids out of created_at order (postings side by side take them in either order): exact as of every instant
  around them, wherever wallet_id_at()'s bisection lands.
- O(log n): the work of an as_of read grows neither with the entries of the account nor with those of the ledger.
"""

import asyncio
import bisect
import itertools
import json
import math
import random
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from urllib.parse import quote

import asyncpg
import httpx
import pytest

from tests.conftest import Keys
from tests.support import assert_problem, assert_validation_error, create_user, idem, new_id, open_account, own_database
from wallet.config import Settings
from wallet.database import connect, migrate
from wallet.reads import _BALANCES_SQL, ensure_user
from wallet.seed import seed

MICROSECOND = timedelta(microseconds=1)


def rfc3339(at: datetime) -> str:
    """The service's own form of an instant: UTC, microseconds, Z."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


async def assets(client: httpx.AsyncClient, keys: Keys) -> list[str]:
    response = await client.get("/v1/assets", headers=keys.headers("read"))
    assert response.status_code == 200, response.text
    return sorted(asset["code"] for asset in response.json()["items"])


async def balances_as_of(client: httpx.AsyncClient, keys: Keys, user_id: str, at: str) -> dict[str, int]:
    """GET /balances?as_of= (the instant URL-encoded as given): every asset's balance then. The answer has no held nor
    available, and echoes the instant in the service's form."""
    response = await client.get(
        f"/v1/users/{user_id}/balances?as_of={quote(at, safe='')}", headers=keys.headers("read")
    )
    assert response.status_code == 200, (at, response.text)
    body = response.json()
    assert set(body) == {"user_id", "balances", "as_of"}, body
    assert body["user_id"] == user_id
    assert body["as_of"] == rfc3339(parse_as_sent(at)), (at, body["as_of"])
    for item in body["balances"]:
        assert set(item) == {"asset", "balance"}, item
    return {item["asset"]: item["balance"] for item in body["balances"]}


def parse_as_sent(text: str) -> datetime:
    """An RFC 3339 instant as the service reads it: digits past the microsecond dropped."""
    head, dot, tail = text.upper().partition(".")
    if dot:
        digits = "".join(itertools.takewhile(str.isdigit, tail))
        tail = digits[:6] + tail[len(digits) :]
    return datetime.fromisoformat((head + dot + tail).replace("Z", "+00:00"))


async def post(client: httpx.AsyncClient, keys: Keys, path: str, body: dict[str, Any]) -> httpx.Response:
    return await client.post(path, json=body, headers={**keys.headers("admin"), "Idempotency-Key": idem()})


# Each posting's instant ----------------------------------------------------------------------------------------------


async def test_as_of_each_posting_is_its_balance_after_before_the_first_nothing_and_now_the_current(
    client: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection
) -> None:
    user = await create_user(client, api_keys, "asof")
    codes = await assets(client, api_keys)
    postings = [
        ("/v1/topups", {"asset": "GOLD", "amount": 1000}),
        ("/v1/purchases", {"asset": "GOLD", "amount": 250}),
        ("/v1/bonuses", {"asset": "LOYALTY", "amount": 40}),
        ("/v1/topups", {"asset": "DIAMOND", "amount": 7}),
        ("/v1/purchases", {"asset": "GOLD", "amount": 100, "rewards": [{"asset": "LOYALTY", "amount": 15}]}),
        ("/v1/purchases", {"asset": "DIAMOND", "amount": 2}),
        ("/v1/bonuses", {"asset": "GOLD", "amount": 1}),
        ("/v1/purchases", {"asset": "LOYALTY", "amount": 55}),
    ]
    state = dict.fromkeys(codes, 0)
    history: list[tuple[str, dict[str, int]]] = []
    for path, body in postings:
        response = await post(client, api_keys, path, {"user_id": user, **body})
        assert response.status_code == 201, response.text
        posted = response.json()
        state[posted["asset"]] = posted["balance_after"]
        for reward in posted["rewards"]:
            state[reward["asset"]] = reward["balance_after"]
        history.append((posted["created_at"], dict(state)))
    assert [instant(at) for at, _ in history] == sorted(instant(at) for at, _ in history)

    for at, expected in history:
        assert await balances_as_of(client, api_keys, user, at) == expected, at
        for asset in codes:
            one = await client.get(f"/v1/users/{user}/balances/{asset}?as_of={at}", headers=api_keys.headers("read"))
            assert one.status_code == 200, one.text
            assert one.json() == {"user_id": user, "asset": asset, "balance": expected[asset], "as_of": at}

    before = rfc3339(instant(history[0][0]) - MICROSECOND)
    assert await balances_as_of(client, api_keys, user, before) == dict.fromkeys(codes, 0)

    now = await client.get(f"/v1/users/{user}/balances", headers=api_keys.headers("read"))
    current = {item["asset"]: item["balance"] for item in now.json()["balances"]}
    assert current == history[-1][1]
    at_now = rfc3339(await db.fetchval("SELECT clock_timestamp()"))
    assert await balances_as_of(client, api_keys, user, at_now) == current
    assert await balances_as_of(client, api_keys, user, "9999-12-31T23:59:59.999999Z") == current


# Formats ---------------------------------------------------------------------------------------------------------


async def test_as_of_takes_rfc3339_with_its_offset_cut_to_the_microsecond(
    client: httpx.AsyncClient, api_keys: Keys
) -> None:
    user = await create_user(client, api_keys, "asof")
    first = (await post(client, api_keys, "/v1/topups", {"user_id": user, "asset": "GOLD", "amount": 10})).json()
    second = (await post(client, api_keys, "/v1/topups", {"user_id": user, "asset": "GOLD", "amount": 5})).json()
    at = instant(first["created_at"])
    just_before = at - MICROSECOND
    plus_one = timezone(timedelta(hours=1))

    def gold(answer: dict[str, int]) -> int:
        return answer["GOLD"]

    forms = {
        first["created_at"]: 10,  # Z
        at.astimezone(plus_one).isoformat(): 10,  # +01:00, sent as %2B01:00
        at.astimezone(timezone(timedelta(hours=-5, minutes=-30))).isoformat(): 10,
        first["created_at"].replace("T", "t").replace("Z", "z"): 10,
        first["created_at"].replace("Z", "999Z"): 10,  # nanoseconds: cut, so still this instant
        rfc3339(just_before).replace("Z", "999Z"): 0,  # not rounded up to the posting's microsecond
        rfc3339(just_before).replace("Z", "999+00:00"): 0,
        just_before.astimezone(plus_one).strftime("%Y-%m-%dT%H:%M:%S.%f999+01:00"): 0,
        second["created_at"]: 15,
    }
    for text, expected in forms.items():
        assert gold(await balances_as_of(client, api_keys, user, text)) == expected, text
    one = await client.get(
        f"/v1/users/{user}/balances/GOLD",
        params={"as_of": at.astimezone(plus_one).isoformat()},
        headers=api_keys.headers("read"),
    )
    assert one.json() == {"user_id": user, "asset": "GOLD", "balance": 10, "as_of": first["created_at"]}

    refused = [
        "0.5",  # Unix seconds
        "1767225600",
        "2026-01-01",  # a date alone
        "2026-01-01T00:00:00",  # no offset
        "2026-01-01T00:00:00.123456",
        "2026-02-30T00:00:00Z",  # no such day
        "2026-01-01T25:00:00Z",
        "2026-01-01T00:00Z",  # no seconds
        "2026-01-01T00:00:00.Z",
        "2026-01-01T00:00:00+0100",
        "2026-01-01T00:00:00 01:00",  # what +01:00 becomes in a query string when the + is not encoded
        "",
        "now",
    ]
    for text in refused:
        for path in (f"/v1/users/{user}/balances", f"/v1/users/{user}/balances/GOLD"):
            response = await client.get(path, params={"as_of": text}, headers=api_keys.headers("read"))
            assert_validation_error(response, "as_of")

    valid = {"as_of": first["created_at"]}
    nobody = new_id("nobody")
    for path in (
        f"/v1/users/{nobody}/balances",
        f"/v1/users/{nobody}/balances/GOLD",
        f"/v1/users/{nobody}/balances/NOPE",
    ):
        assert_problem(await client.get(path, params=valid, headers=api_keys.headers("read")), 404, "user_not_found")
    response = await client.get(f"/v1/users/{user}/balances/NOPE", params=valid, headers=api_keys.headers("read"))
    assert_problem(response, 404, "asset_not_found")


# Exactness under concurrency --------------------------------------------------------------------------------------

CONCURRENT_USERS = 4
CONCURRENT_POSTINGS = 200
CONCURRENCY = 48


async def test_as_of_is_exact_for_users_and_system_accounts_while_postings_interleave(
    http: httpx.AsyncClient, api_keys: Keys, db: asyncpg.Connection
) -> None:
    rng = random.Random(20260522)
    users = [await create_user(http, api_keys, "asofc") for _ in range(CONCURRENT_USERS)]
    codes = ["DIAMOND", "GOLD", "LOYALTY"]
    since = await db.fetchval("SELECT coalesce(max(id), 0) FROM transactions")

    operations: list[tuple[str, dict[str, Any]]] = []
    for user, asset in itertools.product(users, codes):  # everyone starts with something, in random order
        operations.append(("/v1/topups", {"user_id": user, "asset": asset, "amount": rng.randint(100, 200)}))
    for _ in range(CONCURRENT_POSTINGS - len(operations)):
        path = rng.choice(["/v1/topups", "/v1/bonuses", "/v1/purchases", "/v1/purchases"])
        body: dict[str, Any] = {"user_id": rng.choice(users), "asset": rng.choice(codes), "amount": rng.randint(1, 60)}
        if path == "/v1/purchases" and rng.random() < 0.3:
            body["rewards"] = [{"asset": rng.choice([c for c in codes if c != body["asset"]]), "amount": 3}]
        operations.append((path, body))
    rng.shuffle(operations)
    gate = asyncio.Semaphore(CONCURRENCY)

    async def send(path: str, body: dict[str, Any]) -> httpx.Response:
        async with gate:
            return await post(http, api_keys, path, body)

    responses = await asyncio.gather(*(send(path, body) for path, body in operations))
    for response in responses:
        assert response.status_code == 201 or response.json()["code"] == "insufficient_funds", response.text
    assert sum(response.status_code == 201 for response in responses) > CONCURRENT_POSTINGS * 2 // 3

    ours = await db.fetch("SELECT id, created_at FROM transactions WHERE id > $1 ORDER BY id", since)
    assert len(ours) == sum(response.status_code == 201 for response in responses)
    stripes = await db.fetchval(
        """SELECT count(DISTINCT e.stripe) FROM entries e
            WHERE e.transaction_id > $1 AND e.stripe IS NOT NULL""",
        since,
    )
    assert stripes > 1, "every posting went to one stripe: nothing interleaved"
    inversions = sum(a["created_at"] > b["created_at"] for a, b in itertools.pairwise(ours))
    print(f"\n{len(ours)} transactions on {stripes} stripes, {inversions} ids out of created_at order")

    # Every instant at which something happened, each one between, and one before and one after all of it.
    moments = sorted({row["created_at"] for row in ours})
    between = [a + (b - a) / 2 for a, b in itertools.pairwise(moments)]
    instants = sorted({*moments, *between, moments[0] - MICROSECOND, moments[-1] + timedelta(seconds=1)})

    accounts = await db.fetch(
        """SELECT id, name, asset, kind FROM accounts
            WHERE (name = ANY ($1::text[]) OR name IN ('system:treasury', 'system:bonus_pool', 'system:revenue'))
              AND asset IN ('DIAMOND', 'GOLD', 'LOYALTY')""",  # the seeded ones: other tests make assets at runtime
        [f"user:{user}" for user in users],
    )
    assert len(accounts) == len(users) * 3 + 9, [dict(row) for row in accounts]
    ids = [row["id"] for row in accounts]

    # The brute force: each account's entries in created_at order, summed up to the instant.
    entries = await db.fetch(
        """SELECT e.account_id, t.created_at, e.amount FROM entries e JOIN transactions t ON t.id = e.transaction_id
            WHERE e.account_id = ANY ($1::bigint[]) ORDER BY e.account_id, t.created_at""",
        ids,
    )
    times: dict[int, list[datetime]] = {account: [] for account in ids}
    sums: dict[int, list[int]] = {account: [0] for account in ids}
    for row in entries:
        times[row["account_id"]].append(row["created_at"])
        sums[row["account_id"]].append(sums[row["account_id"]][-1] + row["amount"])

    def brute(account: int, at: datetime) -> int:
        return sums[account][bisect.bisect_right(times[account], at)]

    async with db.transaction():
        await db.execute("SET LOCAL statement_timeout = 0")  # 21 accounts, 9 of them of 64 stripes, at every instant
        fast = await db.fetch(
            """SELECT i.at, a.id, wallet_balance_as_of(a.id, i.at, w.around) AS balance
                 FROM unnest($1::timestamptz[]) i (at)
                CROSS JOIN LATERAL (SELECT wallet_id_at(i.at) AS around) w
                CROSS JOIN unnest($2::bigint[]) a (id)""",
            instants,
            ids,
            timeout=120,
        )
    assert len(fast) == len(instants) * len(ids)
    names = {row["id"]: (row["name"], row["asset"]) for row in accounts}
    wrong = [
        (names[row["id"]], rfc3339(row["at"]), row["balance"], brute(row["id"], row["at"]))
        for row in fast
        if row["balance"] != brute(row["id"], row["at"])
    ]
    assert wrong == [], wrong[:10]

    # The same through HTTP for the users, at every instant at which one of their balances changed, and between.
    user_accounts = {row["id"]: row for row in accounts if row["kind"] == "user"}
    gate = asyncio.Semaphore(CONCURRENCY)

    async def check(user: str, at: datetime) -> None:
        async with gate:
            answer = await balances_as_of(http, api_keys, user, rfc3339(at))
        expected = {
            row["asset"]: brute(account, at) for account, row in user_accounts.items() if row["name"] == f"user:{user}"
        }
        assert {asset: answer[asset] for asset in codes} == expected, (user, rfc3339(at))

    checks = []
    for user in users:
        own = sorted(
            {at for account, row in user_accounts.items() if row["name"] == f"user:{user}" for at in times[account]}
        )
        own_between = [a + (b - a) / 2 for a, b in itertools.pairwise(own)]
        checks += [check(user, at) for at in sorted({*own, *own_between, own[0] - MICROSECOND})]
    await asyncio.gather(*checks)


# Ids out of created_at order -----------------------------------------------------------------------------------------

# A posting through the engine, in SQL: $1 'topup' or 'bonus' of $3 GOLD to the user $2; its transaction id.
POSTING = """
SELECT transaction_id FROM wallet_request(ROW(NULL, 'as-of-test', gen_random_uuid(), NULL, NULL, NULL,
    ROW($1::text, $2::text, 'GOLD', $3::bigint, NULL, NULL,
        ARRAY['user:' || $2, CASE WHEN $1 = 'topup' THEN 'system:treasury' ELSE 'system:bonus_pool' END],
        ARRAY['GOLD', 'GOLD'], ARRAY[$3, -$3]::bigint[], NULL, NULL, NULL, false)::wallet_posting)::wallet_item)
"""


async def test_as_of_is_exact_when_ids_are_out_of_created_at_order(log_db: asyncpg.Connection) -> None:
    """Two postings side by side can take their ids in one order and their created_at in the other (each INSERT takes
    nextval() and then clock_timestamp()). Made here on purpose: a top-up of one user and a bonus of another, which
    share no account, swap their created_at; every series of balances still has its created_at in id order, and
    wallet_id_at() bisects to an id on either side of the swap. As of every instant around it, every balance (users,
    treasury, bonus pool) is exact: wallet_balance_as_of() walks back or forward from there."""
    db = log_db
    one, other = new_id("inv"), new_id("inv")
    for user in (one, other):
        await ensure_user(db, user, None)
    postings = [
        ("topup", one, 10),
        ("bonus", other, 20),
        ("topup", one, 100),  # these two swap their created_at
        ("bonus", other, 200),
        ("topup", one, 1000),
        ("bonus", other, 2000),
    ]
    ids = [await db.fetchval(POSTING, kind, user, amount) for kind, user, amount in postings]
    assert ids == list(range(ids[0], ids[0] + len(ids))), ids
    swapped = ids[2:4]
    await db.execute(
        """UPDATE transactions t SET created_at = o.created_at
             FROM transactions o WHERE t.id = ANY ($1::bigint[]) AND o.id = ANY ($1::bigint[]) AND o.id <> t.id""",
        swapped,
    )
    rows = await db.fetch("SELECT id, created_at FROM transactions WHERE id = ANY ($1::bigint[]) ORDER BY id", ids)
    times = [row["created_at"] for row in rows]
    assert times[2] > times[3] and times[1] < times[3] and times[2] < times[4], times

    accounts = await db.fetch(
        """SELECT id, name FROM accounts WHERE asset = 'GOLD'
              AND name IN ('user:' || $1, 'user:' || $2, 'system:treasury', 'system:bonus_pool')""",
        one,
        other,
    )
    instants = sorted({at + delta for at in times for delta in (-MICROSECOND, timedelta(0), MICROSECOND)})
    instants += [a + (b - a) / 2 for a, b in itertools.pairwise(sorted(times))]
    for at in instants:
        # wallet_id_at()'s bisection lands on one side of the swap or the other, depending on the instant; exactness
        # must not depend on where it lands: from any id, wallet_balance_as_of() walks back or forward to the answer.
        around = await db.fetchval("SELECT wallet_id_at($1)", at)
        for account in accounts:
            brute = await db.fetchval(
                """SELECT coalesce(sum(e.amount), 0) FROM entries e JOIN transactions t ON t.id = e.transaction_id
                    WHERE e.account_id = $1 AND t.created_at <= $2""",
                account["id"],
                at,
            )
            for start in (around, 0, *range(ids[0] - 1, ids[-1] + 2)):
                fast = await db.fetchval("SELECT wallet_balance_as_of($1, $2, $3)", account["id"], at, start)
                assert fast == brute, (account["name"], at, around, start, fast, brute)
        for user in (one, other):
            row = await db.fetchrow(_BALANCES_SQL, user, "GOLD", at)
            expected = sum(
                amount
                for (kind, _, amount), created in zip(postings, times, strict=True)
                if (kind == "topup") == (user == one) and created <= at
            )
            assert row["balance"] == expected, (user, at, row["balance"], expected)


# O(log n) ---------------------------------------------------------------------------------------------------------

SMALL = 20
BIG = 20_000
CHUNK = 1000


@pytest.fixture(scope="module")
def log_url(server_url: str) -> Iterator[str]:
    with own_database(server_url, "wallet_as_of") as url:
        migrate(url)
        yield url


@pytest.fixture(scope="module")
async def log_db(log_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await connect(log_url, Settings(database_url=log_url))
    await seed(conn)
    yield conn
    await conn.close()


# $2 top-ups of 1 GOLD to the user $1, through the engine, in one statement. Each call's arguments depend on the row
# (its description), or the planner would call the function once for them all.
TOPUPS = """
SELECT count(*) FROM generate_series(1, $2) i
 CROSS JOIN LATERAL wallet_request(ROW(NULL, 'as-of-test', gen_random_uuid(), NULL, NULL, NULL,
     ROW('topup', $1::text, 'GOLD', 1, 'top-up ' || i, NULL, ARRAY['user:' || $1, 'system:treasury'],
         ARRAY['GOLD', 'GOLD'], ARRAY[1, -1]::bigint[], NULL, NULL, NULL, false)::wallet_posting)::wallet_item) r
 WHERE r.transaction_id IS NOT NULL
"""


async def buffers(conn: asyncpg.Connection, sql: str, *args: Any) -> int:
    """Shared buffers (hit or read) that running `sql` touched, the functions it calls included; its second run, so
    that the plans of those functions are cached."""
    for _ in range(2):
        plan = json.loads(await conn.fetchval(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}", *args))[0]["Plan"]
    return int(plan["Shared Hit Blocks"]) + int(plan["Shared Read Blocks"])


async def test_as_of_work_does_not_grow_with_the_entries_of_the_account_nor_of_the_ledger(
    log_db: asyncpg.Connection,
) -> None:
    """The work of an as_of read, in shared buffers, for an account of 20 entries and one of 20,000, early in a ledger
    and at the end of it: it grows with the logarithm of the ledger (the instant is found by bisection over the
    transactions' ids, and the indexes descend a level deeper), while a brute-force sum grows with the entries."""
    db = log_db
    for user in ("small", "big"):
        await ensure_user(db, user, None)
        await open_account(db, user)  # its id is needed before its first top-up
    accounts = {
        user: await db.fetchval("SELECT id FROM accounts WHERE name = 'user:' || $1 AND asset = 'GOLD'", user)
        for user in ("small", "big")
    }

    async def measure(user: str, entry: int) -> dict[str, int]:
        """The work of reading the user's balances as of its `entry`-th entry (counting from 1)."""
        await db.execute("VACUUM ANALYZE accounts, entries, transactions")  # as autovacuum keeps them
        at = await db.fetchval(
            """SELECT t.created_at FROM entries e JOIN transactions t ON t.id = e.transaction_id
                WHERE e.account_id = $1 ORDER BY t.id OFFSET $2 LIMIT 1""",
            accounts[user],
            entry - 1,
        )
        row = await db.fetchrow(_BALANCES_SQL, user, "GOLD", at)
        assert row["balance"] == entry, (user, entry, dict(row))
        return {
            "as_of, every asset (the HTTP read)": await buffers(db, _BALANCES_SQL, user, None, at),
            "wallet_balance_as_of": await buffers(
                db, "SELECT wallet_balance_as_of($1, $2, wallet_id_at($2))", accounts[user], at
            ),
            "brute force": await buffers(
                db,
                """SELECT sum(e.amount) FROM entries e JOIN transactions t ON t.id = e.transaction_id
                    WHERE e.account_id = $1 AND e.stripe IS NULL AND t.created_at <= $2""",
                accounts[user],
                at,
            ),
            "current balance": await buffers(db, _BALANCES_SQL, user, None, None),
            "transactions in the ledger": await db.fetchval("SELECT count(*) FROM transactions"),
        }

    # The small account's entries spread among the big one's, one every CHUNK.
    work: dict[str, dict[str, int]] = {}
    for chunk in range(BIG // CHUNK):
        assert await db.fetchval(TOPUPS, "small", 1) == 1
        assert await db.fetchval(TOPUPS, "big", CHUNK) == CHUNK
        if chunk == 0:
            work["small, 1 entry of 1,001"] = await measure("small", 1)
            work["big, 500 of 1,001"] = await measure("big", CHUNK // 2)
    assert await db.fetchval("SELECT count(*) FROM entries WHERE account_id = $1", accounts["small"]) == SMALL
    assert await db.fetchval("SELECT count(*) FROM entries WHERE account_id = $1", accounts["big"]) == BIG
    work["small, 10 of 20,020"] = await measure("small", SMALL // 2)
    work["big, 10,000 of 20,020"] = await measure("big", BIG // 2)
    work["small, 20 of 20,020"] = await measure("small", SMALL)
    print("\nshared buffers touched:\n" + "\n".join(f"  {name}: {measures}" for name, measures in work.items()))

    # The measure sees work that grows with the entries read...
    assert work["big, 10,000 of 20,020"]["brute force"] > 10 * work["big, 500 of 1,001"]["brute force"], work
    # ...and an as_of read grows only with the logarithm of the ledger, whatever the account: twenty times the ledger
    # costs it at most log(20,020) / log(1,001) (about 1.43) times the work, with a quarter of slack, where a linear
    # read would take twenty times.
    early = work["small, 1 entry of 1,001"]
    for name, measures in work.items():
        growth = math.log(measures["transactions in the ledger"]) / math.log(early["transactions in the ledger"])
        for measure in ("as_of, every asset (the HTTP read)", "wallet_balance_as_of"):
            assert measures[measure] <= early[measure] * growth * 1.25 + 16, (name, measure, growth, work)
