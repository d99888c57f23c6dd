"""The asyncio layer: accepts ASICs, opens one pool connection per ASIC, and moves bytes.

All decisions live in `MinerSession`; this module frames bytes into lines, feeds the session,
writes what it produced (one write per burst, not per line), and enforces the limits that need a
socket: connection counts, backpressure, timeouts (one sweep per second for all sessions, not a
timer per session).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import secrets
import time
from typing import Any, cast

from protocol.framing import LineFramer
from proxy.config import ProxyConfig, parse_host_port
from proxy.metrics import ProxyMetrics
from proxy.session import MinerSession, SessionContext
from proxy.upstream import PoolURL, Upstreams

log = logging.getLogger("proxy.server")

_SWEEP_INTERVAL = 1.0
_MAX_QUEUED_BEFORE_POOL = 64  # lines a miner may send before its pool connection is up


class MinerConnection(asyncio.Protocol):
    """One ASIC, and through `pool`, its own connection to the pool."""

    def __init__(self, server: StratumProxy) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.pool: PoolConnection | None = None
        self.session: MinerSession | None = None
        self.peer_ip = ""
        self._framer = LineFramer(server.config.limits.max_line)
        self._miner_gone = False
        self._closed = False

    # --- the miner side ----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio.Transport
        peer = transport.get_extra_info("peername")
        self.peer_ip = peer[0] if peer else "?"
        refusal = self.server.admit(self)
        if refusal is not None:
            self.server.metrics.connections_refused.labels(refusal).inc()
            log.info("refused connection from %s: %s", self.peer_ip, refusal)
            self._closed = True
            self.transport.abort()
            return
        self.session = self.server.new_session()
        self.server.metrics.connections_total.inc()
        self.server.spawn(self._connect_pool())

    def data_received(self, data: bytes) -> None:
        session = self.session
        if session is None or self._closed:
            return
        now = time.monotonic()
        shares = session.shares_handled
        for line in self._framer.feed(data):
            session.miner_line(line, now)
            if session.close_reason is not None:
                break
        self.flush()
        if session.shares_handled != shares:
            self.server.metrics.proxy_latency.observe(time.monotonic() - now)

    def connection_lost(self, exc: Exception | None) -> None:
        self._miner_gone = True
        if self.session is not None and self.session.close_reason is None:
            self.session.close("miner disconnected")
        # Shares already forwarded still get the pool's verdict and reach the ledger: keep the pool
        # connection until they are answered (or time out).
        if self.session is None or not self.session.pending_submits:
            self._close_pool()
        self.server.forget(self)

    def pause_writing(self) -> None:
        # The miner is not reading: stop reading from its pool until it catches up.
        if self.pool is not None and self.pool.transport is not None:
            self.pool.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.pool is not None and self.pool.transport is not None:
            self.pool.transport.resume_reading()

    # --- the pool side -----------------------------------------------------------------------------

    async def _connect_pool(self) -> None:
        server = self.server
        loop = asyncio.get_running_loop()
        for url in server.upstreams.candidates():
            if self._closed:
                return
            try:
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow the cancellation that
                # stop() sends, and shutdown would wait on this task forever.
                async with asyncio.timeout(server.config.upstream_connect_timeout):
                    _, pool = await loop.create_connection(lambda: PoolConnection(self), url.host, url.port)
            except (TimeoutError, OSError) as exc:
                backoff = server.upstreams.failed(url)
                server.metrics.upstream_connects.labels(url.label, "failed").inc()
                server.metrics.upstream_up.labels(url.label).set(0)
                log.warning("pool %s unreachable (%s); backing off %.1fs", url.label, exc or "timeout", backoff)
                continue
            server.upstreams.succeeded(url)
            server.metrics.upstream_connects.labels(url.label, "ok").inc()
            server.metrics.upstream_up.labels(url.label).set(1)
            if self._closed:
                pool.transport_close()
                return
            self._pool_ready(pool, url)
            return
        if self.session is not None:
            self.session.close("no pool reachable")
        self.flush()

    def _pool_ready(self, pool: PoolConnection, url: PoolURL) -> None:
        self.pool = pool
        assert self.session is not None
        self.session.upstream = url.label
        self.flush()

    def pool_lost(self, exc: Exception | None) -> None:
        self.pool = None
        session = self.session
        if session is None:
            return
        if session.close_reason is None or session.pending_submits:
            session.pool_lost(str(exc) if exc else "closed by the pool")
        self.flush()

    # --- moving bytes ------------------------------------------------------------------------------

    def flush(self) -> None:
        """Write what the session produced, then act on a close decision."""
        session = self.session
        if session is None:
            return
        if session.to_miner:
            # Journal first: no verdict reaches a miner before its ledger row would survive a SIGKILL.
            self.server.ctx.commit()
            if self.transport is not None and not self._miner_gone:
                self.transport.write(b"".join(session.to_miner))
            session.to_miner.clear()
        if session.to_pool:
            pool = self.pool
            if pool is not None and pool.transport is not None:
                pool.transport.write(b"".join(session.to_pool))
                session.to_pool.clear()
            elif len(session.to_pool) > _MAX_QUEUED_BEFORE_POOL:
                session.close("too many requests before the pool connection was up")
        if session.close_reason is not None:
            self._close(session.close_reason)
        elif (
            self.transport is not None
            and self.transport.get_write_buffer_size() > self.server.config.limits.max_miner_buffer
        ):
            session.close("miner is not reading (write buffer full)")
            self._close(session.close_reason or "")

    def _close(self, reason: str) -> None:
        if not self._closed:
            self._closed = True
            self.server.metrics.sessions_closed.labels(_reason_label(reason)).inc()
            log.info(
                "session %s from %s closed: %s", self.session.session_id if self.session else "-", self.peer_ip, reason
            )
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
        if self.session is None or not self.session.pending_submits:
            self._close_pool()

    def _close_pool(self) -> None:
        if self.pool is not None:
            self.pool.transport_close()

    def sweep(self, now: float) -> None:
        session = self.session
        if session is None:
            return
        session.expire(now)
        # Most sessions have nothing to say once a second: only flush the ones that do.
        if session.to_miner or session.to_pool or session.close_reason is not None:
            self.flush()
        if self._closed and not session.pending_submits:
            self._close_pool()


class PoolConnection(asyncio.Protocol):
    """The pool side of one session."""

    def __init__(self, miner: MinerConnection) -> None:
        self.miner = miner
        self.transport: asyncio.Transport | None = None
        self._framer = LineFramer(miner.server.config.limits.max_line)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        session = self.miner.session
        if session is None:
            return
        now = time.monotonic()
        shares = session.shares_handled
        for line in self._framer.feed(data):
            session.pool_line(line, now)
        self.miner.flush()
        if session.shares_handled != shares:
            self.miner.server.metrics.proxy_latency.observe(time.monotonic() - now)
        if self.miner._closed and not session.pending_submits:
            self.transport_close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.miner.pool_lost(exc)

    def pause_writing(self) -> None:
        if self.miner.transport is not None:
            self.miner.transport.pause_reading()

    def resume_writing(self) -> None:
        # (Not while shutting down: then miners stay paused so no new share starts.)
        if self.miner.transport is not None and not self.miner._closed and self.miner.server.accepting:
            self.miner.transport.resume_reading()

    def transport_close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


def _reason_label(reason: str) -> str:
    """A bounded label for metrics: the reason up to its first detail."""
    return reason.split("(")[0].split(":")[0].strip()[:48] or "unknown"


class StratumProxy:
    """The Stratum side of the proxy: listener, sessions, limits. Start, then stop."""

    def __init__(self, config: ProxyConfig, ctx: SessionContext, metrics: ProxyMetrics) -> None:
        self.config = config
        self.ctx = ctx
        self.metrics = metrics
        self.upstreams = Upstreams.from_strings(config.upstream)
        self._connections: set[MinerConnection] = set()
        self._draining: set[MinerConnection] = set()  # closed by the miner, shares still in flight
        self._per_ip: collections.Counter[str] = collections.Counter()
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._session_ids = itertools.count(1)
        self._session_prefix = secrets.token_hex(3)
        self.accepting = False

    @property
    def port(self) -> int:
        assert self._server is not None and self._server.sockets
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def sessions(self) -> int:
        return len(self._connections)

    async def start(self) -> None:
        host, port = parse_host_port(self.config.listen, "listen")
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: MinerConnection(self), host, port, backlog=4096, reuse_address=True
        )
        self.accepting = True
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="session-sweeper")
        log.info(
            "listening for ASICs on %s:%d; pools: %s", host, self.port, ", ".join(u.label for u in self.upstreams.urls)
        )

    def admit(self, connection: MinerConnection) -> str | None:
        """Why a new connection is refused, or None to admit it."""
        limits = self.config.limits
        if not self.accepting:
            return "shutting down"
        if len(self._connections) >= limits.max_sessions:
            return "too many sessions"
        if self._per_ip[connection.peer_ip] >= limits.max_sessions_per_ip:
            return "too many sessions from one address"
        self._connections.add(connection)
        self._per_ip[connection.peer_ip] += 1
        return None

    def forget(self, connection: MinerConnection) -> None:
        if connection in self._connections:
            self._connections.discard(connection)
            self._per_ip[connection.peer_ip] -= 1
            if self._per_ip[connection.peer_ip] <= 0:
                del self._per_ip[connection.peer_ip]
        if connection.session is not None and connection.session.pending_submits:
            # The miner left with shares in flight: keep sweeping until the pool answers them.
            self._draining.add(connection)

    def new_session(self) -> MinerSession:
        session_id = f"{self._session_prefix}-{next(self._session_ids)}"
        return MinerSession(self.ctx, session_id, "", time.monotonic())

    def spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(_SWEEP_INTERVAL)
            self.sweep()

    def sweep(self) -> None:
        now = time.monotonic()
        states: collections.Counter[str] = collections.Counter()
        for connection in list(self._connections) + list(self._draining):
            try:
                connection.sweep(now)
            except Exception:  # one broken session must not stop the sweep for everyone
                log.exception("sweep failed for a session; closing it")
                connection._close("internal error")
            if connection.session is not None and connection in self._connections:
                states[connection.session.state] += 1
        self._draining = {c for c in self._draining if c.session is not None and c.session.pending_submits}
        for state in ("handshake", "subscribed", "mining"):
            self.metrics.sessions.labels(state).set(states[state])

    def in_flight(self) -> int:
        return sum(c.session.pending_submits for c in self._connections | self._draining if c.session)

    async def stop(self, grace: float) -> None:
        """Stop accepting, give in-flight submits `grace` seconds for the pool's verdict, then close
        every session (what is still unanswered is recorded as `timeout`)."""
        self.accepting = False
        if self._server is not None:
            self._server.close()
        # No new shares from here on (they wait unread in the kernel and die with the connection,
        # never having reached the pool); the ones in flight get their verdict and their ledger row.
        for connection in self._connections:
            if connection.transport is not None and not connection.transport.is_closing():
                connection.transport.pause_reading()
        deadline = time.monotonic() + grace
        while self.in_flight() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for connection in list(self._connections | self._draining):
            if connection.session is not None:
                connection.session.pool_lost("proxy shutting down")
                connection.flush()
            connection._close("proxy shutting down")
            connection._close_pool()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, *(t for t in [self._sweeper] if t), return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        log.info("stopped: %d sessions closed", len(self._connections))
