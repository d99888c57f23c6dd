"""What the sessions decided, made real: ledger rows, metrics, the log lines of a rig.

The one place a `Verdict` becomes a `ShareRow`, a `JobSeen` a `JobRow`, and either of them metric
updates. The session (`proxy/session.py`) decides; this module records; the network layer only moves
the outbox from one to the other.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from ledger.jobs import job_row
from ledger.rows import Row, ShareRow
from ledger.workers import WorkerName
from protocol.messages import SubmitParams
from protocol.work import Share, display_hash, hex_uint32
from proxy.metrics import ProxyMetrics
from proxy.session import AuthorizeOutcome, JobSeen, Outbox, PoolTrouble, Verdict

log = logging.getLogger("proxy.session")
_new_row = tuple.__new__  # see share_row


class VerdictSink:
    """Turns a session's outbox (verdicts, jobs, authorize outcomes) into ledger rows and metrics."""

    def __init__(
        self,
        proxy_id: str,
        record: Callable[[Row], None],
        metrics: ProxyMetrics,
        *,
        jobs_remembered: int = 4096,
        commit: Callable[[], None] = lambda: None,
    ) -> None:
        self.proxy_id = proxy_id
        self.record = record
        self.metrics = metrics
        self.commit = commit  # make recorded rows crash-proof; called before miners are answered
        self.jobs_remembered = jobs_remembered
        self.jobs_recorded: dict[str, None] = {}  # job keys ledgered lately (insertion order)

    def take(self, outbox: Outbox, peer: str = "-") -> None:
        """Record and count what the session produced; empties those lists (not the bytes)."""
        verdicts = outbox.verdicts
        if verdicts:
            for verdict in verdicts:
                self.verdict(verdict)
            verdicts.clear()
        if outbox.jobs:
            for seen in outbox.jobs:
                self.job(seen)
            outbox.jobs.clear()
        if outbox.notes:
            for note in outbox.notes:
                self.note(note, peer)
            outbox.notes.clear()

    def job(self, seen: JobSeen) -> None:
        """Ledger a job once per distinct content: every session of one pool account sees the same jobs."""
        recorded = self.jobs_recorded
        if seen.key in recorded:
            return
        recorded[seen.key] = None
        if len(recorded) > self.jobs_remembered:
            del recorded[next(iter(recorded))]
        self.record(job_row(seen.notify, seen.key, seen.seen, self.proxy_id, seen.upstream))

    def verdict(self, v: Verdict) -> None:
        metrics = self.metrics
        reason = v.reason
        metrics.count_share(*metric_labels(reason))
        if v.latency is not None:
            metrics.upstream_latency.observe(v.latency)
        worker, share, submit, work = v.worker, v.share, v.submit, v.work
        if worker is None or submit is None:
            return  # never authorized here (or a health check): counted, never ledgered
        if not reason:
            metrics.accepted_difficulty += v.credit
            metrics.count_hotkey(worker.hotkey, v.credit)
        if share is not None and share.is_block and v.latency is not None:
            metrics.block_candidates += 1
            log.warning(
                "BLOCK CANDIDATE session %s worker %s job %s hash %s accepted=%s",
                v.session,
                worker.full_name,
                submit.job_id,
                share.hex_hash,
                not reason,
            )
        self.record(
            share_row(
                v.received,
                self.proxy_id,
                worker,
                v.session,
                submit.job_id,
                v.credit,
                share,
                submit,
                reason,
                v.upstream,
                work.key if work else "",
                work.extranonce1 if work else "",
                submit.extranonce2[:64].lower(),
                v.version_mask,
            )
        )

    def note(self, note: AuthorizeOutcome | PoolTrouble, peer: str) -> None:
        if isinstance(note, AuthorizeOutcome):
            self.metrics.authorize.labels(note.outcome).inc()
            if note.outcome == "accepted":
                log.info("worker %s authorized from %s", note.worker, peer)
            elif note.outcome == "health-check":
                log.info("health check %s from %s", note.worker, peer)
            else:
                log.info("worker %r from %s %s: %s", note.worker, peer, note.outcome, note.detail)
        else:
            log.warning("%s", note.detail)


def share_row(
    received: float,
    proxy_id: str,
    worker: WorkerName,
    session: str,
    job_id: str,
    credit: float,
    share: Share | None,
    submit: SubmitParams,
    reason: str,
    upstream: str,
    job_key: str,
    extranonce1: str,
    extranonce2: str,
    version_mask: int,
) -> ShareRow:
    """A judged share's ledger row, in both modes: accepted when `reason` is empty, credited `credit`.

    A share that hashed had its fields checked and their numbers read; one that did not is ledgered
    with what could be read of what was submitted, under `version_mask` (the session's now; a share
    that hashed keeps the mask it was rolled under). Built with tuple.__new__, which skips
    NamedTuple's Python-level __new__ (a tenth of a verdict's time)."""
    if share is not None:
        hash_hex, share_difficulty, block = display_hash(share.hash), share.difficulty, 1 if share.is_block else 0
        ntime, nonce, bits, version_mask = share.ntime, share.nonce, share.version_bits, share.version_mask
    else:
        hash_hex, share_difficulty, block = "", 0.0, 0
        ntime, nonce = uint32(submit.ntime), uint32(submit.nonce)
        bits = None if submit.version_bits is None else uint32(submit.version_bits)
    return _new_row(
        ShareRow,
        (
            received,
            proxy_id,
            worker.hotkey,
            worker.full_name,
            session,
            job_id[:64],
            credit,
            share_difficulty,
            hash_hex,
            0 if reason else 1,
            reason,
            upstream,
            block,
            job_key,
            extranonce1,
            extranonce2,
            ntime,
            nonce,
            bits,
            version_mask,
        ),
    )


def uint32(text: str) -> int:
    """A submitted 8-hex-digit field as a number; 0 when it is not one (the share never hashed).
    The same hex rule as a share that hashes: "-1", "0x1f", " 1f" or "1f" are not fields."""
    return hex_uint32(text) or 0


def metric_labels(reason: str) -> tuple[str, str]:
    """(outcome, reason) labels of `ih_shares_total` for a ledger reason: pool messages are free text,
    so they share one label."""
    if not reason:
        return "accepted", ""
    if reason == "timeout":
        return "unanswered", "timeout"
    if reason.startswith("pool:"):
        return "rejected", "pool"
    return "refused", reason
