"""Timeouts are looked at once a second, a slice of the sessions at a time.

One pass over every session in one callback is a loop stall that grows with the sessions:
passthrough's tick costs ~3.7 µs a session (3.7 ms at 1,000 sessions, ~33 ms at 9,000, every
second), farm mode's ~1.2 µs an ASIC. A round is `SLICES` callbacks, `INTERVAL / SLICES` apart: the
first takes the round's members (one that arrives meanwhile waits for the next round, so it is
looked at within two intervals), each callback takes its share, in order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, NamedTuple, TypeVar

INTERVAL = 1.0  # seconds between two looks at one session
SLICES = 10

T = TypeVar("T")


class Slice(NamedTuple, Generic[T]):
    first: bool  # the round starts: the proxy-wide checks go here
    members: list[T]
    last: bool  # the round ends: what it counted can be published


class Rounds(Generic[T]):
    def __init__(self, slices: int = SLICES) -> None:
        self.slices = slices
        self._members: list[T] = []
        self._next = 0

    def take(self, members: Callable[[], list[T]]) -> Slice[T]:
        """The next slice; `members()` is called when a round starts."""
        k, self._next = self._next, (self._next + 1) % self.slices
        if k == 0:
            self._members = members()
        n = len(self._members)
        part = self._members[k * n // self.slices : (k + 1) * n // self.slices]
        last = k == self.slices - 1
        if last:
            self._members = []
        return Slice(k == 0, part, last)
