"""python -m bench.generate: a large, consistent ledger made in SQL, then reads measured on it.

Set-based: each chunk is a few INSERT ... SELECT over generate_series. Users u1..uN take turns by chance (u1
has 2% of all transactions, `--whale-share`: 100,000 of the 5M of 10M entries; u2..u101 9% between them, the rest
spread evenly), on GOLD, DIAMOND or LOYALTY.
Each user account alternates top-up, purchase, top-up, ... with amounts fixed per account (top-up > purchase),
so the balance after its k-th entry is a closed form of k: never negative, exact in order, no running sums.
System accounts get the other legs, on stripe 0 with the stripe's running balance (migration 0005: a system leg
records its stripe and the stripe's balance after it); at the end each one's stripe 0 moves by the sum of its
generated legs, and the room, balance minus floor, is spread evenly again (as migration 0004 did).
Transaction i is created at start + i microseconds, so that balances as of an instant have a ledger to bisect.
Secondary indexes of transactions and entries are dropped during the load and rebuilt after it, and foreign
key triggers are skipped (session_replication_role = replica): `wallet verify` checks the result.
"""

import argparse
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

from bench import data
from bench.load import LoadResult, Monitor, run_wrk
from bench.report import machine, save, server_settings, table
from bench.target import Target, bench_database, running_server
from wallet import statistics

WHALE = "u1"

CHUNK_SQL = """
CREATE TEMP TABLE gen_chunk AS
WITH picked AS (
    SELECT t,
           CASE WHEN r < %(whale_share)s THEN 1
                WHEN r < %(whale_share)s + 0.09 THEN 2 + floor(random() * 100)::int
                ELSE 1 + floor(random() * %(users)s)::int END AS uno,
           CASE WHEN r2 < 0.6 THEN 'GOLD' WHEN r2 < 0.8 THEN 'DIAMOND' ELSE 'LOYALTY' END AS asset
      FROM (SELECT t, random() AS r, random() AS r2 FROM generate_series(%(lo)s::bigint, %(hi)s) t) s
), numbered AS (
    SELECT p.t, g.account_id, g.user_id, p.asset, g.topup, g.purchase,
           g.n + row_number() OVER (PARTITION BY g.account_id ORDER BY p.t) AS k
      FROM picked p JOIN gen_accounts g USING (uno, asset)
)
SELECT t, account_id, user_id, asset, k,
       CASE WHEN k %% 2 = 1 THEN 'topup' ELSE 'purchase' END AS type,
       CASE WHEN k %% 2 = 1 THEN topup ELSE purchase END AS amount,
       CASE WHEN k %% 2 = 1 THEN topup ELSE -purchase END AS user_leg,
       ((k + 1) / 2) * topup - (k / 2) * purchase AS balance_after
  FROM numbered;

INSERT INTO transactions (id, type, asset, user_id, amount, metadata, api_key_name, created_at)
OVERRIDING SYSTEM VALUE
SELECT %(base)s + t, type, asset, user_id, amount, '{}', 'generator', %(start)s + t * interval '1 microsecond'
  FROM gen_chunk ORDER BY t;

INSERT INTO entries (transaction_id, leg, account_id, amount, balance_after, stripe)
SELECT %(base)s + c.t, leg.leg, leg.account_id, leg.amount, leg.balance_after, leg.stripe
  FROM (SELECT c.*, s.account_id AS system_id,
               s.start + s.total + sum(-c.user_leg) OVER (PARTITION BY s.account_id ORDER BY c.t) AS system_after
          FROM gen_chunk c JOIN gen_system s ON s.asset = c.asset AND s.type = c.type) c
 CROSS JOIN LATERAL (VALUES (1, c.account_id, c.user_leg, c.balance_after, NULL::smallint),
                            (2, c.system_id, -c.user_leg, c.system_after, 0::smallint))
                     AS leg (leg, account_id, amount, balance_after, stripe)
 ORDER BY c.t, leg.leg;

UPDATE gen_accounts g SET n = g.n + d.n
  FROM (SELECT account_id, count(*) AS n FROM gen_chunk GROUP BY account_id) d WHERE g.account_id = d.account_id;

UPDATE gen_system s SET total = s.total + d.total
  FROM (SELECT asset, type, -sum(user_leg) AS total FROM gen_chunk GROUP BY asset, type) d
 WHERE s.asset = d.asset AND s.type = d.type;

DROP TABLE gen_chunk
"""
CHUNK_STATEMENTS = CHUNK_SQL.split(";\n\n")  # run one by one: parameters go with single statements


def progress(done: int, total: int, started: float) -> None:
    elapsed = time.monotonic() - started
    rate = done / elapsed if elapsed else 0.0
    print(
        f"\r   {done:>12,} / {total:,} entries  {100 * done / total:5.1f}%  {elapsed:6.1f} s  {rate:,.0f} entries/s",
        end="" if sys.stdout.isatty() and done < total else "\n",
        flush=True,
    )


def generate(conn: psycopg.Connection, entries: int, users: int, chunk_entries: int, whale_share: float) -> float:
    """Adds `entries` entries (two per transaction) for users u1..u<users>; returns the seconds it took."""
    started = time.monotonic()
    transactions = entries // 2
    conn.execute("SET session_replication_role = replica")  # no foreign key triggers: verify checks after
    conn.execute("SET synchronous_commit = off")
    conn.execute("SET work_mem = '256MB'")
    indexes = conn.execute(
        """SELECT indexrelid::regclass::text, pg_get_indexdef(indexrelid) FROM pg_index
            WHERE indrelid IN ('transactions'::regclass, 'entries'::regclass)
              AND NOT indisprimary AND NOT indisunique"""
    ).fetchall()
    for name, _ in indexes:
        conn.execute(f"DROP INDEX {name}")
    conn.execute(
        """CREATE TEMP TABLE gen_accounts AS
           SELECT id AS account_id, asset, user_id, substr(user_id, 2)::int AS uno, 0::bigint AS n,
                  1000 + (id % 7) * 100 AS topup, 300 + (id % 5) * 50 AS purchase
             FROM accounts WHERE kind = 'user' AND user_id ~ '^u[0-9]+$'"""
    )
    conn.execute("ALTER TABLE gen_accounts ADD PRIMARY KEY (uno, asset)")
    conn.execute(
        """CREATE TEMP TABLE gen_system AS
           SELECT a.id AS account_id, a.asset, s.type, 0::bigint AS total, z.balance AS start
             FROM accounts a JOIN (VALUES ('topup', 'system:treasury'), ('purchase', 'system:revenue')) s (type, name)
               ON a.name = s.name
             JOIN account_stripes z ON z.account_id = a.id AND z.stripe = 0"""
    )
    conn.execute("ANALYZE gen_accounts, gen_system")
    row = conn.execute("SELECT coalesce(max(id), 0), clock_timestamp() FROM transactions").fetchone()
    assert row is not None
    base, start = row
    chunk = max(1, chunk_entries // 2)
    for lo in range(1, transactions + 1, chunk):
        hi = min(lo + chunk - 1, transactions)
        with conn.transaction():
            for statement in CHUNK_STATEMENTS:
                conn.execute(
                    statement,
                    {"users": users, "lo": lo, "hi": hi, "base": base, "start": start, "whale_share": whale_share},
                )
        progress(2 * hi, 2 * transactions, started)
    print("   balances, sequence, indexes, vacuum ...", flush=True)
    with conn.transaction():
        conn.execute(
            """UPDATE accounts a SET balance = ((g.n + 1) / 2) * g.topup - (g.n / 2) * g.purchase
                 FROM gen_accounts g WHERE a.id = g.account_id AND g.n > 0"""
        )
        # System accounts are their stripes (accounts.balance stays 0): the generated legs' sum goes to stripe 0,
        # and the rooms are spread again so that each stays >= 0 and they add up to balance - balance_min.
        conn.execute(
            """UPDATE account_stripes s SET balance = s.balance + g.total
                 FROM gen_system g WHERE s.account_id = g.account_id AND s.stripe = 0"""
        )
        conn.execute(
            """UPDATE account_stripes s
                  SET room = (t.balance - a.balance_min) / wallet_stripe_count()
                             + CASE WHEN s.stripe = 0 THEN mod(t.balance - a.balance_min, wallet_stripe_count())
                                    ELSE 0 END
                 FROM (SELECT account_id, sum(balance)::bigint AS balance FROM account_stripes
                        WHERE account_id IN (SELECT account_id FROM gen_system) GROUP BY account_id) t
                 JOIN accounts a ON a.id = t.account_id
                WHERE s.account_id = t.account_id"""
        )
        conn.execute("SELECT setval(pg_get_serial_sequence('transactions', 'id'), (SELECT max(id) FROM transactions))")
    conn.execute("SET maintenance_work_mem = '1GB'")
    for _, definition in indexes:
        conn.execute(definition)
    conn.execute("RESET session_replication_role")
    conn.execute("VACUUM (ANALYZE) transactions, entries, accounts, users")
    return time.monotonic() - started


def roll_up(conn: psycopg.Connection) -> float:
    """Rolls the generated entries up for statistics, as the service's maintenance loop would after a bulk load
    (round after round until caught up); returns the seconds it took."""
    started = time.monotonic()
    conn.execute("SET statement_timeout = 0")
    while True:
        row = conn.execute(
            "SELECT wallet_statistics_rollup(%s, %s)", (statistics.ROLLUP_IDS_MAX, statistics.ROLLUP_CHUNK)
        ).fetchone()
        if row is None or row[0] == 0:
            break
    conn.execute("VACUUM (ANALYZE) statistics_chunks")
    return time.monotonic() - started


def deep_cursor(conn: psycopg.Connection) -> tuple[str, int]:
    """A cursor half-way down the whale's GOLD history, and how many entries that history has."""
    row = conn.execute(
        """SELECT count(*) FROM entries e JOIN accounts a ON a.id = e.account_id
            WHERE a.name = 'user:' || %(user)s AND a.asset = 'GOLD'""",
        {"user": WHALE},
    ).fetchone()
    assert row is not None
    count = int(row[0])
    row = conn.execute(
        """SELECT wallet_public_id(e.transaction_id) FROM entries e JOIN accounts a ON a.id = e.account_id
            WHERE a.name = 'user:' || %(user)s AND a.asset = 'GOLD'
            ORDER BY e.transaction_id DESC OFFSET %(offset)s LIMIT 1""",
        {"user": WHALE, "offset": count // 2},
    ).fetchone()
    assert row is not None
    return str(row[0]), count


def created_span(conn: psycopg.Connection) -> tuple[int, int]:
    """The first and last creation times of the generated transactions, in Unix microseconds."""
    row = conn.execute(
        """SELECT (extract(epoch FROM min(created_at)) * 1000000)::bigint,
                  (extract(epoch FROM max(created_at)) * 1000000)::bigint
             FROM transactions WHERE api_key_name = 'generator'"""
    ).fetchone()
    assert row is not None
    assert row[0] is not None
    return int(row[0]), int(row[1])


@contextmanager
def reused(url: str) -> Iterator[Target]:
    """A ledger generated before and kept: migrated to the current revision by `wallet seed`, never dropped."""
    yield Target(url, {"WALLET_DATABASE_URL": url}, f"reused {url}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.generate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=10_000_000, help="entries to generate (default 10M)")
    parser.add_argument("--users", type=int, default=100_000, help="users (default 100,000)")
    parser.add_argument(
        "--whale-share", type=float, default=0.02, help=f"{WHALE}'s share of the transactions (default 0.02)"
    )
    parser.add_argument("--chunk", type=int, default=1_000_000, help="entries per chunk (default 1M)")
    parser.add_argument("--duration", type=int, default=10, help="seconds per read scenario (default 10)")
    parser.add_argument(
        "--connections", default="8,64", help="HTTP connections, a comma-separated list: each read runs at each"
    )
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    parser.add_argument("--workers", type=int, default=2, help="wallet serve --workers (default 2)")
    parser.add_argument("--no-reads", action="store_true", help="generate and verify only")
    parser.add_argument("--reuse", metavar="URL", help="read a ledger generated before (kept with --keep)")
    parser.add_argument("--only", metavar="TEXT", help="only the read scenarios whose name contains TEXT")
    parser.add_argument("--embedded", action="store_true", help="a fresh embedded PostgreSQL in a temp dir")
    parser.add_argument("--keep", action="store_true", help="keep the database at the end")
    return parser.parse_args(argv)


def reads(args: argparse.Namespace, target: Target, cursor: str, span: tuple[int, int]) -> list[LoadResult]:
    """Each read at each number of connections. `span`: the generated transactions' creation times, in Unix
    microseconds, from which the as_of reads draw their instants."""
    paths = {
        "balance (one asset)": "/v1/users/{user}/balances/GOLD",
        "balances (all assets)": "/v1/users/{user}/balances",
        "balance as of an instant (one asset)": "/v1/users/{user}/balances/GOLD?as_of={at}",
        "balances as of an instant (all assets)": "/v1/users/{user}/balances?as_of={at}",
        "history, first page": "/v1/users/{user}/transactions",
        f"history, deep page ({WHALE})": f"/v1/users/{WHALE}/transactions?asset=GOLD&cursor={cursor}",
        "statistics, all time": "/v1/users/{user}/statistics",
        "statistics, to an instant": "/v1/users/{user}/statistics?to={at}",
        f"statistics, all time ({WHALE})": f"/v1/users/{WHALE}/statistics",
        f"statistics, from an instant ({WHALE})": f"/v1/users/{WHALE}/statistics?from={{at}}",
        f"statistics, to an instant ({WHALE})": f"/v1/users/{WHALE}/statistics?to={{at}}",
    }
    if args.only:
        paths = {scenario: path for scenario, path in paths.items() if args.only in scenario}
    results = []
    with running_server(target, args.workers) as server:
        for connections in [int(c) for c in args.connections.split(",")]:
            for scenario, path in paths.items():
                print(f"-- {scenario}: GET {path}, {connections} connections, {args.duration} s", flush=True)
                env = {
                    "BENCH_API_KEY": server.api_key,
                    "BENCH_USERS": str(args.users),
                    "BENCH_PATH": path,
                    "BENCH_AT_FIRST_US": str(span[0]),
                    "BENCH_AT_LAST_US": str(span[1]),
                }
                with Monitor(server.worker_processes(), target.database) as monitor:
                    result = run_wrk(
                        f"{scenario}, {connections} conn",
                        "read",
                        server.base_url,
                        connections,
                        args.duration,
                        args.threads,
                        env,
                    )
                result.rss_mb, result.cpu = monitor.rss_mb, monitor.cpu_cores()
                results.append(result)
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    info = machine()
    print("machine: " + ", ".join(f"{k} {v}" for k, v in info.items()), flush=True)
    results: list[LoadResult] = []
    seconds = rollup_seconds = 0.0
    with reused(args.reuse) if args.reuse else bench_database(args.embedded, args.keep) as target:
        print(f"-- database: {target.description}; wallet seed (migrations, assets, system accounts)", flush=True)
        seeded = target.wallet("seed")
        if seeded.returncode != 0:
            raise RuntimeError(f"wallet seed failed:\n{seeded.stdout}{seeded.stderr}")
        with target.connect() as conn:
            settings = server_settings(conn)
            print("   server: " + ", ".join(f"{k} {v}" for k, v in settings.items()))
            if not args.reuse:
                started = time.monotonic()
                data.create_users(conn, args.users)
                print(f"-- {args.users:,} users in {time.monotonic() - started:.1f} s; generating {args.entries:,}")
                seconds = generate(conn, args.entries, args.users, args.chunk, args.whale_share)
                print(f"   generated {args.entries:,} entries in {seconds:.0f} s ({args.entries / seconds:,.0f}/s)")
            rollup_seconds = roll_up(conn)
            print(f"   rolled up for statistics in {rollup_seconds:.0f} s")
            cursor, whale_entries = deep_cursor(conn)
            span = created_span(conn)
        if not args.no_reads:
            results = reads(args, target, cursor, span)
        print("-- wallet verify", flush=True)
        started = time.monotonic()
        verify = target.verify()
        print(verify.stdout + verify.stderr + f"   ({time.monotonic() - started:.0f} s)")
    print(table(results))
    problems = [
        f"{r.scenario}: {r.unexpected()} {r.socket_errors}" for r in results if r.unexpected() or r.socket_errors
    ]
    if verify.returncode != 0:
        problems.append("wallet verify failed")
    record = {
        "machine": info,
        "server": settings,
        "args": vars(args),
        "generate_seconds": round(seconds, 1),
        "rollup_seconds": round(rollup_seconds, 1),
        "whale_gold_entries": whale_entries,
        "verify": verify.stdout,
        "problems": problems,
    }
    print(f"\nresults saved to {save('generate', record, results)}")
    for problem in problems:
        print(f"PROBLEM: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
