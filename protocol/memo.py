"""A bounded memo keyed by an object's identity, for what every session derives from one shared
Notify (`protocol.messages` decodes identical notify lines to one object)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class ByIdentity(Generic[K, V]):
    """`compute(key)`, remembered for the last `kept` keys by `id(key)`. Each entry holds its key, so
    an id is never reused while it is remembered; an equal but distinct key is computed again."""

    def __init__(self, compute: Callable[[K], V], kept: int) -> None:
        self._compute = compute
        self.kept = kept
        self._entries: dict[int, tuple[K, V]] = {}

    def __call__(self, key: K) -> V:
        entry = self._entries.get(id(key))
        if entry is not None and entry[0] is key:
            return entry[1]
        value = self._compute(key)
        if len(self._entries) >= self.kept:
            self._entries.pop(next(iter(self._entries)), None)  # the oldest
        self._entries[id(key)] = (key, value)
        return value

    def __len__(self) -> int:
        return len(self._entries)
