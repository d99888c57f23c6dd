"""Shares/s of `ih-proxy --workers 1` against `--workers 2`, in one run, against a ClickHouse-over-HTTP
ledger: `python3 -m uv run python -m benchmarks.workers [--sessions 400] [--duration 10] [--rounds 2]`.

Processes (all on 127.0.0.1): a ClickHouse HTTP server (tests/clickhouse_http.py), the simulated pool
(benchmarks/pool.py, verify=none so the pool costs little), two load generators
(benchmarks/loadgen.py, closed loop: each session keeps one submit in flight) and, per phase, a fresh
`python -m proxy --workers N` started as an operator would. Phases alternate (1, 2, 1, 2, ...) so
that load from elsewhere on the machine falls on both alike; printed: shares/s per phase, the proxy's
CPU (every process of it) and the ratio of the medians. Nothing is pinned: the workers, the pool and
the generators share the machine's cores, as they would on a small box. A report, never a test.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from benchmarks.common import HOST, REPO, Child

KINDS = {"1": "--workers 1", "2": "--workers 2", "2x1": "two one-process proxies (control)"}
READY_ONE = re.compile(r"listening for ASICs")  # a one-process proxy
READY_WORKER = re.compile(r"worker \d+ ready")  # the supervisor, once per worker


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def _proxy_cpu(root: psutil.Process) -> dict[int, float]:
    """User + system seconds of the proxy and of every process under it, by pid."""
    seconds: dict[int, float] = {}
    for process in [root, *root.children(recursive=True)]:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        seconds[process.pid] = times.user + times.system
    return seconds


class Phase:
    def __init__(self, workdir: Path, workers: int, pool_port: int, clickhouse_port: int, index: int) -> None:
        self.port = _free_port()
        self.log_path = workdir / f"proxy-{index}-w{workers}.log"
        self.workers = workers
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "proxy",
                    "--workers",
                    str(workers),
                    "--listen",
                    f"{HOST}:{self.port}",
                    "--metrics",
                    f"{HOST}:0",
                    "--upstream",
                    f"stratum+tcp://{HOST}:{pool_port}",
                    "--clickhouse-url",
                    f"http://{HOST}:{clickhouse_port}/",
                    "--data-dir",
                    str(workdir / f"proxy-{index}"),
                    "--proxy-id",
                    f"bench{index}",
                    "--max-sessions-per-ip",
                    "100000",
                ],
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.process = psutil.Process(self.proc.pid)

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the proxy exited: {self.log_path.read_text()[-2000:]}")
            ready = READY_ONE if self.workers == 1 else READY_WORKER
            if len(ready.findall(self.log_path.read_text(errors="replace"))) >= self.workers:
                return
            time.sleep(0.2)
        raise TimeoutError("the proxy did not get ready")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def run_phase(
    generators: list[Child], workdir: Path, args: argparse.Namespace, kind: str, pool: int, ch: int, index: int
) -> dict[str, Any]:
    """kind: "1" (one process), "2" (--workers 2) or "2x1" (two one-process proxies, a generator each:
    the control, what two processes cost on this machine without the supervisor)."""
    if kind == "2x1":
        phases = [Phase(workdir, 1, pool, ch, index * 10 + k) for k in range(2)]
    else:
        phases = [Phase(workdir, int(kind), pool, ch, index)]
    try:
        for phase in phases:
            phase.wait_ready()
        per = args.sessions // len(generators)
        for k, generator in enumerate(generators):
            port = phases[k % len(phases)].port
            generator.send({"op": "connect", "port": port, "sessions": per, "offset": k * 1_000_000})
        connected = sum(int(g.receive(180)["connected"]) for g in generators)
        for generator in generators:
            rate = args.rate / len(generators)
            generator.send({"op": "run", "mode": args.mode, "duration": args.duration, "rate": rate})
        for generator in generators:
            generator.receive(60)  # started
        before = [_proxy_cpu(phase.process) for phase in phases]
        started = time.monotonic()
        answers = [g.receive(args.duration + 90) for g in generators]
        after = [_proxy_cpu(phase.process) for phase in phases]
        wall = time.monotonic() - started
        for generator in generators:
            generator.request({"op": "close"}, 120)
    finally:
        for phase in phases:
            phase.stop()
    used = {pid: a[pid] - b.get(pid, 0.0) for a, b in zip(after, before, strict=True) for pid in a}
    cpu = sum(used.values())
    elapsed = max(float(a["elapsed"]) for a in answers)
    replied = sum(int(a["replied"]) for a in answers)
    return {
        "proxy": kind,
        "sessions": connected,
        "shares_per_s": replied / elapsed if elapsed > 0 else 0.0,
        "proxy_cpu_percent": cpu / wall * 100,
        "cpu_us_per_share": cpu / replied * 1e6 if replied else float("nan"),
        "supervisor_cpu_percent": used.get(phases[0].proc.pid, 0.0) / wall * 100 if kind == "2" else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--sessions", type=int, default=400)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the three phases (1, 2, 2x1)")
    parser.add_argument("--mode", choices=("closed", "rate"), default="closed", help="closed loop, or a fixed rate")
    parser.add_argument("--rate", type=float, default=1500.0, help="shares/s offered in --mode rate (all sessions)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs) and print it")
    args = parser.parse_args(argv)
    py = sys.executable
    workdir = Path(tempfile.mkdtemp(prefix="ih-workers-bench-"))
    if args.keep:
        print(f"work directory: {workdir}", flush=True)
    try:
        with open(workdir / "helpers.log", "ab") as log:
            clickhouse = Child(
                "clickhouse", [py, "-m", "tests.clickhouse_http", "--data-dir", str(workdir / "ch")], stderr=log
            )
            pool = Child("pool", [py, "-m", "benchmarks.pool", "--verify", "none"], stderr=log)
            generators = [Child(f"loadgen{i}", [py, "-m", "benchmarks.loadgen"], stderr=log) for i in range(2)]
            try:
                ch_port = int(clickhouse.receive(120)["value"])
                pool_port = int(pool.receive(60)["port"])
                for generator in generators:
                    generator.receive(120)
                results: list[dict[str, Any]] = []
                for _ in range(args.rounds):
                    for kind in KINDS:
                        result = run_phase(generators, workdir, args, kind, pool_port, ch_port, len(results))
                        print(json.dumps(result), flush=True)
                        results.append(result)
            finally:
                for child in [*generators, pool]:
                    child.close()
                clickhouse.proc.send_signal(signal.SIGTERM)
                try:
                    clickhouse.proc.wait(30)
                except subprocess.TimeoutExpired:
                    clickhouse.proc.kill()
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    lines = [
        f"cores: {psutil.cpu_count()}; sessions {args.sessions}, "
        f"{'closed loop' if args.mode == 'closed' else f'{args.rate:g} shares/s offered'}, "
        f"{args.duration:g} s per phase, {args.rounds} rounds (medians)"
    ]
    for kind in KINDS:
        mine = [r for r in results if r["proxy"] == kind]
        lines.append(
            f"{KINDS[kind]:<34} {statistics.median(r['shares_per_s'] for r in mine):>8,.0f} shares/s "
            f"{statistics.median(r['cpu_us_per_share'] for r in mine):>6,.0f} µs proxy CPU per share"
        )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
