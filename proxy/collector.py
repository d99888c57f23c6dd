"""What the cyclic garbage collector walks: only what is new, not every session again.

A full collection walks every tracked object that is not frozen. Left alone it walks the sessions'
objects (~45 per session: 45,000 at 1,000 sessions, 10-40 ms on this machine) every time enough new
objects reach the oldest generation, which each pool job does (a Job and its entries per session),
every few seconds at thousands of shares a second. So, on the event loop:

- at start-up, everything start-up built (modules, config, the ledger engine) is frozen;
- after every full collection, `gc.freeze()`: what survived one full pass (the sessions connected
  since, their jobs) is long-lived by then, and the next full pass walks only what came after it.
  Each object is walked by at most one full pass, so sessions that connect in a crowd cost one pause,
  not one every few seconds until the next interval;
- while sessions arrive fast (a restart, a failover in passthrough, 9,000 sessions reconnecting at
  once: CROWD_PER_LOOK or more since the loop's last look at the counts), that look freezes instead
  of collecting. What they build (~45 objects a session) lives as long as they do; otherwise a young
  and then a middle pass walked all of it while they connected (middle passes of 10-16 ms every
  quarter second at 9,000 sessions; perf: the collector ~8 % of the proxy's CPU during the crowd,
  gone with this). Garbage cycles formed meanwhile are frozen with it until the next thaw (so only
  with an interval: without one nothing thaws);
- when the sessions grew by a crowd since the last freeze, but slowly (looked at every second), a
  young collection and a freeze: the crowd's objects are frozen before any full pass walks them. Each
  of those passes took 40-55 ms in a row while the crowd settled, measured;
- every `interval` seconds, `gc.freeze()` again, for whatever no full pass reached meanwhile;
- every `thaw_every` interval freezes, `gc.unfreeze()` instead: the next full collection walks
  everything once and reclaims any reference cycle that formed among frozen objects (a closed
  session forms none, it is freed by reference counting: tests/test_collector.py; the ledger
  client's insert contexts do, a few dozen objects an insert, emptied of the batch before they go:
  `proxy.ledger.insert_batch`), and what survives it is frozen again.
  Until that pass, nothing freezes.

Freezing moves list heads (no walk), so a freeze costs microseconds.

And the collections themselves run on the loop. Left to itself the collector runs in whichever
thread crosses its threshold, often the ledger's insert thread (it allocates a batch's columns), at
nice 10 beside the engine's threads: a pass there holds the GIL while the kernel runs the engine,
and the loop waits for all of it. Measured, embedded, 5,000/s, 30 s: 13 of 29 middle-generation
passes ran there, the longest 19.2 ms of wall time for 3.7 ms of work (in the loop's thread: 8.1 ms
for 5.4). So the automatic collector's first threshold is raised a hundredfold (a safety net, should
the loop not look for long), and the loop looks at the counts every LOOK_BUSY or LOOK_QUIET and
collects as the collector would have: the young generation past its threshold, the middle one
every `middle` young passes, the oldest every `old` middle ones (CPython's rule, without its
long-lived-objects ratio, which Python cannot read: here a full pass walks only what came since the
last freeze anyway).
Three alternated pairs of 30 s at 5,000/s, looking every 10 ms (the passes over 2 ms, summed): the
same CPU (middle generation 456 against 420 ms, full 103 against 120), the loop held up less
(middle 797 → 487 ms of wall time, full 257 → 113), the longest middle pass 31.7 → 20.9 ms; p99
30.6 / 67.5 / 53.2 against 49.1 / 127.1 / 54.3 ms (a noisy hour: steal 2-9 % of a core). Two more
with the looks as here (steal 11-13 %): left alone, 40 passes ran in the ledger's thread, 616 ms of
wall time for 169 of work, the longest 39 (middle) and 61 ms (full); here none, the longest 19 and
15 ms. An idle proxy: 0.8 % of a core either way (1.9 % with a look every 10 ms).
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

THAW_EVERY = 360  # interval freezes between two thaws: six hours at the default interval of 60 s
CROWD_CHECK = 1.0  # seconds between two looks at the session count
CROWD_MIN = 100  # sessions more than at the last freeze that make a crowd...
CROWD_FRACTION = 0.1  # ...or this fraction of them, whichever is more
CROWD_PER_LOOK = 5  # sessions more than at the last look: they arrive in a crowd (>= 50-250 a second)
LOOK_BUSY = 0.02  # seconds to the next look at the collector's counts, when objects came fast...
LOOK_QUIET = 0.1  # ...and when they did not (a look wakes an idle proxy: ~1 % of a core at 100/s)
SAFETY_NET = 100  # the automatic collector's young threshold, times the one the loop applies


def _untracker() -> Callable[[object], None] | None:
    # PyObject_GC_UnTrack is CPython's stable C API; elsewhere nothing is untracked early.
    function = getattr(getattr(ctypes, "pythonapi", None), "PyObject_GC_UnTrack", None)
    if function is None:
        return None
    function.argtypes = [ctypes.py_object]
    function.restype = None
    untrack: Callable[[object], None] = function
    return untrack


_untrack = _untracker()


def untrack_fresh(values: tuple[Any, ...]) -> tuple[Any, ...]:
    """`values`, no longer tracked by the collector: for a tuple just made, that only its maker holds.

    No reference cycle can pass through such a tuple (nothing it holds refers back to it), so the
    collector has nothing to find there; untracked, it is to the collector what an untracked dict
    is, a root, and what it holds stays tracked on its own. Untracking is O(1): the item walk the
    collector would make before untracking it is what this spares.

    For the ledger's batch columns (tuples of thousands of values, made in the insert thread): the
    loop's next young collection walked every item of every column twice before it untracked them.
    Measured in a proxy at 9,000-11,000 shares/s (farm mode, embedded): young passes over 100,000-
    200,000 such references, 6-20 ms each, ~5 % of the loop's CPU."""
    if _untrack is not None:
        _untrack(values)
    return values


class CollectorPolicy:
    """`population()`: how many sessions the proxy holds now (none: no crowd freezes)."""

    def __init__(
        self, interval: float, thaw_every: int = THAW_EVERY, population: Callable[[], int] | None = None
    ) -> None:
        self.interval = interval
        self.thaw_every = thaw_every
        self.population = population
        self.freezes = 0  # by the interval
        self.survivor_freezes = 0  # after a full collection
        self.crowd_freezes = 0  # after the sessions grew by a crowd
        self.thaws = 0
        self._thresholds: tuple[int, int, int] | None = None  # what the loop applies; restored by stop()
        self._look_timer: asyncio.TimerHandle | None = None
        self._young_after_look = 0
        self._sessions_at_look = 0
        self._timer: asyncio.TimerHandle | None = None
        self._crowd_timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._freeze_due = False
        self._thawed = False  # until a full collection has walked everything again
        self._frozen_sessions = 0  # the population at the last freeze (lowered as sessions leave)

    def start(self) -> None:
        """Freeze what start-up built; from then on, what survives a full collection, what a crowd
        of new sessions brought, and with an interval, what survives until the next tick."""
        gc.collect()
        self._freeze()
        self._loop = asyncio.get_running_loop()
        if self._after_collection not in gc.callbacks:
            gc.callbacks.append(self._after_collection)
        if self.interval > 0 and self._timer is None:
            self._timer = self._loop.call_later(self.interval, self._sweep)
        if self.population is not None and self._crowd_timer is None:
            self._crowd_timer = self._loop.call_later(CROWD_CHECK, self._watch_crowd)
        self._sessions_at_look = self.population() if self.population is not None else 0
        if self._thresholds is None:
            young, middle, old = self._thresholds = gc.get_threshold()
            if young > 0:  # 0: the collector is off, and stays so
                gc.set_threshold(young * SAFETY_NET, middle, old)
                self._look_timer = self._loop.call_later(LOOK_QUIET, self._look)

    def _look(self) -> None:
        assert self._loop is not None and self._thresholds is not None
        young, middle, old = self._thresholds
        counts = gc.get_count()
        busy = counts[0] - self._young_after_look > young // 4
        sessions = self.population() if self.population is not None else 0
        arriving = sessions - self._sessions_at_look >= CROWD_PER_LOOK
        self._sessions_at_look = sessions
        if arriving and self.interval > 0 and not self._thawed:  # (no interval, no thaw to free what it froze)
            self._freeze()  # resets the young count: no pass walks what the arrivals built
            self.crowd_freezes += 1
        elif gc.isenabled() and counts[0] > young:
            gc.collect(2 if counts[2] > old else 1 if counts[1] > middle else 0)
        self._young_after_look = gc.get_count()[0]
        self._look_timer = self._loop.call_later(LOOK_BUSY if busy else LOOK_QUIET, self._look)

    def _freeze(self) -> None:
        gc.freeze()
        self._frozen_sessions = self.population() if self.population is not None else 0

    def _watch_crowd(self) -> None:
        assert self._loop is not None and self.population is not None
        sessions = self.population()
        self._frozen_sessions = min(self._frozen_sessions, sessions)
        grown = sessions - self._frozen_sessions
        if not self._thawed and grown >= max(CROWD_MIN, CROWD_FRACTION * self._frozen_sessions):
            gc.collect(1)  # the young generations' garbage cycles go first, not into the freeze
            self._freeze()
            self.crowd_freezes += 1
        self._crowd_timer = self._loop.call_later(CROWD_CHECK, self._watch_crowd)

    def _after_collection(self, phase: str, info: dict[str, Any]) -> None:
        # Runs in whichever thread allocated (the ledger's too), inside the collector: the freeze
        # itself waits for the loop.
        if phase != "stop" or info.get("generation") != 2 or self._freeze_due or self._loop is None:
            return
        self._freeze_due = True
        try:
            self._loop.call_soon_threadsafe(self._freeze_survivors)
        except RuntimeError:  # the loop is closed: the proxy is gone
            self._freeze_due = False

    def _freeze_survivors(self) -> None:
        self._freeze_due = False
        if self._loop is None:
            return  # stopped meanwhile
        self._thawed = False
        self._freeze()
        self.survivor_freezes += 1

    def _sweep(self) -> None:
        if (self.freezes + self.thaws + 1) % self.thaw_every == 0:
            gc.unfreeze()
            self._thawed = True
            self.thaws += 1
            log.debug("collector: thawed; the next full collection walks everything once")
        elif not self._thawed:
            self._freeze()
            self.freezes += 1
        assert self._loop is not None
        self._timer = self._loop.call_later(self.interval, self._sweep)

    def stop(self) -> None:
        if self._after_collection in gc.callbacks:
            gc.callbacks.remove(self._after_collection)
        self._loop = None
        for timer in (self._timer, self._crowd_timer, self._look_timer):
            if timer is not None:
                timer.cancel()
        self._timer = self._crowd_timer = self._look_timer = None
        if self._thresholds is not None:
            gc.set_threshold(*self._thresholds)
            self._thresholds = None
