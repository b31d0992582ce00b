"""The database-only scenarios that pgbench runs on the bench database: the engine's own statements, and beside them
the floor, the least durable work that a transfer can be, so that every run carries its own reference.

The floor (from the performance issue): one SQL statement that moves a user balance (a conditional UPDATE, the
balance check being the write), inserts a transaction row under a unique key, and inserts its two entries, on
tables of its own with the indexes such a ledger needs and nothing else: no idempotency record, no system
balance, no rendering. Both the floor and the engine run in both pgbench protocols: `-M prepared` is what the
service does through asyncpg; `-M simple` is how the issue's reference figures were taken.
"""

from dataclasses import dataclass

import psycopg

from bench import data

CLIENTS = 16  # the floor's and the engine's comparison point (the engine's top-up also runs at CLIENTS_HIGH)
CLIENTS_HIGH = 64
PER_COMMIT = 100  # transfers per transaction of the floor's 100-per-commit and of the engine's batch
PROTOCOLS = ("prepared", "simple")  # what the service does through asyncpg; how the figures were taken
KEY_MAX = 10**15  # pgbench draws a random k in 1..KEY_MAX per transaction: keys are unique per client and k

FLOOR_TABLES = (
    "CREATE TABLE bench_floor_accounts (id bigint PRIMARY KEY, balance bigint NOT NULL CHECK (balance >= 0))",
    "INSERT INTO bench_floor_accounts (id, balance) SELECT g, 0 FROM generate_series(1, %(users)s) g",
    """CREATE TABLE bench_floor_transactions (
           id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, key text NOT NULL UNIQUE, amount bigint NOT NULL)""",
    """CREATE TABLE bench_floor_entries (
           transaction_id bigint NOT NULL, leg smallint NOT NULL, account_id bigint NOT NULL, amount bigint NOT NULL,
           PRIMARY KEY (transaction_id, leg))""",
    "CREATE INDEX bench_floor_entries_by_account ON bench_floor_entries (account_id, transaction_id DESC)",
    "VACUUM (ANALYZE) bench_floor_accounts",
)
FLOOR_SYSTEM_ACCOUNT = 0  # the other leg's account: named by the entry, its balance not kept (a stripe in the engine)


@dataclass(frozen=True)
class Scenario:
    name: str  # stable: results are compared by name across runs
    script: str
    protocol: str  # "prepared" or "simple"
    clients: int
    transfers: int  # per pgbench transaction: transfers/s = transfers x tps
    key_prefix: str  # every key the scenario writes starts with it (checked afterwards)
    floor: str = ""  # the floor of the same protocol it is compared with; "" for a floor


def floor_name(protocol: str, per_commit: bool = False) -> str:
    """The floor scenario of a protocol: one transfer per transaction, or PER_COMMIT."""
    return f"pgbench floor{f' {PER_COMMIT}/commit' if per_commit else ''} -c {CLIENTS}{_suffix(protocol)}"


def topup_name(protocol: str, clients: int = CLIENTS) -> str:
    return f"pgbench top-up -c {clients}{_suffix(protocol)}"  # "-M prepared" unsaid: the names of earlier runs


def batch_name(protocol: str) -> str:
    return f"pgbench batch of {PER_COMMIT} -c {CLIENTS}{_suffix(protocol)}"


def _suffix(protocol: str) -> str:
    return "" if protocol == "prepared" else f" -M {protocol}"


def create_floor(conn: psycopg.Connection, users: int) -> None:
    """The floor's tables in the bench database, with an account per bench user (they go with the database)."""
    for statement in FLOOR_TABLES:
        conn.execute(statement, {"users": users})


def _floor_statement(key: str) -> str:
    """One transfer of the floor, with pgbench variables :uid and :amount, under the unique key `key`."""
    return (
        "WITH moved AS ("
        " UPDATE bench_floor_accounts SET balance = balance + :amount::bigint"
        " WHERE id = :uid::bigint AND balance + :amount::bigint >= 0 RETURNING id"
        "), posted AS ("
        f" INSERT INTO bench_floor_transactions (key, amount) SELECT {key}, :amount::bigint FROM moved RETURNING id"
        ") INSERT INTO bench_floor_entries (transaction_id, leg, account_id, amount)"
        " SELECT posted.id, l.leg, l.account_id, l.amount FROM posted CROSS JOIN"
        f" (VALUES (1, :uid::bigint, :amount::bigint), (2, {FLOOR_SYSTEM_ACCOUNT}, -:amount::bigint))"
        " AS l (leg, account_id, amount);\n"
    )


def _key(prefix: str, suffix: str = "") -> str:
    return f"'{prefix}' || :client_id::text || '-' || :k::text" + (f" || '-{suffix}'" if suffix else "")


def floor_script(key_prefix: str, users: int) -> str:
    return (
        f"\\set uid random(1, {users})\n\\set amount random(1, 1000)\n\\set k random(1, {KEY_MAX})\n"
        + _floor_statement(_key(key_prefix))
    )


def floor_per_commit_script(key_prefix: str, users: int) -> str:
    """PER_COMMIT floor statements in one transaction. The n-th takes a user from the n-th of PER_COMMIT equal
    ranges, so that every transaction locks its rows in id order, as the engine's batch does: no deadlocks."""
    assert users >= PER_COMMIT, f"the 100-per-commit floor needs at least {PER_COMMIT} users"
    lines = [f"\\set k random(1, {KEY_MAX})\n", "BEGIN;\n"]
    for n in range(PER_COMMIT):
        low, high = n * users // PER_COMMIT + 1, (n + 1) * users // PER_COMMIT
        lines.append(f"\\set uid random({low}, {high})\n\\set amount random(1, 1000)\n")
        lines.append(_floor_statement(_key(key_prefix, str(n))))
    lines.append("COMMIT;\n")
    return "".join(lines)


def topup_script(key_id: int, key_prefix: str, users: int) -> str:
    """One top-up as the service runs it: SELECT * FROM wallet_request(...), random user, unique key."""
    call = data.wallet_request_sql(
        "topup",
        key_id=str(key_id),
        key_name=f"'{data.BENCH_KEY_NAME}'",
        key=_key(key_prefix),
        user=f"'{data.USER_PREFIX}' || :uid::text",
        asset="'GOLD'",
        amount=":amount",
    )
    return (
        f"\\set uid random(1, {users})\n\\set amount random(1, 1000)\n\\set k random(1, {KEY_MAX})\n"
        f"SELECT * FROM {' '.join(call.split())};\n"
    )


def batch_script(key_id: int, key_prefix: str, users: int) -> str:
    """A batch of PER_COMMIT top-ups as POST /v1/batch runs it (not atomic): wallet_batch(false, items). The items
    are made in SQL (random users and amounts drawn once per item, behind OFFSET 0 so that each is one draw)."""
    item = data.wallet_item_sql(
        "topup",
        key_id=str(key_id),
        key_name=f"'{data.BENCH_KEY_NAME}'",
        key=f"{_key(key_prefix)} || '-' || r.n::text",
        user="r.uid",
        asset="'GOLD'",
        amount="r.amount",
    )
    drawn = (
        f"SELECT n, '{data.USER_PREFIX}' || (1 + floor(random() * {users}))::int::text AS uid,"
        f" (1 + floor(random() * 1000))::bigint AS amount FROM generate_series(1, {PER_COMMIT}) n OFFSET 0"
    )
    return (
        f"\\set k random(1, {KEY_MAX})\n"
        f"SELECT * FROM wallet_batch(false, ARRAY(SELECT {' '.join(item.split())} FROM ({drawn}) r));\n"
    )


def scenarios(key_id: int, prefix: str, users: int) -> list[Scenario]:
    """Every database-only scenario, in the order they run: each floor just before the engine scenarios compared
    with it, so that the machine's drift falls between them as little as possible."""
    found: list[Scenario] = []
    for protocol in PROTOCOLS:
        floor = floor_name(protocol)
        key = f"fl-{protocol}-{prefix}-"
        found.append(Scenario(floor, floor_script(key, users), protocol, CLIENTS, 1, key))
        for clients in (CLIENTS, CLIENTS_HIGH) if protocol == "prepared" else (CLIENTS,):
            key = f"pg-{protocol}-{clients}-{prefix}-"
            name = topup_name(protocol, clients)
            found.append(Scenario(name, topup_script(key_id, key, users), protocol, clients, 1, key, floor))
    for protocol in PROTOCOLS:
        floor = floor_name(protocol, per_commit=True)
        key = f"flc-{protocol}-{prefix}-"
        found.append(Scenario(floor, floor_per_commit_script(key, users), protocol, CLIENTS, PER_COMMIT, key))
        key = f"pgb-{protocol}-{prefix}-"
        found.append(
            Scenario(batch_name(protocol), batch_script(key_id, key, users), protocol, CLIENTS, PER_COMMIT, key, floor)
        )
    return found


def check(conn: psycopg.Connection, scenario: Scenario, processed: int) -> str | None:
    """What is wrong with what a scenario wrote, or None: every transfer pgbench counted is there (the engine's
    with its idempotency record naming a transaction; the floor's with its two entries and the balance moved)."""
    like = scenario.key_prefix.replace("_", "\\_") + "%"
    expected = processed * scenario.transfers
    if scenario.floor:  # the engine
        row = conn.execute(
            "SELECT count(transaction_id), count(*) FROM idempotency_keys WHERE key LIKE %s", (like,)
        ).fetchone()
        assert row is not None
        posted, recorded = int(row[0]), int(row[1])
        if posted != recorded or recorded < expected:
            return f"{posted} of {recorded} keys posted, {expected} expected"
        return None
    row = conn.execute(
        """SELECT count(*), (SELECT count(*) FROM bench_floor_entries), (SELECT count(*) FROM bench_floor_transactions),
                  (SELECT sum(balance) FROM bench_floor_accounts), (SELECT sum(amount) FROM bench_floor_transactions)
             FROM bench_floor_transactions WHERE key LIKE %s""",
        (like,),
    ).fetchone()
    assert row is not None
    written, entries, transactions, balances, amounts = (int(value or 0) for value in row)
    if written < expected or entries != 2 * transactions or balances != amounts:
        return (
            f"{written} transfers written ({expected} expected), {entries} entries for {transactions} transactions,"
            f" balances {balances} for amounts {amounts}"
        )
    return None
