"""The proxy with an event-loop lag probe: a benchmark-only wrapper, never shipped.

    python -m benchmarks.probe --probe-out FILE [--gc-freeze] [--gc-threshold 700,10,10] [--cpus 1] \\
        -- <the proxy's own flags, exactly as `python -m proxy` takes them>
    python -m benchmarks.probe --probe-out FILE --bare [--cpus 1]

It runs what `python -m proxy` runs (`proxy.config.load_config`, then `proxy.app.serve`: start,
gc.freeze() of what start-up built, wait for SIGTERM/SIGINT, stop) on uvloop, plus, in the same loop:

- a lag probe: a callback due every PERIOD seconds that records how late it ran. A callback can
  only run between two other callbacks, so its lateness is the longest time the loop spent without
  coming back to its timers: a stall (GC, a long callback, the GIL held by another thread);
- the collector's own pauses: `gc.callbacks` times every collection, per generation.

Every second it appends one JSON line to FILE: {"t": wall time, "ticks": n, "max_lag_ms": ...,
"over_1ms": n, "over_5ms": n, "over_10ms": n, "gc": {gen: [count, total_ms, max_ms]}}; the
orchestrator picks the lines of its window. The probe costs ~1,000 timer callbacks a second: on this
VM ~6 % of a core while the loop has nothing else to do (each tick is a wake-up from idle; without
the probe an idle proxy uses 0.1 %), a fraction of that while the loop is busy (ticks then run
between other callbacks). The orchestrator reports the idle figure of every phase.

--watchdog-ms N starts a watchdog thread: when the loop has not come back to its timers for N ms, it
appends every thread's stack to FILE.stacks once per stall (what the loop was doing, and the other
threads). A Python thread that wakes every N/4 ms, not `faulthandler.dump_traceback_later` re-armed
from the ticks: that starts a new thread at every re-arm and makes the loop wait for the old one.

--bare runs the probe alone, in a uvloop that does nothing else, until SIGTERM/SIGINT: the machine's
own floor. The orchestrator runs it on the proxy's core while the direct path carries the load, so
a proxy's stalls can be read against what an empty loop on that core suffered meanwhile (the
hypervisor taking the vCPU, timer slack, the kernel's softirq work): measured here, 60 s, nothing
else running, a bare loop's longest stall was 8.0 ms (2 seconds of 61 over 5 ms).

--gc-freeze adds a `gc.freeze()` on SIGUSR1 (the orchestrator sends it once the sessions are
connected), so the collector stops re-walking the sessions too; --gc-threshold sets `gc.set_threshold`.
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import gc
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from benchmarks.common import pin_self

PERIOD = 0.001  # seconds between two probe callbacks (libuv timers have 1 ms resolution)


STALL_HEADER = "Stall: "  # starts each dump in the stacks file (the orchestrator counts them)


def stacks_path(probe_out: Path) -> Path:
    """Where --watchdog-ms appends the stacks of each stall (next to the per-second lines)."""
    return probe_out.with_name(probe_out.name + ".stacks")


class LagProbe:
    def __init__(self, out: Path, watchdog: float = 0.0) -> None:
        self.out = out
        self._file = open(out, "a", buffering=1)  # noqa: SIM115 - closed in stop()
        self.watchdog = watchdog
        self._stacks = open(stacks_path(out), "a") if watchdog > 0 else None  # noqa: SIM115 - closed in stop()
        self._last_tick = time.perf_counter()
        self._stopping = threading.Event()
        self._watchdog: threading.Thread | None = None
        self._reset()
        self._gc_started = 0
        self._handle: asyncio.TimerHandle | None = None
        self._second: asyncio.TimerHandle | None = None

    def _reset(self) -> None:
        self.ticks = 0
        self.max_lag = 0.0
        self.over = [0, 0, 0]
        self.gc: dict[int, list[float]] = {}

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._due = time.perf_counter() + PERIOD
        self._handle = loop.call_later(PERIOD, self._tick)
        self._second = loop.call_later(1.0, self._flush)
        gc.callbacks.append(self._on_gc)
        if self._stacks is not None:
            self._watchdog = threading.Thread(
                target=self._watch, args=(self._stacks,), name="stall-watchdog", daemon=True
            )
            self._watchdog.start()

    def _watch(self, stacks: IO[str]) -> None:
        """Dump every thread's stack once per stall longer than `watchdog` seconds."""
        dumped_for = 0.0  # the last tick of the stall already dumped
        while not self._stopping.wait(self.watchdog / 4):
            last = self._last_tick
            if time.perf_counter() - last > self.watchdog and last != dumped_for:
                dumped_for = last
                stacks.write(f"{STALL_HEADER}no tick for {self.watchdog * 1e3:.0f} ms, at {time.time():.3f}\n")
                faulthandler.dump_traceback(stacks, all_threads=True)
                stacks.flush()

    def _tick(self) -> None:
        now = time.perf_counter()
        lag = now - self._due
        self.ticks += 1
        if lag > self.max_lag:
            self.max_lag = lag
        if lag > 0.001:
            self.over[0] += 1
            if lag > 0.005:
                self.over[1] += 1
                if lag > 0.010:
                    self.over[2] += 1
        self._due = now + PERIOD
        self._last_tick = now
        self._handle = self._loop.call_later(PERIOD, self._tick)

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter_ns()
            return
        ms = (time.perf_counter_ns() - self._gc_started) / 1e6
        entry = self.gc.setdefault(int(info.get("generation", -1)), [0, 0.0, 0.0])
        entry[0] += 1
        entry[1] += ms
        entry[2] = max(entry[2], ms)

    def _flush(self) -> None:
        record = {
            "t": time.time(),
            "ticks": self.ticks,
            "max_lag_ms": self.max_lag * 1e3,
            "over_1ms": self.over[0],
            "over_5ms": self.over[1],
            "over_10ms": self.over[2],
            "gc": {str(g): v for g, v in self.gc.items()},
        }
        self._file.write(json.dumps(record) + "\n")
        self._reset()
        self._second = self._loop.call_later(1.0, self._flush)

    def stop(self) -> None:
        for handle in (self._handle, self._second):
            if handle is not None:
                handle.cancel()
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
        self._stopping.set()
        if self._watchdog is not None:
            self._watchdog.join(5.0)
        if self._stacks is not None:
            self._stacks.close()
        self._file.close()


async def serve(proxy_argv: Sequence[str], args: argparse.Namespace) -> None:
    """`proxy.app.serve`, the very function `python -m proxy` runs (start-up gc.freeze included),
    with the probe started in its loop once the proxy listens."""
    from proxy.app import serve as proxy_serve
    from proxy.config import load_config

    config = load_config(list(proxy_argv))
    logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    probe = LagProbe(args.probe_out, args.watchdog_ms / 1000.0)

    def started(_app: object) -> None:
        if args.gc_freeze:
            asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, gc.freeze)
        probe.start()

    try:
        await proxy_serve(config, started=started)
    finally:
        probe.stop()


async def bare(args: argparse.Namespace) -> None:
    """The probe alone, until SIGTERM or SIGINT: the floor of the proxy's own stall figures."""
    loop = asyncio.get_running_loop()
    stopped = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopped.set)
    probe = LagProbe(args.probe_out)
    probe.start()
    try:
        await stopped.wait()
    finally:
        probe.stop()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ours, proxy_argv = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(prog="python -m benchmarks.probe", description=__doc__.split("\n\n")[0])
    parser.add_argument("--probe-out", type=Path, required=True, help="where the per-second JSON lines go")
    parser.add_argument("--gc-freeze", action="store_true", help="gc.freeze() again on SIGUSR1")
    parser.add_argument("--gc-threshold", default="", help="gc.set_threshold(a, b, c), e.g. 50000,50,100")
    parser.add_argument("--cpus", default="", help="CPUs to pin the proxy to, comma-separated")
    parser.add_argument("--watchdog-ms", type=float, default=0.0, help="dump every stack after a stall this long")
    parser.add_argument("--bare", action="store_true", help="the probe alone, no proxy: the machine's stall floor")
    args = parser.parse_args(ours)
    if args.bare and proxy_argv:
        parser.error("--bare runs no proxy: no flags after --")
    pin_self(args.cpus)
    if args.gc_threshold:
        a, b, c = (int(x) for x in args.gc_threshold.split(","))
        gc.set_threshold(a, b, c)
    import uvloop

    uvloop.run(bare(args) if args.bare else serve(proxy_argv, args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
