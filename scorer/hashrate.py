"""Share difficulty → hashrate, the scoring window, and the per-hotkey/per-worker figures.

``H/s = Σ accepted difficulty · 2^32 / window seconds``: a share of difficulty 1 takes 2^32 hashes on
average, so the accepted difficulty of a window is the work done in it.

The window is minute-aligned because the ledger aggregate (``shares_per_minute``) is per minute: its
end is the given moment (default: now, UTC) rounded *down* to a whole minute, its start is the end
minus the window length, which must itself be a whole number of minutes. Minutes ``>= start`` and
``< end`` are counted, so the minute still filling up at "now" is never read half-way.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from ledger.hashrate import hashrate

__all__ = ["hashrate"]  # the one formula lives in ledger/; re-exported for the scorer's modules

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([mhdw])\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}

_HASHRATE = re.compile(r"^\s*(\d+(?:\.\d+)?(?:e[+-]?\d+)?)\s*([kmgtpe]?)(?:h(?:/s)?)?\s*$", re.IGNORECASE)
_HASHRATE_PREFIX = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12, "p": 1e15, "e": 1e18}


def parse_duration(text: str) -> int:
    """``90m``, ``6h``, ``1d``, ``1.5h``, ``1w`` → seconds (a whole number of minutes, at least one)."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"bad duration {text!r}: use a number and a unit m, h, d or w, e.g. 90m, 6h, 1d")
    seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2).lower()]
    if seconds < 60 or seconds % 60:
        raise ValueError(f"bad duration {text!r}: the window is a whole number of minutes (at least 1m)")
    return int(seconds)


def parse_hashrate(text: str | float | int) -> float:
    """``100T``, ``1.5 PH/s``, ``250e12`` or a plain number of H/s → H/s."""
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        match = _HASHRATE.match(text)
        if not match:
            raise ValueError(f"bad hashrate {text!r}: use e.g. 100T, 1.5PH/s or a number of H/s")
        value = float(match.group(1)) * _HASHRATE_PREFIX[match.group(2).lower()]
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"bad hashrate {text!r}: must be a finite number >= 0")
    return value


def format_hashrate(hs: float) -> str:
    """Human units: ``123.45 TH/s``, ``1.20 PH/s``."""
    for prefix, scale in (("E", 1e18), ("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(hs) >= scale:
            return f"{hs / scale:.2f} {prefix}H/s"
    return f"{hs:.2f} H/s"


def parse_time(text: str) -> datetime:
    """ISO 8601 → aware UTC datetime (a time without offset is taken as UTC)."""
    value = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def iso(moment: datetime) -> str:
    """``2025-01-02T03:04:00Z`` (UTC, whole seconds)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Window:
    start: datetime
    end: datetime

    @property
    def seconds(self) -> int:
        return int((self.end - self.start).total_seconds())

    @classmethod
    def ending(cls, end: datetime, seconds: int) -> Window:
        """The minute-aligned window of ``seconds`` that ends at ``end`` rounded down to the minute."""
        if seconds < 60 or seconds % 60:
            raise ValueError("the window is a whole number of minutes")
        end = end.astimezone(UTC).replace(second=0, microsecond=0)
        return cls(end - timedelta(seconds=seconds), end)


@dataclass(frozen=True)
class WorkerStat:
    worker: str
    hotkey: str
    hashrate: float
    shares: int | None
    """Accepted shares, or None when the source does not know (the proxy API)."""
    rejected: int | None = None
    accepted_difficulty: float | None = None


@dataclass(frozen=True)
class HotkeyStat:
    hotkey: str
    hashrate: float
    shares: int | None
    rejected: int | None = None
    accepted_difficulty: float | None = None
    workers: tuple[WorkerStat, ...] = field(default=())


def _sum_optional(values: Iterable[int | None]) -> int | None:
    items = list(values)
    if any(v is None for v in items):
        return None
    return sum(v for v in items if v is not None)


def _fsum_optional(values: Iterable[float | None]) -> float | None:
    items = list(values)
    if any(v is None for v in items):
        return None
    return math.fsum(v for v in items if v is not None)


def by_hotkey(workers: Iterable[WorkerStat]) -> list[HotkeyStat]:
    """Group worker figures per hotkey (sorted by hashrate, highest first, then hotkey)."""
    groups: dict[str, list[WorkerStat]] = {}
    for stat in workers:
        groups.setdefault(stat.hotkey, []).append(stat)
    out = [
        HotkeyStat(
            hotkey=hotkey,
            hashrate=math.fsum(w.hashrate for w in items),
            shares=_sum_optional(w.shares for w in items),
            rejected=_sum_optional(w.rejected for w in items),
            accepted_difficulty=_fsum_optional(w.accepted_difficulty for w in items),
            workers=tuple(sorted(items, key=lambda w: (-w.hashrate, w.worker))),
        )
        for hotkey, items in groups.items()
    ]
    out.sort(key=lambda s: (-s.hashrate, s.hotkey))
    return out
