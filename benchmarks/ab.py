"""Two proxies in the same harness, alternated: is one slower? (issue 8: "the benchmark is not slower")

    git worktree add /tmp/old <commit> && (cd /tmp/old && python3 -m uv sync --locked)
    python3 -m uv run python -m benchmarks.ab --other /tmp/old --pairs 4

Each pair runs the other checkout's proxy, then this one's, as an operator starts it (`python -m
proxy`, pinned to the proxy core with `taskset`), with the HTTP ledger (ClickHouse in its own
process: no engine threads on the proxy's core), against the same pool and generators
(`benchmarks.run.Bench`): warm-up, 1,000 sessions, one closed-loop window. Printed per pair: CPU
µs/share and shares/s of each, and this ÷ other. The machine drifts between minutes, so read the
ratios within pairs, not one figure against another run's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import run as R
from benchmarks.common import HOST, REPO


class CheckoutProxy(R.Proxy):
    """`python -m proxy` of a checkout (its own venv), with the flags that checkout knows."""

    def __init__(
        self, tree: Path, workdir: Path, pool_port: int, clickhouse_url: str, proxy_id: str, cpus: str
    ) -> None:
        self.port, self.metrics_port = R.free_port(), R.free_port()
        self.proxy_id, self.workdir, self.probe_out = proxy_id, workdir, workdir / "no-probe.jsonl"
        python = str(tree / ".venv" / "bin" / "python")
        help_text = subprocess.run([python, "-m", "proxy", "--help"], cwd=tree, capture_output=True, text=True).stdout
        unlimited = (
            ["--cost-soft-limit", R.UNLIMITED, "--cost-hard-limit", R.UNLIMITED]
            if "--cost-soft-limit" in help_text
            else ["--submits-per-second", R.UNLIMITED, "--submit-burst", R.UNLIMITED]  # before session costs
        )
        self.flags = [
            *("--listen", f"{HOST}:{self.port}", "--upstream", f"stratum+tcp://{HOST}:{pool_port}"),
            *("--clickhouse-url", clickhouse_url, "--metrics", f"{HOST}:{self.metrics_port}"),
            *("--data-dir", str(workdir), "--proxy-id", proxy_id, "--log-level", "WARNING"),
            *("--max-sessions", "20000", "--max-sessions-per-ip", "20000", *unlimited),
        ]
        workdir.mkdir(parents=True, exist_ok=True)
        self._log = open(workdir / "proxy.log", "ab")  # noqa: SIM115 - closed in stop()
        pin = ["taskset", "-c", cpus] if cpus else []
        self.proc = subprocess.Popen(
            [*pin, python, "-m", "proxy", *self.flags], cwd=tree, stdout=self._log, stderr=subprocess.STDOUT
        )
        self.wait_listening(workdir / "proxy.log")


def window(bench: R.Bench, tree: Path, name: str, args: argparse.Namespace, clickhouse_url: str) -> dict[str, Any]:
    workdir = bench.workdir / name
    bench.proxy = proxy = CheckoutProxy(tree, workdir, bench.pool_port, clickhouse_url, f"ab-{name}", bench.proxy_cpus)
    try:
        bench.connect(proxy.port, R.WARMUP_SESSIONS)
        bench.run("closed", 1.0)
        bench.disconnect()
        time.sleep(0.5)
        connect = bench.connect(proxy.port, args.sessions)
        r = bench.run("closed", args.duration)
        bench.disconnect()
    finally:
        exit_code = proxy.stop()
        bench.proxy = None
    return {
        "connected": connect["connected"],
        "shares_per_s": r["shares_per_s"],
        "cpu_us_per_share": r["cpu_us_per_share"].get("proxy"),
        "core_busy_percent": r.get("proxy_core_busy_percent"),
        "lost": r["lost"],
        "exit_code": exit_code,
    }


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ab", description=__doc__.split("\n\n")[0])
    parser.add_argument("--other", type=Path, required=True, help="the other checkout (with its .venv)")
    parser.add_argument("--pairs", type=int, default=4, help="alternated pairs (default %(default)s)")
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds of each closed-loop window")
    cli = parser.parse_args()
    args = argparse.Namespace(
        sessions=cli.sessions, duration=cli.duration, generators=2, connect_concurrency=500, connect_timeout=90.0,
        pool_verify="sample", en2="fresh", py_spy="", out=Path(tempfile.gettempdir()),
    )  # fmt: skip
    proxy_cpus, load_cpus = R.cpu_layout(True)
    if load_cpus:
        os.sched_setaffinity(0, {int(c) for c in load_cpus.split(",")})
    bench = R.Bench(args, Path(tempfile.mkdtemp(prefix="ih-ab-")), (proxy_cpus, load_cpus))
    ratios: list[float] = []
    try:
        url = f"http://{HOST}:{bench.clickhouse_port}/"
        for pair in range(cli.pairs):
            other = window(bench, cli.other.resolve(), f"other-{pair}", args, url)
            this = window(bench, REPO, f"this-{pair}", args, url)
            if other["cpu_us_per_share"] and this["cpu_us_per_share"]:
                ratios.append(this["cpu_us_per_share"] / other["cpu_us_per_share"])
            print(json.dumps({"pair": pair, "other": other, "this": this}), flush=True)
    finally:
        bench.close()
    if ratios:
        print(
            f"CPU per share, this ÷ other: {', '.join(f'{r:.2f}' for r in ratios)}; "
            f"median {statistics.median(ratios):.2f} over {len(ratios)} pairs"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
