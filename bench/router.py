"""python -m bench.router: what routing a top-up through a PL/Proxy router costs, for issue 14's capacity model.

Makes three PostgreSQL 15 clusters with Debian's server binaries (`initdb` on free ports, as the `postgres` user when
run as root; the embedded server has no PL/Proxy): a router and two shards, each a wallet database (`wallet seed`, a
bench key, 10,000 users on every shard). On the router, `wallet_request(wallet_item)` is replaced by a PL/Proxy
function that runs it on the shard `hashtext(user_id)` picks, and `wallet_request_one()` runs it on shard 0 alone.
Then pgbench runs the service's own top-up statement (bench/pgbench.py), alternating: straight to a shard, through
the router to one shard, through the router to two; and reports the rate, the latency, and the CPU time each cluster's
processes spent per top-up (psutil), which is what a capacity model on separate machines needs: all three clusters
share this machine's cores, so the rates here cannot show what separate machines would carry.

With --pgbouncer, also: 16, 64 and 256 clients straight to a shard, and through PgBouncer in transaction mode with
16 connections to it.

Needs: postgresql-15 and postgresql-15-plproxy (Debian), pgbouncer for --pgbouncer. Everything is removed at the
end.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil  # type: ignore[import-untyped]  # no stubs in the dev extra
import psycopg

from bench import data, pgbench, pooler
from bench.load import run_pgbench
from bench.target import free_port

PG_BIN = Path("/usr/lib/postgresql/15/bin")
USERS = 10_000
ROUTER_SQL = """
CREATE EXTENSION plproxy;
CREATE SERVER wallet_shards FOREIGN DATA WRAPPER plproxy OPTIONS ({shards});
CREATE SERVER wallet_one FOREIGN DATA WRAPPER plproxy OPTIONS (p0 '{first}');
CREATE USER MAPPING FOR PUBLIC SERVER wallet_shards;
CREATE USER MAPPING FOR PUBLIC SERVER wallet_one;
-- PL/Proxy's RUN ON takes a function of the arguments: the user's hash (a posting touches one user).
CREATE FUNCTION wallet_shard_of(p_item wallet_item) RETURNS int LANGUAGE sql IMMUTABLE
    AS $$ SELECT hashtext((p_item.posting).user_id) $$;
CREATE OR REPLACE FUNCTION wallet_request(p_item wallet_item) RETURNS wallet_outcome LANGUAGE plproxy AS $$
    CLUSTER 'wallet_shards';
    RUN ON wallet_shard_of(p_item);
$$;
CREATE FUNCTION wallet_request_one(p_item wallet_item) RETURNS wallet_outcome LANGUAGE plproxy AS $$
    CLUSTER 'wallet_one';
    RUN ON 0;
    SELECT * FROM wallet_request(p_item);
$$;
"""


@dataclass(frozen=True)
class Node:
    name: str
    data_dir: Path
    port: int

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/wallet"

    @property
    def conninfo(self) -> str:
        return f"host=127.0.0.1 port={self.port} dbname=wallet user=postgres"

    def cpu_s(self) -> float:
        """CPU seconds of the cluster's processes so far: the postmaster's, its live children's (backends, WAL
        writer...), and those of the children it has reaped (the backends of connections that closed)."""
        postmaster = psutil.Process(int((self.data_dir / "postmaster.pid").read_text().split()[0]))
        times = postmaster.cpu_times()
        total = times.user + times.system + times.children_user + times.children_system
        for child in postmaster.children():
            try:
                times = child.cpu_times()
            except psutil.NoSuchProcess:  # reaped meanwhile: counted by children_* next time
                continue
            total += times.user + times.system
        return float(total)


def _as_postgres(command: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@contextmanager
def clusters(names: list[str]) -> Iterator[list[Node]]:
    root = Path(tempfile.mkdtemp(prefix="wallet-router-", dir="/tmp"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
    nodes = [Node(name, root / name, free_port()) for name in names]
    try:
        for node in nodes:
            subprocess.run(
                _as_postgres([str(PG_BIN / "initdb"), "-D", str(node.data_dir), "-U", "postgres", "--auth=trust"]),
                check=True,
                capture_output=True,
            )
            options = f"-p {node.port} -k {root} -c listen_addresses=127.0.0.1 -c max_connections=300"
            start = [str(PG_BIN / "pg_ctl"), "-D", str(node.data_dir), "-l", f"{node.data_dir}.log", "-o", options]
            subprocess.run(_as_postgres([*start, "-w", "start"]), check=True, capture_output=True)
            with psycopg.connect(node.url.replace("/wallet", "/postgres"), autocommit=True) as conn:
                conn.execute("CREATE DATABASE wallet")
        yield nodes
    finally:
        for node in nodes:
            stop = [str(PG_BIN / "pg_ctl"), "-D", str(node.data_dir), "-m", "immediate", "stop"]
            subprocess.run(_as_postgres(stop), check=False, capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def prepare(router: Node, shards: list[Node]) -> int:
    """Every node a wallet database; the shards with a bench key and the users; the router's engine routed."""
    wallet = str(Path(sys.executable).with_name("wallet"))
    key_ids = set()
    for node in [router, *shards]:
        env = {**os.environ, "WALLET_DATABASE_URL": node.url}
        subprocess.run([wallet, "seed"], env=env, check=True, capture_output=True)
        if node is router:
            continue
        subprocess.run(
            [wallet, "keys", "create", "--name", data.BENCH_KEY_NAME, "--scopes", "admin"],
            env=env,
            check=True,
            capture_output=True,
        )
        with psycopg.connect(node.url, autocommit=True) as conn:
            data.create_users(conn, USERS)
            key_ids.add(data.bench_key(conn))
    assert len(key_ids) == 1, key_ids  # the same key id on every shard: one script serves all
    options = ", ".join(f"p{n} '{shard.conninfo}'" for n, shard in enumerate(shards))
    with psycopg.connect(router.url, autocommit=True) as conn:
        conn.execute(ROUTER_SQL.format(shards=options, first=shards[0].conninfo))
    return key_ids.pop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=15, help="seconds per run (default 15)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds (default 2)")
    parser.add_argument("--clients", type=int, default=pgbench.CLIENTS, help="pgbench clients (default 16)")
    parser.add_argument("--pgbouncer", action="store_true", help="also: many clients straight vs through PgBouncer")
    args = parser.parse_args()
    with clusters(["router", "shard0", "shard1"]) as (router, *shards):
        key_id = prepare(router, shards)
        script = pgbench.topup_script(key_id, "router-", USERS)
        routed_one = script.replace("FROM wallet_request(", "FROM wallet_request_one(")
        runs = [
            ("straight to a shard", shards[0], script),
            ("router -> 1 shard", router, routed_one),
            ("router -> 2 shards", router, script),
        ]
        print(f"{'run':<22} {'clients':>7} {'top-ups/s':>9} {'latency ms':>10}  CPU us per top-up: router / shards")
        for _ in range(args.rounds):
            for clients in (args.clients, 1):
                for name, target, sql in runs:
                    before = [node.cpu_s() for node in [router, *shards]]
                    result = run_pgbench(name, target.url, sql, clients, args.duration)
                    spent = [node.cpu_s() - was for node, was in zip([router, *shards], before, strict=True)]
                    done = result.requests or result.rps * args.duration
                    latency = result.note.removeprefix("latency avg ").removesuffix(" ms")
                    print(
                        f"{name:<22} {clients:>7} {result.rps:>9,.0f} {latency:>10}  "
                        f"{spent[0] / done * 1e6:,.0f} / {sum(spent[1:]) / done * 1e6:,.0f}"
                    )
                    time.sleep(1)
        if args.pgbouncer:
            pooled(shards[0], script, args)


def pooled(shard: Node, script: str, args: argparse.Namespace) -> None:
    """Many clients straight to a shard, or through PgBouncer's 16 connections. `-M simple` only: PgBouncer 1.18 in
    transaction mode keeps no prepared statements (1.21+ can)."""
    print(f"\n{'run (-M simple)':<34} {'clients':>7} {'top-ups/s':>9} {'latency ms':>10}")
    with pooler.pgbouncer(shard.url, pgbench.CLIENTS) as bouncer_url:
        for _ in range(args.rounds):
            for name, url in (
                ("straight to a shard", shard.url),
                (f"PgBouncer, {pgbench.CLIENTS} connections", bouncer_url),
            ):
                for clients in (pgbench.CLIENTS, pgbench.CLIENTS_HIGH, 4 * pgbench.CLIENTS_HIGH):
                    result = run_pgbench(name, url, script, clients, args.duration, protocol="simple")
                    latency = result.note.removeprefix("latency avg ").removesuffix(" ms")
                    print(f"{name:<34} {clients:>7} {result.rps:>9,.0f} {latency:>10}")
                    time.sleep(1)


if __name__ == "__main__":
    main()
