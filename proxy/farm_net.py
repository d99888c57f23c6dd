"""Farm mode's asyncio layer: accepts ASICs, keeps the hub's upstream pool connections, moves bytes.

Every decision is `proxy.farm.FarmHub`'s; this module feeds it bytes and time, then writes what it
marked dirty (one write per connection per callback), opens the pool connections it asks for (in
`Upstreams` failover order) and closes the ones it retires. Same surface as `StratumProxy`
(start, stop, port, upstreams, sessions), so `ProxyApp` runs either.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import secrets
import time
from typing import Any, cast

from proxy import rounds
from proxy.admission import Admission
from proxy.config import ProxyConfig, parse_host_port
from proxy.farm import FarmASIC, FarmContext, FarmHub, FarmUpstream
from proxy.metrics import ProxyMetrics, reason_label
from proxy.sockets import reset, watch_peer
from proxy.upstream import PoolURL, Upstreams

log = logging.getLogger("proxy.farm")


class _ASICLink(asyncio.Protocol):
    """One ASIC's TCP connection."""

    def __init__(self, proxy: FarmProxy) -> None:
        self.proxy = proxy
        self.transport: asyncio.Transport | None = None
        self.asic: FarmASIC | None = None
        self.peer_ip = ""
        self.closed = False
        self.authorized = False  # told Admission: no longer a shedding candidate
        self._abort: asyncio.TimerHandle | None = None  # the reset of a closed miner that does not read

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio.Transport
        peer = transport.get_extra_info("peername")
        self.peer_ip = peer[0] if peer else "?"
        proxy = self.proxy
        if proxy.admission.admit(self) is not None:
            self.closed = True
            self.transport.abort()
            return
        self.asic = proxy.hub.new_asic(proxy.new_session_id(), time.monotonic())
        proxy.links[self.asic] = self

    def data_received(self, data: bytes) -> None:
        asic = self.asic
        if asic is None or self.closed:
            return
        now = time.monotonic()
        shares = asic.shares_handled
        proxy = self.proxy
        proxy.hub.miner_data(asic, data, now)
        proxy.flush_soon()
        if asic.shares_handled != shares:
            proxy.metrics.proxy_latency.observe(time.monotonic() - now)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._abort is not None:
            self._abort.cancel()
            self._abort = None
        proxy = self.proxy
        if self.asic is not None:
            proxy.links.pop(self.asic, None)
            proxy.hub.asic_gone(self.asic)
        proxy.admission.release(self)
        proxy.flush()

    def close(self, reason: str) -> None:
        if not self.closed:
            self.closed = True
            proxy = self.proxy
            proxy.admission.release(self)
            proxy.metrics.sessions_closed.labels(reason_label(reason)).inc()
            if self.asic is not None and self.asic.misbehaved:
                proxy.admission.strike(self, reason)
            log.info(
                "farm session %s from %s closed: %s", self.asic.session_id if self.asic else "-", self.peer_ip, reason
            )
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.close()
            # Its slot is free now; its socket goes within `close_grace`, read or not (as passthrough).
            grace = self.proxy.config.limits.close_grace
            self._abort = asyncio.get_running_loop().call_later(grace, reset, transport)


class _PoolLink(asyncio.Protocol):
    """One upstream slot's current pool connection."""

    def __init__(self, proxy: FarmProxy, upstream: FarmUpstream, url: PoolURL) -> None:
        self.proxy = proxy
        self.upstream = upstream
        self.url = url
        self.transport: asyncio.Transport | None = None
        self.retired = False  # closed by us: its loss is no failover
        # The pool took the handshake (subscribe, authorize): only then is it healthy again. A pool
        # that accepts TCP and then closes or fails us keeps its backoff growing.
        self.proven = False
        # Our writes to it are paused since (its buffers full: it does not read); see FarmProxy.sweep.
        self.stalled_since: float | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        watch_peer(transport, self.proxy.config.limits.pool_dead_after)

    def data_received(self, data: bytes) -> None:
        if self.proxy.pools.get(self.upstream) is not self:
            return
        now = time.monotonic()
        proxy = self.proxy
        proxy.hub.pool_data(self.upstream, data, now)
        if not self.proven and self.upstream.ready:
            self.proven = True
            proxy.upstreams.succeeded(self.url)
        proxy.flush_soon()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        proxy = self.proxy
        if proxy.pools.get(self.upstream) is not self:
            return
        del proxy.pools[self.upstream]
        # Not when we closed it, nor when the hub retired its slot in this read (a pool that refuses
        # a miner's worker and hangs up is no pool failure: a hostile name must not back it off).
        if not self.retired and not self.upstream.closed and proxy.accepting:
            # Send the slot (and the next ones) to the next pool first: this one just failed us.
            proxy.upstreams.failed(self.url, str(exc) if exc else "closed by the pool")
        proxy.hub.pool_lost(self.upstream, str(exc) if exc else "closed by the pool")
        proxy.flush()

    def pause_writing(self) -> None:
        self.stalled_since = time.monotonic()

    def resume_writing(self) -> None:
        self.stalled_since = None

    def close(self) -> None:
        self.retired = True
        transport = self.transport
        if transport is not None and self.stalled_since is not None:
            reset(transport)  # what it never read would never drain: drop it with the socket
        elif transport is not None and not transport.is_closing():
            transport.close()


class FarmProxy:
    """The Stratum side in farm mode: listener, ASIC links, pool links, limits. Start, then stop."""

    def __init__(self, config: ProxyConfig, ctx: FarmContext, metrics: ProxyMetrics) -> None:
        self.config = config
        self.ctx = ctx
        self.metrics = metrics
        self.upstreams = Upstreams.from_strings(config.upstream, metrics.pool_health, dns_ttl=config.upstream_dns_ttl)
        self.hub = FarmHub(ctx, config.farm_asics_per_upstream)
        self.admission: Admission[_ASICLink] = Admission(config.limits, metrics)  # as passthrough's
        self.links: dict[FarmASIC, _ASICLink] = {}
        self.pools: dict[FarmUpstream, _PoolLink] = {}
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._rounds: rounds.Rounds[FarmASIC] = rounds.Rounds()
        self._round_states: collections.Counter[str] = collections.Counter()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._session_ids = itertools.count(1)
        self._session_prefix = secrets.token_hex(3)
        self._flush_scheduled = False

    @property
    def port(self) -> int:
        assert self._server is not None and self._server.sockets
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def sessions(self) -> int:
        return len(self.admission)

    @property
    def pool_connections(self) -> int:
        """Open upstream connections (the pool sees this many, not one per ASIC)."""
        return len(self.pools)

    async def start(self) -> None:
        host, port = parse_host_port(self.config.listen, "listen")
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _ASICLink(self), host, port, backlog=4096, reuse_address=True, reuse_port=self.config.workers > 1
        )
        self.admission.accepting = True
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="farm-sweeper")
        log.info(
            "farm mode: listening for ASICs on %s:%d, up to %d per pool connection; pools: %s",
            host,
            self.port,
            self.hub.per_upstream,
            ", ".join(u.label for u in self.upstreams.urls),
        )

    @property
    def accepting(self) -> bool:
        return self.admission.accepting

    def new_session_id(self) -> str:
        return f"{self._session_prefix}-{next(self._session_ids)}"

    def spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- moving bytes ------------------------------------------------------------------------------

    def flush_soon(self) -> None:
        """Flush once this loop iteration's reads are handled: the submits of every ASIC on one
        upstream go out in one write, and one journal commit covers every verdict answered."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._scheduled_flush)

    def _scheduled_flush(self) -> None:
        self._flush_scheduled = False
        self.flush()

    def flush(self) -> None:
        """Write what the hub produced, close what it retired, connect what it asked for."""
        hub = self.hub
        if hub.dirty_asics:
            dirty, hub.dirty_asics = hub.dirty_asics, set()
            if any(asic.to_miner for asic in dirty):
                # Journal first: no verdict reaches a miner before its ledger row would survive a SIGKILL.
                self.ctx.commit()
            limit = self.config.limits.max_miner_buffer
            for asic in dirty:
                link = self.links.get(asic)
                if link is None or link.transport is None:
                    asic.to_miner.clear()
                    continue
                if not link.authorized and asic.workers:  # (answered from the pool's read, often)
                    link.authorized = True
                    self.admission.authorized(link)
                if asic.to_miner:
                    if not link.closed:
                        link.transport.write(b"".join(asic.to_miner))
                    asic.to_miner.clear()
                if asic.close_reason is not None:
                    link.close(asic.close_reason)
                elif link.transport.get_write_buffer_size() > limit:
                    asic.close("miner is not reading (write buffer full)")
                    link.close(asic.close_reason or "")
        if hub.dirty_upstreams:
            upstreams, hub.dirty_upstreams = hub.dirty_upstreams, set()
            for upstream in upstreams:
                pool = self.pools.get(upstream)
                if upstream.to_pool and pool is not None and pool.transport is not None:
                    pool.transport.write(b"".join(upstream.to_pool))
                upstream.to_pool.clear()
        if hub.pool_faults:
            faults, hub.pool_faults = hub.pool_faults, []
            for upstream, reason in faults:
                pool = self.pools.get(upstream)
                if pool is not None and self.accepting:
                    self.upstreams.failed(pool.url, reason)
        if hub.closed_upstreams:
            retired, hub.closed_upstreams = hub.closed_upstreams, []
            for upstream in retired:
                pool = self.pools.pop(upstream, None)
                if pool is not None:
                    pool.close()
        if hub.want_connection:
            wanted, hub.want_connection = hub.want_connection, []
            for upstream in wanted:
                self.spawn(self._connect(upstream))

    async def _connect(self, upstream: FarmUpstream) -> None:
        wait = self.upstreams.wait()
        if wait > 0.0:  # every pool failed us lately: wait out the soonest backoff, never hammer one
            await asyncio.sleep(wait)
        for url in self.upstreams.candidates():
            if upstream.closed or not self.accepting:
                upstream.connecting = False
                return
            try:
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow stop()'s cancellation.
                async with asyncio.timeout(self.config.upstream_connect_timeout):
                    _, pool = await self.upstreams.resolver.connect(
                        url,
                        lambda url=url: _PoolLink(self, upstream, url),  # type: ignore[misc]
                    )
            except (TimeoutError, OSError) as exc:
                backoff = self.upstreams.failed(url, str(exc) or "timeout")
                self.metrics.upstream_connects.labels(url.label, "failed").inc()
                log.warning("pool %s unreachable (%s); backing off %.1fs", url.label, exc or "timeout", backoff)
                continue
            self.metrics.upstream_connects.labels(url.label, "ok").inc()  # healthy once it takes the handshake
            link = pool
            if upstream.closed or not self.accepting:
                upstream.connecting = False
                link.close()
                return
            self.pools[upstream] = link
            self.hub.pool_connected(upstream, url.label, time.monotonic())
            self.flush()
            return
        self.hub.pool_unreachable(upstream, "every pool refused or timed out")
        self.flush()

    # --- time --------------------------------------------------------------------------------------

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(rounds.INTERVAL / rounds.SLICES)
            try:
                self.sweep_slice()
            except Exception:  # the sweep must go on: one bad state must not stop every timeout
                log.exception("farm sweep failed")

    def sweep_slice(self) -> None:
        """One slice of the once-a-second sweep (proxy/rounds.py): the first also looks at every
        upstream (tens of them, not thousands), each looks at its share of the ASICs, the last sets
        the sessions gauge."""
        hub = self.hub
        at = time.monotonic()
        part = self._rounds.take(lambda: list(hub.asics))
        if part.first:
            self.admission.strikes.sweep(at)
            hub.expire_upstreams(at)
            self._sweep_pools(at)
            self._round_states.clear()
        hub.expire_asics(part.members, at)
        self._round_states.update(asic.state for asic in part.members if asic.close_reason is None)
        if part.last:
            self.metrics.count_sessions(self._round_states)
        self.flush()

    def _sweep_pools(self, at: float) -> None:
        hub = self.hub
        stall = self.config.limits.max_write_stall
        for upstream, pool in list(self.pools.items()):
            if upstream.closed and not upstream.pending_submits:
                del self.pools[upstream]
                pool.close()
            elif pool.stalled_since is not None and at - pool.stalled_since > stall:
                # A pool that keeps its socket but reads nothing would have every submit of the slot
                # piling up here: it has failed us, like one that hangs up.
                hub.pool_lost(
                    upstream, f"pool is not reading (writes stalled over {stall:.0f} s)", close=True, fault=True
                )

    def in_flight(self) -> int:
        return self.hub.in_flight()

    async def stop(self, grace: float) -> None:
        """Stop accepting, give in-flight shares `grace` seconds for the pool's verdict, then close
        everything (what is still unanswered is recorded as `timeout`)."""
        self.admission.accepting = False
        if self._server is not None:
            self._server.close()
        for link in self.admission.holders:
            if link.transport is not None and not link.transport.is_closing():
                link.transport.pause_reading()
        deadline = time.monotonic() + grace
        while self.in_flight() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for upstream in [*self.hub.upstreams(), *self.pools]:
            upstream.closed = True
            self.hub.pool_lost(upstream, "proxy shutting down", close=True)
        for asic in list(self.hub.asics):
            asic.close("proxy shutting down")
        self.flush()
        for pool in list(self.pools.values()):
            pool.close()
        self.pools.clear()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, *(t for t in [self._sweeper] if t), return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        log.info("farm mode stopped: %d sessions closed", len(self.admission))
