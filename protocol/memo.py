"""Bounded memories for what every session derives from one pool message: identical notify lines
decode to one Notify (`protocol.messages`), and what is derived from that Notify is keyed by its
identity (`ByIdentity`)."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


def remember(entries: dict[Hashable, V], key: Hashable, value: V, kept: int) -> None:
    """`entries[key] = value`, the oldest entry dropped first once `kept` are held."""
    if len(entries) >= kept:
        entries.pop(next(iter(entries)), None)
    entries[key] = value


class ByIdentity(Generic[K, V]):
    """`compute(key)`, remembered for the last `kept` keys by `id(key)`. Each entry holds its key, so
    an id is never reused while it is remembered; an equal but distinct key is computed again."""

    def __init__(self, compute: Callable[[K], V], kept: int) -> None:
        self._compute = compute
        self.kept = kept
        self._entries: dict[Hashable, tuple[K, V]] = {}

    def __call__(self, key: K) -> V:
        entry = self._entries.get(id(key))
        if entry is not None and entry[0] is key:
            return entry[1]
        value = self._compute(key)
        remember(self._entries, id(key), (key, value), self.kept)
        return value

    def __len__(self) -> int:
        return len(self._entries)
