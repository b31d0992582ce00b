"""Prometheus metrics (GET /metrics), with the official client library.

Counters and histograms are kept by the process that records them. `wallet serve` with several workers sets
PROMETHEUS_MULTIPROC_DIR before it starts them, so each writes its values to files there and a scrape, whichever
worker answers it, reads every worker's (prometheus_client's multiprocess mode; the variable must be set before
the library is imported, which a spawned worker does afresh). With one process, values stay in its memory.

What the database knows (holds active, webhook backlog, rollup lag, the last verify) is read at scrape time by the
worker that answers, under a short timeout; were the database down, those gauges are left out and
`wallet_database_up` is 0. No label carries a user id: routes are templates, postings are counted by type and asset.
"""

import asyncio
import glob
import os
import re
from collections.abc import Iterable

import asyncpg
import psutil
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import REGISTRY, Collector

MULTIPROCESS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
SCRAPE_QUERY_TIMEOUT_S = 2.0

REQUESTS = Counter("wallet_http_requests", "HTTP requests answered.", ["method", "route", "status"])
# Buckets from 1 ms (a cached read) to 10 s (a statement's timeout): postings take 2-50 ms under load.
LATENCY = Histogram(
    "wallet_http_request_duration_seconds",
    "Time from a request's arrival to its answer's start.",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
POSTINGS = Counter("wallet_postings", "Transactions created through the API, by type and asset.", ["type", "asset"])
# A Prometheus sample is a float64: the sum is exact up to 2^53 units; the ledger, not this, is the books.
AMOUNTS = Counter(
    "wallet_posted_amount", "Sum of the amounts of the transactions counted by wallet_postings.", ["type", "asset"]
)
REPLAYS = Counter("wallet_idempotent_replays", "Requests answered from their idempotency key's first outcome.")
RATE_LIMITED = Counter("wallet_rate_limited", "Requests refused with 429 rate_limited, by API key name.", ["key"])
DATABASE_ERRORS = Counter(
    "wallet_database_errors",
    "Errors from the database or the connection to it, retried ones included: the SQLSTATE class, or the error's"
    " name when it has none (a broken connection, a timeout).",
    ["error_class"],
)
POOL_SIZE = Gauge("wallet_db_pool_connections", "Connections open in the workers' pools.", multiprocess_mode="livesum")
POOL_IN_USE = Gauge("wallet_db_pool_in_use", "Pooled connections lent to requests.", multiprocess_mode="livesum")
POOL_WAITING = Gauge("wallet_db_pool_waiting", "Requests waiting for a pooled connection.", multiprocess_mode="livesum")

_LIVE_FILE = re.compile(r"gauge_live\w+?_(\d+)\.db$")


def error_class(exc: BaseException) -> str:
    sqlstate = getattr(exc, "sqlstate", None)
    return sqlstate[:2] if isinstance(sqlstate, str) else type(exc).__name__


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROCESS_DIR_VARIABLE) or None


# The database's gauges: (name, help, query). Each query returns one row of one number, or NULL to leave it out.
_DATABASE_GAUGES = (
    (
        "wallet_holds_active",
        "Holds that reserve part of a balance now (held and not past their expiry).",
        "SELECT count(*) FROM holds WHERE status = 'held' AND expires_at > now()",
    ),
    (
        "wallet_webhook_deliveries_pending",
        "Webhook deliveries not yet delivered (disabled endpoints' included).",
        "SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'",
    ),
    (
        "wallet_webhook_oldest_pending_age_seconds",
        "Age of the oldest webhook delivery not yet delivered (0 when none is pending).",
        "SELECT coalesce(extract(epoch FROM now() - min(created_at)), 0) FROM webhook_deliveries"
        " WHERE status = 'pending'",
    ),
    (
        "wallet_statistics_rollup_lag_transactions",
        "Transactions the statistics rollup has not looked at yet (statistics stay exact; only slower).",
        "SELECT greatest(coalesce((SELECT max(id) FROM transactions), 0) - scanned_through, 0)"
        " FROM statistics_progress",
    ),
    (
        "wallet_verify_last_failed_checks",
        "Checks the last `wallet verify` found violated (0: the ledger was consistent).",
        "SELECT failed FROM verify_reports ORDER BY id DESC LIMIT 1",
    ),
    (
        "wallet_verify_last_finished_timestamp_seconds",
        "When the last `wallet verify` finished, in Unix seconds.",
        "SELECT extract(epoch FROM finished_at) FROM verify_reports ORDER BY id DESC LIMIT 1",
    ),
)


class _Fixed(Collector):
    """Gauges whose values were read before the scrape."""

    def __init__(self, values: list[tuple[str, str, float]]) -> None:
        self.values = values

    def collect(self) -> Iterable[Metric]:
        for name, documentation, value in self.values:
            yield GaugeMetricFamily(name, documentation, value=value)


async def database_gauges(pool: asyncpg.Pool) -> list[tuple[str, str, float]]:
    """The database's gauges, read in one read-only transaction; `wallet_database_up` 0 and nothing else when the
    database does not answer in time."""
    up = ("wallet_database_up", "Whether the scrape could read the database's gauges.")
    try:
        async with asyncio.timeout(SCRAPE_QUERY_TIMEOUT_S), pool.acquire() as conn, conn.transaction(readonly=True):
            values = [(*up, 1.0)]
            for name, documentation, sql in _DATABASE_GAUGES:
                value = await conn.fetchval(sql)
                if value is not None:
                    values.append((name, documentation, float(value)))
            return values
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return [(*up, 0.0)]


def _forget_dead_workers(directory: str) -> None:
    """Drops the live gauges of workers that are gone (a killed worker never says so itself)."""
    for path in glob.glob(os.path.join(directory, "gauge_live*.db")):
        found = _LIVE_FILE.search(path)
        if found and not psutil.pid_exists(int(found.group(1))):
            multiprocess.mark_process_dead(int(found.group(1)), directory)  # type: ignore[no-untyped-call]


def exposition(database_values: list[tuple[str, str, float]]) -> bytes:
    """Every worker's metrics (or this process's alone), and the database's gauges, in the text format."""
    directory = multiprocess_dir()
    if directory is None:
        workers = REGISTRY  # this process's own
    else:
        _forget_dead_workers(directory)
        workers = CollectorRegistry()
        multiprocess.MultiProcessCollector(workers, directory)  # type: ignore[no-untyped-call]
    database = CollectorRegistry()
    database.register(_Fixed(database_values))
    return generate_latest(workers) + generate_latest(database)
