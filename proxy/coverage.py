"""The proxy's liveness in the ledger: one CoverageRow per minute, so "no data" never reads as "no
hashrate" (a validator can tell a miner who stopped from a proxy that was down).

`CoverageRecorder.tick(now)` is called by a background task just after each minute boundary and
records the minute that just ended; `finish(now)` at shutdown records the minute in progress. The
first minute after a start is recorded too, although the proxy was up for part of it only. A proxy
that dies without `finish` leaves its last minute uncovered: a gap errs on the side of "not seen".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from ledger.rows import CoverageRow

log = logging.getLogger("proxy.coverage")

MINUTE = 60


def minute_of(now: float) -> int:
    return int(now // MINUTE) * MINUTE


class CoverageRecorder:
    """Writes one CoverageRow per minute through `record` (the ledger writer's).

    sessions: authorized sessions right now; shares: shares judged since the start (a running total,
    the row carries the minute's difference); upstream_up: whether some pool takes connections.
    """

    def __init__(
        self,
        proxy_id: str,
        *,
        sessions: Callable[[], int],
        shares: Callable[[], int],
        upstream_up: Callable[[], bool],
        record: Callable[[CoverageRow], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.proxy_id = proxy_id
        self._sessions = sessions
        self._shares = shares
        self._upstream_up = upstream_up
        self._record = record
        self._clock = clock
        self._minute: int | None = None  # the minute being observed
        self._shares_at_start = 0
        self._up_all_minute = True
        self._task: asyncio.Task[None] | None = None
        self.rows_recorded = 0

    def begin(self, now: float | None = None) -> None:
        """Start observing the minute `now` falls in."""
        now = self._clock() if now is None else now
        self._minute = minute_of(now)
        self._shares_at_start = self._shares()
        self._up_all_minute = self._upstream_up()

    def sample(self) -> None:
        """Note the pool state between ticks (a minute is up only if the pool was up all of it)."""
        self._up_all_minute = self._up_all_minute and self._upstream_up()

    def tick(self, now: float | None = None) -> None:
        """Record the observed minute if `now` is past it, and observe the current one."""
        now = self._clock() if now is None else now
        if self._minute is None:
            self.begin(now)
            return
        if minute_of(now) <= self._minute:
            self.sample()
            return
        self._emit()
        self.begin(now)

    def finish(self) -> None:
        """Record the minute in progress (at shutdown)."""
        if self._minute is not None:
            self.sample()
            self._emit()
            self._minute = None

    def _emit(self) -> None:
        assert self._minute is not None
        shares = self._shares()
        up = self._up_all_minute  # sampled during the minute: the state now belongs to the next one
        self._record(
            CoverageRow(self._minute, self.proxy_id, self._sessions(), shares - self._shares_at_start, 1 if up else 0)
        )
        self.rows_recorded += 1

    # -- background task ------------------------------------------------------------------------

    async def start(self, sample_every: float = 5.0) -> None:
        self.begin()
        self._task = asyncio.create_task(self._run(sample_every), name="coverage")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.finish()

    async def _run(self, sample_every: float) -> None:
        while True:
            # Wake at the next boundary (or sooner, to sample the pool state), whichever comes first.
            now = self._clock()
            await asyncio.sleep(max(0.01, min(sample_every, minute_of(now) + MINUTE - now + 0.01)))
            try:
                self.tick()
            except Exception:  # the coverage must never take the proxy down
                log.exception("coverage: recording the minute failed")
