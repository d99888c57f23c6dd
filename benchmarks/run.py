"""Share throughput, latency and cost of one proxy process, against the direct path, in one run.

    uv run python -m benchmarks            # the full run (~6 min), results in benchmarks/results/
    uv run python -m benchmarks --quick    # 100 and 1,000 sessions, short windows (~1.5 min)

Processes (all on 127.0.0.1): a ClickHouse HTTP server (tests/clickhouse_http.py over chdb), the
simulated pool (benchmarks/pool.py), two load generators (benchmarks/loadgen.py) and, per scenario,
a fresh proxy started as an operator would (`python -m proxy --listen ... --upstream ...
--clickhouse-url http://...`, ledger on, limits raised). For every session count, interleaved:

  proxy path   generators → proxy → pool: connect N, closed loop, then a fixed rate of half the
               closed-loop throughput; CPU, RSS and ingest lag of the proxy process
  direct path  generators → pool: connect N, closed loop, then the SAME fixed rate

See benchmarks/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil
from prometheus_client.parser import text_string_to_metric_families

from benchmarks import reference, report
from benchmarks.common import HOST, POOL_DIFFICULTY, REPO, Child, hist_quantile, merge, raise_fd_limit

DEFAULT_SESSIONS = (100, 1000, 5000, 9000)
RESULTS = REPO / "benchmarks" / "results"
UNLIMITED = "1000000000000"  # the per-session cost limits, raised for the benchmark
WARMUP_SESSIONS = 20
CLICKHOUSE_NICE = 19
LEDGER_SETTLE = 1.0  # seconds after a window for the ledger's last batch of it


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, pid in pids.items():
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        out[name] = times.user + times.system
    return out


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of the event-loop thread (user, system) and of all other threads (the ledger's
    insert workers, mostly)."""
    out = {"loop_user": 0.0, "loop_system": 0.0, "other_threads": 0.0}
    try:
        threads = psutil.Process(pid).threads()
    except psutil.Error:
        return out
    for t in threads:
        if t.id == pid:
            out["loop_user"] += t.user_time
            out["loop_system"] += t.system_time
        else:
            out["other_threads"] += t.user_time + t.system_time
    return out


def rss(pid: int) -> int:
    value: int = psutil.Process(pid).memory_info().rss
    return value


# --- the proxy process -------------------------------------------------------------------------------


class Proxy:
    """`python -m proxy` with flags, as an operator starts it; SIGTERM to stop."""

    def __init__(self, workdir: Path, pool_port: int, clickhouse_port: int, proxy_id: str, log: Path) -> None:
        self.port = free_port()
        self.metrics_port = free_port()
        self.proxy_id = proxy_id
        self.argv = [
            sys.executable,
            "-m",
            "proxy",
            "--listen",
            f"{HOST}:{self.port}",
            "--upstream",
            f"stratum+tcp://{HOST}:{pool_port}",
            "--clickhouse-url",
            f"http://{HOST}:{clickhouse_port}/",
            "--metrics",
            f"{HOST}:{self.metrics_port}",
            "--data-dir",
            str(workdir),
            "--proxy-id",
            proxy_id,
            "--log-level",
            "WARNING",
            "--max-sessions",
            "20000",
            "--max-sessions-per-ip",
            "20000",
            "--cost-soft-limit",
            UNLIMITED,
            "--cost-hard-limit",
            UNLIMITED,
        ]
        self._log = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(self.argv, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the proxy exited with {self.proc.returncode}; see {log}")
            with contextlib.suppress(OSError):
                self.metrics_text()
                with socket.create_connection((HOST, self.port), timeout=1):
                    return
            time.sleep(0.1)
        raise TimeoutError("the proxy did not start listening in 60 s")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def metrics_text(self) -> str:
        with urllib.request.urlopen(f"http://{HOST}:{self.metrics_port}/metrics", timeout=30) as response:
            text: str = response.read().decode()
            return text

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(10)
        self._log.close()
        return code


def histogram_buckets(text: str, family_name: str, label: str = "") -> dict[str, dict[float, float]]:
    """Cumulative buckets of one Prometheus histogram, per value of `label` ("" when unlabelled)."""
    out: dict[str, dict[float, float]] = {}
    for family in text_string_to_metric_families(text):
        if family.name != family_name:
            continue
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                out.setdefault(sample.labels.get(label, ""), {})[float(sample.labels["le"])] = sample.value
    return out


def bucket_quantile(cumulative: dict[float, float], q: float) -> float:
    """Prometheus-style histogram_quantile: linear inside the bucket; nan when empty."""
    bounds = sorted(cumulative)
    if not bounds or cumulative[bounds[-1]] <= 0:
        return float("nan")
    total = cumulative[bounds[-1]]
    rank = q * total
    previous_bound, previous_count = 0.0, 0.0
    for bound in bounds:
        count = cumulative[bound]
        if count >= rank:
            if bound == float("inf"):
                return previous_bound
            inside = count - previous_count
            return previous_bound + (bound - previous_bound) * ((rank - previous_count) / inside if inside else 1)
        previous_bound, previous_count = bound, count
    return bounds[-1]


def histogram_delta(
    before: str, after: str, family_name: str, label: str = "", threshold: float | None = None
) -> dict[str, Any]:
    """Quantiles of what a histogram observed between two scrapes, per label value."""
    b, a = histogram_buckets(before, family_name, label), histogram_buckets(after, family_name, label)
    out: dict[str, Any] = {}
    for key, buckets in a.items():
        delta = {le: n - b.get(key, {}).get(le, 0.0) for le, n in buckets.items()}
        total = delta.get(float("inf"), 0.0)
        entry: dict[str, Any] = {
            "count": total,
            "p50_s": bucket_quantile(delta, 0.50),
            "p99_s": bucket_quantile(delta, 0.99),
        }
        if threshold is not None:
            entry[f"within_{threshold:g}s"] = (delta.get(threshold, 0.0) / total) if total else float("nan")
        out[key] = entry
    return out


# --- one measurement ---------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        py = sys.executable
        log = open(workdir / "helpers.log", "ab")  # noqa: SIM115 - lives as long as the run
        self.helper_log = log
        self.clickhouse = Child(
            "clickhouse",
            [py, "-m", "tests.clickhouse_http", "--data-dir", str(workdir / "clickhouse"), "--port", "0"],
            stderr=log,
        )
        self.pool = Child("pool", [py, "-m", "benchmarks.pool", "--verify", args.pool_verify], stderr=log)
        self.generators = [
            Child(f"loadgen{i}", [py, "-m", "benchmarks.loadgen", "--en2", args.en2], stderr=log)
            for i in range(args.generators)
        ]
        self.clickhouse_port = int(self.clickhouse.receive(120)["value"])
        # ClickHouse's insert and merge threads come in bursts that take both cores for tens of
        # milliseconds; in production it has a machine of its own. Here it yields to the share path.
        psutil.Process(self.clickhouse.pid).nice(CLICKHOUSE_NICE)
        self.pool_port = int(self.pool.receive(60)["port"])
        for generator in self.generators:
            generator.receive(120)
        self.proxy: Proxy | None = None

    def close(self) -> None:
        if self.proxy is not None and self.proxy.proc.poll() is None:
            self.proxy.stop()
        for child in [*self.generators, self.pool]:
            child.close()
        if self.clickhouse.proc.poll() is None:
            self.clickhouse.proc.send_signal(signal.SIGTERM)
            try:
                self.clickhouse.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.clickhouse.proc.kill()
        self.helper_log.close()

    def pids(self) -> dict[str, int]:
        pids = {"pool": self.pool.pid, "clickhouse": self.clickhouse.pid}
        for i, generator in enumerate(self.generators):
            pids[f"loadgen{i}"] = generator.pid
        if self.proxy is not None:
            pids["proxy"] = self.proxy.pid
        return pids

    # -- sessions -------------------------------------------------------------------------------

    def connect(self, port: int, sessions: int) -> dict[str, Any]:
        shares = _split(sessions, len(self.generators))
        offset = 0
        for generator, n in zip(self.generators, shares, strict=True):
            generator.send(
                {
                    "op": "connect",
                    "port": port,
                    "sessions": n,
                    "offset": offset,
                    "concurrency": self.args.connect_concurrency,
                    "timeout": self.args.connect_timeout,
                }
            )
            offset += 1_000_000  # worker indexes never collide between generators
        answers = [g.receive(self.args.connect_timeout + 60) for g in self.generators]
        connected = sum(a["connected"] for a in answers)
        errors = [e for a in answers for e in a["errors"]]
        return {
            "connected": connected,
            "failed": sum(a["failed"] for a in answers),
            "seconds": max(a["seconds"] for a in answers),
            "errors": errors[:3],
        }

    def disconnect(self) -> float:
        answers = [g.request({"op": "close"}, 120) for g in self.generators]
        return max(float(a["seconds"]) for a in answers)

    def run(self, mode: str, duration: float, rate_total: float, sessions: int) -> dict[str, Any]:
        """One window on the connected sessions; CPU of every process over the same window."""
        per_session = rate_total / max(1, sessions) if mode == "rate" else 1.0
        # /metrics is served by the proxy's own event loop: read it while the proxy is idle, before
        # and after the window (after the ledger's last batch of the window is written).
        metrics_before = self.proxy.metrics_text() if self.proxy is not None else ""
        for generator in self.generators:
            generator.send({"op": "run", "mode": mode, "duration": duration, "pipeline": 1, "rate": per_session})
        for generator in self.generators:
            generator.receive(120)  # started
        cpu_before = cpu_seconds(self.pids())
        threads_before = thread_cpu(self.proxy.pid) if self.proxy is not None else {}
        answers = [g.receive(duration + 90) for g in self.generators]
        cpu_after = cpu_seconds(self.pids())
        threads_after = thread_cpu(self.proxy.pid) if self.proxy is not None else {}
        if self.proxy is not None:
            time.sleep(LEDGER_SETTLE)
        metrics_after = self.proxy.metrics_text() if self.proxy is not None else ""
        elapsed = max(a["elapsed"] for a in answers)
        replied = sum(a["replied"] for a in answers)
        hist = merge([{int(k): v for k, v in a["latency_hist"].items()} for a in answers])
        result: dict[str, Any] = {
            "mode": mode,
            "offered_rate": rate_total if mode == "rate" else None,
            "seconds": elapsed,
            "replied": replied,
            "accepted": sum(a["accepted"] for a in answers),
            "rejected": sum(a["rejected"] for a in answers),
            "lost": sum(a["lost"] for a in answers),
            "rejected_by_code": _sum_dicts([a["rejected_by_code"] for a in answers]),
            "shares_per_s": replied / elapsed if elapsed > 0 else 0.0,
            "p50_ms": hist_quantile(hist, 0.50) * 1e3,
            "p90_ms": hist_quantile(hist, 0.90) * 1e3,
            "p99_ms": hist_quantile(hist, 0.99) * 1e3,
            "max_ms": max(a["latency_max"] for a in answers) * 1e3,
            "cpu_us_per_share": {
                name: (cpu_after[name] - cpu_before[name]) / replied * 1e6
                for name in cpu_after
                if name in cpu_before and replied
            },
            "cpu_percent": {
                name: (cpu_after[name] - cpu_before[name]) / elapsed * 100
                for name in cpu_after
                if name in cpu_before and elapsed > 0
            },
        }
        if self.proxy is not None:
            result["ingest_lag"] = histogram_delta(
                metrics_before, metrics_after, "ih_ledger_ingest_lag_seconds", "row", threshold=2.0
            )
            result["ledger_flush"] = histogram_delta(metrics_before, metrics_after, "ih_ledger_flush_seconds").get("")
            result["proxy_cpu_split_us_per_share"] = {
                k: (threads_after[k] - threads_before[k]) / replied * 1e6 for k in threads_after if replied
            }
        return result

    # -- one scenario ---------------------------------------------------------------------------

    def scenario(self, sessions: int) -> dict[str, Any]:
        args = self.args
        out: dict[str, Any] = {"sessions": sessions}
        proxy_id = f"bench-{sessions}"
        self.proxy = Proxy(
            self.workdir / f"proxy-{sessions}",
            self.pool_port,
            self.clickhouse_port,
            proxy_id,
            self.workdir / "proxy.log",
        )
        proxy = self.proxy
        out["proxy_command"] = " ".join(Path(a).name if a == sys.executable else a for a in proxy.argv)
        # Warm-up: every code path once (imports, metric children, the ledger client), then idle RSS.
        self.connect(proxy.port, WARMUP_SESSIONS)
        warm = self.run("closed", 1.0, 0.0, WARMUP_SESSIONS)
        self.disconnect()
        time.sleep(0.5)
        idle_rss = rss(proxy.pid)

        # Proxy path.
        connect = self.connect(proxy.port, sessions)
        time.sleep(0.5)
        connected_rss = rss(proxy.pid)
        _say(
            f"  proxy : {connect['connected']} sessions in {connect['seconds']:.1f}s"
            + (f" ({connect['failed']} failed: {connect['errors']})" if connect["failed"] else "")
        )
        closed = self.run("closed", args.duration, 0.0, sessions)
        rate = closed["shares_per_s"] / 2
        _say(f"  proxy : closed {closed['shares_per_s']:,.0f}/s; rate {rate:,.0f}/s ...")
        paced = self.run("rate", args.duration, rate, sessions)
        after_rss = rss(proxy.pid)
        self.disconnect()
        out["proxy"] = {
            "connect": connect,
            "closed": closed,
            "rate": paced,
            "idle_rss": idle_rss,
            "connected_rss": connected_rss,
            "after_runs_rss": after_rss,
            "rss_per_session": (connected_rss - idle_rss) / max(1, connect["connected"]),
        }
        proxied_accepted = warm["accepted"] + closed["accepted"] + paced["accepted"]
        out["proxy"]["exit_code"] = proxy.stop()
        self.proxy = None
        out["proxy"]["ledger_rows_accepted"] = self.ledger_rows(proxy_id)
        out["proxy"]["shares_accepted"] = proxied_accepted

        # Direct path, same sessions, same offered rate.
        connect = self.connect(self.pool_port, sessions)
        _say(f"  direct: {connect['connected']} sessions in {connect['seconds']:.1f}s")
        closed_d = self.run("closed", args.duration, 0.0, sessions)
        paced_d = self.run("rate", args.duration, rate, sessions)
        self.disconnect()
        out["direct"] = {"connect": connect, "closed": closed_d, "rate": paced_d}
        _say(
            f"  direct: closed {closed_d['shares_per_s']:,.0f}/s; "
            f"p99 at {rate:,.0f}/s: direct {paced_d['p99_ms']:.2f} ms, proxy {paced['p99_ms']:.2f} ms; "
            f"proxy CPU {closed['cpu_us_per_share'].get('proxy', float('nan')):.0f} us/share"
        )
        return out

    def ledger_rows(self, proxy_id: str) -> int:
        import clickhouse_connect

        client = clickhouse_connect.get_client(host=HOST, port=self.clickhouse_port)
        try:
            value = client.query(
                "SELECT count() FROM infinitehash.shares WHERE proxy_id = {p:String} AND accepted = 1",
                parameters={"p": proxy_id},
            ).result_rows[0][0]
            return int(value)
        finally:
            client.close()


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def _sum_dicts(dicts: Sequence[dict[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = out.get(k, 0) + v
    return out


def _say(text: str) -> None:
    print(text, flush=True)


def environment() -> dict[str, Any]:
    import uvloop

    cpu = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "uvloop": getattr(uvloop, "__version__", "?"),
        "kernel": platform.release(),
        "fd_limit": raise_fd_limit(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sessions",
        default=",".join(map(str, DEFAULT_SESSIONS)),
        help="session counts, comma-separated (default %(default)s)",
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement window")
    parser.add_argument("--quick", action="store_true", help="100 and 1,000 sessions, 5 s windows")
    parser.add_argument("--generators", type=int, default=2, help="load generator processes")
    parser.add_argument("--connect-concurrency", type=int, default=100, help="handshakes in flight per generator")
    parser.add_argument("--connect-timeout", type=float, default=90.0, help="seconds to connect a scenario")
    parser.add_argument("--pool-verify", choices=("sample", "none", "all"), default="sample")
    parser.add_argument("--en2", choices=("fresh", "reused"), default="fresh")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where results go (default %(default)s)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, ledger)")
    args = parser.parse_args(argv)
    if args.quick:
        args.sessions, args.duration = "100,1000", 5.0
    sessions = [int(s) for s in args.sessions.split(",") if s.strip()]

    started = time.monotonic()
    env = environment()
    _say(
        f"benchmark: {env['cpu']}, {env['cores']} cores, Python {env['python']}, uvloop {env['uvloop']}; "
        f"sessions {sessions}, {args.duration:g} s windows"
    )
    refs = reference.measure()
    _say(
        "reference: sha256d {sha256d_header_ns:.0f} ns, share check (12 branches, fresh en2) "
        "{share_check_fresh_en2_ns:.0f} ns, uvloop echo round trip {uvloop_echo_round_trip_us:.1f} us "
        "(two processes {uvloop_echo_two_processes_us:.1f} us), sans-I/O session "
        "{sans_io_session_share_ns:.0f} ns/share".format(**refs)
    )

    workdir = Path(tempfile.mkdtemp(prefix="ih-bench-"))
    bench = Bench(args, workdir)
    scenarios: list[dict[str, Any]] = []
    try:
        for n in sessions:
            _say(f"{n} sessions")
            scenarios.append(bench.scenario(n))
    finally:
        bench.close()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            _say(f"work directory kept: {workdir}")

    results = {
        "command": ("uv run python -m benchmarks " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip(),
        "environment": env,
        "settings": {
            "duration_s": args.duration,
            "generators": args.generators,
            "pool_verify": args.pool_verify,
            "pool_difficulty": POOL_DIFFICULTY,
            "extranonce2": args.en2,
            "merkle_branches": 12,
            "ledger": "ClickHouse HTTP server process (tests/clickhouse_http.py over chdb, nice 19), proxy default "
            "batching (10,000 rows or 0.25 s)",
        },
        "reference": refs,
        "scenarios": scenarios,
        "runtime_s": time.monotonic() - started,
    }
    results["targets"] = report.targets(results)
    args.out.mkdir(parents=True, exist_ok=True)
    report.write(results, args.out)
    _say("")
    _say(report.text_table(results))
    _say("")
    _say(report.targets_text(results))
    _say("")
    _say(report.breakdown_text(results))
    _say("")
    _say(report.checks_text(results))
    _say(f"\ntotal {time.monotonic() - started:.0f} s; results in {args.out}")
    return 0
