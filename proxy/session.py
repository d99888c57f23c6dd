"""One ASIC's passthrough session, pure: protocol events and an instant in, an outbox out.

The network layer (`proxy/server.py`) feeds the bytes it reads to `receive_miner` / `receive_pool`
(which run them through protocol's sans-I/O `MinerConnection` / `PoolConnection` and hand each event
to `miner_event` / `pool_event`), calls `tick` once a second, and carries out what accumulates in
`outbox`: bytes for the miner, bytes for the pool, share verdicts (turned into ledger rows and
metrics by `proxy/verdicts.py`, the one module that does), jobs seen, authorize outcomes, and a close
decision. Nothing here reads a clock, logs, counts a metric or builds a ledger row: every decision the
proxy makes about a session lives here and is tested without sockets or time.

Ids: every request forwarded to the pool goes under a fresh id from the `PoolConnection`, and the
reply is re-addressed to the miner's own id. Miners reuse ids (cpuminer sends every submit as id 4),
so the miner's id can never key anything.

Costs (in the spirit of aiorpcX's sessions): every request, byte and error adds to one number that
decays at `cost_decay_per_second`; above `cost_soft_limit` the network layer stops reading this
miner until it has decayed below (`throttle`), above `cost_hard_limit` the session is closed.
Malformed lines are also counted on their own, forgiven one per `bad_line_forgiven_after` seconds.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import msgspec

from ledger.jobs import job_key
from ledger.workers import WorkerName as Worker
from ledger.workers import WorkerRefused
from protocol.connection import (
    BadLine,
    MinerConnection,
    MinerEvent,
    Notification,
    PoolConnection,
    PoolEvent,
    Refused,
    ReplyReceived,
    RequestReceived,
)
from protocol.errors import ErrorCode, InvalidMessage, LineTooLong, ProtocolError, RejectReason, StratumError
from protocol.messages import (
    Authorize,
    ClientMessage,
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
    ShowMessage,
    Submit,
    SubmitParams,
    Subscribe,
    SuggestDifficulty,
    configure_options,
    encode_notification,
    encode_reply,
    is_hex,
    subscribe_result,
)
from protocol.work import Job, Share, ShareRejected

if TYPE_CHECKING:  # only read, never imported at run time: the session depends on no proxy module
    from proxy.config import Limits

_TRUE = msgspec.Raw(b"true")
_NULL = msgspec.Raw(b"null")
VERSION = "ih-proxy/0.1"
SUBMIT = "mining.submit"
AUTHORIZE = "mining.authorize"
LEDGER_UNAVAILABLE = "ledger-unavailable"  # the reason of a share refused because the ledger is full


class Instant(msgspec.Struct, frozen=True, gc=False):
    """Now, as the caller's clocks say: `mono` for durations, `wall` (Unix seconds) for the ledger.
    (A Struct, not a NamedTuple: one is made per read, and a Struct is built in C.)"""

    mono: float
    wall: float


class Registered(Protocol):
    """The subnet's hotkeys (proxy.hotkeys.RegisteredHotkeys), as the session reads them."""

    @property
    def loaded(self) -> bool: ...

    def __contains__(self, hotkey: str) -> bool: ...


# --- the credit rules, for passthrough sessions and farm mode alike ------------------------------------


def credit_for(job_difficulty: float, current_difficulty: float) -> float:
    """Never more than the pool could credit: whether it applies a new set_difficulty to live jobs
    or not, the lower of the job's and the one in force is what it owes at least."""
    return job_difficulty if job_difficulty < current_difficulty else current_difficulty


# The header hashes forwarded on one block, as dict keys: a dict of bytes is never tracked by the
# collector, a set always is, and every full collection walked each entry (2M hashes: 220 ms vs 0.4).
HashSet = dict[bytes, None]


def check_credit(share: Share, forwarded: HashSet, credit: float) -> None:
    """Raises ShareRejected unless the share is new on this pool connection and meets the credit."""
    if share.hash in forwarded:
        raise ShareRejected(ErrorCode.DUPLICATE, RejectReason.DUPLICATE, "Duplicate share", share)
    if share.difficulty < credit:
        raise ShareRejected(
            ErrorCode.LOW_DIFFICULTY,
            RejectReason.LOW_DIFFICULTY,
            f"Low difficulty share ({share.difficulty:.6g} < {credit:.6g})",
            share,
        )


class BadLines:
    """Malformed lines not yet forgiven: one is forgiven every `forgiven_after` seconds, so a rig's
    stray lines over weeks never add up, while a burst does. Passthrough and farm mode share it."""

    __slots__ = ("_since", "count")

    def __init__(self, now: float) -> None:
        self.count = 0
        self._since = now

    def add(self, now: float, forgiven_after: float) -> int:
        """One more malformed line at `now`; returns how many are not yet forgiven."""
        forgiven = int((now - self._since) / forgiven_after)
        if forgiven:
            self.count = max(0, self.count - forgiven)
            self._since += forgiven * forgiven_after
        if not self.count:
            self._since = now
        self.count += 1
        return self.count


class WorkerClaims:
    """The workers one connection authorized or is authorizing, at most `limit` (Limits.max_workers):
    without a bound a miner authorizing name after name grows the session for ever. Passthrough and
    farm mode share it."""

    __slots__ = ("_names", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._names: set[str] = set()

    def check(self, full_name: str) -> None:
        """Raises WorkerRefused when `full_name` would be one worker too many."""
        if full_name not in self._names and len(self._names) >= self.limit:
            raise WorkerRefused(f"at most {self.limit} workers on one connection")

    def add(self, full_name: str) -> None:
        self._names.add(full_name)

    def discard(self, full_name: str) -> None:
        self._names.discard(full_name)


def retired_block_note(upstream: str, job_id: str) -> str:
    return f"pool {upstream} sent job {job_id[:64]!r} on a block it had moved on from; its shares are refused as stale"


class Forwarded:
    """The header hashes forwarded on one pool connection, per block (prevhash): a share is credited
    at most once per connection whatever job id, re-notify or clean_jobs flag it comes under.

    Only the newest `keep` blocks keep their hashes (memory ends with the block); the `retired`
    blocks before them are remembered by name only, and a job on one is refused, since its shares
    can no longer be told from the ones already credited. Passthrough and farm mode share it."""

    __slots__ = ("_retired", "by_block")
    keep = 2  # the current block and the last
    retired = 64  # ~10 hours of blocks, a few KiB per connection (the names are interned: shared)

    def __init__(self) -> None:
        self.by_block: dict[str, HashSet] = {}
        self._retired: dict[str, None] = {}

    def take_block(self, prevhash: str) -> tuple[bool, str | None]:
        """A job on `prevhash` arrived: (may it be taken, the block it pushed out of memory or None)."""
        if prevhash in self._retired:
            return False, None
        if prevhash in self.by_block:
            return True, None
        self.by_block[sys.intern(prevhash)] = {}
        if len(self.by_block) <= self.keep:
            return True, None
        gone = next(iter(self.by_block))
        del self.by_block[gone]
        self._retired[gone] = None
        if len(self._retired) > self.retired:
            del self._retired[next(iter(self._retired))]
        return True, gone

    def clear(self) -> None:
        self.by_block.clear()
        self._retired.clear()


@dataclass
class SessionRules:
    """What every session of one proxy shares: plain data, no I/O.

    `shares_refused` is set by the proxy while the ledger cannot persist what it would credit: submits
    are then answered with that text (error 20) instead of being judged or forwarded."""

    accounts: Sequence[str]
    limits: Limits
    registered: Registered | None = None  # None: any valid hotkey may mine
    health_checks: frozenset[str] = frozenset()  # worker names authorized and given work, never credited
    shares_refused: str | None = None


class WorkRef(NamedTuple):
    """Which job a share was made for, as the ledger names it."""

    key: str
    extranonce1: str


class Verdict(msgspec.Struct, frozen=True, gc=False):
    """One judged share: accepted when `reason` is empty. `worker` None: a submit this session never
    authorized (counted, never ledgered); `share` None: it never hashed; `latency` None: judged here,
    else seconds from forwarding it to the pool's verdict."""

    session: str
    upstream: str
    worker: Worker | None
    work: WorkRef | None
    submit: SubmitParams | None
    credit: float
    share: Share | None
    reason: str
    received: float  # wall clock, when the submit arrived
    version_mask: int
    latency: float | None = None


class JobSeen(NamedTuple):
    """A job the pool notified, for the ledger's job table."""

    notify: Notify
    key: str
    upstream: str
    seen: float  # wall clock


class AuthorizeOutcome(NamedTuple):
    """What became of a mining.authorize: accepted, refused (by the proxy), pool-refused, health-check."""

    outcome: str
    worker: str  # as the miner sent it, cut to `Limits.max_text`
    detail: str = ""


class PoolTrouble(NamedTuple):
    """Something the pool sent that the operator should hear about (a bad or over-long line)."""

    detail: str


class Outbox:
    """What the session decided since the caller last emptied it."""

    __slots__ = ("close", "jobs", "notes", "to_miner", "to_pool", "verdicts")

    def __init__(self) -> None:
        self.to_miner: list[bytes] = []
        self.to_pool: list[bytes] = []
        self.verdicts: list[Verdict] = []
        self.jobs: list[JobSeen] = []
        self.notes: list[AuthorizeOutcome | PoolTrouble] = []
        self.close: str | None = None  # set once: close the miner (and the pool once nothing is in flight)


class _Work:
    """A live job of this session: the share math, its ledger key, and the extranonce1 it was made with."""

    __slots__ = ("job", "prevhash", "ref")

    def __init__(self, job: Job, key: str, extranonce1: str, prevhash: str) -> None:
        self.job = job
        self.ref = WorkRef(key, extranonce1)
        self.prevhash = prevhash


class _Pending:
    """A request forwarded to the pool, waiting for its reply (the PoolConnection's context)."""

    __slots__ = (
        "alias",
        "answered",
        "credit",
        "received",
        "request",
        "sent_at",
        "share",
        "submit",
        "upstream_id",
        "work",
        "worker",
    )

    def __init__(
        self,
        request: ClientMessage | None,
        sent_at: float,
        worker: Worker | None = None,
        work: _Work | None = None,
        share: Share | None = None,
        received: float = 0.0,
        submit: SubmitParams | None = None,
        credit: float = 0.0,
    ) -> None:
        self.request = request  # what the miner sent: the reply is relayed to its id
        self.sent_at = sent_at  # monotonic
        self.worker = worker
        self.work = work
        self.share = share
        self.received = received  # wall clock, for the ledger
        self.alias = ""  # authorize: the worker name as the miner spelled it
        self.submit = submit
        self.credit = credit  # the difficulty the share earns if the pool accepts it
        self.answered = False  # the miner was already told (the pool was late); the verdict is still ledgered
        self.upstream_id: Any = None


class MinerSession:
    """The proxy's view of one ASIC and its pool connection."""

    def __init__(self, rules: SessionRules, session_id: str, upstream: str, now: Instant) -> None:
        self.rules = rules
        limits = rules.limits
        self.limits = limits
        self.session_id = session_id
        self.upstream = upstream  # host:port label of the pool this session talks to
        self.outbox = Outbox()
        self.miner = MinerConnection(max_line=limits.max_line)
        self.pool = PoolConnection(max_line=limits.max_line)

        self.connected_at = now.mono
        self.last_line_at = now.mono
        self.user_agent = ""
        self.extranonce1: str | None = None
        self.extranonce2_size = 0
        self.requested_mask = 0  # what the miner asked for in mining.configure
        self.pool_mask = 0  # what the pool granted (configure result or set_version_mask)
        self.version_mask = 0  # the two intersected: bits a share may roll
        self.difficulty = 1.0  # in force for the next job the pool notifies
        self.jobs: dict[str, _Work] = {}
        # Jobs on a block dropped from it are dropped too, so their shares are stale, never new.
        self._forwarded = Forwarded()
        self._early_notifies: list[Notify] = []  # jobs that came before we knew extranonce1
        self.workers: dict[str, Worker] = {}  # name as the miner sends it → authorized worker
        self._claims = WorkerClaims(limits.max_workers)
        self.spoken = False  # a valid request arrived: only then is a pool connection worth opening
        self.submits_in_flight = 0
        self.shares_handled = 0  # submits judged plus pool verdicts relayed: the layer times bursts by it
        self.cost = 0.0
        self._cost_at = now.mono
        self._bad_lines = BadLines(now.mono)
        self._waiting: Iterator[MinerEvent] | None = None  # lines read, left at the soft limit
        self._unhandled = 0  # lines of the reads in `_waiting` not handled yet (at most)
        self._misbehaved = False

    # --- state the network layer reads -------------------------------------------------------------

    @property
    def state(self) -> str:
        if self.workers:
            return "mining"
        return "subscribed" if self.extranonce1 is not None else "handshake"

    @property
    def authorized(self) -> bool:
        return bool(self.workers)

    @property
    def close_reason(self) -> str | None:
        return self.outbox.close

    @property
    def pending_submits(self) -> int:
        return self.submits_in_flight

    @property
    def worker_names(self) -> list[str]:
        """The workers this session mines for, for log lines."""
        return sorted({w.full_name for w in self.workers.values()})

    def close(self, reason: str) -> None:
        if self.outbox.close is None:
            self.outbox.close = reason
            self.miner.close()

    def throttle(self, now: float) -> float:
        """Seconds to stop reading this miner for: until its cost decays below the soft limit (0: read on)."""
        if self.cost <= self.limits.cost_soft_limit:  # the common case, once per read: no decay to compute
            return 0.0
        cost = self._decayed(now)
        soft = self.limits.cost_soft_limit
        if cost <= soft:
            return 0.0
        return (cost - soft) / self.limits.cost_decay_per_second

    def _decayed(self, now: float) -> float:
        elapsed = now - self._cost_at
        if elapsed > 0.0:
            self.cost = max(0.0, self.cost - elapsed * self.limits.cost_decay_per_second)
            self._cost_at = now
        return self.cost

    def _charge(self, amount: float, now: float) -> None:
        cost = self._decayed(now) + amount
        self.cost = cost
        if cost > self.limits.cost_hard_limit:
            self.close(f"requests cost more than the session may spend (cost {cost:.0f})")

    # --- from the miner ----------------------------------------------------------------------------

    def receive_miner(self, data: bytes, now: Instant) -> None:
        """Bytes the miner sent: every complete line becomes an event, judged in order.

        Handling stops at the close decision and at the soft limit: one read can hold thousands of
        lines, and a flooder's would otherwise all be handled at once. The lines left wait (`waiting`)
        until the network layer calls again (with b"") once `throttle` says 0; if pricing them like the
        line that crossed the limit puts the session over its hard limit, it is closed now instead."""
        events = self._waiting
        if events is None:
            events = self.miner.events(data)
            self._unhandled = data.count(b"\n")  # lines in this read, at most (empty ones are dropped)
        elif data:  # the layer stops reading while lines wait: only bytes already on their way
            events = itertools.chain(events, self.miner.events(data))
            self._unhandled += data.count(b"\n")
        self._waiting = None
        limits = self.limits
        soft = limits.cost_soft_limit
        for event in events:
            self._unhandled -= 1
            before = self.cost
            self.miner_event(event, now)
            if self.outbox.close is not None:
                return
            if not self.upstream and len(self.outbox.to_pool) > limits.max_queued_before_pool:
                # No pool connection yet (`upstream` is set when it is up): what is queued for it is all
                # held here, and a miner that piles up requests before it is up is flooding.
                self._misbehaved = True
                self.close("too many requests before the pool connection was up")
                return
            if self.cost > soft:
                self._waiting = events
                price = max(self.cost - before, limits.submit_cost)
                if self.cost + max(self._unhandled, 0) * price > limits.cost_hard_limit:
                    self._misbehaved = True
                    self.close(
                        f"requests cost more than the session may spend (cost {self.cost:.0f}, "
                        f"{self._unhandled} more lines waiting)"
                    )
                return

    @property
    def waiting(self) -> bool:
        """Lines already read wait to be handled (the soft limit stopped them)."""
        return self._waiting is not None

    @property
    def bad_lines(self) -> int:
        """Malformed lines not yet forgiven."""
        return self._bad_lines.count

    @property
    def misbehaved(self) -> bool:
        """Closed for what the miner sent (its cost, malformed or over-long lines, requests piled up before
        its pool connection): its address pays."""
        limits = self.limits
        return self._misbehaved or self.cost > limits.cost_hard_limit or self.bad_lines > limits.max_bad_lines

    def miner_event(self, event: MinerEvent, now: Instant) -> None:
        mono = now.mono
        self.last_line_at = mono
        limits = self.limits
        if type(event) is RequestReceived:
            message = event.message
            if type(message) is Submit:
                # The share path: the cost's decay and charge inlined (one submit costs `submit_cost`).
                elapsed = mono - self._cost_at
                cost = self.cost
                if elapsed > 0.0:
                    cost = max(0.0, cost - elapsed * limits.cost_decay_per_second)
                    self._cost_at = mono
                cost += limits.submit_cost + len(event.line) * limits.byte_cost
                self.cost = cost
                if cost > limits.cost_hard_limit:
                    self.close(f"requests cost more than the session may spend (cost {cost:.0f})")
                self._submit(message, now)
                return
            self.spoken = True
            self._charge(limits.request_cost + len(event.line) * limits.byte_cost, mono)
            self._request(message, now)
        elif type(event) is Refused:
            self._charge(limits.submit_cost + limits.error_cost + len(event.line) * limits.byte_cost, mono)
            self._refused(event, now)
        elif type(event) is BadLine:
            self._charge(limits.error_cost + len(event.line) * limits.byte_cost, mono)
            self._bad_line(event.error, now)

    def _request(self, message: ClientMessage, now: Instant) -> None:
        if type(message) is Authorize:
            self._authorize(message, now)
        elif type(message) is Subscribe:
            if message.params.user_agent:
                self.user_agent = message.params.user_agent[: self.limits.max_text]
            self._forward(message, "mining.subscribe", _subscribe_params(message), now)
        elif type(message) is Configure:
            options = configure_options(message)
            if isinstance(options, InvalidMessage):
                self._bad_line(options, now)
                return
            if options.version_rolling:
                self.requested_mask = options.version_rolling_mask
            self._forward(message, "mining.configure", [message.params.extensions, message.params.options], now)
        elif type(message) is ExtranonceSubscribe:
            self._forward(message, "mining.extranonce.subscribe", message.params, now)
        elif type(message) is SuggestDifficulty:
            self._forward(message, "mining.suggest_difficulty", [message.params.difficulty], now)
        elif isinstance(message, Request):
            # Unknown to us, maybe known to the pool: relay it and its answer.
            self._forward(message, message.method, message.params, now)

    def _forward(self, request: ClientMessage | None, method: str, params: list[Any], now: Instant,
                 pending: _Pending | None = None) -> None:  # fmt: skip
        """Send a request to the pool under a fresh id, remembering what to do with its reply."""
        if pending is None:
            pending = _Pending(request, now.mono)
        upstream_id, line = self.pool.send_request(method, params, pending)
        pending.upstream_id = upstream_id
        self.outbox.to_pool.append(line)

    def _answer_error(self, request: ClientMessage | ProtocolError | None, code: int, message: str) -> None:
        if request is not None and request.id is not None:
            self.outbox.to_miner.append(self.miner.refuse(request, StratumError(code, message)))

    def _bad_line(self, error: ProtocolError, now: Instant) -> None:
        if isinstance(error, LineTooLong):
            self._misbehaved = True
            self.close(f"line too long ({error.length} bytes)")
            return
        limits = self.limits
        self._bad_lines.add(now.mono, limits.bad_line_forgiven_after)
        self._answer_error(error, ErrorCode.OTHER, error.reason[: limits.max_error_text])
        if isinstance(error, InvalidMessage) and error.method == SUBMIT:
            # Counted; never a ledger row of attacker text.
            self._verdict(now.wall, None, None, None, 0.0, None, RejectReason.MALFORMED)
        if self.bad_lines > limits.max_bad_lines:
            self.close(f"too many malformed lines ({self.bad_lines})")

    def _authorize(self, message: Authorize, now: Instant) -> None:
        name = message.params.worker
        rules = self.rules
        shown = name[: self.limits.max_text]
        if name in rules.health_checks:
            # IHP's health check: the pool authorizes it and sends work; it is never credited.
            self.outbox.notes.append(AuthorizeOutcome("health-check", shown))
            self._forward(message, AUTHORIZE, [name, *_password(message)], now)
            return
        try:
            worker = Worker.parse(name, rules.accounts)
            registered = rules.registered
            if registered is not None and worker.hotkey not in registered:
                if not registered.loaded:
                    raise WorkerRefused("the subnet registry is not loaded yet; try again shortly")
                raise WorkerRefused(f"hotkey {worker.hotkey} is not registered on the subnet")
            self._claims.check(worker.full_name)
        except WorkerRefused as refused:
            self.outbox.notes.append(AuthorizeOutcome("refused", shown, str(refused)))
            self._answer_error(message, ErrorCode.UNAUTHORIZED, str(refused))
            return
        self._claims.add(worker.full_name)
        pending = _Pending(message, now.mono, worker)
        pending.alias = name  # submits may use the name as the miner sent it
        self._forward(message, AUTHORIZE, [worker.full_name, *_password(message)], now, pending)

    def _refused(self, event: Refused, now: Instant) -> None:
        """A submit the state table forbids here (before subscribe or authorize)."""
        self.shares_handled += 1
        message = event.message
        if message.id is not None:
            self.outbox.to_miner.append(self.miner.refuse(message, event.error))
        if type(message) is not Submit:
            return
        worker = self.workers.get(message.params.worker)
        if worker is None:  # never authorized here: counted, no row
            self._verdict(now.wall, None, None, None, 0.0, None, RejectReason.UNAUTHORIZED)
            return
        self._verdict(now.wall, worker, None, message.params, 0.0, None, event.reason)

    def _submit(self, message: Submit, now: Instant) -> None:
        p = message.params
        self.shares_handled += 1
        worker = self.workers.get(p.worker)
        if worker is None:
            # Only authorized work reaches the ledger: no row, no text the sender chose.
            self._answer_error(message, ErrorCode.UNAUTHORIZED, "Unauthorized worker")
            self._verdict(now.wall, None, None, None, 0.0, None, RejectReason.UNAUTHORIZED)
            return
        refused = self.rules.shares_refused
        if refused is not None:
            # The ledger cannot take more: a share we cannot record must not be credited by the pool.
            self._answer_error(message, ErrorCode.OTHER, refused)
            self._verdict(now.wall, None, None, None, 0.0, None, LEDGER_UNAVAILABLE)
            return
        work = self.jobs.get(p.job_id)
        if work is None:
            self._answer_error(message, ErrorCode.JOB_NOT_FOUND, "Job not found")
            self._verdict(now.wall, worker, None, p, 0.0, None, RejectReason.STALE)
            return
        credit = credit_for(work.job.difficulty, self.difficulty)
        try:
            share = work.job.hash_share(p.extranonce2, p.ntime, p.nonce, p.version_bits, self.version_mask)
            forwarded = self._forwarded.by_block.get(work.prevhash)
            if forwarded is None:
                raise ShareRejected(ErrorCode.JOB_NOT_FOUND, RejectReason.STALE, "Job not found")
            check_credit(share, forwarded, credit)
        except ShareRejected as rejected:
            # A rejected share costs what any submit costs: farms send stale shares in bursts at
            # every block, and a duplicate is hashed like any other share.
            self._answer_error(message, rejected.code, rejected.message)
            self._verdict(now.wall, worker, work.ref, p, credit, rejected.share, rejected.reason)
            return
        forwarded[share.hash] = None
        params = [worker.full_name, p.job_id, p.extranonce2, p.ntime, p.nonce]
        if p.version_bits is not None:
            params.append(p.version_bits)
        # Kept even when the miner sent no id: the pool's verdict is what the ledger records.
        self.submits_in_flight += 1
        pending = _Pending(message, now.mono, worker, work, share, now.wall, p, credit)
        self._forward(message, SUBMIT, params, now, pending)

    def _verdict(
        self,
        received: float,
        worker: Worker | None,
        work: WorkRef | None,
        submit: SubmitParams | None,
        credit: float,
        share: Share | None,
        reason: str,
        latency: float | None = None,
    ) -> None:
        self.outbox.verdicts.append(
            Verdict(
                self.session_id,
                self.upstream,
                worker,
                work,
                submit,
                credit,
                share,
                reason,
                received,
                self.version_mask,
                latency,
            )
        )

    # --- from the pool -----------------------------------------------------------------------------

    def receive_pool(self, data: bytes, now: Instant) -> None:
        """Bytes the pool sent."""
        for event in self.pool.events(data):
            self.pool_event(event, now)

    def pool_event(self, event: PoolEvent, now: Instant) -> None:
        if type(event) is ReplyReceived:
            self._reply(event, now)
        elif type(event) is Notification:
            self._notification(event.message, event.line, now)
        elif type(event) is BadLine:
            error = event.error
            if isinstance(error, LineTooLong):
                self.outbox.notes.append(PoolTrouble(f"over-long line from pool {self.upstream} dropped"))
            else:
                self.outbox.notes.append(PoolTrouble(f"bad line from pool {self.upstream}: {error.reason}"))
        # UnmatchedReply: a reply to no request of ours (one we gave up on): nothing to do.

    def _notification(self, message: Any, line: bytes, now: Instant) -> None:
        to_miner = self.outbox.to_miner
        kind = type(message)
        if kind is Notify:
            self._notify(message, now.wall)
            to_miner.append(line + b"\n")
        elif kind is SetDifficulty:
            self.difficulty = message.difficulty
            to_miner.append(line + b"\n")
        elif kind is SetExtranonce:
            # Applies to jobs notified from now on; live jobs keep the extranonce they were made with.
            self.extranonce1 = message.extranonce1
            self.extranonce2_size = message.extranonce2_size
            to_miner.append(line + b"\n")
        elif kind is SetVersionMask:
            self._grant_mask(message.mask)
            to_miner.append(line + b"\n")
        elif kind is Reconnect:
            # Never relay: the miner would leave the proxy for the pool. It reconnects to us instead,
            # and its new session gets a fresh pool connection.
            self.close("pool asked to reconnect")
        elif kind is ServerRequest:
            self._pool_request(message)
        else:  # ShowMessage and anything else harmless: the miner may display it
            to_miner.append(line + b"\n")

    def _grant_mask(self, pool_mask: int) -> None:
        """The pool granted version bits: a share may roll only those both sides agreed on."""
        self.pool_mask = pool_mask
        self.version_mask = pool_mask & self.requested_mask

    def _pool_request(self, message: ServerRequest) -> None:
        if message.id is None:
            return
        if message.method == "client.get_version":
            answer = self.pool.answer(message.id, f"{self.user_agent or 'unknown'} via {VERSION}")
        elif message.method == "mining.ping":
            answer = self.pool.answer(message.id, "pong")
        else:
            answer = self.pool.refuse(message.id, StratumError(ErrorCode.OTHER, f"{message.method} not supported"))
        self.outbox.to_pool.append(answer)

    def _notify(self, notify: Notify, seen: float) -> None:
        if self.extranonce1 is None:
            self._early_notifies.append(notify)
            del self._early_notifies[: -self.limits.max_jobs]
            return
        prevhash = notify.prevhash.lower()
        taken, gone = self._forwarded.take_block(prevhash)
        if not taken:
            self.outbox.notes.append(PoolTrouble(retired_block_note(self.upstream, notify.job_id)))
            return
        if notify.clean_jobs:
            self.jobs.clear()
        elif len(self.jobs) >= self.limits.max_jobs:
            del self.jobs[next(iter(self.jobs))]
        if gone is not None:
            for job_id in [j for j, w in self.jobs.items() if w.prevhash == gone]:
                del self.jobs[job_id]
        key = job_key(notify)
        job = Job(notify, self.extranonce1, self.extranonce2_size, self.difficulty)
        self.jobs[notify.job_id] = _Work(job, key, self.extranonce1, prevhash)
        self.outbox.jobs.append(JobSeen(notify, key, self.upstream, seen))

    def _reply(self, event: ReplyReceived, now: Instant) -> None:
        pending: _Pending = event.context
        reply = event.reply
        method = event.method
        if method == SUBMIT:
            self._submit_verdict(pending, reply, now)
        elif method == AUTHORIZE:
            worker = pending.worker
            if worker is None:
                pass  # a health check: relayed, never a worker that can earn credit
            elif reply.result == _TRUE and reply.error == _NULL:
                # Bare, full and as-sent spellings all work for later submits.
                self.workers[worker.full_name] = worker
                self.workers[f"{worker.hotkey}.{worker.worker_id}"] = worker
                self.workers[pending.alias] = worker
                self.outbox.notes.append(AuthorizeOutcome("accepted", worker.full_name))
            else:
                failure = reply.failure()
                detail = failure.message if failure else "refused"
                self.outbox.notes.append(AuthorizeOutcome("pool-refused", worker.full_name, detail))
                if worker.full_name not in self.workers:
                    self._claims.discard(worker.full_name)
        elif method == "mining.subscribe":
            result = subscribe_result(reply.value())
            if result is not None:
                self.extranonce1 = result.extranonce1
                self.extranonce2_size = result.extranonce2_size
                early, self._early_notifies = self._early_notifies, []
                for notify in early:
                    self._notify(notify, now.wall)
        elif method == "mining.configure":
            value = reply.value()
            if isinstance(value, dict) and value.get("version-rolling") is True:
                mask = value.get("version-rolling.mask")
                self._grant_mask(int(mask, 16) if isinstance(mask, str) and 0 < len(mask) <= 8 and is_hex(mask) else 0)
        request = pending.request
        if request is not None and request.id is not None and not pending.answered:
            if method == SUBMIT:  # moves no state: the reply re-addressed, its bytes unchanged
                self.outbox.to_miner.append(encode_reply(request.id, reply))
            else:
                self.outbox.to_miner.append(self.miner.relay(request, reply))

    def _submit_verdict(self, pending: _Pending, reply: Reply, now: Instant) -> None:
        self.shares_handled += 1
        self.submits_in_flight -= 1
        accepted = reply.result == _TRUE and reply.error == _NULL
        if accepted:
            reason = ""
        else:
            failure = reply.failure()
            reason = f"pool: {failure.message if failure else 'rejected'}"[: self.limits.max_reason_text]
        self._pending_verdict(pending, reason, now.mono - pending.sent_at)

    # --- time and loss -----------------------------------------------------------------------------

    def tick(self, now: Instant) -> None:
        """Apply timeouts: the pool's verdicts, the handshake, silence."""
        limits = self.limits
        mono = now.mono
        deadline = mono - limits.submit_timeout
        give_up = mono - limits.late_verdict_timeout
        due: list[_Pending] = []
        for method, pending in self.pool.pending.contexts():
            if pending.sent_at > deadline:
                break  # in the order sent: the rest are younger
            if method != SUBMIT or pending.sent_at <= give_up:
                due.append(pending)
            elif not pending.answered:
                # Tell the miner now; a verdict that still comes is what the ledger records.
                self._answer_error(pending.request, ErrorCode.OTHER, "pool did not answer in time")
                pending.answered = True
        for pending in due:
            self.pool.pending.pop(pending.upstream_id)
            self._unanswered(pending, "pool did not answer in time")
        if not self.workers and mono - self.connected_at > limits.handshake_timeout:
            self.close("no successful authorize within the handshake timeout")
        elif mono - self.last_line_at > limits.idle_timeout:
            self.close("idle timeout")

    def pool_lost(self, reason: str, now: Instant) -> None:
        """The pool connection is gone (or never came): answer everything in flight, record the
        shares, tell the miner why, close."""
        for pending in self.pool.close():
            self._unanswered(pending, reason)
        if self.outbox.close is None:
            # A line the miner can log before the disconnect (cgminer, bmminer and ESP-Miner show it).
            note = ShowMessage(f"InfiniteHash proxy: {reason}; reconnect shortly")
            self.outbox.to_miner.append(encode_notification("client.show_message", [note.message]))
        self.close(reason)

    def _unanswered(self, pending: _Pending, message: str) -> None:
        if not pending.answered:
            self._answer_error(pending.request, ErrorCode.OTHER, message)
        if pending.submit is not None:
            self.submits_in_flight -= 1
            self._pending_verdict(pending, RejectReason.TIMEOUT)

    def _pending_verdict(self, pending: _Pending, reason: str, latency: float | None = None) -> None:
        """The verdict on a share forwarded to the pool: its answer, or none (`timeout`)."""
        work = pending.work
        self._verdict(
            pending.received,
            pending.worker,
            work.ref if work else None,
            pending.submit,
            pending.credit,
            pending.share,
            reason,
            latency,
        )


def _password(message: Authorize) -> list[Any]:
    return [] if message.params.password is None else [message.params.password]


def _subscribe_params(message: Subscribe) -> list[Any]:
    p = message.params
    params: list[Any] = []
    if p.user_agent is not None:
        params.append(p.user_agent)
        if p.session_id is not None:
            params.append(p.session_id)
    return params
