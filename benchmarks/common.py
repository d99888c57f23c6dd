"""Pieces the benchmark processes share: the JSON-lines control channel, fd limits, a mergeable
latency histogram.

Every helper process (pool, load generator, ClickHouse) is driven by the orchestrator through its
stdin/stdout: one JSON object per line in, one per line out. Each side bounds every wait.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import queue
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"  # benchmarks never leave loopback
REPO = Path(__file__).resolve().parent.parent
POOL_DIFFICULTY = 2.0**-33  # below the worst possible hash's difficulty (~2**-32): every share is valid


def pin_self(cpus: str) -> None:
    """Pin this process to the given CPUs ("0", "0,1", as `--cpus` takes them); ignored where unsupported."""
    if cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {int(c) for c in cpus.split(",") if c.strip()})


def raise_fd_limit() -> int:
    """Raise this process's soft open-files limit to its hard limit; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# --- a latency histogram that two processes can merge ------------------------------------------------

_RATIO = 1.02  # bucket width: quantiles are within 2 % of the exact value
_LOG_RATIO = math.log(_RATIO)
_FLOOR = 1e-6  # seconds; everything faster lands in bucket 0


def bucket_of(seconds: float) -> int:
    if seconds <= _FLOOR:
        return 0
    return 1 + int(math.log(seconds / _FLOOR) / _LOG_RATIO)


def bucket_upper(index: int) -> float:
    return _FLOOR * _RATIO**index


def histogram(values: Iterable[float]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for value in values:
        b = bucket_of(value)
        counts[b] = counts.get(b, 0) + 1
    return counts


def merge(histograms: Sequence[dict[int, int]]) -> dict[int, int]:
    total: dict[int, int] = {}
    for h in histograms:
        for b, n in h.items():
            total[int(b)] = total.get(int(b), 0) + n
    return total


def hist_quantile(counts: dict[int, int], q: float) -> float:
    """The q-quantile (0..1), as the geometric middle of its bucket; nan when empty."""
    n = sum(counts.values())
    if n == 0:
        return float("nan")
    rank = max(1, math.ceil(q * n))
    seen = 0
    for b in sorted(counts):
        seen += counts[b]
        if seen >= rank:
            return bucket_upper(b) / math.sqrt(_RATIO) if b else _FLOOR
    return bucket_upper(max(counts))


# --- the control channel, child side -----------------------------------------------------------------


def reply(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def commands() -> asyncio.Queue[dict[str, Any]]:
    """A queue of the JSON commands arriving on stdin (an EOF arrives as {"op": "exit"})."""
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    def read() -> None:
        for line in sys.stdin:
            if line.strip():
                loop.call_soon_threadsafe(inbox.put_nowait, json.loads(line))
        loop.call_soon_threadsafe(inbox.put_nowait, {"op": "exit"})

    threading.Thread(target=read, name="stdin", daemon=True).start()
    return inbox


# --- the control channel, orchestrator side ----------------------------------------------------------


class Child:
    """A helper process driven by JSON lines; every wait has a timeout."""

    def __init__(self, name: str, argv: list[str], *, env: dict[str, str] | None = None, stderr: Any = None) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            argv,
            cwd=REPO,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            bufsize=1,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, name=f"{name}-out", daemon=True).start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def send(self, obj: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(obj) + "\n")
        self.proc.stdin.flush()

    def receive(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.name}: no answer in {timeout:.0f}s")
            try:
                line = self._lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise RuntimeError(f"{self.name} exited (code {self.proc.poll()})")
            try:
                value = json.loads(line)
            except json.JSONDecodeError:
                print(f"[{self.name}] {line.rstrip()}", file=sys.stderr)
                continue
            obj: dict[str, Any] = value if isinstance(value, dict) else {"value": value}
            if "error" in obj:
                raise RuntimeError(f"{self.name}: {obj['error']}")
            return obj

    def request(self, obj: dict[str, Any], timeout: float) -> dict[str, Any]:
        self.send(obj)
        return self.receive(timeout)

    def close(self, timeout: float = 15.0) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.close()  # EOF: the child exits
            except OSError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def wait_all(children: Sequence[Child], timeout: float) -> list[dict[str, Any]]:
    return [child.receive(timeout) for child in children]


def timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started
