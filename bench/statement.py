"""python -m bench.statement: a long statement streamed through `wallet serve`, and the worker's memory meanwhile.

On a ledger generated before and kept (`python -m bench.generate --keep`), optionally grown first (`--grow N`: N more
entries, half of them on the whale u1's accounts), starts `wallet serve --workers 2`, reads a few small answers to
warm the worker up, then streams GET /v1/users/u1/statement.csv to the end, sampling the worker's RSS every 50 ms:
before, the peak during, and after. Rows are counted as they arrive (the generated descriptions are empty, so a row is
a line).
"""

import argparse
import sys
import threading
import time

import httpx
import psutil  # type: ignore[import-untyped]  # no stubs in the dev extra

from bench.generate import WHALE, generate, reused, roll_up
from bench.report import machine
from bench.target import running_server


class RssSampler:
    """The peak RSS of one process, in MB, sampled every interval."""

    def __init__(self, process: psutil.Process, interval_s: float = 0.05) -> None:
        self.process = process
        self.interval_s = interval_s
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def now_mb(self) -> float:
        return float(self.process.memory_info().rss) / 2**20

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, self.now_mb())
            time.sleep(self.interval_s)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.statement", description=__doc__.split("\n\n")[0])
    parser.add_argument("--reuse", metavar="URL", required=True, help="a ledger kept by bench.generate --keep")
    parser.add_argument("--grow", type=int, default=0, help="entries to add first, half on u1 (default 0)")
    args = parser.parse_args(argv)
    print("machine: " + ", ".join(f"{k} {v}" for k, v in machine().items()), flush=True)
    with reused(args.reuse) as target:
        if args.grow:
            with target.connect() as conn:
                print(f"-- adding {args.grow:,} entries to {WHALE}", flush=True)
                seconds = generate(conn, args.grow, 1, 1_000_000, 1.0)  # one user, u1, takes every transaction
                print(f"   in {seconds:.0f} s; rolled up in {roll_up(conn):.0f} s", flush=True)
        with running_server(target, 2) as server:  # uvicorn runs one worker in its own process, unseen
            headers = {"Authorization": f"Bearer {server.api_key}"}
            with httpx.Client(base_url=server.base_url, headers=headers, timeout=60) as http:
                for _ in range(50):
                    http.get(f"/v1/users/{WHALE}/statistics").raise_for_status()
                    http.get("/v1/users/u2/statement.csv").raise_for_status()
                time.sleep(1)
                samplers = [RssSampler(worker) for worker in server.worker_processes()]
                before = [sampler.now_mb() for sampler in samplers]
                with samplers[0], samplers[1]:
                    started = time.monotonic()
                    lines = 0
                    size = 0
                    first_byte_s = None
                    with http.stream("GET", f"/v1/users/{WHALE}/statement.csv") as response:
                        response.raise_for_status()
                        for chunk in response.iter_bytes():
                            if first_byte_s is None:
                                first_byte_s = time.monotonic() - started
                            lines += chunk.count(b"\n")
                            size += len(chunk)
                    seconds = time.monotonic() - started
                    time.sleep(1)
                after = [sampler.now_mb() for sampler in samplers]
                peak = [sampler.peak_mb for sampler in samplers]
    rows = lines - 1
    print(
        f"statement of {WHALE}: {rows:,} rows, {size / 2**20:,.0f} MiB in {seconds:.1f} s"
        f" ({rows / seconds:,.0f} rows/s),"
        f" first byte after {1000 * (first_byte_s or 0):.0f} ms\n"
        + "\n".join(
            f"worker {i + 1} RSS: before {b:.1f} MB, peak during {p:.1f} MB, after {a:.1f} MB"
            for i, (b, p, a) in enumerate(zip(before, peak, after, strict=True))
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
