"""Farm mode (`--mode aggregate`), sans-I/O: the ASICs of one hotkey share upstream pool connections.

How the extranonce space is split. The pool gives one upstream connection extranonce1 `E1` and
extranonce2 size `N2`. Each ASIC gets, at subscribe, its own extranonce1 `P` (a k-byte prefix the
proxy picks, unique among the live ASICs of this proxy, hence of every upstream) and an extranonce2
size `n` with `k + n <= N2`. The ASIC is sent the pool's jobs with

    coinb1' = coinb1 ‖ E1          coinb2' = F ‖ coinb2      (F: N2 - k - n zero bytes, usually none)

so the coinbase it hashes, coinb1' ‖ P ‖ e ‖ coinb2', is byte for byte the pool's coinbase with
extranonce2 = P ‖ e ‖ F. The ASIC's extranonce1 never mentions the pool: when the upstream is lost
or fails over to the next pool, the ASIC keeps its TCP connection and simply gets a clean job built
from the next pool's E1 (if that pool's N2 cannot hold k + n, that ASIC is sent `client.reconnect`
and closed: it comes back with an extranonce2 size that fits).

Why the prefix is unique per proxy and not merely per upstream: the subscribe answer (with P) comes
before the authorize that says which hotkey, hence which upstream, the ASIC belongs to.

The ledger row of a farm share re-hashes from the ledger alone (`ledger.audit`): its job row is the
pool's notify (as the pool sent it), `extranonce1` = E1 ‖ P and `extranonce2` = e ‖ F, whose
concatenation is the extranonce the pool saw (P ‖ e ‖ F after E1). Worker and session are the
ASIC's own, so credit per worker is what each ASIC mined; (job, extranonce1) stays unique per ASIC.

Credit follows passthrough: a share must meet the pool's difficulty (the lower of the job's and the
one in force), a header hash is forwarded once per upstream connection, and only authorized workers
leave rows. Each ASIC is told max(pool difficulty, what it suggested): suggest_difficulty is honoured
only upward (the pool still credits its own difficulty per share, so a higher one means fewer shares).

Version rolling is negotiated once per upstream connection; each ASIC may roll the bits it asked for
AND the pool granted (a later narrowing by the pool is sent down as mining.set_version_mask).

The asyncio layer (`proxy/farm_net.py`) feeds bytes in (`FarmHub.miner_data`, `FarmHub.pool_data`) and
writes out what the hub marked dirty.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Iterable
from typing import Any

import msgspec

from ledger.jobs import job_key
from ledger.workers import WorkerName, WorkerRefused
from protocol.connection import (
    BadLine,
    MinerConnection,
    Notification,
    PoolConnection,
    Refused,
    ReplyReceived,
    RequestReceived,
)
from protocol.errors import ErrorCode, InvalidMessage, LineTooLong, ProtocolError, RejectReason, StratumError
from protocol.messages import (
    Authorize,
    Configure,
    ExtranonceSubscribe,
    Notify,
    Reconnect,
    Reply,
    Request,
    ServerRequest,
    SetDifficulty,
    SetExtranonce,
    SetVersionMask,
    Submit,
    SubmitParams,
    Subscribe,
    SuggestDifficulty,
    configure_options,
    encode_notification,
    encode_notify,
    encode_reply,
    encode_result,
    is_hex,
)
from protocol.state import State
from protocol.work import BIP320_MASK, Job, Share, ShareRejected
from proxy.admission import session_limit
from proxy.metrics import ProxyMetrics
from proxy.session import (
    BadLines,
    Forwarded,
    JobSeen,
    SessionRules,
    WorkerClaims,
    check_credit,
    credit_for,
    retired_block_note,
)
from proxy.verdicts import VerdictSink, metric_labels, share_row

log = logging.getLogger("proxy.farm")


class FarmContext:
    """What farm mode takes from the proxy: the rules every session follows and the sink that turns
    verdicts and jobs into ledger rows (the same objects passthrough sessions use)."""

    def __init__(self, rules: SessionRules, sink: VerdictSink) -> None:
        self.rules = rules
        self.sink = sink
        self.accounts = rules.accounts
        self.limits = rules.limits
        self.registered = rules.registered
        self.health_checks = rules.health_checks
        self.proxy_id = sink.proxy_id
        self.metrics: ProxyMetrics = sink.metrics
        self.record = sink.record
        self.commit = sink.commit

    def record_job(self, notify: Notify, key: str, upstream: str) -> None:
        self.sink.job(JobSeen(notify, key, upstream, time.time()))


__all__ = [
    "DEFAULT_ASIC_EXTRANONCE2_SIZE",
    "FarmASIC",
    "FarmHub",
    "FarmUpstream",
    "PrefixAllocator",
    "prefix_bytes_for",
]

VERSION = "ih-proxy/0.1 farm"
MAX_JOBS = 16  # live jobs per ASIC; a clean job drops all earlier ones
# The extranonce2 size an ASIC is given before this proxy has seen any pool's (2..8 is what firmware takes).
DEFAULT_ASIC_EXTRANONCE2_SIZE = 4
MAX_ASIC_EXTRANONCE2_SIZE = 8
MIN_ASIC_EXTRANONCE2_SIZE = 2
_TRUE = msgspec.Raw(b"true")
_NULL = msgspec.Raw(b"null")


def prefix_bytes_for(max_asics: int) -> int:
    """Prefix bytes so that twice `max_asics` prefixes exist (freed prefixes rest before reuse)."""
    k = 1
    while 256**k < 2 * max_asics:
        k += 1
    return k


class PrefixAllocator:
    """Extranonce1 prefixes of k bytes, unique among the live ASICs. A freed prefix goes to the back
    of the queue, so it is reused as late as possible (never while another ASIC holds it)."""

    def __init__(self, size: int) -> None:
        if not 1 <= size <= 4:
            raise ValueError("prefix size must be 1..4 bytes")
        self.size = size
        self._next = 0
        self._free: collections.deque[int] = collections.deque()
        self._live: set[int] = set()

    @property
    def capacity(self) -> int:
        return 1 << (8 * self.size)

    def allocate(self) -> str | None:
        """A free prefix as hex, or None when every one is taken."""
        if self._next < self.capacity:
            value = self._next
            self._next += 1
        elif self._free:
            value = self._free.popleft()
        else:
            return None
        self._live.add(value)
        return value.to_bytes(self.size, "big").hex()

    def release(self, prefix: str) -> None:
        value = int(prefix, 16)
        if value in self._live:
            self._live.discard(value)
            self._free.append(value)

    def __len__(self) -> int:
        return len(self._live)


# --- per-share checks (the same rules as passthrough's MinerSession._submit; see the module doc) ------


def _sent_at(context: Any) -> float:
    return context.sent_at if type(context) is _PendingShare else float(context)


# --- the state --------------------------------------------------------------------------------------


class _PoolJob:
    """A job as the pool sent it on one upstream connection."""

    __slots__ = ("difficulty", "extranonce1", "key", "notify", "prevhash")

    def __init__(self, notify: Notify, key: str, difficulty: float, extranonce1: str) -> None:
        self.notify = notify
        self.key = key
        self.difficulty = difficulty  # the pool's, in force when it was notified
        self.extranonce1 = extranonce1  # the pool's E1 on that connection
        self.prevhash = notify.prevhash.lower()


class _AsicJob:
    """A pool job as one ASIC was sent it (its own job id), with the share math built on first use."""

    __slots__ = ("_job", "filler", "notify", "pool_job", "prefix", "size")

    def __init__(self, pool_job: _PoolJob, notify: Notify, prefix: str, size: int, filler: str) -> None:
        self.pool_job = pool_job
        self.notify = notify  # what the ASIC got: coinb1 ‖ E1, F ‖ coinb2
        self.prefix = prefix
        self.size = size
        self.filler = filler
        self._job: Job | None = None

    @property
    def job(self) -> Job:
        if self._job is None:
            self._job = Job(self.notify, self.prefix, self.size, self.pool_job.difficulty)
        return self._job


class _PendingShare:
    """A translated share waiting for the pool's verdict."""

    __slots__ = ("answered", "asic", "credit", "job", "miner_id", "received", "sent_at", "share", "submit", "worker")

    def __init__(
        self,
        asic: FarmASIC,
        miner_id: Any,
        worker: WorkerName | None,
        job: _AsicJob,
        share: Share,
        submit: SubmitParams,
        credit: float,
        received: float,
        sent_at: float,
    ) -> None:
        self.asic = asic
        self.miner_id = miner_id
        self.worker = worker
        self.job = job
        self.share = share
        self.submit = submit
        self.credit = credit
        self.received = received  # wall clock, for the ledger
        self.sent_at = sent_at  # monotonic
        self.answered = False


class FarmASIC:
    """One ASIC connected to the proxy in farm mode."""

    def __init__(self, hub: FarmHub, session_id: str, now: float) -> None:
        self.hub = hub
        self.session_id = session_id
        self.connection = MinerConnection(max_line=hub.ctx.limits.max_line)
        self.to_miner: list[bytes] = []
        self.close_reason: str | None = None
        self.gone = False  # the connection closed: nothing more is sent
        self.connected_at = now
        self.last_line_at = now
        self.user_agent = ""
        self.prefix: str | None = None  # its extranonce1, for life
        self.extranonce2_size = 0
        self.requested_mask = 0
        self.configured = False
        self.version_mask = 0  # requested ∩ the pool's: what a share may roll
        self.suggested = 0.0
        self.difficulty_sent = 0.0
        self.group: str | None = None
        self.upstream: FarmUpstream | None = None
        self.workers: dict[str, WorkerName | None] = {}  # name as sent → worker (None: a health check)
        self.claims = WorkerClaims(hub.ctx.limits.max_workers)
        self.jobs: dict[str, _AsicJob] = {}
        self.bad_lines = BadLines(now)
        self.misbehaved = False  # set by close(abuse=True)
        self.shares_handled = 0
        self._tokens = hub.ctx.limits.cost_soft_limit
        self._tokens_at = now

    @property
    def state(self) -> str:
        if self.workers:
            return "mining"
        return "subscribed" if self.prefix is not None else "handshake"

    def close(self, reason: str, *, abuse: bool = False) -> None:
        """`abuse`: closed for what it sent, so its address pays (proxy.admission.AddressStrikes)."""
        if self.close_reason is None:
            self.close_reason = reason
            self.misbehaved = abuse
            self.hub.dirty_asics.add(self)

    def send(self, line: bytes) -> None:
        if self.gone:
            return
        self.to_miner.append(line)
        self.hub.dirty_asics.add(self)

    def error(self, request_id: Any, code: int, message: str) -> None:
        if request_id is not None:
            self.send(self.connection.refuse(request_id, StratumError(code, message)))

    def take_token(self, now: float, cost: float) -> bool:
        """Charge `cost` (Limits.submit_cost or request_cost); False when the budget is spent."""
        limits = self.hub.ctx.limits
        # The passthrough session's budget as a bucket: refills at the sustained rate, up to the soft limit.
        self._tokens = min(
            limits.cost_soft_limit, self._tokens + (now - self._tokens_at) * limits.cost_decay_per_second
        )
        self._tokens_at = now
        if self._tokens < cost:
            return False
        self._tokens -= cost
        return True


class FarmUpstream:
    """One upstream slot of a hotkey: up to `per_upstream` ASICs behind one pool connection at a
    time. The slot outlives its connections: on loss it is connected again (to the best pool), and
    its ASICs keep their prefixes, their job-id space and their TCP connections."""

    def __init__(self, hub: FarmHub, group: str, worker_name: str, index: int) -> None:
        self.hub = hub
        self.group = group
        self.worker_name = worker_name  # what the pool sees: <account>.<hotkey>.farm<N>
        self.index = index
        self.asics: set[FarmASIC] = set()
        self.to_pool: list[bytes] = []
        self.pool: PoolConnection | None = None
        self.label = ""  # host:port of the pool connected to
        self.connecting = False  # the net layer is opening a connection for it
        self.authorized = False  # the pool accepted worker_name at least once (ASICs may be told yes)
        self.ready = False  # this connection is subscribed and authorized
        self.closed = False
        self.extranonce1: str | None = None
        self.extranonce2_size = 0
        self.pool_mask = hub.assumed_mask
        self.difficulty = 1.0
        self.jobs: dict[str, _PoolJob] = {}
        self.current: _PoolJob | None = None
        self.forwarded = Forwarded()
        self.waiting: list[tuple[FarmASIC, Authorize, WorkerName | None]] = []  # ASIC authorizes to answer
        self._early: list[Notify] = []
        self._job_ids = 0
        self.connections = 0  # pool connections made for this slot

    @property
    def pending_submits(self) -> int:
        return sum(1 for method, _ in self.pool.pending.contexts() if method == "mining.submit") if self.pool else 0

    def next_job_id(self) -> str:
        self._job_ids += 1
        return f"{self._job_ids:x}"


class FarmHub:
    """Every farm ASIC and upstream of one proxy, and the rules between them. No I/O: callers feed
    bytes and time in, and drain `dirty_asics` (to_miner, close_reason), `dirty_upstreams` (to_pool)
    and `want_connection` (slots that need a pool connection) after every call."""

    def __init__(self, ctx: FarmContext, per_upstream: int = 256, *, prefix_bytes: int | None = None) -> None:
        if per_upstream < 1:
            raise ValueError("per_upstream must be at least 1")
        self.ctx = ctx
        self.per_upstream = per_upstream
        self.prefixes = PrefixAllocator(prefix_bytes or prefix_bytes_for(session_limit(ctx.limits)))
        self.groups: dict[str, list[FarmUpstream]] = {}
        self.asics: set[FarmASIC] = set()
        self.dirty_asics: set[FarmASIC] = set()
        self.dirty_upstreams: set[FarmUpstream] = set()
        self.want_connection: list[FarmUpstream] = []
        self.closed_upstreams: list[FarmUpstream] = []  # slots with no ASIC left: close their connection
        # Connections closed because the pool broke the handshake: the network layer backs that pool
        # off (a pool that accepts and then fails us must not be reconnected to at once, in a loop).
        self.pool_faults: list[tuple[FarmUpstream, str]] = []
        self.pool_extranonce2_size: int | None = None  # the last pool's, for new ASICs
        self.assumed_mask = BIP320_MASK  # the last pool's version mask (BIP320 before any)
        self._names: dict[str, int] = {}

    # --- ASICs ------------------------------------------------------------------------------------

    def new_asic(self, session_id: str, now: float) -> FarmASIC:
        asic = FarmASIC(self, session_id, now)
        self.asics.add(asic)
        return asic

    def asic_extranonce2_size(self) -> int:
        if self.pool_extranonce2_size is None:
            return DEFAULT_ASIC_EXTRANONCE2_SIZE
        room = self.pool_extranonce2_size - self.prefixes.size
        return max(MIN_ASIC_EXTRANONCE2_SIZE, min(MAX_ASIC_EXTRANONCE2_SIZE, room))

    def miner_data(self, asic: FarmASIC, data: bytes, now: float) -> None:
        asic.last_line_at = now
        for event in asic.connection.events(data):
            if asic.close_reason is not None:
                break
            if type(event) is RequestReceived:
                self._request(asic, event.message, now)
            elif type(event) is Refused:
                asic.send(asic.connection.refuse(event.message, event.error))
                if type(event.message) is Submit:
                    self.ctx.metrics.count_share("refused", str(event.reason))
            elif isinstance(event, BadLine):
                self._bad_line(asic, event.error, now)

    def _bad_line(self, asic: FarmASIC, error: ProtocolError, now: float) -> None:
        """A malformed line (or a configure with bad options), as passthrough's session judges one."""
        limits = self.ctx.limits
        if isinstance(error, LineTooLong):
            asic.close(f"line too long ({error.length} bytes)", abuse=True)
            return
        bad = asic.bad_lines.add(now, limits.bad_line_forgiven_after)
        asic.error(error.id, ErrorCode.OTHER, error.reason[: limits.max_error_text])
        if isinstance(error, InvalidMessage) and error.method == "mining.submit":
            self.ctx.metrics.count_share("refused", "malformed")
        if bad > limits.max_bad_lines:
            asic.close(f"too many malformed lines ({bad})", abuse=True)

    def _request(self, asic: FarmASIC, message: Any, now: float) -> None:
        kind = type(message)
        if kind is Submit:
            self._submit(asic, message, now)
            return
        # Every other request costs what it does in passthrough: an ASIC sends a handful per
        # connection, a loop of them (answered here, each one free before) is closed for abuse.
        if not asic.take_token(now, self.ctx.limits.request_cost):
            asic.error(message.id, ErrorCode.OTHER, "rate limit exceeded")
            asic.close("request rate limit exceeded", abuse=True)
            return
        if kind is Subscribe:
            self._subscribe(asic, message)
        elif kind is Authorize:
            self._authorize(asic, message)
        elif kind is Configure:
            self._configure(asic, message, now)
        elif kind is SuggestDifficulty:
            # Honoured only upward: never below the pool's difficulty (see _difficulty_for).
            asic.suggested = max(0.0, message.params.difficulty)
            if message.id is not None:
                asic.send(asic.connection.answer(message, True))
            if asic.upstream is not None and asic.upstream.current is not None and asic.workers:
                self._send_difficulty(asic, asic.upstream)
        elif kind is ExtranonceSubscribe:
            if message.id is not None:  # its extranonce never changes: nothing will ever be sent
                asic.send(asic.connection.answer(message, True))
        elif kind is Request and message.id is not None:
            asic.error(message.id, ErrorCode.OTHER, f"{message.method[:64]} not supported")

    def _subscribe(self, asic: FarmASIC, message: Subscribe) -> None:
        if message.params.user_agent:
            asic.user_agent = message.params.user_agent[: self.ctx.limits.max_text]
        if asic.prefix is None:
            prefix = self.prefixes.allocate()
            if prefix is None:
                asic.error(message.id, ErrorCode.OTHER, "proxy full: no extranonce left")
                asic.close("no extranonce prefix left")
                return
            asic.prefix = prefix
            asic.extranonce2_size = self.asic_extranonce2_size()
        sid = asic.prefix
        result = [[["mining.set_difficulty", sid], ["mining.notify", sid]], asic.prefix, asic.extranonce2_size]
        asic.send(asic.connection.answer(message, result))
        upstream = asic.upstream
        if asic.workers and upstream is not None and upstream.ready and upstream.current is not None:
            self._give_work(asic, upstream, clean=True)  # it authorized before subscribing

    def _configure(self, asic: FarmASIC, message: Configure, now: float) -> None:
        options = configure_options(message)
        if isinstance(options, InvalidMessage):
            self._bad_line(asic, options, now)
            return
        result: dict[str, Any] = {extension: False for extension in message.params.extensions}
        if options.version_rolling:
            asic.configured = True
            asic.requested_mask = options.version_rolling_mask
            pool_mask = asic.upstream.pool_mask if asic.upstream is not None else self.assumed_mask
            asic.version_mask = asic.requested_mask & pool_mask
            result["version-rolling"] = True
            result["version-rolling.mask"] = f"{asic.version_mask:08x}"
        if message.id is not None:
            asic.send(asic.connection.answer(message, result))

    def _authorize(self, asic: FarmASIC, message: Authorize) -> None:
        name = message.params.worker
        ctx = self.ctx
        worker: WorkerName | None = None
        if name in ctx.health_checks:
            group, account_hotkey = f"check:{name}", None
        else:
            try:
                worker = WorkerName.parse(name, ctx.accounts)
                registered = ctx.registered
                if registered is not None and worker.hotkey not in registered:
                    if not registered.loaded:
                        raise WorkerRefused("the subnet registry is not loaded yet; try again shortly")
                    raise WorkerRefused(f"hotkey {worker.hotkey} is not registered on the subnet")
                asic.claims.check(worker.full_name)
            except WorkerRefused as refused:
                ctx.metrics.authorize.labels("refused").inc()
                asic.error(message.id, ErrorCode.UNAUTHORIZED, str(refused))
                return
            group = account_hotkey = f"{worker.account}.{worker.hotkey}"
        if asic.group is not None and asic.group != group:
            ctx.metrics.authorize.labels("refused").inc()
            asic.error(message.id, ErrorCode.UNAUTHORIZED, "farm mode: one hotkey (and account) per connection")
            return
        if worker is not None:
            asic.claims.add(worker.full_name)
        if asic.upstream is None:
            asic.group = group
            upstream = self._upstream_for(group, name if account_hotkey is None else None)
            upstream.asics.add(asic)
            asic.upstream = upstream
            if asic.configured:
                asic.version_mask = asic.requested_mask & upstream.pool_mask
        upstream = asic.upstream
        if upstream.authorized:
            self._authorized(asic, message, worker)
            if upstream.ready and upstream.current is not None and asic.prefix is not None:
                self._give_work(asic, upstream, clean=True)
        else:
            upstream.waiting.append((asic, message, worker))

    def _upstream_for(self, group: str, health_name: str | None) -> FarmUpstream:
        slots = self.groups.setdefault(group, [])
        for slot in slots:
            if not slot.closed and len(slot.asics) < self.per_upstream:
                return slot
        index = self._names.get(group, 0) + 1
        self._names[group] = index
        name = health_name if health_name is not None else f"{group}.farm{index}"
        slot = FarmUpstream(self, group, name, index)
        slots.append(slot)
        self.want_connection.append(slot)
        slot.connecting = True
        return slot

    def _authorized(self, asic: FarmASIC, message: Authorize, worker: WorkerName | None) -> None:
        name = message.params.worker
        asic.workers[name] = worker
        if worker is not None:
            asic.workers[worker.full_name] = worker
            asic.workers[worker.bare_name] = worker
            self.ctx.metrics.authorize.labels("accepted").inc()
        else:
            self.ctx.metrics.authorize.labels("health-check").inc()
        asic.send(asic.connection.answer(message, True))

    def asic_gone(self, asic: FarmASIC) -> None:
        """The ASIC's connection closed: free its prefix; a slot left empty closes its pool link
        (once the verdicts it still owes are in)."""
        if asic not in self.asics:
            return
        self.asics.discard(asic)
        asic.gone = True
        asic.to_miner.clear()
        if asic.close_reason is None:
            asic.close_reason = "miner disconnected"
        asic.connection.close()
        if asic.prefix is not None:
            self.prefixes.release(asic.prefix)
        upstream = asic.upstream
        if upstream is not None:
            upstream.asics.discard(asic)
            upstream.waiting = [w for w in upstream.waiting if w[0] is not asic]
            if not upstream.asics:
                self._retire(upstream)
        self.dirty_asics.discard(asic)

    def _retire(self, upstream: FarmUpstream) -> None:
        upstream.closed = True
        slots = self.groups.get(upstream.group)
        if slots is not None and upstream in slots:
            slots.remove(upstream)
            if not slots:
                del self.groups[upstream.group]
        if upstream.pool is not None and not upstream.pending_submits:
            self.closed_upstreams.append(upstream)

    # --- shares -----------------------------------------------------------------------------------

    def _submit(self, asic: FarmASIC, message: Submit, now: float) -> None:
        p = message.params
        ctx = self.ctx
        asic.shares_handled += 1
        if not asic.take_token(now, ctx.limits.submit_cost):
            asic.error(message.id, ErrorCode.OTHER, "rate limit exceeded")
            asic.close("submit rate limit exceeded", abuse=True)
            return
        if p.worker not in asic.workers:
            # Only authorized work reaches the ledger: no row, no text the sender chose.
            asic.error(message.id, ErrorCode.UNAUTHORIZED, "Unauthorized worker")
            ctx.metrics.count_share("refused", "unauthorized")
            return
        worker = asic.workers[p.worker]
        upstream = asic.upstream
        work = asic.jobs.get(p.job_id)
        if (
            work is None
            or upstream is None
            or upstream.pool is None
            or upstream.jobs.get(work.pool_job.notify.job_id) is not work.pool_job  # the pool ended it
        ):
            asic.error(message.id, ErrorCode.JOB_NOT_FOUND, "Job not found")
            self._record(asic, time.time(), worker, None, p, 0.0, None, RejectReason.STALE, upstream)
            return
        pool_job = work.pool_job
        credit = credit_for(pool_job.difficulty, upstream.difficulty)
        try:
            share = work.job.hash_share(p.extranonce2, p.ntime, p.nonce, p.version_bits, asic.version_mask)
            forwarded = upstream.forwarded.by_block.get(pool_job.prevhash)
            if forwarded is None:
                raise ShareRejected(ErrorCode.JOB_NOT_FOUND, RejectReason.STALE, "Job not found")
            check_credit(share, forwarded, credit)
        except ShareRejected as rejected:
            asic.error(message.id, rejected.code, rejected.message)
            self._record(asic, time.time(), worker, work, p, credit, rejected.share, rejected.reason, upstream)
            return
        forwarded[share.hash] = None
        params = [upstream.worker_name, pool_job.notify.job_id, work.prefix + p.extranonce2.lower() + work.filler]
        params += [p.ntime, p.nonce]
        if p.version_bits is not None:
            params.append(p.version_bits)
        pending = _PendingShare(asic, message.id, worker, work, share, p, credit, time.time(), now)
        _, line = upstream.pool.send_request("mining.submit", params, pending)
        upstream.to_pool.append(line)
        self.dirty_upstreams.add(upstream)

    def _record(
        self,
        asic: FarmASIC,
        received: float,
        worker: WorkerName | None,
        work: _AsicJob | None,
        submit: SubmitParams,
        credit: float,
        share: Share | None,
        reason: str,
        upstream: FarmUpstream | None,
    ) -> None:
        """Count a judged share and ledger it (accepted when `reason` is empty), the coinbase as the
        POOL saw it: extranonce1 = E1 ‖ prefix, extranonce2 = the ASIC's ‖ filler (module doc)."""
        ctx = self.ctx
        ctx.metrics.count_share(*metric_labels(reason))
        if worker is None:
            return
        extranonce2 = submit.extranonce2[:64].lower()
        ctx.record(
            share_row(
                received,
                ctx.proxy_id,
                worker,
                asic.session_id,
                work.pool_job.notify.job_id if work else submit.job_id,
                credit,
                share,
                submit,
                reason,
                upstream.label if upstream is not None else "",
                work.pool_job.key if work else "",
                work.pool_job.extranonce1 + work.prefix if work else "",
                extranonce2 + work.filler if work else extranonce2,
                asic.version_mask,
            )
        )

    def _verdict(self, upstream: FarmUpstream, pending: _PendingShare, reply: Reply, now: float) -> None:
        asic, share, worker = pending.asic, pending.share, pending.worker
        asic.shares_handled += 1
        metrics = self.ctx.metrics
        metrics.upstream_latency.observe(now - pending.sent_at)
        accepted = reply.result == _TRUE and reply.error == _NULL
        if accepted:
            reason = ""
            if worker is not None:
                metrics.accepted_difficulty += pending.credit
                metrics.count_hotkey(worker.hotkey, pending.credit)
        else:
            failure = reply.failure()
            reason = f"pool: {failure.message if failure else 'rejected'}"[:120]
        if share.is_block:
            metrics.block_candidates += 1
            log.warning(
                "BLOCK CANDIDATE session %s worker %s job %s hash %s accepted=%s",
                asic.session_id,
                worker.full_name if worker else "health-check",
                pending.submit.job_id,
                share.hex_hash,
                accepted,
            )
        self._record(
            asic, pending.received, worker, pending.job, pending.submit, pending.credit, share, reason, upstream
        )
        if not pending.answered and pending.miner_id is not None and asic.close_reason is None:
            asic.send(encode_reply(pending.miner_id, reply))

    def _unanswered(self, upstream: FarmUpstream, pending: _PendingShare, message: str) -> None:
        asic = pending.asic
        if not pending.answered:
            asic.error(pending.miner_id, ErrorCode.OTHER, message)
        self._record(
            asic,
            pending.received,
            pending.worker,
            pending.job,
            pending.submit,
            pending.credit,
            pending.share,
            "timeout",
            upstream,
        )

    # --- the pool side ----------------------------------------------------------------------------

    def pool_connected(self, upstream: FarmUpstream, label: str, now: float) -> None:
        """A new pool connection for the slot: start its handshake (configure, subscribe, authorize)."""
        upstream.connecting = False
        pool = upstream.pool = PoolConnection(max_line=self.ctx.limits.max_line)
        upstream.label = label
        upstream.connections += 1
        upstream.ready = False
        upstream.extranonce1 = None
        upstream.jobs.clear()
        upstream.current = None
        upstream.forwarded.clear()
        upstream._early.clear()
        options = {"version-rolling.mask": f"{BIP320_MASK:08x}", "version-rolling.min-bit-count": 0}
        lines = [
            pool.send_request("mining.configure", [["version-rolling"], options], now)[1],
            pool.send_request("mining.subscribe", [VERSION], now)[1],
            pool.send_request("mining.authorize", [upstream.worker_name, "x"], now)[1],
        ]
        upstream.to_pool.extend(lines)
        self.dirty_upstreams.add(upstream)

    def pool_data(self, upstream: FarmUpstream, data: bytes, now: float) -> None:
        pool = upstream.pool
        if pool is None:
            return
        for event in pool.events(data):
            if type(event) is ReplyReceived:
                context = event.context
                if type(context) is _PendingShare:
                    self._verdict(upstream, context, event.reply, now)
                else:
                    self._pool_reply(upstream, event.method, event.reply)
            elif type(event) is Notification:
                self._pool_notification(upstream, event.message)
            elif isinstance(event, BadLine):
                log.warning("farm %s: bad line from pool %s: %s", upstream.worker_name, upstream.label, event.error)
        if upstream.closed and upstream.pool is pool and not upstream.pending_submits:
            self.closed_upstreams.append(upstream)

    def _pool_reply(self, upstream: FarmUpstream, method: str, reply: Reply) -> None:
        pool = upstream.pool
        assert pool is not None
        if method == "mining.configure":
            value = reply.value() if reply.failure() is None else None
            mask = 0
            if isinstance(value, dict) and value.get("version-rolling") is True:
                raw = value.get("version-rolling.mask")
                mask = int(raw, 16) if isinstance(raw, str) and 0 < len(raw) <= 8 and is_hex(raw) else 0
            self._grant_mask(upstream, mask)
        elif method == "mining.subscribe":
            result = pool.subscription
            if result is None:
                self.pool_lost(upstream, "the pool's subscribe reply was unusable", close=True, fault=True)
                return
            upstream.extranonce1 = result.extranonce1
            upstream.extranonce2_size = result.extranonce2_size
            self.pool_extranonce2_size = result.extranonce2_size
            self._maybe_ready(upstream)
        elif method == "mining.authorize":
            if reply.result == _TRUE and reply.error == _NULL:
                upstream.authorized = True
                waiting, upstream.waiting = upstream.waiting, []
                for asic, message, worker in waiting:
                    if asic.close_reason is None:
                        self._authorized(asic, message, worker)
                self._maybe_ready(upstream)
            else:
                failure = reply.failure()
                why = failure.message if failure else "refused"
                log.warning("farm %s: pool %s refused the worker: %s", upstream.worker_name, upstream.label, why)
                self.ctx.metrics.authorize.labels("pool-refused").inc()
                waiting, upstream.waiting = upstream.waiting, []
                for asic, message, _ in waiting:
                    asic.error(
                        message.id,
                        ErrorCode.UNAUTHORIZED,
                        f"pool refused {upstream.worker_name}: {why}"[: self.ctx.limits.max_error_text],
                    )
                for asic in list(upstream.asics):
                    asic.close(f"pool refused the farm worker {upstream.worker_name}")
                self._retire(upstream)
                self.closed_upstreams.append(upstream)

    def _maybe_ready(self, upstream: FarmUpstream) -> None:
        if upstream.ready or upstream.extranonce1 is None or not upstream.authorized:
            return
        pool = upstream.pool
        if pool is None or pool.state is not State.MINING:
            return
        upstream.ready = True
        early, upstream._early = upstream._early, []
        for notify in early:
            self._pool_notify(upstream, notify)

    def _grant_mask(self, upstream: FarmUpstream, mask: int) -> None:
        upstream.pool_mask = mask
        self.assumed_mask = mask
        for asic in upstream.asics:
            if not asic.configured:
                continue
            effective = asic.requested_mask & mask
            if effective != asic.version_mask:
                asic.version_mask = effective
                asic.send(encode_notification("mining.set_version_mask", [f"{effective:08x}"]))

    def _pool_notification(self, upstream: FarmUpstream, message: Any) -> None:
        kind = type(message)
        if kind is Notify:
            if not upstream.ready:
                upstream._early.append(message)
                del upstream._early[:-MAX_JOBS]
            else:
                self._pool_notify(upstream, message)
        elif kind is SetDifficulty:
            upstream.difficulty = message.difficulty  # sent down with the next job
        elif kind is SetVersionMask:
            self._grant_mask(upstream, message.mask)
        elif kind is SetExtranonce:
            # The pool moved this connection's extranonce: the ASICs' prefixes still stand, the next
            # jobs carry the new E1 (live jobs keep the one they were made with).
            upstream.extranonce1 = message.extranonce1
            upstream.extranonce2_size = message.extranonce2_size
        elif kind is Reconnect:
            # Not relayed: the ASICs stay with us; the slot reconnects (to the best pool) instead.
            self.pool_lost(upstream, "pool asked to reconnect", close=True)
        elif kind is ServerRequest:
            self._pool_request(upstream, message)

    def _pool_request(self, upstream: FarmUpstream, message: ServerRequest) -> None:
        pool = upstream.pool
        if message.id is None or pool is None:
            return
        if message.method == "client.get_version":
            answer = encode_result(message.id, VERSION)
        elif message.method == "mining.ping":
            answer = encode_result(message.id, "pong")
        else:
            answer = pool.refuse(message.id, StratumError(ErrorCode.OTHER, f"{message.method} not supported"))
        upstream.to_pool.append(answer)
        self.dirty_upstreams.add(upstream)

    def _pool_notify(self, upstream: FarmUpstream, notify: Notify) -> None:
        assert upstream.extranonce1 is not None
        key = job_key(notify)
        pool_job = _PoolJob(notify, key, upstream.difficulty, upstream.extranonce1)
        taken, _ = upstream.forwarded.take_block(pool_job.prevhash)
        if not taken:  # never relayed: the ASICs keep the work they have
            log.warning("farm %s: %s", upstream.worker_name, retired_block_note(upstream.label, notify.job_id))
            return
        if notify.clean_jobs:
            upstream.jobs.clear()
        elif len(upstream.jobs) >= MAX_JOBS:
            del upstream.jobs[next(iter(upstream.jobs))]
        upstream.jobs[notify.job_id] = pool_job
        first = upstream.current is None
        upstream.current = pool_job
        self.ctx.record_job(notify, key, upstream.label)
        # The first job of a connection is always clean for the ASICs: their old work is gone.
        self._give_all(upstream, clean=notify.clean_jobs or first)

    def _give_all(self, upstream: FarmUpstream, *, clean: bool) -> None:
        lines: dict[tuple[int, bool], tuple[Notify, bytes]] = {}
        for asic in list(upstream.asics):
            if asic.workers and asic.prefix is not None and asic.close_reason is None:
                self._give_work(asic, upstream, clean=clean, lines=lines)

    def _give_work(
        self,
        asic: FarmASIC,
        upstream: FarmUpstream,
        *,
        clean: bool,
        lines: dict[tuple[int, bool], tuple[Notify, bytes]] | None = None,
    ) -> None:
        """Send the upstream's current job to one ASIC (difficulty first, when it changed)."""
        pool_job = upstream.current
        assert pool_job is not None and asic.prefix is not None
        room = upstream.extranonce2_size - self.prefixes.size - asic.extranonce2_size
        if room < 0:
            # This pool's extranonce2 cannot hold prefix ‖ the ASIC's: it must come back with less.
            asic.send(encode_notification("client.reconnect", []))
            asic.close(
                f"pool {upstream.label} extranonce2 size {upstream.extranonce2_size} cannot hold this ASIC's "
                f"{self.prefixes.size} + {asic.extranonce2_size} bytes"
            )
            return
        self._send_difficulty(asic, upstream)
        cache_key = (room, clean)
        cached = lines.get(cache_key) if lines is not None else None
        if cached is None:
            n = pool_job.notify
            down = Notify(
                upstream.next_job_id(),
                n.prevhash,
                n.coinb1 + pool_job.extranonce1,
                "00" * room + n.coinb2,
                n.merkle_branch,
                n.version,
                n.nbits,
                n.ntime,
                clean,
            )
            cached = (down, encode_notify(down))
            if lines is not None:
                lines[cache_key] = cached
        down, line = cached
        if clean:
            asic.jobs.clear()
        elif len(asic.jobs) >= MAX_JOBS:
            del asic.jobs[next(iter(asic.jobs))]
        asic.jobs[down.job_id] = _AsicJob(pool_job, down, asic.prefix, asic.extranonce2_size, "00" * room)
        asic.send(line)

    def _send_difficulty(self, asic: FarmASIC, upstream: FarmUpstream) -> None:
        target = max(upstream.difficulty, asic.suggested)
        if target != asic.difficulty_sent:
            asic.difficulty_sent = target
            asic.send(encode_notification("mining.set_difficulty", [target]))

    def pool_lost(self, upstream: FarmUpstream, reason: str, *, close: bool = False, fault: bool = False) -> None:
        """The slot's pool connection is gone (or must go): answer what is in flight, forget its
        jobs, and ask for a new connection. The ASICs stay connected; they get a clean job from the
        next connection. `close`: we close it; `fault`: because the pool failed the handshake."""
        pool = upstream.pool
        if pool is None:
            return
        if fault:
            self.pool_faults.append((upstream, reason))
        if close:
            self.closed_upstreams.append(upstream)
        upstream.pool = None
        upstream.ready = False
        upstream.jobs.clear()
        upstream.current = None
        upstream.forwarded.clear()
        for context in pool.close():  # what will never be answered
            if type(context) is _PendingShare:
                self._unanswered(upstream, context, f"pool connection lost: {reason}")
        for asic in upstream.asics:
            asic.jobs.clear()  # dead work: shares for it are stale from now on
        log.info(
            "farm %s: pool %s lost (%s); %d ASICs wait for the next pool",
            upstream.worker_name,
            upstream.label,
            reason,
            len(upstream.asics),
        )
        if not upstream.closed and not upstream.connecting:
            upstream.connecting = True
            self.want_connection.append(upstream)

    def pool_unreachable(self, upstream: FarmUpstream, reason: str) -> None:
        """No pool took a connection for the slot: its ASICs are told to reconnect (never left on dead
        work), and the slot goes away."""
        upstream.connecting = False
        waiting, upstream.waiting = upstream.waiting, []
        for asic, message, _ in waiting:
            asic.error(message.id, ErrorCode.OTHER, f"no pool reachable: {reason}"[: self.ctx.limits.max_error_text])
        for asic in list(upstream.asics):
            asic.send(encode_notification("client.reconnect", []))
            asic.close(f"no pool reachable: {reason}")
        self._retire(upstream)

    # --- time ---------------------------------------------------------------------------------------

    def expire_upstreams(self, now: float) -> None:
        """The pool's verdicts (and handshake answers) that are overdue, on every upstream."""
        limits = self.ctx.limits
        for slots in list(self.groups.values()):
            for upstream in slots:
                self._expire_upstream(upstream, now - limits.submit_timeout, now - limits.late_verdict_timeout)
        for upstream in list(self.closed_upstreams):
            self._expire_upstream(upstream, now - limits.submit_timeout, now - limits.late_verdict_timeout)

    def expire_asics(self, asics: Iterable[FarmASIC], now: float) -> None:
        """Handshakes and silences that are overdue among `asics` (the farm's sweep passes a slice)."""
        limits = self.ctx.limits
        for asic in asics:
            if asic.close_reason is not None:
                continue
            if not asic.workers and now - asic.connected_at > limits.handshake_timeout:
                asic.close("no successful authorize within the handshake timeout")
            elif now - asic.last_line_at > limits.idle_timeout:
                asic.close("idle timeout")

    def _expire_upstream(self, upstream: FarmUpstream, deadline: float, give_up: float) -> None:
        pool = upstream.pool
        if pool is None:
            return
        for _, context in pool.pending.contexts():
            if type(context) is _PendingShare and not context.answered and context.sent_at <= deadline:
                context.asic.error(context.miner_id, ErrorCode.OTHER, "pool did not answer in time")
                context.answered = True
        # Contexts are a share, or the time a handshake request was sent (in the order sent).
        for method, context in pool.pending.expire(lambda item: _sent_at(item[1]) <= give_up):
            if type(context) is _PendingShare:
                self._unanswered(upstream, context, "pool did not answer in time")
            elif method != "mining.configure":  # a pool may ignore configure; not subscribe or authorize
                self.pool_lost(upstream, f"pool did not answer {method}", close=True, fault=True)
                return

    def upstreams(self) -> Iterable[FarmUpstream]:
        for slots in self.groups.values():
            yield from slots

    def in_flight(self) -> int:
        return sum(u.pending_submits for u in [*self.upstreams(), *self.closed_upstreams])
