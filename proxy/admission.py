"""Who may hold an ASIC session slot: one place for the limits every listener applies at accept.

Passthrough (`proxy.server`) and farm mode (`proxy.farm_net`) admit a connection through the same
`Admission`: not while shutting down, not from an address refused for abuse (`AddressStrikes`), at
most `max_sessions_per_ip` per address and `session_limit` in all. At the limit the oldest session
that never authorized is shed to make room, so idle sockets can never keep an honest miner out.
"""

from __future__ import annotations

import collections
import ipaddress
import logging
import resource
import time
from typing import Generic, Protocol, TypeVar

from proxy.config import Limits
from proxy.metrics import ProxyMetrics

log = logging.getLogger("proxy.admission")

ABUSE = "address refused: its sessions were closed for abuse"  # a refusal logged per address, not per connection
SHED = "shed: the proxy is full and this session never authorized"


def session_limit(limits: Limits) -> int:
    """`max_sessions`, or when 0 what the open-file limit allows: each session holds two fds (miner,
    pool); a tenth of the limit (at least 64) stays for the ledger, the spool, HTTP and the listener."""
    if limits.max_sessions > 0:
        return limits.max_sessions
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(16, (soft - max(64, soft // 10)) // 2)


def address_key(ip: str) -> str:
    """What limits and strikes count against: the address, an IPv6 one by its /64 (one host's whole
    range: a host given a /64 picks a new source address per connection at no cost)."""
    if ":" not in ip:
        return ip
    try:
        address = ipaddress.IPv6Address(ip.split("%")[0])
    except ValueError:
        return ip
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(ipaddress.IPv6Network((address, 64), strict=False))


class AddressStrikes:
    """Sessions closed for abuse, per source address, outliving the sessions: a flooder that is closed
    and reconnects at once with a fresh budget pays for it here. At `address_strike_limit` strikes
    (each forgiven after `address_strike_forgiven_after` seconds) new connections from the address are
    refused at accept, before any read or pool connection, until one strike is forgiven. Only closes
    for what a session sent count, so many honest sessions behind one NAT address never collect any.
    One log line and a gauge change when an address starts or stops being refused, never per connection."""

    MAX_ADDRESSES = 65_536  # addresses remembered at most; the oldest striked is forgotten first

    def __init__(self, limits: Limits, metrics: ProxyMetrics) -> None:
        self.limit = limits.address_strike_limit
        self.forgiven_after = limits.address_strike_forgiven_after
        self.metrics = metrics
        self._strikes: dict[str, tuple[float, float]] = {}  # key → (strikes, as of when: monotonic)
        self.refused: set[str] = set()

    def _decayed(self, key: str, now: float) -> float:
        strikes, at = self._strikes.get(key, (0.0, now))
        return max(0.0, strikes - (now - at) / self.forgiven_after)

    def strike(self, ip: str, reason: str, now: float) -> None:
        """A session from `ip` was closed for `reason` (logged without its figures in parentheses)."""
        if self.limit <= 0:
            return
        reason = reason.split("(")[0].strip()
        key = address_key(ip)
        strikes = self._decayed(key, now) + 1.0
        self._strikes.pop(key, None)
        self._strikes[key] = (strikes, now)  # re-inserted: the dict stays ordered by last strike
        if len(self._strikes) > self.MAX_ADDRESSES:
            self._forget(next(iter(self._strikes)))
        self.metrics.address_strikes.inc()
        if strikes > self.limit - 1 and key not in self.refused:  # the limit-th strike, less what decayed since
            self.refused.add(key)
            self.metrics.addresses_refused.set(len(self.refused))
            log.warning(
                "refusing new connections from %s: %.0f strikes not yet forgiven, for sessions closed for abuse "
                "(last: %s); its open sessions stay",
                key,
                strikes,
                reason,
            )

    def refuses(self, ip: str, now: float) -> bool:
        """Whether a new connection from `ip` is refused (cheap: most addresses have no strike)."""
        if not self.refused:
            return False
        key = address_key(ip)
        if key not in self.refused:
            return False
        if self._decayed(key, now) > self.limit - 1:
            return True
        self._pardon(key)
        return False

    def sweep(self, now: float) -> None:
        """Forget addresses whose strikes are all forgiven; pardon refused ones with one forgiven."""
        for key in [k for k in self.refused if self._decayed(k, now) <= self.limit - 1]:
            self._pardon(key)
        for key in [k for k in self._strikes if self._decayed(k, now) <= 0.0]:
            del self._strikes[key]

    def _pardon(self, key: str) -> None:
        self.refused.discard(key)
        self.metrics.addresses_refused.set(len(self.refused))
        log.info("accepting new connections from %s again: a strike was forgiven", key)

    def _forget(self, key: str) -> None:
        del self._strikes[key]
        if key in self.refused:
            self._pardon(key)


class Holder(Protocol):
    """A connection that may hold a slot: where it comes from, and how it is told to go."""

    peer_ip: str

    def close(self, reason: str) -> None: ...


H = TypeVar("H", bound=Holder)


class Admission(Generic[H]):
    """The session slots of one listener, oldest first; the never-authorized ones are shed first."""

    def __init__(self, limits: Limits, metrics: ProxyMetrics) -> None:
        self.limits = limits
        self.metrics = metrics
        self.max_sessions = session_limit(limits)
        self.strikes = AddressStrikes(limits, metrics)
        self.accepting = False
        self.holders: dict[H, None] = {}  # holding a slot, oldest first
        self._never_authorized: dict[H, None] = {}  # the subset that never authorized, oldest first
        self._per_ip: collections.Counter[str] = collections.Counter()

    def __len__(self) -> int:
        return len(self.holders)

    def admit(self, holder: H) -> str | None:
        """Why a new connection is refused (counted, and logged unless it is `ABUSE`), or None when it
        holds a slot now."""
        refusal = self._refusal(holder)
        if refusal is not None:
            self.metrics.connections_refused.labels(refusal).inc()
            if refusal is not ABUSE:  # an address refused for abuse is logged once, not per connection
                log.info("refused connection from %s: %s", holder.peer_ip, refusal)
            return refusal
        self.holders[holder] = None
        self._never_authorized[holder] = None
        self._per_ip[address_key(holder.peer_ip)] += 1
        self.metrics.connections_total.inc()
        return None

    def _refusal(self, holder: H) -> str | None:
        if not self.accepting:
            return "shutting down"
        if self.strikes.refuses(holder.peer_ip, time.monotonic()):
            return ABUSE
        if self._per_ip[address_key(holder.peer_ip)] >= self.limits.max_sessions_per_ip:
            return "too many sessions from one address"
        if len(self.holders) >= self.max_sessions:
            if not self._never_authorized:
                return "too many sessions"
            oldest = next(iter(self._never_authorized))
            self.release(oldest)
            self.metrics.connections_refused.labels("shed").inc()
            oldest.close(SHED)
        return None

    def authorized(self, holder: H) -> None:
        """It authorized a worker: no longer the first to be shed."""
        self._never_authorized.pop(holder, None)

    def release(self, holder: H) -> None:
        """Its slot is free (at its close decision, not when its sockets are finally gone). Idempotent."""
        if self.holders.pop(holder, False) is None:
            self._never_authorized.pop(holder, None)
            key = address_key(holder.peer_ip)
            self._per_ip[key] -= 1
            if self._per_ip[key] <= 0:
                del self._per_ip[key]

    def strike(self, holder: H, reason: str) -> None:
        """It was closed for what it sent: its address pays."""
        self.strikes.strike(holder.peer_ip, reason, time.monotonic())
