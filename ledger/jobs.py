"""Jobs in the ledger: the content key that links a share to the job it was mined on, and the row."""

from __future__ import annotations

import hashlib

from ledger.rows import JobRow
from protocol.memo import ByIdentity
from protocol.messages import Notify


def content_key(notify: Notify) -> str:
    """A hash of everything in a notify that goes into a header (not the job id, not clean_jobs):
    two notifies with this key are the same work, whatever the pool called them."""
    content = "|".join(
        (
            notify.prevhash.lower(),
            notify.coinb1.lower(),
            notify.coinb2.lower(),
            ",".join(b.lower() for b in notify.merkle_branch),
            notify.version.lower(),
            notify.nbits.lower(),
            notify.ntime.lower(),
        )
    )
    return hashlib.sha256(content.encode()).hexdigest()[:32]


# Once per shared Notify: every session of one pool account gets the same one (protocol.messages).
job_key: ByIdentity[Notify, str] = ByIdentity(content_key, 64)


def job_row(notify: Notify, key: str, first_seen: float, proxy_id: str, upstream: str) -> JobRow:
    return JobRow(
        key,
        first_seen,
        proxy_id,
        upstream,
        notify.job_id,
        notify.prevhash.lower(),
        notify.coinb1.lower(),
        notify.coinb2.lower(),
        [b.lower() for b in notify.merkle_branch],
        int(notify.version, 16),
        int(notify.nbits, 16),
        int(notify.ntime, 16),
        1 if notify.clean_jobs else 0,
    )


def notify_of(row: JobRow) -> Notify:
    """The notify a job row was made from (for re-hashing its shares)."""
    return Notify(
        row.job_id,
        row.prevhash,
        row.coinb1,
        row.coinb2,
        list(row.merkle_branch),
        f"{row.version:08x}",
        f"{row.nbits:08x}",
        f"{row.ntime:08x}",
        bool(row.clean),
    )
