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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from ledger.rows import ShareRow
from ledger.workers import WorkerName as Worker
from ledger.workers import WorkerRefused
from protocol.errors import (
    ErrorCode,
    InvalidMessage,
    LineTooLong,
    ProtocolError,
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
VERSION = "ih-proxy/0.1"


@dataclass
class SessionContext:
    """What every session of one proxy shares."""

    account: str
    proxy_id: str
    limits: Limits
    record: Callable[[ShareRow], None]
    metrics: ProxyMetrics
    registered: RegisteredHotkeys | None = None  # None: any valid hotkey may mine


class _Pending:
    """A request forwarded to the pool, waiting for its reply."""

    __slots__ = ("alias", "job", "kind", "miner_id", "received", "sent_at", "share", "worker")

    def __init__(
        self,
        kind: str,
        miner_id: Any,
        sent_at: float,
        worker: Worker | None = None,
        job: Job | None = None,
        share: Share | None = None,
        received: float = 0.0,
    ) -> None:
        self.kind = kind
        self.miner_id = miner_id
        self.sent_at = sent_at  # monotonic
        self.worker = worker
        self.job = job
        self.share = share
        self.received = received  # wall clock, for the ledger
        self.alias = ""  # authorize: the worker name as the miner spelled it


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
        self.jobs: dict[str, Job] = {}
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
            self._record(time.time(), None, "", 0.0, None, "malformed")
        if self.bad_lines > self.ctx.limits.max_bad_lines:
            self.close(f"too many malformed lines ({self.bad_lines})")

    def _authorize(self, message: Authorize, now: float) -> None:
        name = message.params.worker
        try:
            worker = Worker.parse(name, [self.ctx.account])
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
        params: list[Any] = [worker.full_name]
        if message.params.password is not None:
            params.append(message.params.password)
        pending = _Pending("mining.authorize", message.id, now, worker)
        pending.alias = name  # submits may use the name as the miner sent it
        self._forward(message.id, "mining.authorize", params, now, pending)

    def _submit(self, message: Submit, now: float) -> None:
        p = message.params
        self.shares_handled += 1
        if not self._take_token(now):
            self.close("submit rate limit exceeded")
            self._answer_error(message.id, ErrorCode.OTHER, "rate limit exceeded")
            return
        worker = self.workers.get(p.worker)
        if worker is None:
            self._answer_error(message.id, ErrorCode.UNAUTHORIZED, "Unauthorized worker")
            self._record(time.time(), None, p.job_id, 0.0, None, "unauthorized", worker_name=p.worker)
            return
        if self.extranonce1 is None:
            self._answer_error(message.id, ErrorCode.NOT_SUBSCRIBED, "Not subscribed")
            self._record(time.time(), worker, p.job_id, 0.0, None, "not-subscribed")
            return
        job = self.jobs.get(p.job_id)
        if job is None:
            self._answer_error(message.id, ErrorCode.JOB_NOT_FOUND, "Job not found")
            self._record(time.time(), worker, p.job_id, 0.0, None, "stale")
            return
        try:
            share = job.check_share(p.extranonce2, p.ntime, p.nonce, p.version_bits, self.version_mask)
        except ShareRejected as rejected:
            self._answer_error(message.id, rejected.code, rejected.message)
            self._record(time.time(), worker, p.job_id, job.difficulty, rejected.share, rejected.reason)
            return
        params = [worker.full_name, p.job_id, p.extranonce2, p.ntime, p.nonce]
        if p.version_bits is not None:
            params.append(p.version_bits)
        # Kept even when the miner sent no id: the pool's verdict is what the ledger records.
        self._forward(
            message.id,
            "mining.submit",
            params,
            now,
            _Pending("mining.submit", message.id, now, worker, job, share, time.time()),
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
        job_id: str,
        difficulty: float,
        share: Share | None,
        reason: str,
        *,
        worker_name: str = "",
    ) -> None:
        """Count a judged share and write its ledger row: accepted when `reason` is empty.

        `difficulty` is the job's (the credit); `share` is None when it never hashed.
        """
        self.ctx.metrics.count_share(*_metric_labels(reason))
        self.ctx.record(
            ShareRow(
                received,
                self.ctx.proxy_id,
                worker.hotkey if worker else "",
                worker.full_name if worker else worker_name[:128],
                self.session_id,
                job_id[:64],
                difficulty,
                share.difficulty if share else 0.0,
                share.hex_hash if share else "",
                0 if reason else 1,
                reason,
                self.upstream,
                1 if share is not None and share.is_block else 0,
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
        self.jobs[notify.job_id] = Job(notify, self.extranonce1, self.extranonce2_size, self.difficulty)

    def _reply(self, reply: Reply, now: float) -> None:
        pending = self._pending.pop(reply.id, None) if isinstance(reply.id, int) else None
        if pending is None:
            log.debug("session %s: reply to no request of ours: id %r", self.session_id, reply.id)
            return
        kind = pending.kind
        if kind == "mining.submit":
            self._submit_verdict(pending, reply, now)
        elif kind == "mining.authorize":
            if reply.result == _TRUE and reply.error == _NULL and pending.worker is not None:
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
        if pending.miner_id is not None:
            self.to_miner.append(encode_reply(pending.miner_id, reply))

    def _submit_verdict(self, pending: _Pending, reply: Reply, now: float) -> None:
        self.shares_handled += 1
        share, worker, job = pending.share, pending.worker, pending.job
        assert share is not None and worker is not None and job is not None
        self.ctx.metrics.upstream_latency.observe(now - pending.sent_at)
        accepted = reply.result == _TRUE and reply.error == _NULL
        if accepted:
            reason = ""
            self.ctx.metrics.accepted_difficulty += job.difficulty
        else:
            failure = reply.failure()
            reason = f"pool: {failure.message if failure else 'rejected'}"[:120]
        if share.is_block:
            self.ctx.metrics.block_candidates += 1
            log.warning(
                "BLOCK CANDIDATE session %s worker %s job %s hash %s accepted=%s",
                self.session_id,
                worker.full_name,
                job.job_id,
                share.hex_hash,
                accepted,
            )
        self._record(pending.received, worker, job.job_id, job.difficulty, share, reason)

    # --- time and loss -----------------------------------------------------------------------------

    def expire(self, now: float) -> None:
        """Apply timeouts: the pool's verdicts, the handshake, silence."""
        limits = self.ctx.limits
        deadline = now - limits.submit_timeout
        while self._pending:
            upstream_id, pending = next(iter(self._pending.items()))
            if pending.sent_at > deadline:
                break
            del self._pending[upstream_id]
            self._unanswered(pending, "pool did not answer in time")
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
        self._answer_error(pending.miner_id, ErrorCode.OTHER, message)
        job = pending.job
        if pending.kind == "mining.submit" and job is not None:
            self._record(pending.received, pending.worker, job.job_id, job.difficulty, pending.share, "timeout")


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
