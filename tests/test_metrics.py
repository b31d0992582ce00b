"""GET /metrics (spec/API.md, v1.1 "Operations"): Prometheus text format, no key, every worker's counts in one scrape,
no user id in any label; WALLET_METRICS=off turns it off. Scraped under load from a real two-worker server: what it
counts adds up to what was sent."""

import asyncio
import os
import re
import uuid
from collections import defaultdict
from pathlib import Path

import asyncpg
import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Keys, in_process
from tests.support import assert_problem, free_port, idem, movement
from wallet import keys
from wallet.config import Settings
from wallet.http.app import create_app

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: str) -> Samples:
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(found: Samples, name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


async def scrape(http: httpx.AsyncClient) -> tuple[str, Samples]:
    response = await http.get("/metrics")  # no key
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return response.text, samples(response.text)


def worker_files(database_url: str) -> dict[int, list[str]]:
    """The metric files of the `wallet serve` on `database_url`, by the pid that wrote them."""
    for process in psutil.process_iter(["cmdline"]):
        try:
            environment = process.environ()
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        if environment.get("WALLET_DATABASE_URL") == database_url and "PROMETHEUS_MULTIPROC_DIR" in environment:
            by_pid: dict[int, list[str]] = defaultdict(list)
            for path in Path(environment["PROMETHEUS_MULTIPROC_DIR"]).glob("*.db"):
                by_pid[int(path.stem.rsplit("_", 1)[1])].append(path.stem.rsplit("_", 1)[0])
            return by_pid
    raise AssertionError("no wallet serve with a metrics directory on the test database")


async def test_a_scrape_under_load_counts_every_request_of_both_workers(
    http: httpx.AsyncClient, api_keys: Keys, database_url: str
) -> None:
    user_id = f"metrics-{uuid.uuid4().hex[:8]}"
    asset = f"MT{uuid.uuid4().hex[:6].upper()}"
    admin = api_keys.headers("admin")
    assert (await http.put(f"/v1/assets/{asset}", json={"name": "Metrics"}, headers=admin)).status_code == 201
    assert (await http.put(f"/v1/users/{user_id}", headers=admin)).status_code == 201
    _, before = await scrape(http)

    topups = [(idem(), 10 + n) for n in range(200)]
    scrapes: list[str] = []
    loaded = asyncio.Event()

    async def topup(key: str, amount: int) -> int:
        response = await http.post(
            "/v1/topups", json=movement(user_id, amount, asset), headers={**admin, "Idempotency-Key": key}
        )
        return response.status_code

    async def scraping() -> None:
        while not loaded.is_set():
            scrapes.append((await scrape(http))[0])
            await asyncio.sleep(0.02)

    scraper = asyncio.create_task(scraping())
    statuses = await asyncio.gather(
        *(topup(key, amount) for key, amount in topups),
        *(http.get(f"/v1/users/{user_id}/balances/{asset}", headers=admin) for _ in range(40)),
        *(
            http.post(
                "/v1/purchases",
                json=movement(user_id, 10**12, asset),
                headers={**admin, "Idempotency-Key": idem()},
            )
            for _ in range(20)
        ),
    )
    replays = await asyncio.gather(*(topup(key, amount) for key, amount in topups[:10]))
    loaded.set()
    await scraper
    assert statuses[:200] == [201] * 200 and replays == [201] * 10
    assert {s.status_code for s in statuses[200:240]} == {200}
    assert {s.status_code for s in statuses[240:]} == {409}
    assert len(scrapes) >= 3  # scraped while the load ran

    text, after = await scrape(http)

    def added(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert added("wallet_http_requests_total", method="POST", route="/v1/topups", status="201") == 210
    assert added("wallet_http_requests_total", method="POST", route="/v1/purchases", status="409") == 20
    balance_route = "/v1/users/{user_id}/balances/{asset}"
    assert added("wallet_http_requests_total", method="GET", route=balance_route, status="200") == 40
    assert added("wallet_http_request_duration_seconds_count", method="POST", route="/v1/topups") == 210
    assert added("wallet_http_request_duration_seconds_bucket", method="GET", route=balance_route, le="+Inf") == 40
    assert added("wallet_postings_total", type="topup", asset=asset) == 200
    assert added("wallet_posted_amount_total", type="topup", asset=asset) == sum(amount for _, amount in topups)
    assert added("wallet_idempotent_replays_total") == 10
    assert value(after, "wallet_database_up") == 1
    for gauge in ("wallet_db_pool_connections", "wallet_db_pool_in_use", "wallet_db_pool_waiting"):
        assert (gauge, frozenset()) in after, gauge
    assert value(after, "wallet_db_pool_connections") >= 2  # a pool in each worker
    for gauge in (
        "wallet_holds_active",
        "wallet_webhook_deliveries_pending",
        "wallet_statistics_rollup_lag_transactions",
    ):
        assert (gauge, frozenset()) in after, gauge

    assert user_id not in text and all(user_id not in page for page in scrapes)  # no user id in any label
    writers = {pid for pid, kinds in worker_files(database_url).items() if "counter" in kinds}
    assert len(writers) == 2, writers  # both workers counted, and one scrape reported both


async def test_rate_limited_requests_are_counted_by_key(client: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    name = f"limited-{uuid.uuid4().hex[:8]}"
    secret = await keys.create(db, name, ["read"], rate_limit_per_s=2)
    _, before = await scrape(client)
    statuses = [
        (await client.get("/v1/assets", headers={"Authorization": f"Bearer {secret}"})).status_code for _ in range(8)
    ]
    _, after = await scrape(client)
    limited = statuses.count(429)
    assert limited >= 5, statuses
    assert (
        value(after, "wallet_rate_limited_total", key=name) - value(before, "wallet_rate_limited_total", key=name)
        == limited
    )
    assert (
        value(after, "wallet_http_requests_total", method="GET", route="/v1/assets", status="429")
        - value(before, "wallet_http_requests_total", method="GET", route="/v1/assets", status="429")
        == limited
    )


async def test_an_unknown_path_is_one_label_not_one_per_path(client: httpx.AsyncClient) -> None:
    _, before = await scrape(client)
    for n in range(5):
        assert (await client.get(f"/no/such/{n}")).status_code == 404
    text, after = await scrape(client)
    assert "/no/such" not in text
    added = value(after, "wallet_http_requests_total", method="GET", route="unmatched", status="404") - value(
        before, "wallet_http_requests_total", method="GET", route="unmatched", status="404"
    )
    assert added == 5


async def test_metrics_off_is_a_404(settings: Settings) -> None:
    async with in_process(create_app(settings.model_copy(update={"metrics": False}))) as http:
        assert_problem(await http.get("/metrics"), 404, "not_found")


async def test_without_a_database_the_scrape_still_answers(settings: Settings) -> None:
    nowhere = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    async with in_process(create_app(settings, database_url=nowhere)) as http:
        text, found = await scrape(http)
    assert value(found, "wallet_database_up") == 0
    assert "wallet_holds_active" not in text
    assert re.search(r"^wallet_http_requests_total\{", text, re.MULTILINE)


def test_no_metric_is_labelled_by_user() -> None:
    from wallet import metrics

    for metric in vars(metrics).values():
        names = getattr(metric, "_labelnames", ())
        assert not {"user", "user_id", "account"} & set(names), metric
    assert os.environ.get("PROMETHEUS_MULTIPROC_DIR") is None  # the tests' own process keeps its values in memory
