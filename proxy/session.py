"""One ASIC's passthrough session, sans-I/O: lines in, lines out, ledger rows recorded.

The asyncio layer (`proxy/server.py`) feeds `miner_line` / `pool_line` with complete lines and
writes out what accumulates in `to_miner` / `to_pool`; `close_reason` set means "close both
connections". Everything the proxy decides about a session lives here, testable without sockets.

Ids: every request forwarded to the pool gets a fresh id from this session, and the reply is
re-addressed to the miner's own id. Miners reuse ids (cpuminer sends every submit as id 4), so the
miner's id can never key anything.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from ledger.jobs import job_key, job_row
from ledger.rows import Row, ShareRow
from ledger.workers import WorkerName as Worker
from ledger.workers import WorkerRefused
from protocol.errors import (
    ErrorCode,
    InvalidMessage,
    LineTooLong,
    ProtocolError,
    RejectReason,
    StratumError,
)
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
    decode_client_message,
    decode_server_message,
    encode_error,
    encode_reply,
    encode_request,
    encode_result,
    is_hex,
    subscribe_result,
)
from protocol.work import Job, Share, ShareRejected
from proxy.config import Limits
from proxy.hotkeys import RegisteredHotkeys
from proxy.metrics import ProxyMetrics

log = logging.getLogger("proxy.session")

_TRUE = msgspec.Raw(b"true")
_NULL = msgspec.Raw(b"null")
MAX_JOBS = 16  # live jobs kept per session; a clean_jobs notify drops all earlier ones
_BLOCKS_REMEMBERED = 2  # prevhashes whose forwarded shares are remembered (the current block and the last)
_JOBS_REMEMBERED = 4096  # job keys the proxy remembers having ledgered
VERSION = "ih-proxy/0.1"


@dataclass
class SessionContext:
    """What every session of one proxy shares."""

    accounts: Sequence[str]
    proxy_id: str
    limits: Limits
    record: Callable[[Row], None]
    metrics: ProxyMetrics
    registered: RegisteredHotkeys | None = None  # None: any valid hotkey may mine
    health_checks: frozenset[str] = frozenset()  # worker names authorized and given work, never credited
    commit: Callable[[], None] = lambda: None  # make recorded rows crash-proof before miners are answered
    jobs_recorded: dict[str, None] = field(default_factory=dict)  # job keys ledgered lately (insertion order)

    def record_job(self, notify: Notify, key: str, upstream: str) -> None:
        """Ledger a job once per distinct content: every session of one pool account sees the same jobs."""
        recorded = self.jobs_recorded
        if key in recorded:
            return
        recorded[key] = None
        if len(recorded) > _JOBS_REMEMBERED:
            del recorded[next(iter(recorded))]
        self.record(job_row(notify, key, time.time(), self.proxy_id, upstream))


class _Work:
    """A live job of this session: the share math, its ledger key, and the extranonce1 it was made with."""

    __slots__ = ("extranonce1", "job", "key", "prevhash")

    def __init__(self, job: Job, key: str, extranonce1: str, prevhash: str) -> None:
        self.job = job
        self.key = key
        self.extranonce1 = extranonce1
        self.prevhash = prevhash


class _Pending:
    """A request forwarded to the pool, waiting for its reply."""

    __slots__ = (
        "alias",
        "answered",
        "credit",
        "job",
        "kind",
        "miner_id",
        "received",
        "sent_at",
        "share",
        "submit",
        "worker",
    )

    def __init__(
        self,
        kind: str,
        miner_id: Any,
        sent_at: float,
        worker: Worker | None = None,
        job: _Work | None = None,
        share: Share | None = None,
        received: float = 0.0,
        submit: SubmitParams | None = None,
        credit: float = 0.0,
    ) -> None:
        self.kind = kind
        self.miner_id = miner_id
        self.sent_at = sent_at  # monotonic
        self.worker = worker
        self.job = job
        self.share = share
        self.received = received  # wall clock, for the ledger
        self.alias = ""  # authorize: the worker name as the miner spelled it
        self.submit = submit
        self.credit = credit  # the difficulty the share earns if the pool accepts it
        self.answered = False  # the miner was already told (the pool was late); the verdict is still ledgered


class MinerSession:
    """The proxy's view of one ASIC and its pool connection."""

    def __init__(self, ctx: SessionContext, session_id: str, upstream: str, now: float) -> None:
        self.ctx = ctx
        self.session_id = session_id
        self.upstream = upstream  # host:port label of the pool this session talks to
        self.to_miner: list[bytes] = []
        self.to_pool: list[bytes] = []
        self.close_reason: str | None = None

        self.connected_at = now
        self.last_line_at = now
        self.user_agent = ""
        self.extranonce1: str | None = None
        self.extranonce2_size = 0
        self.requested_mask = 0  # what the miner asked for in mining.configure
        self.pool_mask = 0  # what the pool granted (configure result or set_version_mask)
        self.version_mask = 0  # the two intersected: bits a share may roll
        self.difficulty = 1.0  # in force for the next job the pool notifies
        self.jobs: dict[str, _Work] = {}
        # Header hashes of shares forwarded, per prevhash (the block they build on): a share is
        # credited once per pool connection whatever job id it comes under. Only the newest blocks
        # are kept; jobs on an older one are dropped with it, so their shares are stale, never new.
        self._forwarded: dict[str, set[bytes]] = {}
        self._early_notifies: list[Notify] = []  # jobs that came before we knew extranonce1
        self.workers: dict[str, Worker] = {}  # name as the miner sends it → authorized worker
        self._pending: dict[int, _Pending] = {}
        self._ids = itertools.count(1)
        self.bad_lines = 0
        self.shares_handled = 0  # submits judged plus pool verdicts relayed: the layer times bursts by it
        self._tokens = ctx.limits.submit_burst
        self._tokens_at = now

    # --- state the server layer reads --------------------------------------------------------------

    @property
    def state(self) -> str:
        if self.workers:
            return "mining"
        return "subscribed" if self.extranonce1 is not None else "handshake"

    @property
    def pending_submits(self) -> int:
        if not self._pending:  # the common case, checked on every pool read: no scan
            return 0
        return sum(1 for p in self._pending.values() if p.kind == "mining.submit")

    def close(self, reason: str) -> None:
        if self.close_reason is None:
            self.close_reason = reason

    # --- from the miner ----------------------------------------------------------------------------

    def miner_line(self, line: bytes | LineTooLong, now: float) -> None:
        self.last_line_at = now
        message = decode_client_message(line) if isinstance(line, bytes) else line
        if isinstance(message, Submit):
            self._submit(message, now)
        elif isinstance(message, ProtocolError):
            self._bad_line(message)
        elif isinstance(message, Authorize):
            self._authorize(message, now)
        elif isinstance(message, Subscribe):
            if message.params.user_agent:
                self.user_agent = message.params.user_agent[:128]
            self._forward(message.id, "mining.subscribe", _subscribe_params(message), now)
        elif isinstance(message, Configure):
            options = configure_options(message)
            if isinstance(options, InvalidMessage):
                self._bad_line(options)
                return
            if options.version_rolling:
                self.requested_mask = options.version_rolling_mask
            self._forward(message.id, "mining.configure", [message.params.extensions, message.params.options], now)
        elif isinstance(message, ExtranonceSubscribe):
            self._forward(message.id, "mining.extranonce.subscribe", message.params, now)
        elif isinstance(message, SuggestDifficulty):
            params = [message.params.difficulty]
            self._forward(message.id, "mining.suggest_difficulty", params, now)
        elif isinstance(message, Request):
            # Unknown to us, maybe known to the pool: relay it and its answer.
            self._forward(message.id, message.method, message.params, now)

    def _forward(
        self, miner_id: Any, method: str, params: list[Any], now: float, pending: _Pending | None = None
    ) -> None:
        """Send a request to the pool under a fresh id; remember it when its reply matters."""
        upstream_id = next(self._ids)
        self.to_pool.append(encode_request(upstream_id, method, params))
        if pending is None and miner_id is not None:
            pending = _Pending(method, miner_id, now)
        if pending is not None:
            self._pending[upstream_id] = pending

    def _answer_error(self, miner_id: Any, code: int, message: str) -> None:
        if miner_id is not None:
            self.to_miner.append(encode_error(miner_id, StratumError(code, message)))

    def _bad_line(self, error: ProtocolError) -> None:
        if isinstance(error, LineTooLong):
            self.close(f"line too long ({error.length} bytes)")
            return
        self.bad_lines += 1
        self._answer_error(error.id, ErrorCode.OTHER, error.reason[:200])
        if isinstance(error, InvalidMessage) and error.method == "mining.submit":
            self.ctx.metrics.count_share("refused", "malformed")  # counted; never a ledger row of attacker text
        if self.bad_lines > self.ctx.limits.max_bad_lines:
            self.close(f"too many malformed lines ({self.bad_lines})")

    def _authorize(self, message: Authorize, now: float) -> None:
        name = message.params.worker
        if name in self.ctx.health_checks:
            # IHP's health check: the pool authorizes it and sends work; it is never credited.
            self.ctx.metrics.authorize.labels("health-check").inc()
            self._forward(
                message.id,
                "mining.authorize",
                [name, *self._password(message)],
                now,
                _Pending("mining.authorize", message.id, now, None),
            )
            return
        try:
            worker = Worker.parse(name, self.ctx.accounts)
            registered = self.ctx.registered
            if registered is not None and worker.hotkey not in registered:
                if not registered.loaded:
                    raise WorkerRefused("the subnet registry is not loaded yet; try again shortly")
                raise WorkerRefused(f"hotkey {worker.hotkey} is not registered on the subnet")
        except WorkerRefused as refused:
            self.ctx.metrics.authorize.labels("refused").inc()
            log.info("session %s: refused worker %r: %s", self.session_id, name[:128], refused)
            self._answer_error(message.id, ErrorCode.UNAUTHORIZED, str(refused))
            return
        params: list[Any] = [worker.full_name, *self._password(message)]
        pending = _Pending("mining.authorize", message.id, now, worker)
        pending.alias = name  # submits may use the name as the miner sent it
        self._forward(message.id, "mining.authorize", params, now, pending)

    @staticmethod
    def _password(message: Authorize) -> list[Any]:
        return [] if message.params.password is None else [message.params.password]

    def _submit(self, message: Submit, now: float) -> None:
        p = message.params
        self.shares_handled += 1
        if not self._take_token(now):
            self.close("submit rate limit exceeded")
            self._answer_error(message.id, ErrorCode.OTHER, "rate limit exceeded")
            return
        worker = self.workers.get(p.worker)
        if worker is None:
            # Only authorized work reaches the ledger: no row, no text the sender chose.
            self._answer_error(message.id, ErrorCode.UNAUTHORIZED, "Unauthorized worker")
            self.ctx.metrics.count_share("refused", "unauthorized")
            return
        if self.extranonce1 is None:
            self._answer_error(message.id, ErrorCode.NOT_SUBSCRIBED, "Not subscribed")
            self._record(time.time(), worker, None, p, 0.0, None, RejectReason.NOT_SUBSCRIBED)
            return
        work = self.jobs.get(p.job_id)
        if work is None:
            self._answer_error(message.id, ErrorCode.JOB_NOT_FOUND, "Job not found")
            self._record(time.time(), worker, None, p, 0.0, None, RejectReason.STALE)
            return
        # Never more than the pool could credit: whether it applies a new set_difficulty to live
        # jobs or not, the lower of the two is what it owes at least.
        credit = min(work.job.difficulty, self.difficulty)
        try:
            share = work.job.hash_share(p.extranonce2, p.ntime, p.nonce, p.version_bits, self.version_mask)
            forwarded = self._forwarded.get(work.prevhash)
            if forwarded is None:
                raise ShareRejected(ErrorCode.JOB_NOT_FOUND, RejectReason.STALE, "Job not found")
            if share.hash in forwarded:
                raise ShareRejected(ErrorCode.DUPLICATE, RejectReason.DUPLICATE, "Duplicate share", share)
            if share.difficulty < credit:
                raise ShareRejected(
                    ErrorCode.LOW_DIFFICULTY,
                    RejectReason.LOW_DIFFICULTY,
                    f"Low difficulty share ({share.difficulty:.6g} < {credit:.6g})",
                    share,
                )
        except ShareRejected as rejected:
            self._answer_error(message.id, rejected.code, rejected.message)
            self._record(time.time(), worker, work, p, credit, rejected.share, rejected.reason)
            return
        forwarded.add(share.hash)
        params = [worker.full_name, p.job_id, p.extranonce2, p.ntime, p.nonce]
        if p.version_bits is not None:
            params.append(p.version_bits)
        # Kept even when the miner sent no id: the pool's verdict is what the ledger records.
        self._forward(
            message.id,
            "mining.submit",
            params,
            now,
            _Pending("mining.submit", message.id, now, worker, work, share, time.time(), p, credit),
        )

    def _take_token(self, now: float) -> bool:
        limits = self.ctx.limits
        self._tokens = min(limits.submit_burst, self._tokens + (now - self._tokens_at) * limits.submits_per_second)
        self._tokens_at = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    def _record(
        self,
        received: float,
        worker: Worker | None,
        work: _Work | None,
        submit: SubmitParams,
        credit: float,
        share: Share | None,
        reason: str,
    ) -> None:
        """Count a judged share and write its ledger row: accepted when `reason` is empty.

        `credit` is what the share earns when accepted; `share` is None when it never hashed. A
        health check's shares are counted, never ledgered."""
        self.ctx.metrics.count_share(*_metric_labels(reason))
        if worker is None:
            return
        bits = submit.version_bits
        self.ctx.record(
            ShareRow(
                received,
                self.ctx.proxy_id,
                worker.hotkey,
                worker.full_name,
                self.session_id,
                submit.job_id[:64],
                credit,
                share.difficulty if share else 0.0,
                share.hex_hash if share else "",
                0 if reason else 1,
                reason,
                self.upstream,
                1 if share is not None and share.is_block else 0,
                work.key if work else "",
                work.extranonce1 if work else "",
                submit.extranonce2[:64].lower(),
                _uint32(submit.ntime),
                _uint32(submit.nonce),
                None if bits is None else _uint32(bits),
                self.version_mask,
            )
        )

    # --- from the pool -----------------------------------------------------------------------------

    def pool_line(self, line: bytes | LineTooLong, now: float) -> None:
        if isinstance(line, LineTooLong):
            log.warning("session %s: over-long line from pool %s dropped", self.session_id, self.upstream)
            return
        message = decode_server_message(line)
        if isinstance(message, Reply):
            self._reply(message, now)
        elif isinstance(message, Notify):
            self._notify(message)
            self.to_miner.append(line + b"\n")
        elif isinstance(message, SetDifficulty):
            self.difficulty = message.difficulty
            self.to_miner.append(line + b"\n")
        elif isinstance(message, SetExtranonce):
            # Applies to jobs notified from now on; live jobs keep the extranonce they were made with.
            self.extranonce1 = message.extranonce1
            self.extranonce2_size = message.extranonce2_size
            self.to_miner.append(line + b"\n")
        elif isinstance(message, SetVersionMask):
            self._grant_mask(message.mask)
            self.to_miner.append(line + b"\n")
        elif isinstance(message, Reconnect):
            # Never relay: the miner would leave the proxy for the pool. It reconnects to us instead,
            # and its new session gets a fresh pool connection.
            self.close("pool asked to reconnect")
        elif isinstance(message, ServerRequest):
            self._pool_request(message)
        elif isinstance(message, ProtocolError):
            log.warning("session %s: bad line from pool %s: %s", self.session_id, self.upstream, message.reason)
        else:  # ShowMessage and anything else harmless: the miner may display it
            self.to_miner.append(line + b"\n")

    def _grant_mask(self, pool_mask: int) -> None:
        """The pool granted version bits: a share may roll only those both sides agreed on."""
        self.pool_mask = pool_mask
        self.version_mask = pool_mask & self.requested_mask

    def _pool_request(self, message: ServerRequest) -> None:
        if message.id is None:
            return
        if message.method == "client.get_version":
            answer = encode_result(message.id, f"{self.user_agent or 'unknown'} via {VERSION}")
        elif message.method == "mining.ping":
            answer = encode_result(message.id, "pong")
        else:
            answer = encode_error(message.id, StratumError(ErrorCode.OTHER, f"{message.method} not supported"))
        self.to_pool.append(answer)

    def _notify(self, notify: Notify) -> None:
        if self.extranonce1 is None:
            self._early_notifies.append(notify)
            del self._early_notifies[:-MAX_JOBS]
            return
        if notify.clean_jobs:
            self.jobs.clear()
        elif len(self.jobs) >= MAX_JOBS:
            del self.jobs[next(iter(self.jobs))]
        prevhash = notify.prevhash.lower()
        if prevhash not in self._forwarded:
            self._forwarded[prevhash] = set()
            if len(self._forwarded) > _BLOCKS_REMEMBERED:
                gone = next(iter(self._forwarded))
                del self._forwarded[gone]
                for job_id in [j for j, w in self.jobs.items() if w.prevhash == gone]:
                    del self.jobs[job_id]
        key = job_key(notify)
        job = Job(notify, self.extranonce1, self.extranonce2_size, self.difficulty)
        self.jobs[notify.job_id] = _Work(job, key, self.extranonce1, prevhash)
        self.ctx.record_job(notify, key, self.upstream)

    def _reply(self, reply: Reply, now: float) -> None:
        pending = self._pending.pop(reply.id, None) if isinstance(reply.id, int) else None
        if pending is None:
            log.debug("session %s: reply to no request of ours: id %r", self.session_id, reply.id)
            return
        kind = pending.kind
        if kind == "mining.submit":
            self._submit_verdict(pending, reply, now)
        elif kind == "mining.authorize":
            if pending.worker is None:
                pass  # a health check: relayed, never a worker that can earn credit
            elif reply.result == _TRUE and reply.error == _NULL:
                worker = pending.worker
                # Bare, full and as-sent spellings all work for later submits.
                self.workers[worker.full_name] = worker
                self.workers[f"{worker.hotkey}.{worker.worker_id}"] = worker
                self.workers[pending.alias] = worker
                self.ctx.metrics.authorize.labels("accepted").inc()
            else:
                self.ctx.metrics.authorize.labels("pool-refused").inc()
        elif kind == "mining.subscribe":
            result = subscribe_result(reply.value())
            if result is not None:
                self.extranonce1 = result.extranonce1
                self.extranonce2_size = result.extranonce2_size
                early, self._early_notifies = self._early_notifies, []
                for notify in early:
                    self._notify(notify)
        elif kind == "mining.configure":
            value = reply.value()
            if isinstance(value, dict) and value.get("version-rolling") is True:
                mask = value.get("version-rolling.mask")
                self._grant_mask(int(mask, 16) if isinstance(mask, str) and 0 < len(mask) <= 8 and is_hex(mask) else 0)
        if pending.miner_id is not None and not pending.answered:
            self.to_miner.append(encode_reply(pending.miner_id, reply))

    def _submit_verdict(self, pending: _Pending, reply: Reply, now: float) -> None:
        self.shares_handled += 1
        share, worker, work, submit = pending.share, pending.worker, pending.job, pending.submit
        assert share is not None and worker is not None and work is not None and submit is not None
        self.ctx.metrics.upstream_latency.observe(now - pending.sent_at)
        accepted = reply.result == _TRUE and reply.error == _NULL
        if accepted:
            reason = ""
            self.ctx.metrics.accepted_difficulty += pending.credit
            self.ctx.metrics.count_hotkey(worker.hotkey, pending.credit)
        else:
            failure = reply.failure()
            reason = f"pool: {failure.message if failure else 'rejected'}"[:120]
        if share.is_block:
            self.ctx.metrics.block_candidates += 1
            log.warning(
                "BLOCK CANDIDATE session %s worker %s job %s hash %s accepted=%s",
                self.session_id,
                worker.full_name,
                submit.job_id,
                share.hex_hash,
                accepted,
            )
        self._record(pending.received, worker, work, submit, pending.credit, share, reason)

    # --- time and loss -----------------------------------------------------------------------------

    def expire(self, now: float) -> None:
        """Apply timeouts: the pool's verdicts, the handshake, silence."""
        limits = self.ctx.limits
        deadline = now - limits.submit_timeout
        give_up = now - limits.late_verdict_timeout
        for upstream_id, pending in list(self._pending.items()):
            if pending.sent_at > deadline:
                break  # in the order sent: the rest are younger
            if pending.kind != "mining.submit" or pending.sent_at <= give_up:
                del self._pending[upstream_id]
                self._unanswered(pending, "pool did not answer in time")
            elif not pending.answered:
                # Tell the miner now; a verdict that still comes is what the ledger records.
                self._answer_error(pending.miner_id, ErrorCode.OTHER, "pool did not answer in time")
                pending.answered = True
        if not self.workers and now - self.connected_at > limits.handshake_timeout:
            self.close("no successful authorize within the handshake timeout")
        elif now - self.last_line_at > limits.idle_timeout:
            self.close("idle timeout")

    def pool_lost(self, reason: str) -> None:
        """The pool connection is gone: answer everything in flight, record the shares, close."""
        pending, self._pending = list(self._pending.values()), {}
        for item in pending:
            self._unanswered(item, f"pool connection lost: {reason}")
        self.close(f"pool connection lost: {reason}")

    def _unanswered(self, pending: _Pending, message: str) -> None:
        if not pending.answered:
            self._answer_error(pending.miner_id, ErrorCode.OTHER, message)
        if pending.kind == "mining.submit" and pending.submit is not None:
            self._record(
                pending.received, pending.worker, pending.job, pending.submit, pending.credit, pending.share, "timeout"
            )


def _uint32(text: str) -> int:
    """A submitted 8-hex-digit field as a number; 0 when it is not one (the share never hashed)."""
    try:
        return int(text, 16) & 0xFFFFFFFF if len(text) <= 8 else 0
    except ValueError:
        return 0


def _metric_labels(reason: str) -> tuple[str, str]:
    """(outcome, reason) labels of `ih_shares_total` for a ledger reason: pool messages are free text,
    so they share one label."""
    if not reason:
        return "accepted", ""
    if reason == "timeout":
        return "unanswered", "timeout"
    if reason.startswith("pool:"):
        return "rejected", "pool"
    return "refused", reason


def _subscribe_params(message: Subscribe) -> list[Any]:
    p = message.params
    params: list[Any] = []
    if p.user_agent is not None:
        params.append(p.user_agent)
        if p.session_id is not None:
            params.append(p.session_id)
    return params
