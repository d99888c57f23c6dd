"""The event loop first: every other thread of the proxy runs at a lower CPU priority.

The loop thread carries every share's latency. The other threads do background work: the ledger's
insert thread and, with the embedded ledger, ClickHouse's own insert and merge pools, which after a
burst of shares take the core for whole seconds (measured at 5,000 shares/s, embedded, one core:
p99 168 → 28 ms, longest loop stall 78 → 13 ms with them at nice 10). Under contention the kernel
then gives them ~a tenth of the core; idle, they get all of it, so the ledger catches up between
bursts (its memory and spool bounds still stop the shares if it never does).

Linux: nice is per thread (`setpriority(PRIO_PROCESS, tid)`), and a new thread inherits its
creator's, so threads the loop starts later (the executor's) are lowered by the next sweep. Raising
nice needs no privilege; nothing here ever lowers it. Elsewhere this does nothing.

The GIL too: a Python thread at work (the ledger's, converting and serialising a batch twice a
second) keeps it until the switch interval passes after the loop asks for it back, which uvloop
does for every callback it runs (it polls and reads with the GIL released). Python's 5 ms is then a
wait of up to 5 ms per callback while a batch is converted; 1 ms here (`--gil-switch-interval`).
Measured, embedded, 5,000 shares/s, 30 s, two alternated pairs: loop stalls over 5 ms 165/164 →
89/105, p99 13.8/15.3 → 8.0/12.0 ms, CPU per share unchanged (the interval only matters while a
thread waits for the GIL).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import threading
from pathlib import Path

log = logging.getLogger(__name__)

SWEEP_EVERY = 5.0  # seconds: new threads (an executor growing, the engine's pools) run at nice 0 until then
_TASKS = Path("/proc/self/task")


def lower_other_threads(nice: int, keep: int) -> int:
    """Set every thread of this process but `keep` (a native thread id) to at least `nice`; returns
    how many were lowered now. Threads that end meanwhile are skipped."""
    if nice <= 0 or not hasattr(os, "setpriority") or not _TASKS.is_dir():
        return 0
    lowered = 0
    with contextlib.suppress(OSError):
        for entry in _TASKS.iterdir():
            tid = int(entry.name)
            if tid == keep:
                continue
            with contextlib.suppress(OSError):  # gone, or not ours to change
                if os.getpriority(os.PRIO_PROCESS, tid) < nice:
                    os.setpriority(os.PRIO_PROCESS, tid, nice)
                    lowered += 1
    return lowered


class BackgroundPriority:
    """While started, sweeps the process's threads every SWEEP_EVERY seconds on the event loop (a
    few dozen syscalls); the loop's own thread, the one that starts it, is kept. And the GIL's
    switch interval is `switch_interval` (0: Python's own), restored by stop()."""

    def __init__(self, nice: int, switch_interval: float = 0.0) -> None:
        self.nice = nice
        self.switch_interval = switch_interval
        self._keep = 0
        self._timer: asyncio.TimerHandle | None = None
        self._previous_switch: float | None = None

    def start(self) -> None:
        if self.switch_interval > 0 and self._previous_switch is None:
            self._previous_switch = sys.getswitchinterval()
            sys.setswitchinterval(self.switch_interval)
        if self.nice <= 0 or self._timer is not None:
            return
        self._keep = threading.get_native_id()
        log.debug("background threads at nice %d (%d lowered)", self.nice, self._sweep())

    def _sweep(self) -> int:
        lowered = lower_other_threads(self.nice, self._keep)
        self._timer = asyncio.get_running_loop().call_later(SWEEP_EVERY, self._sweep)
        return lowered

    def stop(self) -> None:
        if self._previous_switch is not None:
            sys.setswitchinterval(self._previous_switch)
            self._previous_switch = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
