"""benchmarks.loadgen's fixed-rate schedule: every share sent once, round-robin, and no busy wait."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from benchmarks.loadgen import MIN_TICK, Generator


class CountingSession:
    def __init__(self) -> None:
        self.submits = 0

    def submit(self) -> None:
        self.submits += 1


def test_the_paced_schedule_sends_each_share_once_and_never_sleeps_below_the_timer_resolution() -> None:
    # A sleep shorter than libuv's 1 ms timer rounds to 0: the loop spun, took the core it shares
    # with the pool and made the direct path's p99 3-5 ms. The schedule must sleep at least MIN_TICK.
    generator = Generator(argparse.Namespace(hotkeys=2, en2="fresh"))
    sessions = [CountingSession() for _ in range(7)]
    delays: list[float] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        call_later = loop.call_later

        def recording(delay: float, callback: Any, *args: Any) -> asyncio.TimerHandle:
            delays.append(delay)
            return call_later(delay, callback, *args)

        loop.call_later = recording  # type: ignore[method-assign,assignment]
        await generator._paced(sessions, rate=5000.0, duration=0.05)  # type: ignore[arg-type]

    asyncio.run(main())
    assert sum(s.submits for s in sessions) == 250  # rate × duration, each share once
    assert max(s.submits for s in sessions) - min(s.submits for s in sessions) <= 1  # round-robin
    assert len(generator.lateness) == 250
    assert delays, "the schedule never slept"
    assert min(delays) >= MIN_TICK
