"""python -m bench: the wallet service under load, on a database of its own.

Creates a bench database, starts `wallet serve`, makes 100,000 users in SQL, funds some through the posting
engine, then measures: the database-only figures (pgbench running the service's exact statements, and the floor,
the least durable work a transfer can be, in both protocols), top-ups (closed loop at N, 1 and 8 connections, and
an open loop at a constant rate), purchases, a read/write mix, one hot user, and batches when the service has
them. Ends with `wallet verify`. See docs/benchmarks.md.
"""

import argparse
import json
import secrets
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from urllib.parse import urlsplit

from bench import data, pgbench, pooler
from bench.load import (
    LoadResult,
    Monitor,
    py_spy,
    run_openloop,
    run_pgbench,
    run_wrk,
    start_profile,
    summarise_profile,
)
from bench.report import machine, save, server_settings, table
from bench.target import Target, WalletServer, bench_database, running_server

# --only names, in the order they run. pgbench: every database-only scenario (the engine's and the floor's);
# topup: top-ups at --connections, then at 1 and 8 (low load); openloop: top-ups at a constant rate.
SCENARIOS = ("pgbench", "topup", "openloop", "purchase", "mix", "hot", "batch")
LOW_LOAD_CONNECTIONS = (1, 8)  # the issue: group commit must not cost latency at low load (1, 8 and 64)
OPEN_LOOP_WARMUP_S = 2
FLOOR = pgbench.floor_name("prepared")  # what HTTP scenarios are compared with: asyncpg uses the prepared protocol
FLOOR_PER_COMMIT = pgbench.floor_name("prepared", per_commit=True)
LEGEND = (
    "vs floor: pgbench engine scenarios over the floor of the same protocol (batches in transfers/s over the"
    f" floor's {pgbench.PER_COMMIT} per commit); HTTP scenarios over the -M prepared floor ({FLOOR}: asyncpg"
    f" prepares its statements), the HTTP batch in transfers/s over {FLOOR_PER_COMMIT}"
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=15, help="seconds per scenario (default 15)")
    parser.add_argument("--connections", type=int, default=64, help="HTTP connections (default 64)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    parser.add_argument("--workers", type=int, default=2, help="wallet serve --workers (default 2)")
    parser.add_argument("--users", type=int, default=100_000, help="bench users (default 100,000)")
    parser.add_argument("--funded", type=int, default=10_000, help="users funded for purchases (default 10,000)")
    parser.add_argument(
        "--hot-funds",
        type=int,
        default=0,
        help="the hot user's funds (default: a quarter of the purchases scenario (b)'s rate makes in --duration)",
    )
    parser.add_argument(
        "--batch-connections", type=int, default=16, help="connections of the batch scenario (default 16)"
    )
    parser.add_argument("--batch-size", type=int, default=100, help="operations per batch request (default 100)")
    parser.add_argument(
        "--open-rate",
        type=float,
        default=0.0,
        help="requests/s of the open loop (default: half the closed-loop top-up rate of the same run)",
    )
    parser.add_argument("--only", default=",".join(SCENARIOS), help=f"comma-separated subset of {','.join(SCENARIOS)}")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="after the scenarios, profile the workers with "
        "py-spy during an extra top-up run (flame graph and collapsed stacks in /tmp)",
    )
    parser.add_argument("--embedded", action="store_true", help="a fresh embedded PostgreSQL in a temp dir")
    parser.add_argument("--keep", action="store_true", help="keep the bench database at the end")
    parser.add_argument(
        "--pgbouncer", action="store_true", help="the service through PgBouncer in transaction mode (16 connections)"
    )
    args = parser.parse_args(argv)
    args.only = {name.strip() for name in args.only.split(",") if name.strip()}
    unknown = args.only - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    if "openloop" in args.only and "topup" not in args.only and args.open_rate <= 0:
        parser.error("openloop runs at half the closed-loop top-up rate: add topup to --only, or give --open-rate")
    return args


def step(message: str) -> float:
    print(f"-- {message}", flush=True)
    return time.monotonic()


class Bench:
    def __init__(self, args: argparse.Namespace, target: Target, server: WalletServer) -> None:
        self.args = args
        self.target = target
        self.server = server
        self.prefix = secrets.token_hex(4)
        self.results: list[LoadResult] = []
        self.problems: list[str] = []
        self.profile_summary: list[str] = []

    def env(self, **extra: str) -> dict[str, str]:
        return {
            "BENCH_API_KEY": self.server.api_key,
            "BENCH_USERS": str(self.args.users),
            "BENCH_FUNDED": str(self.args.funded),
            "BENCH_PREFIX": f"{self.prefix}-{len(self.results)}",
            **extra,
        }

    def wrk(
        self,
        scenario: str,
        script: str,
        expected: tuple[str, ...] = (),
        connections: int = 0,
        floor: str = FLOOR,
        **env: str,
    ) -> LoadResult:
        connections = connections or self.args.connections
        step(f"{scenario}: {connections} connections, {self.args.duration} s")
        with Monitor(self.server.worker_processes(), self.target.database) as monitor:
            result = run_wrk(
                scenario,
                script,
                self.server.base_url,
                connections,
                self.args.duration,
                self.args.threads,
                self.env(**env),
            )
        result.rss_mb, result.cpu, result.expected = monitor.rss_mb, monitor.cpu_cores(), expected
        result.floor = floor
        if result.unexpected() or result.socket_errors:
            self.problems.append(f"{scenario}: unexpected responses {result.unexpected()} {result.socket_errors}")
        self.results.append(result)
        return result

    def setup(self) -> int:
        started = step(f"creating {self.args.users:,} users and funding {self.args.funded:,} of them in SQL")
        with self.target.connect() as conn:
            data.create_users(conn, self.args.users)
            key_id = data.bench_key(conn)
            funded = data.fund_users(conn, key_id, self.args.funded, 1_000_000, f"fund-{self.prefix}-")
        assert funded == self.args.funded, f"funded {funded} of {self.args.funded}"
        self.vacuum()
        print(f"   done in {time.monotonic() - started:.1f} s")
        return key_id

    def vacuum(self) -> None:
        """VACUUM (ANALYZE) of the ledger's tables after a phase that wrote many rows, as autovacuum would meanwhile
        on a server that runs it (this one has it off: see the server line). Without statistics on entries, after
        the pgbench phase's 300,000 top-ups, every history page was a sequential scan of entries (91 ms instead of
        0.3 ms) and the mix fell from 1,800 to 185-440 requests/s."""
        with self.target.connect() as conn:
            conn.execute("VACUUM (ANALYZE) transactions, entries, idempotency_keys, accounts, account_stripes")

    @contextmanager
    def server_stopped(self) -> Iterator[None]:
        """The service stopped meanwhile: pgbench -c 64 needs 64 of the server's 100 connections, which other test
        suites share, while the service holds 2 x 16 from its start (its pool is warmed); and nothing but pgbench
        should use the two cores while it measures."""
        self.server.stop()
        try:
            yield
        finally:
            step("wallet serve again")
            self.server.start()

    def database_only(self, key_id: int) -> None:
        with self.target.connect() as conn:
            pgbench.create_floor(conn, self.args.users)
        for scenario in pgbench.scenarios(key_id, self.prefix, self.args.users):
            step(
                f"{scenario.name}: -j 2 -T {self.args.duration} -M {scenario.protocol}"
                + (f", {scenario.transfers} transfers per transaction" if scenario.transfers > 1 else "")
            )
            result = self.run_pgbench(scenario)
            if result is None:
                continue
            with self.target.connect() as conn:
                problem = pgbench.check(conn, scenario, result.requests)
            if problem:
                self.problems.append(f"{scenario.name}: {problem}")
        step("VACUUM (ANALYZE) of the ledger's tables")
        self.vacuum()

    def run_pgbench(self, scenario: pgbench.Scenario) -> LoadResult | None:
        for attempt in range(3):  # a shared server may be short of connections for a moment
            try:
                with Monitor([], self.target.database) as monitor:
                    result = run_pgbench(
                        scenario.name,
                        self.target.url,
                        scenario.script,
                        scenario.clients,
                        self.args.duration,
                        scenario.protocol,
                        scenario.transfers,
                    )
            except RuntimeError as exc:
                if "too many clients" not in str(exc) or attempt == 2:
                    self.problems.append(f"{scenario.name}: " + str(exc).strip().splitlines()[-1])
                    return None
                print("   the server has too few free connections; again in 10 s")
                time.sleep(10)
                continue
            result.cpu, result.floor = monitor.cpu_cores(), scenario.floor
            if result.statuses:  # pgbench's failed transactions
                self.problems.append(f"{scenario.name}: {result.statuses}")
            self.results.append(result)
            return result
        return None

    def open_loop(self) -> None:
        closed = next((r for r in self.results if r.scenario == "topup"), None)
        rate = self.args.open_rate or (closed.rps / 2 if closed else 0.0)
        if rate <= 0:
            self.problems.append("topup open loop: no closed-loop top-up rate to take half of")
            return
        connections = self.args.connections
        step(
            f"topup open loop: {rate:,.0f}/s, {connections} connections, {OPEN_LOOP_WARMUP_S} s warm-up, then"
            f" {self.args.duration} s"
        )
        url = urlsplit(self.server.base_url)
        assert url.hostname is not None
        assert url.port is not None
        with Monitor(self.server.worker_processes(), self.target.database) as monitor:
            result = run_openloop(
                "topup open loop",
                url.hostname,
                url.port,
                "/v1/topups",
                rate,
                self.args.duration,
                connections,
                OPEN_LOOP_WARMUP_S,
                self.env(),
            )
        result.rss_mb, result.cpu = monitor.rss_mb, monitor.cpu_cores()
        if not self.args.open_rate:
            result.note = "half the closed-loop top-up rate, " + result.note
        if result.unexpected() or result.socket_errors:
            self.problems.append(f"topup open loop: unexpected responses {result.unexpected()} {result.socket_errors}")
        self.results.append(result)

    def hot_user(self, key_id: int) -> None:
        purchases = next((r for r in self.results if r.scenario == "purchase"), None)
        # By default a quarter of what scenario (b)'s rate would buy in --duration: one row serializes the
        # purchases, so the funds run out part-way and both outcomes are exercised.
        funds = self.args.hot_funds or max(500, int((purchases.rps if purchases else 1_000) * self.args.duration / 4))
        with self.target.connect() as conn:
            data.create_hot_user(conn, key_id, funds, f"hot-{self.prefix}-")
        result = self.wrk("hot user purchases", "hot", ("409",), BENCH_HOT_USER=data.HOT_USER)
        # wrk stops with requests in flight, and the service finishes them: wait until the count settles.
        with self.target.connect() as conn:
            state, settled = data.hot_user_state(conn), None
            while state != settled:
                time.sleep(1)
                settled, state = state, data.hot_user_state(conn)
        committed, balance = state
        created, refused = result.statuses.get("201", 0), result.statuses.get("409", 0)
        # Requests in flight when wrk stopped may have committed without wrk seeing their 201.
        checks = {
            "committed <= funds": committed <= funds,
            "balance = funds - committed": balance == funds - committed,
            "every 201 committed": created <= committed <= created + self.args.connections,
            "409 only once spent": refused == 0 or committed == funds,
        }
        failed = [name for name, ok in checks.items() if not ok]
        result.note = (
            f"funded {funds}, 201: {created}, 409: {refused}, committed {committed} = min(funds, attempts): "
            f"{'yes' if committed == min(funds, created + refused) or refused == 0 else 'NO'}, balance {balance}: "
            + ("exact" if not failed else "FAILED " + ", ".join(failed))
        )
        if failed:
            self.problems.append("hot user: " + result.note)

    def batch(self) -> None:
        paths = json.loads(self.server.get("/openapi.json"))["paths"]
        if "/v1/batch" not in paths:
            print("-- batch: skipped, the service has no POST /v1/batch yet")
            return
        result = self.wrk(
            f"batch of {self.args.batch_size} top-ups, {self.args.batch_connections} conn",
            "batch",
            connections=self.args.batch_connections,
            floor=FLOOR_PER_COMMIT,
            BENCH_BATCH_SIZE=str(self.args.batch_size),
        )
        result.transfers_per_s = result.items / result.duration_s
        result.note = f"{result.transfers_per_s:,.0f} transfers/s ({result.items:,} operations answered 201)"

    def profile(self) -> None:
        if py_spy() is None:
            self.problems.append("profile: py-spy not found (pip install py-spy)")
            return
        workers = self.server.worker_processes()
        seconds = min(self.args.duration, 10)
        collapsed, flamegraph = Path("/tmp/wallet-bench-profile.txt"), Path("/tmp/wallet-bench-profile.svg")
        recorders = [start_profile(workers[0].pid, seconds, collapsed, raw=True)]
        if len(workers) > 1:
            recorders.append(start_profile(workers[1].pid, seconds, flamegraph, raw=False))
        result = self.wrk("topup (profiled)", "topup")
        for recorder in recorders:
            recorder.wait(60)
        result.note = f"py-spy at 200 Hz on each worker; flame graph {flamegraph}, stacks {collapsed}"
        if collapsed.exists():
            self.profile_summary = summarise_profile(collapsed)

    def run(self) -> None:
        key_id = self.setup()
        only = self.args.only
        if "pgbench" in only:
            with self.server_stopped():
                self.database_only(key_id)
        if "topup" in only:
            self.wrk("topup", "topup")
        if "openloop" in only:
            self.open_loop()
        if "topup" in only:
            for connections in LOW_LOAD_CONNECTIONS:  # for their latency: a rate at 1 or 8 is no ratio to the floor's
                self.wrk(f"topup {connections} conn", "topup", connections=connections, floor="")
        if "purchase" in only:
            self.wrk("purchase", "purchase", ("409",))
        if "mix" in only:
            self.wrk("mix 70% read / 30% write", "mix", ("409",))
        if "hot" in only:
            self.hot_user(key_id)
        if "batch" in only:
            self.batch()
        if self.args.profile:
            self.profile()


def floor_ratios(results: list[LoadResult]) -> list[str]:
    """The engine over the floor, per protocol, at the floor's clients: the top-up statement and the batch; and
    HTTP top-ups, which the table compares with the prepared floor, over the simple one as well."""
    rates = {result.scenario: result.transfer_rate() for result in results}
    pairs = (
        ("the top-up statement over the floor", pgbench.topup_name, False),
        (
            f"the batch of {pgbench.PER_COMMIT} over the floor's {pgbench.PER_COMMIT} per commit (transfers/s)",
            pgbench.batch_name,
            True,
        ),
    )
    lines = []
    for what, engine_name, per_commit in pairs:
        found = []
        for protocol in pgbench.PROTOCOLS:
            mine, floor = rates.get(engine_name(protocol)), rates.get(pgbench.floor_name(protocol, per_commit))
            if mine and floor:
                found.append(f"-M {protocol} {mine / floor:.2f} ({mine:,.0f}/s over {floor:,.0f}/s)")
        if found:
            lines.append(f"engine/floor at {pgbench.CLIENTS} clients, {what}: " + "; ".join(found))
    simple = rates.get(pgbench.floor_name("simple"))
    if "topup" in rates and simple:
        lines.append(f"topup (HTTP) over the -M simple floor: {rates['topup'] / simple:.2f}")
    return lines


def behind_pgbouncer(target: Target, stack: ExitStack) -> Target:
    """The service and its commands through PgBouncer in transaction mode (16 connections to the bench database, which
    gets the service's session settings, as WALLET_TRANSACTION_POOLER asks); the bench's own SQL and pgbench still go
    straight to the database."""
    with target.connect() as conn:
        pooler.set_session_settings(conn)
    url = stack.enter_context(pooler.pgbouncer(target.url, pgbench.CLIENTS))
    env = {**target.env, "WALLET_DATABASE_URL": url, "WALLET_TRANSACTION_POOLER": "true"}
    return Target(target.url, env, f"{target.description}, the service through PgBouncer")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    info = machine()
    print("machine: " + ", ".join(f"{k} {v}" for k, v in info.items()), flush=True)
    with bench_database(args.embedded, args.keep) as target, ExitStack() as stack:
        if args.pgbouncer:
            target = behind_pgbouncer(target, stack)
        step(f"bench database: {target.description}")
        with target.connect() as conn:
            settings = server_settings(conn)
        print("   server: " + ", ".join(f"{k} {v}" for k, v in settings.items()))
        with running_server(target, args.workers) as server:
            print(f"   wallet serve on {server.base_url}, workers {[p.pid for p in server.worker_processes()]}")
            bench = Bench(args, target, server)
            try:
                bench.run()
            finally:
                if bench.problems:
                    print(f"   server log tail:\n{server.log_tail()}")
        step("wallet verify")
        started = time.monotonic()
        verify = target.verify()
        print(verify.stdout + verify.stderr + f"   (wallet verify took {time.monotonic() - started:.0f} s)")
        if verify.returncode != 0:
            bench.problems.append("wallet verify failed")
    print(table(bench.results, LEGEND))
    for line in floor_ratios(bench.results):
        print(line)
    if bench.profile_summary:
        print("\nprofile of one worker during top-ups (py-spy):\n" + "\n".join(bench.profile_summary))
    record = {
        "machine": info,
        "server": settings,
        "args": {k: sorted(v) if isinstance(v, set) else v for k, v in vars(args).items()},
        "verify": verify.stdout,
        "problems": bench.problems,
        "profile": bench.profile_summary,
    }
    print(f"\nresults saved to {save('bench', record, bench.results)}")
    for problem in bench.problems:
        print(f"PROBLEM: {problem}")
    return 1 if bench.problems else 0


if __name__ == "__main__":
    sys.exit(main())
