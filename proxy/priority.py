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

And the CPU slice (`--cpu-slice`, Linux 6.12+: sched_setattr's sched_runtime sets a fair thread's
slice). A lower nice buys the engine a smaller share of the core, not shorter turns: the kernel's
EEVDF scheduler let one of its insert threads, at nice 10, run 5-9 ms at a time while the loop was
runnable (per-thread schedstat sampled every ms through the windows of the loop's longest stalls,
embedded, 5,000 shares/s: an engine or ledger thread ran 5-9 ms in 16 of the 30 stalls over 6 ms
sampled). With every proxy thread asking for the shortest slice (0.1 ms), the engine gets the same
share in turns of 0.1 ms. The same code with `--cpu-slice 0` alongside, 60 s at 5,000/s: stalls
over 5 ms 15 against 59, over 10 ms 1 against 5, the engine behind 1 of those sampled over 6 ms;
p99 2.89 against 4.47 ms (two more pairs of 20 s: 2.78 / 3.32 against 3.53 / 3.26 ms). Where the
kernel has no such slice (before 6.12, or not Linux), nothing changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import platform
import struct
import sys
import threading
from pathlib import Path

log = logging.getLogger(__name__)

SWEEP_EVERY = 5.0  # seconds: new threads (an executor growing, the engine's pools) run at nice 0 until then
_TASKS = Path("/proc/self/task")

# sched_setattr(2) and sched_getattr(2), which Python does not wrap: their numbers per machine, and
# struct sched_attr as the kernel first defined it (SCHED_ATTR_SIZE_VER1, 56 bytes).
_SYSCALLS = {"x86_64": (314, 315), "aarch64": (274, 275)}.get(platform.machine())
_SCHED_ATTR = struct.Struct("IIQiIQQQII")  # size, policy, flags, nice, priority, runtime, deadline, period, util
_FAIR = {getattr(os, "SCHED_OTHER", 0), getattr(os, "SCHED_BATCH", 3)}
_libc: ctypes.CDLL | None = None


def _syscall(number: int, *args: object) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.syscall(number, *args) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


def _granted(seconds: float) -> float:
    """`seconds` as the kernel keeps a slice (whole nanoseconds), so a read-back compares equal."""
    return round(seconds * 1e9) / 1e9


def cpu_slice(tid: int) -> float | None:
    """The CPU slice, in seconds, the kernel gives the thread `tid` (0: the calling one) each turn;
    None where it cannot tell (not Linux, another machine, a kernel without sched_getattr)."""
    if _SYSCALLS is None or sys.platform != "linux":
        return None
    buffer = ctypes.create_string_buffer(_SCHED_ATTR.size)
    try:
        _syscall(_SYSCALLS[1], tid, buffer, _SCHED_ATTR.size, 0)
    except OSError:
        return None
    return float(_SCHED_ATTR.unpack(buffer.raw)[5]) / 1e9


def set_cpu_slice(tid: int, seconds: float) -> bool:
    """Ask for `seconds` of CPU per turn for the fair-scheduled thread `tid` (0: the calling one;
    0 seconds: the kernel's default), keeping its policy and nice. True when the kernel took it: a
    kernel before 6.12 accepts the call and ignores the slice, so the answer is read back."""
    if _SYSCALLS is None or sys.platform != "linux":
        return False
    try:
        policy = os.sched_getscheduler(tid)
        if policy not in _FAIR:
            return False
        nice = os.getpriority(os.PRIO_PROCESS, tid)  # sched_setattr sets the nice too: keep it
        attr = _SCHED_ATTR.pack(_SCHED_ATTR.size, policy, 0, nice, 0, round(seconds * 1e9), 0, 0, 0, 0)
        _syscall(_SYSCALLS[0], tid, ctypes.create_string_buffer(attr, _SCHED_ATTR.size), 0)
    except OSError:
        return False
    return seconds <= 0 or cpu_slice(tid) == _granted(seconds)


def lower_other_threads(nice: int, keep: int, slice_seconds: float = 0.0) -> int:
    """Set every thread of this process but `keep` (a native thread id) to at least `nice` and, with
    `slice_seconds`, that CPU slice; returns how many were changed now. A thread started by a lowered
    one inherits its nice but not its slice: the slice is looked at on every sweep. Threads that end
    meanwhile are skipped."""
    if nice <= 0 or not hasattr(os, "setpriority") or not _TASKS.is_dir():
        return 0
    want = _granted(slice_seconds) if slice_seconds > 0 and cpu_slice(0) is not None else None
    changed = 0
    with contextlib.suppress(OSError):
        for entry in _TASKS.iterdir():
            tid = int(entry.name)
            if tid == keep:
                continue
            with contextlib.suppress(OSError):  # gone, or not ours to change
                touched = False
                if os.getpriority(os.PRIO_PROCESS, tid) < nice:
                    os.setpriority(os.PRIO_PROCESS, tid, nice)
                    touched = True
                if want is not None and cpu_slice(tid) != want:
                    touched = set_cpu_slice(tid, want) or touched
                changed += touched
    return changed


class BackgroundPriority:
    """While started, sweeps the process's threads every SWEEP_EVERY seconds on the event loop (a
    few dozen syscalls); the loop's own thread, the one that starts it, is kept at its nice. Every
    thread, the loop's too, asks for a CPU slice of `slice_seconds` (0: the kernel's own). And the
    GIL's switch interval is `switch_interval` (0: Python's own). With `nice` 0 the other threads
    are left alone, their slice too. stop() gives the loop thread the kernel's default slice back
    and restores the switch interval."""

    def __init__(self, nice: int, switch_interval: float = 0.0, slice_seconds: float = 0.0) -> None:
        self.nice = nice
        self.switch_interval = switch_interval
        self.slice_seconds = slice_seconds
        self._keep = 0
        self._timer: asyncio.TimerHandle | None = None
        self._previous_switch: float | None = None
        self._loop_slice_set = False

    def start(self) -> None:
        if self.switch_interval > 0 and self._previous_switch is None:
            self._previous_switch = sys.getswitchinterval()
            sys.setswitchinterval(self.switch_interval)
        if self.slice_seconds > 0 and not self._loop_slice_set:
            self._loop_slice_set = set_cpu_slice(0, self.slice_seconds)
            log.debug("event loop's CPU slice %.1f ms: %s", self.slice_seconds * 1e3, self._loop_slice_set)
        if self.nice <= 0 or self._timer is not None:
            return
        self._keep = threading.get_native_id()
        log.debug("background threads at nice %d (%d lowered)", self.nice, self._sweep())

    def _sweep(self) -> int:
        lowered = lower_other_threads(self.nice, self._keep, self.slice_seconds)
        self._timer = asyncio.get_running_loop().call_later(SWEEP_EVERY, self._sweep)
        return lowered

    def stop(self) -> None:
        if self._previous_switch is not None:
            sys.setswitchinterval(self._previous_switch)
            self._previous_switch = None
        if self._loop_slice_set:
            set_cpu_slice(0, 0.0)
            self._loop_slice_set = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
