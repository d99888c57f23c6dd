"""The ledger's read queries: per-worker hashrate over an exact window, and per-proxy coverage.

Both programs read the ledger through these: the proxy's HTTP API (`/api/v1/workers`,
`/api/v1/coverage`) and the scorer. Each query is a pure `(sql, parameters)` builder plus a function
that turns the result rows into figures, so callers run them on whatever client they hold (the
proxy's async reader, the scorer's blocking client).

Exact windows: `shares_per_minute` holds whole minutes only. A window `[start, end)` to the second
(validators pass block timestamps) is split into
  the whole minutes inside it   [ceil_minute(start), floor_minute(end))  from `shares_per_minute`
  the partial edge minutes      [start, ceil_minute(start)) and [floor_minute(end), end)  from `shares`
so the sum is Σ accepted difficulty of exactly the shares with `start <= ts < end`. A window inside
one minute is read from `shares` alone. The hashrate is then floor(Σ · 2^32 / window seconds),
computed with exact rationals so it does not depend on float rounding of the division.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from ledger.hashrate import HASHES_PER_DIFFICULTY

MINUTE = 60
MAX_PAGE = 5000  # workers per page at most (the validators' client asks for 500)
DEFAULT_PAGE = 500


def unix_ms(moment: dt.datetime) -> int:
    """Milliseconds since the epoch of an aware datetime (exact: no float on the way)."""
    if moment.tzinfo is None:
        raise ValueError("a window bound needs a time zone")
    delta = moment.astimezone(dt.UTC) - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    if delta.microseconds % 1000:
        raise ValueError("a window bound is at most millisecond-precise (the ledger keeps ms)")
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


@dataclass(frozen=True)
class WindowSplit:
    """`[start_ms, end_ms)` as whole minutes `[minute_start, minute_end)` (unix seconds; empty when
    equal) plus the raw-row edges `[start_ms, head_end_ms)` and `[tail_start_ms, end_ms)`."""

    start_ms: int
    end_ms: int
    minute_start: int
    minute_end: int
    head_end_ms: int
    tail_start_ms: int

    @property
    def seconds(self) -> Fraction:
        return Fraction(self.end_ms - self.start_ms, 1000)


def split_window(start: dt.datetime, end: dt.datetime) -> WindowSplit:
    start_ms, end_ms = unix_ms(start), unix_ms(end)
    if end_ms <= start_ms:
        raise ValueError("the window must end after it starts")
    first = -(-start_ms // (MINUTE * 1000)) * MINUTE  # ceil to a minute, in seconds
    last = end_ms // (MINUTE * 1000) * MINUTE  # floor
    if first < last:
        return WindowSplit(start_ms, end_ms, first, last, first * 1000, last * 1000)
    # No whole minute inside: every share comes from the raw rows (the tail edge is empty).
    return WindowSplit(start_ms, end_ms, first, first, end_ms, end_ms)


def exact_hashrate(accepted_difficulty: float, seconds: Fraction) -> int:
    """floor(Σ accepted difficulty · 2^32 / seconds), exactly (the float sum is taken as it is)."""
    if seconds <= 0:
        raise ValueError("the window must be longer than 0 seconds")
    if not math.isfinite(accepted_difficulty) or accepted_difficulty < 0:
        raise ValueError(f"bad accepted difficulty {accepted_difficulty!r}")
    return math.floor(Fraction(accepted_difficulty) * HASHES_PER_DIFFICULTY / seconds)


def glob_to_like(pattern: str) -> str:
    """A shell glob (`*`, `?`) as a SQL LIKE pattern, with LIKE's own wildcards taken literally."""
    out = []
    for char in pattern:
        if char in "\\%_":
            out.append("\\" + char)
        elif char == "*":
            out.append("%")
        elif char == "?":
            out.append("_")
        else:
            out.append(char)
    return "".join(out)


# --- workers: Σ accepted difficulty per worker over an exact window -----------------------------------

_WORKERS_SQL = """
SELECT worker, sum(d) AS difficulty
FROM
(
    SELECT worker, accepted_difficulty AS d
    FROM {db}.shares_per_minute
    WHERE minute >= toDateTime({{minute_start:UInt32}}, 'UTC')
      AND minute < toDateTime({{minute_end:UInt32}}, 'UTC')
      AND worker LIKE {{pattern:String}}
    UNION ALL
    SELECT worker, difficulty AS d
    FROM {db}.shares
    WHERE accepted = 1
      AND worker LIKE {{pattern:String}}
      AND ((ts >= fromUnixTimestamp64Milli({{start_ms:Int64}}, 'UTC')
            AND ts < fromUnixTimestamp64Milli({{head_end_ms:Int64}}, 'UTC'))
        OR (ts >= fromUnixTimestamp64Milli({{tail_start_ms:Int64}}, 'UTC')
            AND ts < fromUnixTimestamp64Milli({{end_ms:Int64}}, 'UTC')))
)
GROUP BY worker
HAVING difficulty > 0
ORDER BY worker
{page}
"""


@dataclass(frozen=True)
class WorkerHashrate:
    worker: str
    accepted_difficulty: float
    hashrate: int  # H/s, floor(Σ accepted difficulty · 2^32 / window seconds)


def workers_query(
    database: str,
    window: WindowSplit,
    pattern: str = "*",
    limit: int | None = None,
    offset: int = 0,
) -> tuple[str, dict[str, Any]]:
    """One row per worker matching the glob `pattern` with accepted shares in the window, ordered by
    worker name (byte order), so `limit`/`offset` pages neither overlap nor skip. limit None: all."""
    if limit is not None and limit < 1:
        raise ValueError("limit must be at least 1")
    if offset < 0:
        raise ValueError("offset must be at least 0")
    page = "" if limit is None else "LIMIT {limit:UInt64} OFFSET {offset:UInt64}"
    parameters: dict[str, Any] = {
        "minute_start": window.minute_start,
        "minute_end": window.minute_end,
        "start_ms": window.start_ms,
        "head_end_ms": window.head_end_ms,
        "tail_start_ms": window.tail_start_ms,
        "end_ms": window.end_ms,
        "pattern": glob_to_like(pattern),
    }
    if limit is not None:
        parameters |= {"limit": limit, "offset": offset}
    return _WORKERS_SQL.format(db=database, page=page), parameters


def workers_from_rows(rows: Iterable[Sequence[Any]], window: WindowSplit) -> list[WorkerHashrate]:
    seconds = window.seconds
    return [
        WorkerHashrate(str(worker), float(difficulty), exact_hashrate(float(difficulty), seconds))
        for worker, difficulty in rows
    ]


def ledger_workers(
    client: Any, database: str, start: dt.datetime, end: dt.datetime, pattern: str = "*"
) -> list[WorkerHashrate]:
    """Every matching worker over `[start, end)` on an open (blocking) clickhouse-connect client."""
    window = split_window(start, end)
    sql, parameters = workers_query(database, window, pattern)
    return workers_from_rows(client.query(sql, parameters=parameters).result_rows, window)


# --- coverage: which minutes each proxy was live with a pool -----------------------------------------

_COVERAGE_SQL = """
SELECT proxy_id, toUnixTimestamp(minute) AS m, max(upstream_up) AS up, max(sessions), sum(shares)
FROM {db}.coverage
WHERE minute >= toDateTime({{first:UInt32}}, 'UTC') AND minute < toDateTime({{last:UInt32}}, 'UTC')
GROUP BY proxy_id, minute
ORDER BY proxy_id, m
"""


@dataclass(frozen=True)
class ProxyCoverage:
    """One proxy over a window. A minute is covered when the proxy wrote its coverage row for it and
    a pool was up: then its miners could deliver shares and the ledger saw them. Gaps are the
    uncovered stretches, as `[start, end)` unix seconds clipped to the window."""

    proxy_id: str
    covered_minutes: int
    window_minutes: int  # minutes the window touches
    upstream_down_minutes: int  # minutes the proxy was alive but no pool was up
    covered_seconds: Fraction  # of the window's seconds
    window_seconds: Fraction
    gaps: list[tuple[Fraction, Fraction]]

    @property
    def fraction(self) -> float:
        return float(self.covered_seconds / self.window_seconds)


@dataclass(frozen=True)
class Coverage:
    start_ms: int
    end_ms: int
    proxies: list[ProxyCoverage]

    @property
    def fraction(self) -> float:
        """The least covered proxy's fraction (0 when no proxy wrote anything: nothing to trust)."""
        return min((p.fraction for p in self.proxies), default=0.0)


def coverage_query(database: str, start: dt.datetime, end: dt.datetime) -> tuple[str, dict[str, Any]]:
    start_ms, end_ms = unix_ms(start), unix_ms(end)
    if end_ms <= start_ms:
        raise ValueError("the window must end after it starts")
    first = start_ms // (MINUTE * 1000) * MINUTE
    last = -(-end_ms // (MINUTE * 1000)) * MINUTE
    return _COVERAGE_SQL.format(db=database), {"first": first, "last": last}


def coverage_from_rows(rows: Iterable[Sequence[Any]], start: dt.datetime, end: dt.datetime) -> Coverage:
    start_ms, end_ms = unix_ms(start), unix_ms(end)
    lo, hi = Fraction(start_ms, 1000), Fraction(end_ms, 1000)
    first = start_ms // (MINUTE * 1000) * MINUTE
    last = -(-end_ms // (MINUTE * 1000)) * MINUTE
    minutes = range(first, last, MINUTE)
    up_by_proxy: dict[str, set[int]] = {}
    down_by_proxy: dict[str, set[int]] = {}
    for proxy_id, minute, up, *_ in rows:
        up_by_proxy.setdefault(str(proxy_id), set())
        down_by_proxy.setdefault(str(proxy_id), set())
        (up_by_proxy if int(up) else down_by_proxy)[str(proxy_id)].add(int(minute))
    proxies = []
    for proxy_id in sorted(up_by_proxy):
        covered = up_by_proxy[proxy_id]
        covered_seconds = Fraction(0)
        gaps: list[tuple[Fraction, Fraction]] = []
        for minute in minutes:
            a, b = max(lo, Fraction(minute)), min(hi, Fraction(minute + MINUTE))
            if minute in covered:
                covered_seconds += b - a
            elif gaps and gaps[-1][1] == a:
                gaps[-1] = (gaps[-1][0], b)
            else:
                gaps.append((a, b))
        proxies.append(
            ProxyCoverage(
                proxy_id,
                len(covered & set(minutes)),
                len(minutes),
                len(down_by_proxy[proxy_id] - covered),
                covered_seconds,
                hi - lo,
                gaps,
            )
        )
    return Coverage(start_ms, end_ms, proxies)


def ledger_coverage(client: Any, database: str, start: dt.datetime, end: dt.datetime) -> Coverage:
    """Coverage over `[start, end)` on an open (blocking) clickhouse-connect client."""
    sql, parameters = coverage_query(database, start, end)
    return coverage_from_rows(client.query(sql, parameters=parameters).result_rows, start, end)


def iso(seconds: Fraction | int | float) -> str:
    """Unix seconds as ISO 8601 UTC with `Z` (milliseconds shown only when there are some)."""
    ms = math.floor(Fraction(seconds) * 1000)
    moment = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(milliseconds=ms)
    text = moment.isoformat(timespec="milliseconds" if ms % 1000 else "seconds")
    return text.replace("+00:00", "Z")


def coverage_json(coverage: Coverage) -> dict[str, Any]:
    """The `/api/v1/coverage` body (the scorer reads it back with `coverage_from_json`)."""
    return {
        "start_time": iso(Fraction(coverage.start_ms, 1000)),
        "end_time": iso(Fraction(coverage.end_ms, 1000)),
        "fraction": coverage.fraction,
        "proxies": [
            {
                "proxy_id": p.proxy_id,
                "fraction": p.fraction,
                "covered_minutes": p.covered_minutes,
                "window_minutes": p.window_minutes,
                "upstream_down_minutes": p.upstream_down_minutes,
                "gaps": [[iso(a), iso(b)] for a, b in p.gaps],
            }
            for p in coverage.proxies
        ],
    }
