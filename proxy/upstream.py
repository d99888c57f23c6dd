"""Pool URLs in priority order, with health and backoff.

Each new ASIC session asks for the best pool: the first URL not in backoff. A failed connection puts
its URL in backoff (exponential, with jitter, capped); a success clears it. So when the primary comes
back, the next sessions use it again while running sessions stay where they are. `on_health` hears
every change of a URL's health (the proxy's `ih_upstream_up` gauge follows it). `Resolver` opens
the connections, each pool host looked up once a DNS_TTL for all of them.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar
from urllib.parse import urlsplit

log = logging.getLogger("proxy.upstream")

_SCHEMES = ("stratum+tcp", "stratum", "tcp")
DNS_TTL = 60.0  # seconds a pool host's looked-up address serves every new connection
P = TypeVar("P", bound=asyncio.BaseProtocol)


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


class Resolver:
    """Connections to the pools, with each pool host looked up once a DNS_TTL for all of them rather
    than once per connection: glibc caches nothing, and each lookup takes a thread of libuv's pool of
    four, so 9,000 ASICs reconnecting at once were 9,000 DNS queries (even `localhost`, from
    /etc/hosts, cost ~60 µs of CPU per connection, measured). Lookups of one host at once share one;
    a failed lookup is not kept; a host whose every address refused is looked up again next time."""

    def __init__(self, ttl: float = DNS_TTL) -> None:
        self.ttl = ttl
        self.lookups = 0  # done, for the tests
        self._known: dict[PoolURL, tuple[float, list[str]]] = {}  # url -> (monotonic expiry, addresses)
        self._pending: dict[PoolURL, asyncio.Task[list[str]]] = {}

    async def connect(self, url: PoolURL, protocol: Callable[[], P]) -> tuple[asyncio.Transport, P]:
        """`loop.create_connection` to the first of the host's addresses that takes it, as it would
        do given the host name. Raises OSError: the host does not resolve, or the last refusal."""
        loop = asyncio.get_running_loop()
        refused: OSError | None = None
        for address in await self.addresses(url):
            try:
                return await loop.create_connection(protocol, address, url.port)
            except OSError as exc:
                refused = exc
        self.forget(url)
        raise refused or OSError(f"{url.host}: no address")

    async def addresses(self, url: PoolURL) -> list[str]:
        """The host's addresses (the host itself when it is an IP address), in getaddrinfo's order."""
        known = self._known.get(url)
        if known is not None and known[0] > time.monotonic():
            return known[1]
        if _is_ip(url.host):
            self._known[url] = (float("inf"), [url.host])
            return [url.host]
        lookup = self._pending.get(url)
        if lookup is None:
            lookup = self._pending[url] = asyncio.get_running_loop().create_task(self._look_up(url))
            lookup.add_done_callback(_retrieved)  # every waiter may have timed out meanwhile
        # shield: a connection that times out stops waiting; the lookup goes on for the others.
        return await asyncio.shield(lookup)

    def forget(self, url: PoolURL) -> None:
        self._known.pop(url, None)

    async def _look_up(self, url: PoolURL) -> list[str]:
        try:
            self.lookups += 1
            infos = await asyncio.get_running_loop().getaddrinfo(url.host, url.port, type=socket.SOCK_STREAM)
            addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
            if not addresses:
                raise socket.gaierror(socket.EAI_NONAME, f"{url.host}: no address")
            self._known[url] = (time.monotonic() + self.ttl, addresses)
            return addresses
        finally:
            del self._pending[url]


def _retrieved(task: asyncio.Task[list[str]]) -> None:
    if not task.cancelled():
        task.exception()  # its waiters have it; asyncio need not log it as never retrieved


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


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
    resolver: Resolver = field(default_factory=Resolver)  # opens every pool connection
    _health: list[_Health] = field(init=False)

    def __post_init__(self) -> None:
        if not self.urls:
            raise PoolURLError("at least one pool URL is needed")
        self._health = [_Health(url) for url in self.urls]

    @classmethod
    def from_strings(
        cls, urls: tuple[str, ...] | list[str], on_health: Callable[[PoolURL, bool], None], dns_ttl: float = DNS_TTL
    ) -> Upstreams:
        return cls([parse_pool_url(u) for u in urls], on_health=on_health, resolver=Resolver(dns_ttl))

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
