"""Refuse to score silence: before a pass uses a window's hashrate, check that the proxies were live.

Every proxy writes one coverage row per minute (ledger table `coverage`). A minute counts as covered
for a proxy when it wrote that row with a pool up. The window's coverage is the least covered proxy's
fraction of the window (0 when no proxy wrote anything), so one proxy down for an hour cannot hide
behind others that were up. Below `--min-coverage` (default 0.9) the pass fails with the gaps
named, and no weights are set from it: a miner whose proxy was down is not scored as a miner who
stopped. `--min-coverage 0` turns the check off.

The figures come from the same place as the hashrate: the ledger (`ledger.queries.ledger_coverage`)
or the proxy's `GET /api/v1/coverage`. A proxy that was down for the whole window and wrote nothing
in it is not seen; run the check with a window that such an outage cannot cover silently, or watch
the proxies' own /readyz.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from ledger.queries import iso, ledger_coverage
from ledger.target import LedgerTarget

from .hashrate import Window
from .sources import SourceError, get_json

DEFAULT_MIN_COVERAGE = 0.9


@dataclass(frozen=True)
class ProxyFigure:
    proxy_id: str
    fraction: float
    gaps: list[tuple[str, str]]  # [start, end) ISO 8601


@dataclass(frozen=True)
class WindowCoverage:
    fraction: float
    proxies: list[ProxyFigure]


class CoverageTooLow(RuntimeError):
    """The window is not covered well enough to score (the message says where the gaps are)."""


def verdict(coverage: WindowCoverage, window: Window, minimum: float) -> None:
    """Raises CoverageTooLow when `coverage` is below `minimum`."""
    if coverage.fraction >= minimum:
        return
    where = f"{iso(int(window.start.timestamp()))} .. {iso(int(window.end.timestamp()))}"
    if not coverage.proxies:
        raise CoverageTooLow(
            f"no proxy reported coverage for {where}: not scoring a window the ledger may simply not have seen"
            " (--min-coverage 0 scores it anyway)"
        )
    details = []
    for p in sorted(coverage.proxies, key=lambda p: p.fraction):
        if p.fraction >= minimum:
            continue
        gaps = ", ".join(f"[{a}, {b})" for a, b in p.gaps[:5]) + (" ..." if len(p.gaps) > 5 else "")
        details.append(f"proxy {p.proxy_id!r} covered {p.fraction:.1%}, gaps {gaps}")
    raise CoverageTooLow(
        f"window {where} is covered {coverage.fraction:.1%}, below --min-coverage {minimum:.1%}: "
        + "; ".join(details)
        + ". Not scoring it: silence is not hashrate."
    )


async def from_clickhouse(url: LedgerTarget, window: Window, connect: Any) -> WindowCoverage:
    """Coverage read from the ledger; `connect` opens a blocking clickhouse-connect client."""

    def read() -> WindowCoverage:
        client = connect()
        try:
            coverage = ledger_coverage(client, url.database, window.start, window.end)
        finally:
            client.close()
        return WindowCoverage(
            coverage.fraction,
            [ProxyFigure(p.proxy_id, p.fraction, [(iso(a), iso(b)) for a, b in p.gaps]) for p in coverage.proxies],
        )

    try:
        return await asyncio.to_thread(read)
    except Exception as exc:
        raise SourceError(f"cannot read coverage from ledger {url.redacted()}: {type(exc).__name__}") from None


def coverage_url(proxy_api: str) -> str:
    """`/api/v1/coverage` next to the `--proxy-api` URL (a token in its userinfo is kept)."""
    parts = urlsplit(proxy_api)
    path = parts.path.rstrip("/")
    if path.endswith("/api/v1/workers"):
        path = path[: -len("/workers")]
    elif not path.endswith("/api/v1"):
        path += "/api/v1"
    return f"{parts.scheme}://{parts.netloc}{path}/coverage"


def parse_coverage(body: Any) -> WindowCoverage:
    if not isinstance(body, dict) or not isinstance(body.get("proxies"), list):
        raise SourceError('proxy API coverage answered without a "proxies" list')
    proxies = []
    for p in body["proxies"]:
        try:
            gaps = [(str(a), str(b)) for a, b in p["gaps"]]
            proxies.append(ProxyFigure(str(p["proxy_id"]), float(p["fraction"]), gaps))
        except (KeyError, TypeError, ValueError):
            raise SourceError("proxy API coverage: a proxies entry is malformed") from None
    # Recomputed from the entries, so an answer cannot claim more than its proxies show.
    return WindowCoverage(min((p.fraction for p in proxies), default=0.0), proxies)


async def from_proxy_api(proxy_api: str, window: Window, timeout: float = 30.0) -> WindowCoverage:
    url = coverage_url(proxy_api)
    parts = urlsplit(url)
    shown = f"{parts.scheme}://{parts.hostname}{':' + str(parts.port) if parts.port else ''}{parts.path}"
    params = {"start_time": iso(int(window.start.timestamp())), "end_time": iso(int(window.end.timestamp()))}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        body = await get_json(session, url, params, f"proxy API {shown}", [])
    return parse_coverage(body)


@dataclass(frozen=True)
class CoverageGate:
    """What the scorer runs before a pass: read the coverage, refuse below `minimum`."""

    minimum: float
    clickhouse: LedgerTarget | None = None
    proxy_api: str | None = None
    connect: Any = None  # for clickhouse: the source's own client factory

    async def check(self, window: Window) -> WindowCoverage:
        if self.proxy_api is not None:
            coverage = await from_proxy_api(self.proxy_api, window)
        else:
            assert self.clickhouse is not None
            coverage = await from_clickhouse(self.clickhouse, window, self.connect)
        verdict(coverage, window, self.minimum)
        return coverage
