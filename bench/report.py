"""The results table, the machine a run was on, and the JSON record of a run."""

import datetime
import json
import os
import platform
import subprocess
from dataclasses import asdict
from pathlib import Path

import psutil  # type: ignore[import-untyped]  # no stubs in the dev extra
import psycopg

from bench.load import LoadResult

RESULTS_DIR = Path(__file__).resolve().parent / "results"  # git-ignored


def machine() -> dict[str, str]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], capture_output=True, text=True, check=False, cwd=Path(__file__).parent)
        return done.stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") + (
        " + uncommitted src/" if git("status", "--porcelain", "src") else ""
    )
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit or "unknown",
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "memory": f"{psutil.virtual_memory().total / 2**30:.1f} GiB",
        "python": platform.python_version(),
        "load average": " ".join(f"{x:.1f}" for x in os.getloadavg()),
    }


SERVER_SETTINGS = ("server_version", "autovacuum", "synchronous_commit", "shared_buffers", "max_connections")


def server_settings(conn: psycopg.Connection) -> dict[str, str]:
    """The PostgreSQL settings that move the figures most, as the bench database sees them."""
    settings = {}
    for name in SERVER_SETTINGS:
        row = conn.execute(f"SHOW {name}").fetchone()
        assert row is not None
        settings[name] = str(row[0])
    return settings


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def table(results: list[LoadResult], legend: str = "") -> str:
    """One line per scenario. "vs floor" is a scenario's rate (in transfers for batches) over that of the scenario
    it names as its floor, when that ran; `legend` says which those are."""
    by_name = {result.scenario: result for result in results}
    header = (
        "scenario",
        "req/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "non-2xx by status",
        "vs floor",
        "RSS MB/worker",
        "CPU cores app/pg/load/all",
    )
    rows = [header]
    for result in results:
        non_2xx = ", ".join(
            f"{code}: {count}" + ("" if code[:3] in result.expected else " (error)")
            for code, count in sorted(result.codes.items())
        ) or ", ".join(f"{s}: {n}" for s, n in sorted(result.statuses.items()) if not s.startswith("2"))
        if result.socket_errors:
            non_2xx += (", " if non_2xx else "") + ", ".join(f"{k}: {v}" for k, v in result.socket_errors.items())
        floor = by_name.get(result.floor)
        ratio = f"{result.transfer_rate() / floor.transfer_rate():.2f}" if floor and floor.transfer_rate() else ""
        rss = " ".join(f"{mb:.0f}" for _, mb in sorted(result.rss_mb.items()))
        cpu = "/".join(f"{result.cpu[k]:.1f}" for k in ("workers", "postgres", "load", "machine")) if result.cpu else ""
        rows.append(
            (
                result.scenario,
                f"{result.rps:,.0f}",
                _ms(result.p50_ms),
                _ms(result.p99_ms),
                _ms(result.max_ms),
                non_2xx or "-",
                ratio,
                rss,
                cpu,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    notes = [f"  {r.scenario}: {r.note}" for r in results if r.note]
    legend_lines = [legend] if legend and any(r.floor in by_name for r in results) else []
    return "\n".join(lines + legend_lines + (["notes:", *notes] if notes else []))


def save(name: str, record: dict[str, object], results: list[LoadResult]) -> Path:
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"{name}-{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({**record, "results": [asdict(r) for r in results]}, indent=2) + "\n")
    return path
