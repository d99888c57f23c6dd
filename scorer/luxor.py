"""Optional cross-check against Luxor's per-worker hashrate API. A report only: never merged into weights.

The endpoint is the one InfiniteHash validators have read:

    GET {base}/pool/workers-hashrate-efficiency/BTC/{subaccount}
        ?start_date=YYYY-MM-DD&end_date=YYYY-MM-DD&tick_size=1h&page_number=N&page_size=100
    Authorization: <API key>

    {"currency_type": "BTC", "start_date": …, "end_date": …, "tick_size": "1h",
     "hashrate_efficiency_revenue": {
         "<worker name>": [{"date_time": "2025-08-25T00:00:00.000Z", "hashrate": "81314993271967",
                            "efficiency": 1, "est_revenue": 1.8e-06}, …]},
     "pagination": {"page_number": 1, "page_size": 100, "item_count": 1,
                    "previous_page_url": null, "next_page_url": null}}

``base`` defaults to ``https://app.luxor.tech/api/v1`` (``…/api/v2`` serves the same shape). The next
page is asked for by number while ``next_page_url`` is set; the URL in the answer is never followed,
so the API key only ever goes to the configured base.

Luxor's figures are hourly averages (``hashrate`` is H/s over the tick). A worker's hashrate over our
window is the sum of the hourly ticks that overlap it divided by the number of those hours (a missing
tick counts as 0), so the comparison is exact for hour-aligned windows and approximate otherwise.
Worker names are those under the subaccount (``<hotkey>.<workerID>``, or the subaccount-qualified
name); the hotkey is the part before the first dot, at most 48 characters (an SS58 address), as the
InfiniteHash validators read it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import aiohttp

from .hashrate import HotkeyStat, Window, parse_time

DEFAULT_LUXOR_URL = "https://app.luxor.tech/api/v1"
TICK = timedelta(hours=1)
SS58_LENGTH = 48


class LuxorError(RuntimeError):
    """The Luxor API could not be read (the message never carries the API key)."""


def hotkey_of_luxor_worker(name: str, subaccount: str) -> str:
    if subaccount and name.startswith(subaccount + "."):
        name = name[len(subaccount) + 1 :]
    return name.split(".", 1)[0][:SS58_LENGTH]


def tick_hours(window: Window) -> list[datetime]:
    """The hourly ticks that overlap the window (their start times)."""
    first = window.start.replace(minute=0, second=0, microsecond=0)
    ticks = []
    t = first
    while t < window.end:
        ticks.append(t)
        t += TICK
    return ticks


def hashrate_by_hotkey(workers: dict[str, list[dict[str, Any]]], window: Window, subaccount: str) -> dict[str, float]:
    """Luxor's per-worker hourly ticks → H/s per hotkey over the window."""
    ticks = tick_hours(window)
    first, slots = ticks[0], len(ticks)
    out: dict[str, float] = {}
    for name, points in workers.items():
        total = 0.0
        for point in points:
            try:
                moment = parse_time(str(point["date_time"]))
                value = float(point["hashrate"])
            except (KeyError, TypeError, ValueError):
                raise LuxorError(f"Luxor: a tick of worker {name!r} has no date_time/hashrate") from None
            if first <= moment < window.end and math.isfinite(value):
                total += value
        hotkey = hotkey_of_luxor_worker(name, subaccount)
        out[hotkey] = out.get(hotkey, 0.0) + total / slots
    return out


class LuxorClient:
    def __init__(
        self,
        api_key: str,
        subaccount: str,
        base_url: str = DEFAULT_LUXOR_URL,
        *,
        timeout: float = 30.0,
        page_size: int = 100,
        max_pages: int = 100,
    ) -> None:
        if not api_key:
            raise ValueError("a Luxor API key is needed for the cross-check")
        if not subaccount:
            raise ValueError("a Luxor subaccount is needed for the cross-check")
        self.api_key = api_key
        self.subaccount = subaccount
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.page_size = page_size
        self.max_pages = max_pages

    def _scrub(self, text: str) -> str:
        return text.replace(self.api_key, "***")

    async def worker_ticks(self, window: Window) -> dict[str, list[dict[str, Any]]]:
        url = f"{self.base_url}/pool/workers-hashrate-efficiency/BTC/{quote(self.subaccount, safe='')}"
        start = window.start.astimezone(UTC)
        end = window.end.astimezone(UTC)
        workers: dict[str, list[dict[str, Any]]] = {}
        headers = {"Authorization": self.api_key}
        try:
            async with aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout), headers=headers
            ) as session:
                for page in range(1, self.max_pages + 1):
                    params = {
                        "start_date": start.date().isoformat(),
                        "end_date": end.date().isoformat(),
                        "tick_size": "1h",
                        "page_number": str(page),
                        "page_size": str(self.page_size),
                    }
                    async with session.get(url, params=params, allow_redirects=False) as response:
                        if response.status != 200:
                            raise LuxorError(f"Luxor API answered HTTP {response.status}")
                        body = await response.json(content_type=None)
                    if not isinstance(body, dict) or not isinstance(body.get("hashrate_efficiency_revenue"), dict):
                        raise LuxorError('Luxor API answered without "hashrate_efficiency_revenue"')
                    for name, points in body["hashrate_efficiency_revenue"].items():
                        if not isinstance(points, list):
                            raise LuxorError(f"Luxor: worker {name!r} has no list of ticks")
                        workers.setdefault(str(name), []).extend(p for p in points if isinstance(p, dict))
                    pagination = body.get("pagination")
                    if not isinstance(pagination, dict) or not pagination.get("next_page_url"):
                        break
                else:
                    raise LuxorError(f"Luxor API still had pages after {self.max_pages}")
        except LuxorError:
            raise
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise LuxorError(self._scrub(f"cannot read the Luxor API: {type(exc).__name__}: {exc}")) from None
        return workers

    async def hashrates(self, window: Window) -> dict[str, float]:
        return hashrate_by_hotkey(await self.worker_ticks(window), window, self.subaccount)


@dataclass(frozen=True)
class Discrepancy:
    hotkey: str
    ours: float
    luxor: float
    ratio: float | None
    """ours / Luxor's (None when Luxor saw nothing)."""
    flagged: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "hotkey": self.hotkey,
            "ours": self.ours,
            "luxor": self.luxor,
            "ratio": self.ratio,
            "flagged": self.flagged,
        }


def discrepancies(ours: dict[str, float], luxor: dict[str, float], threshold: float) -> list[Discrepancy]:
    """Per hotkey seen by either side: flagged when ``|ours/luxor - 1| > threshold`` or one side is 0."""
    out = []
    for hotkey in sorted(set(ours) | set(luxor)):
        a, b = ours.get(hotkey, 0.0), luxor.get(hotkey, 0.0)
        if a <= 0 and b <= 0:
            continue
        ratio = a / b if b > 0 else None
        flagged = ratio is None or abs(ratio - 1.0) > threshold
        out.append(Discrepancy(hotkey, a, b, ratio, flagged))
    out.sort(key=lambda d: (not d.flagged, d.hotkey))
    return out


def ours_by_hotkey(stats: list[HotkeyStat]) -> dict[str, float]:
    return {s.hotkey: s.hashrate for s in stats}
