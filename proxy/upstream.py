"""Pool URLs in priority order, with health and backoff.

Each new ASIC session asks for the best pool: the first URL not in backoff. A failed connection puts
its URL in backoff (exponential, with jitter, capped); a success clears it. So when the primary comes
back, the next sessions use it again while running sessions stay where they are. `on_health` hears
every change of a URL's health (the proxy's `ih_upstream_up` gauge follows it).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

log = logging.getLogger("proxy.upstream")

_SCHEMES = ("stratum+tcp", "stratum", "tcp")


class PoolURLError(ValueError):
    pass


@dataclass(frozen=True)
class PoolURL:
    host: str
    port: int

    @property
    def label(self) -> str:
        """host:port: what metrics and the ledger show (a pool URL carries no secrets we keep)."""
        return f"{self.host}:{self.port}"


def parse_pool_url(url: str) -> PoolURL:
    parts = urlsplit(url if "://" in url else f"stratum+tcp://{url}")
    if parts.scheme not in _SCHEMES:
        raise PoolURLError(f"pool URL must be stratum+tcp://host:port, got scheme {parts.scheme!r}")
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or port is None:
        raise PoolURLError(f"pool URL must be stratum+tcp://host:port, got {url!r}")
    return PoolURL(parts.hostname, port)


@dataclass
class _Health:
    url: PoolURL
    failures: int = 0
    retry_at: float = 0.0  # monotonic time before which this URL is skipped
    down: bool = False  # as last logged: one line per change, not per retry


@dataclass
class Upstreams:
    """The pool URLs in priority order and what we know of their health."""

    urls: list[PoolURL]
    base_backoff: float = 1.0
    max_backoff: float = 60.0
    on_health: Callable[[PoolURL, bool], None] = lambda url, healthy: None  # hears each change of health
    _health: list[_Health] = field(init=False)

    def __post_init__(self) -> None:
        if not self.urls:
            raise PoolURLError("at least one pool URL is needed")
        self._health = [_Health(url) for url in self.urls]

    @classmethod
    def from_strings(cls, urls: tuple[str, ...] | list[str], on_health: Callable[[PoolURL, bool], None]) -> Upstreams:
        return cls([parse_pool_url(u) for u in urls], on_health=on_health)

    def candidates(self, now: float | None = None) -> list[PoolURL]:
        """URLs to try, best first: healthy ones in priority order, then those in backoff (soonest
        retry first) so a session is never refused while some pool might answer."""
        now = time.monotonic() if now is None else now
        healthy = [h.url for h in self._health if h.retry_at <= now]
        waiting = sorted((h for h in self._health if h.retry_at > now), key=lambda h: h.retry_at)
        return healthy + [h.url for h in waiting]

    def wait(self, now: float | None = None) -> float:
        """Seconds until some pool may be tried again: 0 while one is not in backoff."""
        now = time.monotonic() if now is None else now
        return max(0.0, min(h.retry_at for h in self._health) - now)

    def succeeded(self, url: PoolURL) -> None:
        health = self._find(url)
        if health.down:
            log.info("pool %s is up again", url.label)
        health.down = False
        health.failures = 0
        health.retry_at = 0.0
        self.on_health(url, True)

    def failed(self, url: PoolURL, reason: str = "unreachable", now: float | None = None) -> float:
        """Record a failed connection attempt; returns the backoff applied (seconds)."""
        now = time.monotonic() if now is None else now
        health = self._find(url)
        health.failures += 1
        backoff: float = min(self.max_backoff, self.base_backoff * 2.0 ** (health.failures - 1))
        backoff *= random.uniform(0.5, 1.0)  # full jitter's milder cousin: spread, but keep the order
        health.retry_at = now + backoff
        self.on_health(url, False)
        if not health.down:
            health.down = True
            log.warning("pool %s is down: %s (retrying with backoff)", url.label, reason)
        else:
            log.debug("pool %s still unreachable: %s; backing off %.1fs", url.label, reason, backoff)
        return backoff

    def lost(self, url: PoolURL, reason: str) -> None:
        """Every live connection to the pool died: it is down until a connection succeeds."""
        health = self._find(url)
        self.on_health(url, False)
        if not health.down:
            health.down = True
            log.warning("pool %s is down: its last connection was lost (%s)", url.label, reason)

    def is_up(self, url: PoolURL) -> bool:
        return not self._find(url).down

    def is_healthy(self, url: PoolURL, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        return self._find(url).retry_at <= now

    def _find(self, url: PoolURL) -> _Health:
        for health in self._health:
            if health.url == url:
                return health
        raise KeyError(url)
