"""The network layer: one `Rig` per ASIC owns both sockets and its session; one `Server` runs them.

All decisions live in `MinerSession` (proxy/session.py); a `Rig` moves bytes between the sockets and
its session, hands the session's verdicts to the shared `VerdictSink`, and carries out what the
session decided (close, throttle). The two `asyncio.Protocol` classes are shims that forward every
callback to their rig. Rigs share a `ServerState` (limits, counters, upstreams, the verdict sink),
never the server itself; nothing calls another class's private members.

Life of a rig: accepted (a slot) → the first valid request opens its pool connection → mining →
the close decision releases its slot at once, closes the miner (aborted after `close_grace` if it
does not read) and the pool connection (once the shares in flight have their verdicts).
"""

from __future__ import annotations

import asyncio
import collections
import errno
import itertools
import logging
import resource
import secrets
import time
from collections.abc import Callable
from typing import Any, cast

from proxy import rounds
from proxy.admission import Admission
from proxy.config import ProxyConfig, parse_host_port
from proxy.metrics import ProxyMetrics, reason_label
from proxy.session import Instant, MinerSession, SessionRules
from proxy.sockets import reset, watch_peer
from proxy.upstream import PoolURL, Upstreams
from proxy.verdicts import VerdictSink

log = logging.getLogger("proxy.server")

# Errors of this machine, not of the pool: no backoff for the pool, a clear reason for the miner.
_LOCAL_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.EADDRNOTAVAIL})


def now() -> Instant:
    return Instant(time.monotonic(), time.time())


class ServerState:
    """What every rig of one server shares."""

    def __init__(
        self,
        config: ProxyConfig,
        rules: SessionRules,
        sink: VerdictSink,
        metrics: ProxyMetrics,
        upstreams: Upstreams,
    ) -> None:
        self.config = config
        self.limits = config.limits
        self.rules = rules
        self.sink = sink
        self.metrics = metrics
        self.upstreams = upstreams
        self.admission: Admission[Rig] = Admission(config.limits, metrics)
        self.draining: set[Rig] = set()  # closed, shares still in flight to the pool
        self.live_pools: collections.Counter[PoolURL] = collections.Counter()
        self.tasks: set[asyncio.Task[Any]] = set()
        # Rigs with bytes for their pool, and for their miner, written once this loop iteration's
        # reads are handled. The pool's: still one send per connection, but back to back instead of
        # one between every two shares' Python work. Each share's own send was the share path's
        # costliest line (py-spy: 22 % of the loop), most of it the kernel waking the receiver (in
        # the benchmark the pool, a process on the other core, asleep again between two sends);
        # back to back, the first wakes it and the rest find it awake. Closed loop, 1,000 sessions,
        # ten alternated pairs in three sittings: nine cheaper, 110-153 → 100-122 µs per share (one
        # 110 → 114), the loop's system time 35-41 → 27-31 µs. A remote pool has no such wake-up:
        # expect less there. The miner's: after the iteration's rows are journaled, one journal
        # write for every share answered in it, not one per share.
        self._sending: list[Rig] = []
        self._answering: list[Rig] = []
        self._writes_scheduled = False
        self._ids = itertools.count(1)
        self._prefix = secrets.token_hex(3)

    def new_session(self, at: Instant) -> MinerSession:
        return MinerSession(self.rules, f"{self._prefix}-{next(self._ids)}", "", at)

    @property
    def rigs(self) -> dict[Rig, None]:
        """The rigs holding a slot, oldest first."""
        return self.admission.holders

    @property
    def accepting(self) -> bool:
        return self.admission.accepting

    def send_later(self, rig: Rig) -> None:
        self._sending.append(rig)
        self._schedule_writes()

    def answer_later(self, rig: Rig) -> None:
        self._answering.append(rig)
        self._schedule_writes()

    def _schedule_writes(self) -> None:
        if not self._writes_scheduled:
            self._writes_scheduled = True
            asyncio.get_running_loop().call_soon(self.write_all)

    def write_all(self) -> None:
        """The iteration's writes: the pools' first (every share's round trip starts now), then the
        miners' (see answer)."""
        self._writes_scheduled = False
        rigs, self._sending = self._sending, []
        for rig in rigs:
            rig.write_pool()
        self.answer()

    def answer(self) -> None:
        """Journal every row recorded so far, then write what the rigs have for their miners: no
        verdict reaches a miner before its ledger row would survive a SIGKILL."""
        rigs, self._answering = self._answering, []
        self.sink.commit()
        for rig in rigs:
            rig.write_miner()

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    # --- the pools' state, as operators see it -----------------------------------------------------

    def pool_connected(self, url: PoolURL) -> None:
        self.live_pools[url] += 1
        self.metrics.upstream_connects.labels(url.label, "ok").inc()

    def pool_spoke(self, url: PoolURL) -> None:
        """The pool sent its first bytes on a connection: healthy (a TCP connect alone is not)."""
        self.upstreams.succeeded(url)

    def pool_failed(self, url: PoolURL, reason: str) -> None:
        """A connection attempt the pool did not take."""
        self.upstreams.failed(url, reason)
        self.metrics.upstream_connects.labels(url.label, "failed").inc()

    def pool_closed(self, url: PoolURL, reason: str | None, *, spoke: bool) -> None:
        """A live pool connection ended; `reason` set when the pool (not we) ended it. Ended by the
        pool before it said a word (a load balancer with no pool behind it accepts and hangs up), the
        pool is backed off like an unreachable one, so new sessions go to the next pool."""
        if reason is not None and not spoke:
            self.upstreams.failed(url, f"closed before it answered ({reason})")
        self.live_pools[url] -= 1
        if self.live_pools[url] <= 0:
            del self.live_pools[url]
            if reason is not None:  # the last live connection died: the pool is down until one succeeds
                self.upstreams.lost(url, reason)


class Rig:
    """One ASIC: its socket, its pool connection, its session."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.miner: asyncio.Transport | None = None
        self.pool: asyncio.Transport | None = None
        self.pool_url: PoolURL | None = None
        self.session: MinerSession | None = None
        self.peer_ip = "?"
        self.peer = "?"
        self.closed = False
        self._miner_gone = False
        self._pool_closing = False  # we closed the pool connection ourselves
        self._pool_spoke = False  # the current pool connection has sent bytes (ServerState.pool_spoke)
        self._connecting: asyncio.Task[None] | None = None
        self._miner_paused: set[str] = set()  # why we are not reading the miner: pool, cost, shutdown
        self._resume: asyncio.TimerHandle | None = None
        self._abort: asyncio.TimerHandle | None = None
        self._stalled_since: float | None = None  # the miner's write buffer is full since
        self._unauthorized = True  # among Admission's never-authorized (a shedding candidate)
        self._for_miner: list[bytes] = []  # waiting for ServerState.answer
        self._for_pool: list[bytes] = []  # waiting for ServerState.write_all

    # --- the miner side ----------------------------------------------------------------------------

    def miner_connected(self, transport: asyncio.BaseTransport) -> None:
        self.miner = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio.Transport
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer_ip, self.peer = peer[0], f"{peer[0]}:{peer[1]}"
        state = self.state
        if state.admission.admit(self) is not None:
            self.closed = True
            self.miner.abort()
            return
        self.session = state.new_session(now())

    def miner_data(self, data: bytes) -> None:
        session = self.session
        if session is None or self.closed:
            return
        at = now()
        shares = session.shares_handled
        session.receive_miner(data, at)
        if session.spoken and self._connecting is None and not self.closed:
            # The first valid request: only now is a pool connection worth its fd.
            self._connecting = self.state.spawn(self._connect_pool())
        self.flush()
        if session.shares_handled != shares:
            self.state.metrics.proxy_latency.observe(time.monotonic() - at.mono)
        wait = session.throttle(at.mono)
        if wait > 0.0 and not self.closed:
            self._pause_miner("cost")
            if self._resume is None:
                self._resume = asyncio.get_running_loop().call_later(wait, self._cost_decayed)

    def _cost_decayed(self) -> None:
        self._resume = None
        session = self.session
        if session is None or self.closed:
            return
        wait = session.throttle(time.monotonic())
        if wait > 0.0:
            self._resume = asyncio.get_running_loop().call_later(wait, self._cost_decayed)
            return
        if session.waiting:  # lines of an earlier read the soft limit stopped: they come first
            self.miner_data(b"")
            if self.closed or self._resume is not None:
                return
        self._resume_miner("cost")

    def miner_lost(self, exc: Exception | None) -> None:
        self._miner_gone = True
        if self._abort is not None:
            self._abort.cancel()
            self._abort = None
        if self.session is not None and not self.closed:
            self.session.close("miner disconnected")
            self.flush()

    def miner_stalled(self) -> None:
        """The miner does not read: stop reading its pool until it catches up."""
        self._stalled_since = time.monotonic()
        if self.pool is not None:
            self.pool.pause_reading()

    def miner_unstalled(self) -> None:
        self._stalled_since = None
        if self.pool is not None:
            self.pool.resume_reading()

    def _pause_miner(self, why: str) -> None:
        if not self._miner_paused and self.miner is not None and not self.miner.is_closing():
            self.miner.pause_reading()
        self._miner_paused.add(why)

    def _resume_miner(self, why: str) -> None:
        self._miner_paused.discard(why)
        if not self._miner_paused and self.miner is not None and not self.miner.is_closing() and not self.closed:
            self.miner.resume_reading()

    # --- the pool side -----------------------------------------------------------------------------

    async def _connect_pool(self) -> None:
        state = self.state
        for url in state.upstreams.candidates():
            if self.closed:
                return
            try:
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow the cancellation that
                # shutdown sends, and it would wait on this task forever.
                async with asyncio.timeout(state.config.upstream_connect_timeout):
                    transport, _ = await state.upstreams.resolver.connect(url, lambda: PoolProtocol(self))
            except OSError as exc:
                if exc.errno in _LOCAL_ERRNOS:
                    # This machine ran out of something (fds, buffers): not the pool's fault.
                    state.metrics.upstream_connects.labels(url.label, "local-error").inc()
                    log.error("cannot open a pool connection: %s (the pool is not to blame)", exc)
                    self._pool_unreachable(f"the proxy is out of resources ({exc.strerror or exc})")
                    return
                state.pool_failed(url, str(exc) or type(exc).__name__)
                continue
            except TimeoutError:
                state.pool_failed(url, "connect timeout")
                continue
            state.pool_connected(url)
            watch_peer(transport, state.limits.pool_dead_after)
            self.pool = transport
            self.pool_url = url  # from here on, pool_lost counts this connection out
            self._pool_spoke = False
            if self.closed:
                self._close_pool()
                return
            if self.session is not None:
                self.session.upstream = url.label
            self.flush()
            return
        self._pool_unreachable("no pool reachable")

    def _pool_unreachable(self, reason: str) -> None:
        if self.session is not None:
            self.session.pool_lost(reason, now())
        self.flush()

    def pool_data(self, data: bytes) -> None:
        session = self.session
        if session is None:
            return
        if not self._pool_spoke and self.pool_url is not None:
            self._pool_spoke = True
            self.state.pool_spoke(self.pool_url)
        at = now()
        shares = session.shares_handled
        session.receive_pool(data, at)
        self.flush()
        if session.shares_handled != shares:
            self.state.metrics.proxy_latency.observe(time.monotonic() - at.mono)
        if self.closed and not session.pending_submits:
            self._close_pool()

    def pool_lost(self, exc: Exception | None) -> None:
        self.pool = None
        self._for_pool.clear()  # for a connection that is gone: the session answers what was in flight
        url, self.pool_url = self.pool_url, None
        ours = self._pool_closing
        reason = str(exc) if exc else "closed by the pool"
        if url is not None:
            self.state.pool_closed(url, None if ours else reason, spoke=self._pool_spoke)
        self.state.draining.discard(self)
        session = self.session
        if session is None:
            return
        if not self.closed or session.pending_submits:
            session.pool_lost(f"pool connection lost: {reason}", now())
        self.flush()

    def pool_stalled(self) -> None:
        self._pause_miner("pool")

    def pool_unstalled(self) -> None:
        if self.state.accepting:  # while shutting down, miners stay paused: no new share starts
            self._resume_miner("pool")

    def _close_pool(self) -> None:
        self.state.draining.discard(self)
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()
        if self.pool is not None and not self.pool.is_closing():
            self.write_pool()  # a request of the same iteration (the pool closes after writing it)
            self._pool_closing = True
            self.pool.close()

    # --- moving bytes and carrying out decisions ---------------------------------------------------

    def flush(self) -> None:
        """Record what the session decided, write what it produced, then act on a close decision."""
        session = self.session
        if session is None:
            return
        outbox = session.outbox
        state = self.state
        state.sink.take(outbox, self.peer)
        if outbox.to_miner:
            if not self._for_miner:
                state.answer_later(self)
            self._for_miner += outbox.to_miner
            outbox.to_miner.clear()
        if outbox.to_pool and self.pool is not None:
            # (Until the pool connection is up they wait in the outbox; the session bounds how many.)
            if not self._for_pool:
                state.send_later(self)
            self._for_pool += outbox.to_pool
            outbox.to_pool.clear()
        if self._unauthorized and session.workers:
            self._unauthorized = False
            state.admission.authorized(self)
        if outbox.close is not None:
            self.close(outbox.close)

    def write_pool(self) -> None:
        """Write what waits for the pool connection (ServerState.write_all, or before it closes)."""
        if not self._for_pool:
            return
        data = b"".join(self._for_pool)
        self._for_pool.clear()
        pool = self.pool
        if pool is not None and not pool.is_closing():
            pool.write(data)

    def write_miner(self) -> None:
        """Write what waits for the miner (the journal already holds its rows: ServerState.answer)."""
        if not self._for_miner:
            return
        data = b"".join(self._for_miner)
        self._for_miner.clear()
        miner = self.miner
        if miner is None or self._miner_gone or miner.is_closing():
            return
        miner.write(data)
        if not self.closed and miner.get_write_buffer_size() > self.state.limits.max_miner_buffer:
            self.close("miner is not reading (write buffer full)")

    def close(self, reason: str) -> None:
        """The close decision: the slot is free now, the miner socket closes (aborted after
        `close_grace` if it will not take its last bytes), the pool connection once nothing is in flight."""
        session = self.session
        if session is not None:
            session.close(reason)
        if self.closed:
            return
        self.closed = True
        state = self.state
        state.admission.release(self)
        state.metrics.sessions_closed.labels(reason_label(reason)).inc()
        if session is not None and session.misbehaved:  # closed for what it sent: its address pays
            state.admission.strike(self, session.close_reason or reason)
        workers = ", ".join(session.worker_names) if session is not None else ""
        log.info(
            "session %s from %s%s closed: %s",
            session.session_id if session else "-",
            self.peer,
            f" ({workers})" if workers else "",
            reason,
        )
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None
        if self._for_miner:  # its last words (an error, a show_message) go out before the close
            state.sink.commit()
            self.write_miner()
        miner = self.miner
        if miner is not None and not self._miner_gone:
            if not miner.is_closing():
                miner.close()
            self._abort = asyncio.get_running_loop().call_later(state.limits.close_grace, self._abort_miner)
        if session is not None and session.pending_submits and self.pool is not None:
            state.draining.add(self)  # the pool's verdicts on shares in flight still reach the ledger
        else:
            self._close_pool()

    def _abort_miner(self) -> None:
        self._abort = None
        miner = self.miner
        if miner is not None and not self._miner_gone:
            reset(miner)

    def tick(self, at: Instant) -> None:
        session = self.session
        if session is None:
            return
        session.tick(at)
        if (
            self._stalled_since is not None
            and not self.closed
            and at.mono - self._stalled_since > self.state.limits.max_write_stall
        ):
            session.close("miner is not reading (stalled)")
        outbox = session.outbox
        # Most sessions have nothing to say once a second: only flush the ones that do.
        if outbox.to_miner or outbox.to_pool or outbox.close is not None or outbox.verdicts or outbox.notes:
            self.flush()
        if self.closed and not session.pending_submits:
            self._close_pool()

    def pause_for_shutdown(self) -> None:
        self._pause_miner("shutdown")

    def shut_down(self, reason: str) -> None:
        """The proxy is stopping: what is still in flight is recorded as unanswered, then close."""
        if self.session is not None:
            self.session.pool_lost(reason, now())
        self.flush()
        self.close(reason)
        self._close_pool()


class MinerProtocol(asyncio.Protocol):
    """Shim: the miner's socket callbacks, forwarded to its rig."""

    __slots__ = ("rig",)

    def __init__(self, rig: Rig) -> None:
        self.rig = rig

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.rig.miner_connected(transport)

    def data_received(self, data: bytes) -> None:
        self.rig.miner_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.rig.miner_lost(exc)

    def pause_writing(self) -> None:
        self.rig.miner_stalled()

    def resume_writing(self) -> None:
        self.rig.miner_unstalled()


class PoolProtocol(asyncio.Protocol):
    """Shim: the pool connection's callbacks, forwarded to its rig."""

    __slots__ = ("rig",)

    def __init__(self, rig: Rig) -> None:
        self.rig = rig

    def data_received(self, data: bytes) -> None:
        self.rig.pool_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.rig.pool_lost(exc)

    def pause_writing(self) -> None:
        self.rig.pool_stalled()

    def resume_writing(self) -> None:
        self.rig.pool_unstalled()


class Server:
    """The Stratum side of the proxy: startup (listen, sweep), the main loop (the sweeper), shutdown."""

    def __init__(
        self,
        config: ProxyConfig,
        rules: SessionRules,
        sink: VerdictSink,
        metrics: ProxyMetrics,
        *,
        ledger_refusal: Callable[[], str | None] = lambda: None,
    ) -> None:
        self.config = config
        self.metrics = metrics
        upstreams = Upstreams.from_strings(config.upstream, metrics.pool_health, dns_ttl=config.upstream_dns_ttl)
        self.state = ServerState(config, rules, sink, metrics, upstreams)
        self._ledger_refusal = ledger_refusal
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._rounds: rounds.Rounds[Rig] = rounds.Rounds()
        self._round_states: collections.Counter[str] = collections.Counter()

    @property
    def upstreams(self) -> Upstreams:
        return self.state.upstreams

    @property
    def port(self) -> int:
        assert self._server is not None and self._server.sockets
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def sessions(self) -> int:
        return len(self.state.rigs)

    @property
    def pool_connections(self) -> int:
        return sum(self.state.live_pools.values())

    async def start(self) -> None:
        host, port = parse_host_port(self.config.listen, "listen")
        loop = asyncio.get_running_loop()
        state = self.state
        self._server = await loop.create_server(
            lambda: MinerProtocol(Rig(state)),
            host,
            port,
            backlog=4096,
            reuse_address=True,
            reuse_port=self.config.workers > 1,  # --workers: each process listens, the kernel spreads ASICs
        )
        state.admission.accepting = True
        self._sweeper = asyncio.create_task(self._main_loop(), name="session-sweeper")
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        log.info(
            "listening for ASICs on %s:%d; pools: %s; at most %d sessions (open-file limit %s)",
            host,
            self.port,
            ", ".join(u.label for u in self.upstreams.urls),
            state.admission.max_sessions,
            soft,
        )

    async def _main_loop(self) -> None:
        while True:
            await asyncio.sleep(rounds.INTERVAL / rounds.SLICES)
            self.sweep_slice()

    def sweep_slice(self) -> None:
        """One slice of the once-a-second sweep (proxy/rounds.py): the first also runs the
        proxy-wide checks, the last sets the sessions gauge."""
        at = now()
        state = self.state
        part = self._rounds.take(lambda: [*state.rigs, *state.draining])
        if part.first:
            state.admission.strikes.sweep(at.mono)
            refusal = self._ledger_refusal()
            if refusal != state.rules.shares_refused:
                state.rules.shares_refused = refusal
            self._round_states.clear()
        for rig in part.members:
            if rig not in state.rigs and rig not in state.draining:
                continue  # done with since the round began
            try:
                rig.tick(at)
            except Exception:  # one broken session must not stop the sweep for everyone
                log.exception("sweep failed for a session; closing it")
                rig.close("internal error")
            if rig.session is not None and rig in state.rigs:
                self._round_states[rig.session.state] += 1
        if part.last:
            self.metrics.count_sessions(self._round_states)

    def in_flight(self) -> int:
        state = self.state
        return sum(r.session.pending_submits for r in [*state.rigs, *state.draining] if r.session)

    async def stop(self, grace: float) -> None:
        """Stop accepting, give in-flight submits `grace` seconds for the pool's verdict, then close
        every session (what is still unanswered is recorded as `timeout`)."""
        state = self.state
        state.admission.accepting = False
        if self._server is not None:
            self._server.close()
        # No new shares from here on (they wait unread in the kernel and die with the connection,
        # never having reached the pool); the ones in flight get their verdict and their ledger row.
        for rig in list(state.rigs):
            rig.pause_for_shutdown()
        deadline = time.monotonic() + grace
        while self.in_flight() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        rigs = list(state.rigs) + list(state.draining)
        for rig in rigs:
            rig.shut_down("proxy shutting down")
        if self._sweeper is not None:
            self._sweeper.cancel()
        for task in list(state.tasks):
            task.cancel()
        await asyncio.gather(*state.tasks, *(t for t in [self._sweeper] if t), return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        log.info("stopped: %d sessions closed", len(rigs))
