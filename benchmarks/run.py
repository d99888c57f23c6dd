"""Share throughput, latency and cost of one proxy process, against the direct path, in one run.

    uv run python -m benchmarks            # the full run (~5 min), results in benchmarks/results/
    uv run python -m benchmarks --quick    # shorter windows (~2 min), results in /tmp unless --out

Processes (all on 127.0.0.1): a ClickHouse HTTP server (tests/clickhouse_http.py over chdb, its own
process), the simulated pool (benchmarks/pool.py), two load generators (benchmarks/loadgen.py) and,
per phase, a fresh proxy started as an operator would, through benchmarks/probe.py (the same
`ProxyApp(config)` with an event-loop lag probe), limits raised so every session connects.
On a machine with 2+ cores the proxy is pinned to the last core and everything else to the others,
so the load never runs on the proxy's core. Phases, at 1,000 sessions and 5,000 shares/s:

  direct            generators → pool: closed loop, then a fixed 5,000/s (again at the end)
  embedded          the default ledger (chdb in the proxy process): closed loop; 5,000/s for the
                    long window (loop stalls); then 9,000 sessions connected at once (time, RSS)
  clickhouse-http   the ledger in another process (--clickhouse-url http://...): closed loop, 5,000/s
  gc-freeze         embedded with gc.freeze() after the sessions connect and raised GC thresholds
  farm              farm mode (--mode aggregate), embedded: the windows of "embedded" (closed loop,
                    5,000/s for the long window); the pool's connection count against the sessions
  failover          farm mode in front of pools A and B, 200 sessions mining: pool A SIGKILLed; per
                    session, A's death → its first new mining.notify; reconnects (benchmarks/failover.py)

See benchmarks/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
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

from benchmarks import failover, micro, reference, report
from benchmarks.common import HOST, POOL_DIFFICULTY, REPO, Child, hist_quantile, merge, raise_fd_limit
from benchmarks.probe import STALL_HEADER, stacks_path
from protocol import work

RESULTS = REPO / "benchmarks" / "results"
UNLIMITED = "1000000000000"  # the per-session cost limits, raised for the benchmark
WARMUP_SESSIONS = 20
CLICKHOUSE_NICE = 19
LEDGER_SETTLE = 1.0  # seconds after a window for the ledger's last batch of it
IDLE_CPU_WINDOW = 2.0  # seconds the proxy is watched with no session (its idle CPU, the probe included)
GC_THRESHOLD = "50000,50,1000"  # the gc-freeze phase: fewer young collections, almost no full ones
FAILOVER_BEFORE_S = 3.0  # mining on pool A before it is killed
FAILOVER_AFTER_S = 5.0  # and after: the new work, then mining on pool B


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


def busy_seconds() -> float:
    """CPU seconds the whole machine spent busy (all cores), to tell what other processes took."""
    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))


def steal_seconds() -> float:
    """CPU seconds the hypervisor ran other guests on this VM's cores (all cores; 0 on bare metal):
    a neighbour's load. Here at least part of it is also inside the processes' own CPU times (a
    window's 'other CPU' can read below its steal): it slows every process and inflates CPU/share."""
    return float(getattr(psutil.cpu_times(), "steal", 0.0))


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of the event-loop thread (user, system) and of all other threads (the ledger's
    insert workers and, embedded, the engine's own threads)."""
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


def io_counts(pid: int) -> tuple[int, int, int]:
    """The process's write() bytes, read() calls and write() calls so far (sockets and files alike:
    /proc/<pid>/io's wchar, syscr, syscw); zeros where the platform does not tell."""
    try:
        io = psutil.Process(pid).io_counters()
        return int(io.write_chars), int(io.read_count), int(io.write_count)
    except (psutil.Error, AttributeError):
        return 0, 0, 0


def rss(pid: int) -> int:
    value: int = psutil.Process(pid).memory_info().rss
    return value


def cpu_layout(pin: bool) -> tuple[str, str]:
    """(the proxy's CPUs, everybody else's): the last core for the proxy, the rest for the load."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if not pin or len(cores) < 2:
        return "", ""
    return str(cores[-1]), ",".join(map(str, cores[:-1]))


def core_busy(cpus: str) -> float:
    """Busy CPU seconds of these cores so far (everything but idle and iowait: user, system, softirq...)."""
    if not cpus:
        return 0.0
    per_cpu = psutil.cpu_times(percpu=True)
    busy = 0.0
    for c in cpus.split(","):
        t = per_cpu[int(c)]
        busy += sum(t) - t.idle - getattr(t, "iowait", 0.0)
    return float(busy)


def pinned_to(pid: int, cpus: str) -> bool | None:
    """Whether every thread of `pid` may run on `cpus` only (None: not pinned, nothing to check)."""
    if not cpus or not hasattr(os, "sched_getaffinity"):
        return None
    wanted = {int(c) for c in cpus.split(",")}
    try:
        return all(os.sched_getaffinity(t.id) <= wanted for t in psutil.Process(pid).threads())
    except (psutil.Error, OSError):
        return False


def pin_pid(pid: int, cpus: str) -> None:
    """Pin every thread of a running process (sched_setaffinity is per thread on Linux)."""
    if not cpus or not hasattr(os, "sched_setaffinity"):
        return
    with contextlib.suppress(psutil.Error):
        for t in psutil.Process(pid).threads():
            with contextlib.suppress(OSError):
                os.sched_setaffinity(t.id, {int(c) for c in cpus.split(",")})


# --- the proxy process -------------------------------------------------------------------------------


def terminate(proc: subprocess.Popen[Any], grace: float) -> int:
    """SIGTERM, up to `grace` seconds to exit, then SIGKILL; the exit code."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(10)


def read_probe(path: Path, since: float, until: float) -> dict[str, Any]:
    """The per-second lines of a lag probe (benchmarks/probe.py) that lie inside [since, until] (wall
    time), summed."""
    out: dict[str, Any] = {"seconds": 0, "max_lag_ms": 0.0, "over_1ms": 0, "over_5ms": 0, "over_10ms": 0}
    per_second: list[float] = []
    gcs: dict[str, list[float]] = {}
    with contextlib.suppress(OSError), open(path) as f:
        for line in f:
            with contextlib.suppress(ValueError):
                r = json.loads(line)
                # A line covers the second before it was written, and a stall before that:
                # an overloaded loop writes late, so take every line that overlaps the window.
                if r["t"] < since or r["t"] - 1.0 - r["max_lag_ms"] / 1e3 > until:
                    continue
                out["seconds"] += 1
                per_second.append(r["max_lag_ms"])
                out["max_lag_ms"] = max(out["max_lag_ms"], r["max_lag_ms"])
                for k in ("over_1ms", "over_5ms", "over_10ms"):
                    out[k] += r[k]
                for g, (n, total, longest) in r["gc"].items():
                    e = gcs.setdefault(g, [0, 0.0, 0.0])
                    e[0] += n
                    e[1] += total
                    e[2] = max(e[2], longest)
    out["per_second_max_lag_ms"] = per_second
    out["gc"] = {g: {"collections": n, "total_ms": t, "max_ms": m} for g, (n, t, m) in sorted(gcs.items())}
    return out


class Proxy:
    """The proxy's own flags, as an operator passes them, run through benchmarks/probe.py; SIGTERM to stop."""

    def __init__(
        self,
        workdir: Path,
        pool_ports: Sequence[int],
        clickhouse_url: str | None,
        proxy_id: str,
        log: Path,
        *,
        cpus: str,
        gc_freeze: bool = False,
        gc_threshold: str = "",
        mode: str = "passthrough",
        watchdog_ms: float = 0.0,
    ) -> None:
        self.port = free_port()
        self.metrics_port = free_port()
        self.proxy_id = proxy_id
        self.workdir = workdir
        self.probe_out = workdir / "probe.jsonl"
        self.flags = [
            "--listen",
            f"{HOST}:{self.port}",
            *(flag for port in pool_ports for flag in ("--upstream", f"stratum+tcp://{HOST}:{port}")),
            *(["--mode", mode] if mode != "passthrough" else []),
            *(["--clickhouse-url", clickhouse_url] if clickhouse_url else []),
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
        wrapper = ["--probe-out", str(self.probe_out), *(["--cpus", cpus] if cpus else [])]
        if gc_freeze:
            wrapper.append("--gc-freeze")
        if gc_threshold:
            wrapper += ["--gc-threshold", gc_threshold]
        if watchdog_ms > 0:
            wrapper += ["--watchdog-ms", str(watchdog_ms)]
        self.argv = [sys.executable, "-m", "benchmarks.probe", *wrapper, "--", *self.flags]
        workdir.mkdir(parents=True, exist_ok=True)
        self._log = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(self.argv, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT)
        self.wait_listening(log)

    def wait_listening(self, log: Path, seconds: float = 60.0) -> None:
        """Until /metrics answers and the Stratum port takes a connection."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the proxy exited with {self.proc.returncode}; see {log}")
            with contextlib.suppress(OSError):
                self.metrics_text()
                with socket.create_connection((HOST, self.port), timeout=1):
                    return
            time.sleep(0.1)
        raise TimeoutError(f"the proxy did not start listening in {seconds:g} s")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def metrics_text(self) -> str:
        with urllib.request.urlopen(f"http://{HOST}:{self.metrics_port}/metrics", timeout=30) as response:
            text: str = response.read().decode()
            return text

    def probe(self, since: float, until: float) -> dict[str, Any]:
        """The lag probe's seconds that lie inside [since, until] (wall time), summed."""
        return read_probe(self.probe_out, since, until)

    def stop(self) -> int:
        code = terminate(self.proc, 60)
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
    def __init__(self, args: argparse.Namespace, workdir: Path, layout: tuple[str, str]) -> None:
        """`layout` is `cpu_layout()` as computed once by main(), before it pinned itself to the load
        cores: computed again here it would see only those and pin nothing (every process then
        inherited the orchestrator's core and the proxy shared it with the whole load)."""
        self.args = args
        self.workdir = workdir
        self.proxy_cpus, self.load_cpus = layout
        py = sys.executable
        log = open(workdir / "helpers.log", "ab")  # noqa: SIM115 - lives as long as the run
        self.helper_log = log
        self.clickhouse = Child(
            "clickhouse",
            [py, "-m", "tests.clickhouse_http", "--data-dir", str(workdir / "clickhouse"), "--port", "0"],
            stderr=log,
        )
        pin = ["--cpus", self.load_cpus] if self.load_cpus else []
        self.pool = Child("pool", [py, "-m", "benchmarks.pool", "--verify", args.pool_verify, *pin], stderr=log)
        self.generators = [
            Child(f"loadgen{i}", [py, "-m", "benchmarks.loadgen", "--en2", args.en2, *pin], stderr=log)
            for i in range(args.generators)
        ]
        self.clickhouse_port = int(self.clickhouse.receive(120)["value"])
        # ClickHouse's insert and merge threads come in bursts that take both cores for tens of
        # milliseconds; in production it has a machine of its own. Here it yields to the share path
        # and stays off the proxy's core.
        psutil.Process(self.clickhouse.pid).nice(CLICKHOUSE_NICE)
        pin_pid(self.clickhouse.pid, self.load_cpus)
        self.pool_port = int(self.pool.receive(60)["port"])
        for generator in self.generators:
            generator.receive(120)
        self.proxy: Proxy | None = None
        self.floor_out: Path | None = None  # the bare lag probe's lines while the direct path runs
        self.floor_pid: int | None = None
        self.relay_pid: int | None = None  # benchmarks.relay while the direct phase connects through it

    def close(self) -> None:
        if self.proxy is not None and self.proxy.proc.poll() is None:
            self.proxy.stop()
        for child in [*self.generators, self.pool]:
            child.close()
        if self.clickhouse.proc.poll() is None:
            terminate(self.clickhouse.proc, 30)
        self.helper_log.close()

    def pool_stats(self, pool: Child | None = None) -> dict[str, Any]:
        """The pool's counts: accepted, rejected, open connections ("sessions"), connections ever."""
        return (pool or self.pool).request({"op": "stats"}, 30)

    def pids(self) -> dict[str, int]:
        pids = {"pool": self.pool.pid, "clickhouse": self.clickhouse.pid}
        for i, generator in enumerate(self.generators):
            pids[f"loadgen{i}"] = generator.pid
        if self.proxy is not None:
            pids["proxy"] = self.proxy.pid
        if self.floor_pid is not None:
            pids["floor probe"] = self.floor_pid
        if self.relay_pid is not None:
            pids["relay"] = self.relay_pid
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
        cpu_before = cpu_seconds(self.pids())
        answers = [g.receive(self.args.connect_timeout + 60) for g in self.generators]
        cpu_after = cpu_seconds(self.pids())
        errors = [e for a in answers for e in a["errors"]]
        return {
            "sessions": sessions,
            "connected": sum(a["connected"] for a in answers),
            "failed": sum(a["failed"] for a in answers),
            "seconds": max(a["seconds"] for a in answers),
            "errors": errors[:3],
            # Who spent the connect's time: the proxy alone on its core, or the load side.
            "cpu_seconds": {name: cpu_after[name] - cpu_before[name] for name in cpu_after if name in cpu_before},
        }

    def disconnect(self) -> float:
        answers = [g.request({"op": "close"}, 120) for g in self.generators]
        return max(float(a["seconds"]) for a in answers)

    def run(self, mode: str, duration: float, rate_total: float = 0.0) -> dict[str, Any]:
        """One window on the connected sessions; CPU of every process over the same window."""
        per_generator = rate_total / len(self.generators)
        proxy = self.proxy
        # /metrics is served by the proxy's own event loop: read it before and after the window.
        metrics_before = proxy.metrics_text() if proxy is not None else ""
        for generator in self.generators:
            generator.send({"op": "run", "mode": mode, "duration": duration, "rate": per_generator})
        for generator in self.generators:
            generator.receive(120)  # started
        wall_start = time.time()
        cpu_before, busy_before, steal_before = cpu_seconds(self.pids()), busy_seconds(), steal_seconds()
        core_before = core_busy(self.proxy_cpus)
        threads_before = thread_cpu(proxy.pid) if proxy is not None else {}
        io_before = io_counts(proxy.pid) if proxy is not None else (0, 0, 0)
        spy = self._py_spy(duration) if proxy is not None and mode == "closed" and self.args.py_spy else None
        answers = [g.receive(duration + 90) for g in self.generators]
        cpu_after, busy_after, steal_after = cpu_seconds(self.pids()), busy_seconds(), steal_seconds()
        core_after = core_busy(self.proxy_cpus)
        threads_after = thread_cpu(proxy.pid) if proxy is not None else {}
        io_after = io_counts(proxy.pid) if proxy is not None else (0, 0, 0)
        wall_end = time.time()
        if spy is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                spy.wait(30)
        if proxy is not None:
            time.sleep(LEDGER_SETTLE)
        metrics_after = proxy.metrics_text() if proxy is not None else ""
        elapsed = max(a["elapsed"] for a in answers)
        replied = sum(a["replied"] for a in answers)
        hist = merge([{int(k): v for k, v in a["latency_hist"].items()} for a in answers])
        late = merge([{int(k): v for k, v in a["lateness_hist"].items()} for a in answers])
        ours = sum(cpu_after[n] - cpu_before[n] for n in cpu_after if n in cpu_before)
        result: dict[str, Any] = {
            "mode": mode,
            "offered_rate": rate_total if mode == "rate" else None,
            "seconds": elapsed,
            "replied": replied,
            "submitted": sum(a["submitted"] for a in answers),
            "accepted": sum(a["accepted"] for a in answers),
            "rejected": sum(a["rejected"] for a in answers),
            "lost": sum(a["lost"] for a in answers),
            "rejected_by_code": _sum_dicts([a["rejected_by_code"] for a in answers]),
            "shares_per_s": replied / elapsed if elapsed > 0 else 0.0,
            "p50_ms": hist_quantile(hist, 0.50) * 1e3,
            "p90_ms": hist_quantile(hist, 0.90) * 1e3,
            "p99_ms": hist_quantile(hist, 0.99) * 1e3,
            "p999_ms": hist_quantile(hist, 0.999) * 1e3,
            "max_ms": max(a["latency_max"] for a in answers) * 1e3,
            "latency_hist": hist,
            "generator_lateness_p99_ms": hist_quantile(late, 0.99) * 1e3 if late else None,
            "generator_lateness_max_ms": max(a["lateness_max"] for a in answers) * 1e3 if late else None,
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
            # Busy CPU of the whole machine not spent by the benchmark's processes (other work on the
            # box): it shares the cores and shows up in every tail.
            "foreign_cpu_percent": max(0.0, (busy_after - busy_before) - ours) / max(1e-9, wall_end - wall_start) * 100,
            # The hypervisor's other guests (steal): a noisy neighbour, the usual cause of a bad window here.
            "steal_percent": (steal_after - steal_before) / max(1e-9, wall_end - wall_start) * 100,
            # How busy the proxy's own core was (softirq included: the kernel's loopback work for the
            # proxy's sends runs there and is not charged to the process). Pinned, it should track
            # the proxy's CPU %; far above it, something else runs on that core. The kernel samples
            # it per tick: right for a busy core (closed loop), up to ~20 % low for a bursty one.
            "proxy_core_busy_percent": (core_after - core_before) / elapsed * 100  # per window second, as cpu_percent
            if self.proxy_cpus and elapsed > 0
            else None,
        }
        if proxy is not None:
            result["ingest_lag"] = histogram_delta(
                metrics_before, metrics_after, "ih_ledger_ingest_lag_seconds", "row", threshold=2.0
            )
            result["ledger_flush"] = histogram_delta(metrics_before, metrics_after, "ih_ledger_flush_seconds").get("")
            result["proxy_cpu_split_us_per_share"] = {
                k: (threads_after[k] - threads_before[k]) / replied * 1e6 for k in threads_after if replied
            }
            result["proxy_write_bytes_per_share"] = (io_after[0] - io_before[0]) / replied if replied else None
            # What a share costs the kernel: the socket reads and writes (and the journal's writes),
            # fewer per share where one loop iteration carries many shares.
            result["proxy_syscalls_per_share"] = (
                {"read": (io_after[1] - io_before[1]) / replied, "write": (io_after[2] - io_before[2]) / replied}
                if replied and io_after[1]
                else None
            )
            result["loop"] = proxy.probe(wall_start, wall_end)
        elif self.floor_out is not None:
            result["loop"] = read_probe(self.floor_out, wall_start, wall_end)
        return result

    def _py_spy(self, duration: float) -> subprocess.Popen[bytes] | None:
        assert self.proxy is not None
        out = self.args.out / f"profile-{self.proxy.proxy_id}.txt"
        seconds = max(1, int(duration) - 1)
        return subprocess.Popen(
            [
                self.args.py_spy,
                "record",
                "-p",
                str(self.proxy.pid),
                "-d",
                str(seconds),
                "-r",
                "97",
                "-f",
                "raw",
                "-o",
                str(out),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def _stall_stacks(self, proxy: Proxy) -> int:
        """How many stalls the probe's watchdog caught; their stacks go next to the results."""
        stacks = stacks_path(proxy.probe_out)
        if not stacks.exists():
            return 0
        text = stacks.read_text(errors="replace")
        (self.args.out / f"stalls-{proxy.proxy_id}.txt").write_text(text)
        return text.count(STALL_HEADER)

    # -- phases ---------------------------------------------------------------------------------

    def direct(
        self, label: str, closed: bool = True, connect_many: int = 0, rate_seconds: float = 0.0
    ) -> dict[str, Any]:
        """The sessions straight to the pool, with the stall floor: a bare lag probe (`benchmarks.probe
        --bare`) on the proxy's core through the windows, whose figures are each window's "loop"."""
        args = self.args
        self.floor_out = self.workdir / f"floor-{label.replace(' ', '-')}.jsonl"
        pin = ["--cpus", self.proxy_cpus] if self.proxy_cpus else []
        floor = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.probe", "--bare", "--probe-out", str(self.floor_out), *pin],
            cwd=REPO,
            stderr=self.helper_log,
        )
        self.floor_pid = floor.pid  # its ~5 % of a core is the benchmark's, not "other CPU"
        try:
            connect = self.connect(self.pool_port, args.sessions)
            out: dict[str, Any] = {"connect": connect}
            if closed:
                out["closed"] = self.run("closed", args.duration)
            out["rate"] = self.run("rate", rate_seconds or args.duration, args.rate)
            self.disconnect()
        finally:
            terminate(floor, 30)
            self.floor_out, self.floor_pid = None, None
        floor_loop = out["rate"].get("loop", {})
        _say(
            f"  {label}: {connect['connected']} sessions; "
            + (f"closed {out['closed']['shares_per_s']:,.0f}/s; " if closed else "")
            + _latency(out["rate"])
            + (
                f"; stall floor (a bare loop on the proxy's core): longest {floor_loop['max_lag_ms']:.1f} ms"
                if floor_loop.get("seconds")
                else ""
            )
        )
        if connect_many:
            # The same sessions without the proxy: the generators and the pool (one Python process
            # answering every handshake) on their own.
            time.sleep(0.5)
            out["connect_many"] = many = self.connect(self.pool_port, connect_many)
            self.disconnect()
            _say(f"  {label}: {many['connected']:,} of {connect_many:,} sessions connected in {many['seconds']:.2f} s")
            out["connect_many_relay"] = relayed = self.connect_through_relay(connect_many)
            _say(
                f"  {label}: through a bare byte relay on the proxy's core (a pool connection per session), "
                f"{relayed['connected']:,} connected in {relayed['seconds']:.2f} s"
            )
        return out

    def connect_through_relay(self, sessions: int) -> dict[str, Any]:
        """`sessions` connected through `benchmarks.relay` on the proxy's core: what connecting costs a
        proxy that opens a pool connection per session and does nothing else (passthrough's floor)."""
        pin = ["--cpus", self.proxy_cpus] if self.proxy_cpus else []
        relay = Child(
            "relay",
            [sys.executable, "-m", "benchmarks.relay", "--upstream-port", str(self.pool_port), *pin],
            stderr=self.helper_log,
        )
        self.relay_pid = relay.pid
        try:
            port = int(relay.receive(60)["port"])
            time.sleep(0.5)
            many = self.connect(port, sessions)
            self.disconnect()
        finally:
            self.relay_pid = None
            relay.close()
        return many

    def proxy_phase(
        self,
        name: str,
        clickhouse_url: str | None,
        *,
        rate_seconds: float,
        gc_freeze: bool = False,
        gc_threshold: str = "",
        connect_many: int = 0,
        mode: str = "passthrough",
    ) -> dict[str, Any]:
        args = self.args
        proxy_id = f"bench-{name}"
        workdir = self.workdir / f"proxy-{name}"
        self.proxy = proxy = Proxy(
            workdir,
            [self.pool_port],
            clickhouse_url,
            proxy_id,
            self.workdir / "proxy.log",
            cpus=self.proxy_cpus,
            gc_freeze=gc_freeze,
            gc_threshold=gc_threshold,
            mode=mode,
            watchdog_ms=args.watchdog_ms,
        )
        out: dict[str, Any] = {
            "mode": mode,
            "ledger": "ClickHouse HTTP server process" if clickhouse_url else "embedded (chdb in the proxy process)",
            "gc": {"freeze": gc_freeze, "threshold": gc_threshold or "default"},
            "proxy_command": "python -m proxy " + " ".join(proxy.flags),
        }
        # Warm-up: every code path once (imports, metric children, the ledger client), then idle RSS.
        self.connect(proxy.port, WARMUP_SESSIONS)
        warm = self.run("closed", 1.0)
        self.disconnect()
        time.sleep(0.5)
        idle_rss = rss(proxy.pid)
        idle_cpu = cpu_seconds({"proxy": proxy.pid})["proxy"]
        time.sleep(IDLE_CPU_WINDOW)
        # With no session: the lag probe's own wake-ups, the timers (see benchmarks/probe.py).
        idle_cpu_percent = (cpu_seconds({"proxy": proxy.pid})["proxy"] - idle_cpu) / IDLE_CPU_WINDOW * 100
        connect = self.connect(proxy.port, args.sessions)
        if gc_freeze:
            proxy.proc.send_signal(signal.SIGUSR1)  # freeze the sessions just made
        time.sleep(0.5)
        connected_rss = rss(proxy.pid)
        # What the pool sees: one connection per session in passthrough, per hotkey (and slot) in farm mode.
        pool_connections = self.pool_stats()["sessions"]
        out["pinned"] = pinned_to(proxy.pid, self.proxy_cpus)
        closed = self.run("closed", args.duration)
        rss_after_closed = rss(proxy.pid)
        paced = self.run("rate", rate_seconds, args.rate)
        self.disconnect()
        out.update(
            connect=connect,
            closed=closed,
            rate=paced,
            idle_rss=idle_rss,
            idle_cpu_percent=idle_cpu_percent,
            connected_rss=connected_rss,
            pool_connections=pool_connections,
            rss_after_closed=rss_after_closed,
            rss_per_session=(connected_rss - idle_rss) / max(1, connect["connected"]),
            rss_growth_per_closed_loop_share=(rss_after_closed - connected_rss) / max(1, closed["accepted"]),
        )
        accepted = warm["accepted"] + closed["accepted"] + paced["accepted"]
        _say(
            f"  {name}: {connect['connected']} sessions on {pool_connections} pool connections; "
            f"closed {closed['shares_per_s']:,.0f}/s at "
            f"{closed['cpu_us_per_share'].get('proxy', float('nan')):.1f} µs/share; {_latency(paced)}; "
            f"longest loop stall {paced['loop']['max_lag_ms']:.1f} ms in {paced['loop']['seconds']} s"
        )
        if connect_many:
            time.sleep(1.0)
            before = rss(proxy.pid)
            many = self.connect(proxy.port, connect_many)
            time.sleep(0.5)
            many["rss_per_session"] = (rss(proxy.pid) - before) / max(1, many["connected"])
            many["seconds_disconnect"] = self.disconnect()
            out["connect_many"] = many
            _say(
                f"  {name}: {many['connected']:,} of {connect_many:,} sessions connected and authorized in "
                f"{many['seconds']:.2f} s; "
                + (
                    f"{kib:.1f} KiB RSS per session"
                    if (kib := report.rss_kib(many["rss_per_session"])) is not None
                    else report.RSS_UNREADABLE
                )
            )
        out["exit_code"] = proxy.stop()
        self.proxy = None
        out["stall_dumps"] = self._stall_stacks(proxy)
        out["shares_accepted"] = accepted
        out["ledger_rows_accepted"] = self.ledger_rows(proxy_id, clickhouse_url, workdir)
        return out

    def failover(self, sessions: int, rate: float, before: float, after: float) -> dict[str, Any]:
        """Farm mode in front of pools A and B (`--upstream A --upstream B`): `sessions` mine at
        `rate`; after `before` s pool A is SIGKILLed; the window goes on for `after` s. Per session:
        A's death → its first new mining.notify; sessions closed or told to reconnect."""
        py = sys.executable
        pin = ["--cpus", self.load_cpus] if self.load_cpus else []
        pools = [
            Child(
                f"pool-{name}",
                [py, "-m", "benchmarks.pool", "--verify", self.args.pool_verify, "--seed", str(seed), *pin],
                stderr=self.helper_log,
            )
            for name, seed in (("a", 1), ("b", 2))
        ]
        proxy_id = "bench-failover"
        workdir = self.workdir / "proxy-failover"
        try:
            ports = [int(pool.receive(60)["port"]) for pool in pools]
            self.proxy = proxy = Proxy(
                workdir, ports, None, proxy_id, self.workdir / "proxy.log", cpus=self.proxy_cpus, mode="aggregate"
            )
            connect = self.connect(proxy.port, sessions)
            time.sleep(0.5)
            pool_a = self.pool_stats(pools[0])
            for generator in self.generators:
                generator.send(
                    {
                        "op": "run",
                        "mode": "rate",
                        "duration": before + after,
                        "rate": rate / len(self.generators),
                        "watch": True,
                    }
                )
            for generator in self.generators:
                generator.receive(120)  # started
            time.sleep(before)
            killed_at = time.monotonic()
            pools[0].proc.kill()  # pool A dies: the kernel closes its sockets, it listens no more
            answers = [g.receive(before + after + 90) for g in self.generators]
            pools[0].proc.wait(10)
            pool_b = self.pool_stats(pools[1])
            self.disconnect()
            exit_code = proxy.stop()
            self.proxy = None
        finally:
            for pool in pools:
                pool.close()
        summary = failover.summarize(killed_at, answers)
        accepted = sum(a["accepted"] for a in answers)
        out: dict[str, Any] = {
            "proxy_command": "python -m proxy " + " ".join(proxy.flags),
            "connect": connect,
            "rate": rate,
            "seconds_before": before,
            "seconds_after": after,
            "new_work": summary,
            "pool_a_connections": pool_a["sessions"],
            "pool_b_connections": pool_b["sessions"],
            "pool_b_connections_total": pool_b["connections_total"],
            "pool_b_accepted": pool_b["accepted"],
            "submitted": sum(a["submitted"] for a in answers),
            "accepted": accepted,
            "rejected": sum(a["rejected"] for a in answers),
            "rejected_by_code": _sum_dicts([a["rejected_by_code"] for a in answers]),
            "lost": sum(a["lost"] for a in answers),
            "exit_code": exit_code,
            "shares_accepted": accepted,
            "ledger_rows_accepted": self.ledger_rows(proxy_id, None, workdir),
        }
        _say(
            f"  failover: {connect['connected']} sessions on {pool_a['sessions']} connections to pool A; after A's "
            f"death {summary['with_new_work']} had new work, p50 {_fmt_s(summary['p50_s'])} p99 "
            f"{_fmt_s(summary['p99_s'])} max {_fmt_s(summary['max_s'])}; {summary['reconnects']} reconnects; "
            f"pool B {pool_b['sessions']} connections, {pool_b['accepted']:,} shares accepted"
        )
        return out

    def ledger_rows(self, proxy_id: str, clickhouse_url: str | None, workdir: Path) -> int:
        query = f"SELECT count() FROM infinitehash.shares WHERE proxy_id = '{proxy_id}' AND accepted = 1"
        if clickhouse_url is not None:
            import clickhouse_connect

            client = clickhouse_connect.get_client(host=HOST, port=self.clickhouse_port)
            try:
                return int(client.query(query).result_rows[0][0])
            finally:
                client.close()
        # chdb opens one data directory per process: count in a child process.
        code = (
            "import sys; from pathlib import Path; from ledger.target import connect; "
            "c = connect(None, data_dir=Path(sys.argv[1])); print(c.query(sys.argv[2]).result_rows[0][0])"
        )
        done = subprocess.run(
            [sys.executable, "-c", code, str(workdir), query], cwd=REPO, capture_output=True, text=True, timeout=120
        )
        try:
            return int(done.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return -1


def _fmt_s(seconds: float | None) -> str:
    return "–" if seconds is None else f"{seconds * 1e3:.0f} ms"


def _latency(r: dict[str, Any]) -> str:
    return (
        f"{r['shares_per_s']:,.0f}/s p50 {r['p50_ms']:.2f} p99 {r['p99_ms']:.2f} max {r['max_ms']:.1f} ms "
        f"(generator late p99 {r.get('generator_lateness_p99_ms') or 0:.2f} ms, "
        f"other CPU {r['foreign_cpu_percent']:.0f} %, steal {r.get('steal_percent', 0.0):.0f} %)"
    )


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
        "share_hashing": "C, protocol._sha256d" if work.native is not None else "Python (protocol._sha256d not built)",
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=1000, help="sessions of every window (default %(default)s)")
    parser.add_argument("--rate", type=float, default=5000.0, help="the fixed rate, shares/s (default %(default)s)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per window (default %(default)s)")
    parser.add_argument("--stall-window", type=float, default=60.0, help="seconds of the long fixed-rate window")
    parser.add_argument("--connect-many", type=int, default=9000, help="sessions connected at once (0: skip)")
    parser.add_argument("--failover-sessions", type=int, default=200, help="sessions of the farm failover (0: skip)")
    parser.add_argument("--quick", action="store_true", help="5 s windows, a 15 s long window, 3,000 at once")
    parser.add_argument("--generators", type=int, default=2, help="load generator processes")
    parser.add_argument("--connect-concurrency", type=int, default=500, help="handshakes in flight per generator")
    parser.add_argument("--connect-timeout", type=float, default=90.0, help="seconds to connect a phase")
    parser.add_argument("--pool-verify", choices=("sample", "none", "all"), default="sample")
    parser.add_argument("--en2", choices=("fresh", "reused"), default="fresh")
    parser.add_argument("--no-pin", dest="pin", action="store_false", help="do not pin the proxy to its own core")
    parser.add_argument("--py-spy", default="", help="py-spy executable: record the proxy in every closed loop")
    parser.add_argument("--out", type=Path, default=None, help="where results go (default benchmarks/results/)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, ledger)")
    parser.add_argument(
        "--watchdog-ms",
        type=float,
        default=250.0,
        help="dump the proxy's stacks when its loop stalls this long, to results/stalls-*.txt (0: off)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.stall_window, args.connect_many = 5.0, 15.0, 3000
    if args.out is None:
        args.out = RESULTS if not args.quick else Path(tempfile.gettempdir()) / "ih-bench-quick"
    args.out.mkdir(parents=True, exist_ok=True)

    started = time.monotonic()
    env = environment()
    proxy_cpus, load_cpus = cpu_layout(args.pin)
    env["pinning"] = {"proxy": proxy_cpus or "any", "load": load_cpus or "any"}
    if load_cpus:  # the orchestrator too stays off the proxy's core
        os.sched_setaffinity(0, {int(c) for c in load_cpus.split(",")})
    _say(
        f"benchmark: {env['cpu']}, {env['cores']} cores, Python {env['python']}, uvloop {env['uvloop']}; "
        f"{args.sessions:,} sessions, {args.rate:,.0f} shares/s, {args.duration:g} s windows; "
        f"proxy on CPU {env['pinning']['proxy']}, load on CPU {env['pinning']['load']}"
    )
    try:
        refs: dict[str, Any] = reference.measure()
    except Exception as exc:  # benchmarks.sharepath follows the session's internals: report, go on
        refs = {"error": f"{type(exc).__name__}: {exc}"}
    micros = micro.memory_and_journal()
    _say(
        f"reference: {json.dumps({k: round(v, 1) for k, v in refs.items() if isinstance(v, float)})}\n"
        f"micro: {json.dumps({k: round(v, 1) for k, v in micros.items()})}"
    )

    workdir = Path(tempfile.mkdtemp(prefix="ih-bench-"))
    bench = Bench(args, workdir, (proxy_cpus, load_cpus))
    phases: dict[str, Any] = {}
    clickhouse_url = f"http://{HOST}:{bench.clickhouse_port}/"
    try:
        _say("direct (generators → pool)")
        # Its fixed-rate window is as long as the proxies' stall windows: the same span of the
        # machine's own stalls (the floor) and of the direct path's tail.
        phases["direct"] = bench.direct("direct", connect_many=args.connect_many, rate_seconds=args.stall_window)
        _say("proxy, embedded ledger")
        phases["embedded"] = bench.proxy_phase(
            "embedded", None, rate_seconds=args.stall_window, connect_many=args.connect_many
        )
        _say("proxy, ClickHouse HTTP server in another process")
        phases["clickhouse_http"] = bench.proxy_phase("clickhouse-http", clickhouse_url, rate_seconds=args.duration)
        _say(f"proxy, embedded ledger, gc.freeze() + gc.set_threshold({GC_THRESHOLD})")
        phases["gc_freeze"] = bench.proxy_phase(
            "gc-freeze", None, rate_seconds=args.stall_window / 3, gc_freeze=True, gc_threshold=GC_THRESHOLD
        )
        _say("proxy, embedded ledger, farm mode (--mode aggregate)")
        phases["farm"] = bench.proxy_phase(
            "farm", None, rate_seconds=args.stall_window, mode="aggregate", connect_many=args.connect_many
        )
        if args.failover_sessions > 0:
            _say(
                f"farm mode failover: {args.failover_sessions} sessions, pool A SIGKILLed, pool B the second --upstream"
            )
            try:
                phases["failover"] = bench.failover(
                    args.failover_sessions,
                    args.rate * args.failover_sessions / max(1, args.sessions),  # the same shares/s per session
                    FAILOVER_BEFORE_S,
                    FAILOVER_AFTER_S,
                )
            except (OSError, RuntimeError, TimeoutError, KeyError) as exc:  # reported; the run goes on
                phases["failover"] = {"error": f"{type(exc).__name__}: {exc}"}
                _say(f"  failover: {phases['failover']['error']}")
                if bench.proxy is not None and bench.proxy.proc.poll() is None:
                    bench.proxy.stop()
                bench.proxy = None
        else:  # a phase of no sessions would leave the generators waiting on nothing
            phases["failover"] = {"error": "skipped (--failover-sessions 0)"}
        _say("direct again (drift of the machine over the run)")
        phases["direct_after"] = bench.direct("direct again", closed=False)
    finally:
        bench.close()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            _say(f"work directory kept: {workdir}")

    results = {
        "command": (
            "python3 -m uv run python -m benchmarks " + " ".join(argv if argv is not None else sys.argv[1:])
        ).rstrip(),
        "environment": env,
        "settings": {
            "sessions": args.sessions,
            "rate": args.rate,
            "duration_s": args.duration,
            "stall_window_s": args.stall_window,
            "connect_many": args.connect_many,
            "failover_sessions": args.failover_sessions,
            "generators": args.generators,
            "pool_verify": args.pool_verify,
            "pool_difficulty": POOL_DIFFICULTY,
            "extranonce2": args.en2,
            "merkle_branches": 12,
        },
        "reference": refs,
        "micro": micros,
        "phases": phases,
        "runtime_s": time.monotonic() - started,
    }
    if args.py_spy:
        from benchmarks import profile

        results["profiles"] = {
            f.stem: {"summary": profile.summarize(f), "top": profile.top_functions(f)}
            for f in sorted(args.out.glob("profile-*.txt"))
        }
    results["targets"] = report.targets(results)
    report.write(results, args.out)
    _say("")
    _say(report.text_table(results))
    _say("")
    _say(report.targets_text(results))
    _say("")
    _say(report.checks_text(results))
    _say(f"\ntotal {time.monotonic() - started:.0f} s; results in {args.out}")
    return 0
