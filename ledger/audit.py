"""Re-hash credited shares from the ledger alone (docs/LEDGER.md, "Auditing the ledger").

The pure part takes rows and says, share by share, whether the stored fields re-hash through
`protocol.work` to the stored hash, for a job whose row hashes to its key, at no less than the
credited difficulty, and whether the rows around it agree with how a Stratum connection works.
The ClickHouse part (`*_from_clickhouse`) reads the same rows with blocking clickhouse-connect calls.

Mismatch kinds (a share may have several):
  missing-fields  the row lacks what a re-hash needs (job_key, extranonce1, extranonce2 or hash),
                  e.g. a row written before migration 2
  unknown-job     no job row with the share's job_key
  job-altered     the job row's content no longer hashes to its job_key
  malformed       the share math refuses the fields (bad hex, ntime outside the job's range,
                  version bits outside the stored mask)
  hash            the fields hash to another header hash than the stored one
  low-difficulty  the re-hashed share's difficulty is below the credit (`difficulty`)
  duplicate       the header hash is credited more than once in the audited window
  session         the rows contradict one connection, one job, one extranonce1: a session has
                  two extranonce1s for one job, or one job's extranonce1 appears under two sessions

Beside the shares, the rollup: `shares_per_minute` (what the workers API and the scorer pay from, fed
by a materialized view) must be, minute by minute and worker by worker, what the raw `shares` rows of
that minute add up to (`rollup_from_clickhouse`). A view fed twice by a retried insert, or a row
written into the rollup by hand, shows there and nowhere in the shares.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import random
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from clickhouse_connect.driver.client import Client

from ledger.export import JOB_SELECT, SHARE_ORDER, SHARE_SELECT, to_ms, window
from ledger.jobs import job_key, notify_of
from ledger.rows import JobRow, ShareRow
from ledger.schema import current_ttl_days
from protocol.work import Job, ShareRejected

KINDS: Final = (
    "missing-fields",
    "unknown-job",
    "job-altered",
    "malformed",
    "hash",
    "low-difficulty",
    "duplicate",
    "session",
)

_JOB_CACHE: Final = 4096
SessionKey = tuple[str, str, str]  # (proxy_id, session, job_key)
ConnectionKey = tuple[str, str]  # (job_key, extranonce1)


@dataclass(frozen=True)
class WindowFacts:
    """What the audit needs to know about all credited shares of the window, not only the checked ones."""

    duplicate_hashes: frozenset[str] = frozenset()
    # (proxy_id, session, job_key) whose credited shares carry more than one extranonce1
    split_sessions: frozenset[SessionKey] = frozenset()
    # (job_key, extranonce1) whose credited shares belong to more than one (proxy_id, session)
    shared_connections: frozenset[ConnectionKey] = frozenset()


def facts_of(shares: Iterable[ShareRow]) -> WindowFacts:
    """The window facts computed from all of its rows (the `--from-url` path; SQL does the same)."""
    hashes: Counter[str] = Counter()
    extranonces: defaultdict[SessionKey, set[str]] = defaultdict(set)
    sessions: defaultdict[ConnectionKey, set[tuple[str, str]]] = defaultdict(set)
    for row in shares:
        if row.accepted != 1:
            continue
        if row.hash:
            hashes[row.hash] += 1
        if row.job_key and row.extranonce1:
            extranonces[(row.proxy_id, row.session, row.job_key)].add(row.extranonce1)
            sessions[(row.job_key, row.extranonce1)].add((row.proxy_id, row.session))
    return WindowFacts(
        frozenset(h for h, n in hashes.items() if n > 1),
        frozenset(k for k, v in extranonces.items() if len(v) > 1),
        frozenset(k for k, v in sessions.items() if len(v) > 1),
    )


@dataclass
class HotkeyAudit:
    hotkey: str
    checked: int = 0
    credited_difficulty: float = 0.0  # Σ credit of the checked shares
    unverified_difficulty: float = 0.0  # Σ credit of the checked shares with any mismatch
    mismatched: int = 0  # shares with at least one mismatch
    mismatches: Counter[str] = field(default_factory=Counter)  # kind → shares


@dataclass(frozen=True)
class Mismatch:
    row: ShareRow
    kinds: tuple[str, ...]
    detail: str


@dataclass(frozen=True)
class RollupMismatch:
    """A minute and worker where `shares_per_minute` is not what the raw rows add up to."""

    minute: int  # unix seconds
    hotkey: str
    worker: str
    rollup: tuple[float, int, int]  # accepted difficulty, accepted shares, other shares
    raw: tuple[float, int, int]


@dataclass(frozen=True)
class RollupCheck:
    minutes: int  # whole minutes compared
    mismatches: list[RollupMismatch]  # the first ROLLUP_EXAMPLES, oldest first


@dataclass
class AuditReport:
    hotkeys: dict[str, HotkeyAudit] = field(default_factory=dict)
    examples: list[Mismatch] = field(default_factory=list)  # the first few, for people to look at
    rehash_seconds: float = 0.0  # time spent re-hashing (perf_counter), for shares/s
    rollup: RollupCheck | None = None  # None: not checked (the export has no rollup)

    @property
    def checked(self) -> int:
        return sum(h.checked for h in self.hotkeys.values())

    @property
    def mismatched(self) -> int:
        return sum(h.mismatched for h in self.hotkeys.values())

    @property
    def clean(self) -> bool:
        return self.mismatched == 0 and (self.rollup is None or not self.rollup.mismatches)

    @property
    def shares_per_second(self) -> float | None:
        return self.checked / self.rehash_seconds if self.rehash_seconds > 0 else None

    def totals(self) -> Counter[str]:
        out: Counter[str] = Counter()
        for h in self.hotkeys.values():
            out.update(h.mismatches)
        return out


class _Jobs:
    """Job rows by key, each checked once against its key, and protocol Jobs per (job, extranonce1)."""

    def __init__(self, rows: Mapping[str, JobRow]) -> None:
        self.rows = rows
        self.intact: dict[str, bool] = {}
        self.jobs: dict[tuple[str, str, int], Job] = {}

    def is_intact(self, key: str, row: JobRow) -> bool:
        ok = self.intact.get(key)
        if ok is None:
            ok = self.intact[key] = job_key(notify_of(row)) == key
        return ok

    def job(self, row: JobRow, extranonce1: str, extranonce2_size: int, difficulty: float) -> Job:
        cache_key = (row.job_key, extranonce1, extranonce2_size)
        found = self.jobs.get(cache_key)
        if found is None:
            if len(self.jobs) >= _JOB_CACHE:  # bounded: a long audit must not keep every (job, session)
                self.jobs.clear()
            found = self.jobs[cache_key] = Job(notify_of(row), extranonce1, extranonce2_size, difficulty)
        return found


def check_share(row: ShareRow, jobs: _Jobs, facts: WindowFacts) -> tuple[list[str], str]:
    """The mismatch kinds of one credited share (empty: it verifies) and a short detail."""
    kinds: list[str] = []
    detail = ""
    if not (row.job_key and row.extranonce1 and row.extranonce2 and row.hash):
        kinds.append("missing-fields")
    else:
        job_row = jobs.rows.get(row.job_key)
        if job_row is None:
            kinds.append("unknown-job")
        else:
            if not jobs.is_intact(row.job_key, job_row):
                kinds.append("job-altered")
            try:
                job = jobs.job(job_row, row.extranonce1, len(row.extranonce2) // 2, row.difficulty)
                share = job.hash_share(
                    row.extranonce2,
                    f"{row.ntime:08x}",
                    f"{row.nonce:08x}",
                    None if row.version_bits is None else f"{row.version_bits:08x}",
                    row.version_mask,
                )
            except ShareRejected as exc:
                kinds.append("malformed")
                detail = exc.message
            except ValueError as exc:  # extranonce1 or job hex that does not decode
                kinds.append("malformed")
                detail = str(exc)
            else:
                if share.hex_hash != row.hash.lower():
                    kinds.append("hash")
                    detail = f"re-hashed to {share.hex_hash}"
                elif not share.difficulty >= row.difficulty:
                    kinds.append("low-difficulty")
                    detail = f"share difficulty {share.difficulty:.6g} < credit {row.difficulty:.6g}"
    if row.hash and row.hash in facts.duplicate_hashes:
        kinds.append("duplicate")
    if (row.proxy_id, row.session, row.job_key) in facts.split_sessions or (
        row.job_key,
        row.extranonce1,
    ) in facts.shared_connections:
        kinds.append("session")
    return kinds, detail


def audit(
    shares: Iterable[ShareRow], jobs: Mapping[str, JobRow], facts: WindowFacts, *, examples: int = 20
) -> AuditReport:
    """Re-hash every credited share in `shares` (rows with accepted != 1 are skipped)."""
    report = AuditReport()
    known = _Jobs(jobs)
    started = time.perf_counter()
    for row in shares:
        if row.accepted != 1:
            continue
        kinds, detail = check_share(row, known, facts)
        entry = report.hotkeys.get(row.hotkey)
        if entry is None:
            entry = report.hotkeys[row.hotkey] = HotkeyAudit(row.hotkey)
        entry.checked += 1
        entry.credited_difficulty += row.difficulty
        if kinds:
            entry.mismatched += 1
            entry.unverified_difficulty += row.difficulty
            entry.mismatches.update(kinds)
            if len(report.examples) < examples:
                report.examples.append(Mismatch(row, tuple(kinds), detail))
    report.rehash_seconds = time.perf_counter() - started
    return report


# --- sampling: the same sample from ClickHouse and from the export -----------------------------------


def sample_key(seed: int, row: ShareRow) -> tuple[bytes, float, str]:
    """Shares are sampled by SHA-256 of `seed:hash:session` (the SQL below orders by the same)."""
    digest = hashlib.sha256(f"{seed}:{row.hash}:{row.session}".encode()).digest()
    return digest, row.ts, row.proxy_id


def choose_sample(shares: Iterable[ShareRow], size: int, seed: int) -> list[ShareRow]:
    credited = (row for row in shares if row.accepted == 1)
    return heapq.nsmallest(size, credited, key=lambda row: sample_key(seed, row))


# --- the same from ClickHouse (blocking calls on a clickhouse-connect client) --------------------------

_KEYS_PER_QUERY = 5000


def _window_params(start: float, end: float) -> dict[str, Any]:
    return {"start_ms": to_ms(start), "end_ms": to_ms(end)}


def credited_shares_from_clickhouse(
    client: Client,
    database: str,
    start: float,
    end: float,
    *,
    hotkey: str | None = None,
    sample: int | None = None,
    seed: int = 0,
) -> list[ShareRow]:
    """The credited shares of [start, end) (unix seconds), all of them or the seeded sample."""
    where = window("ts") + " AND accepted = 1"
    params = _window_params(start, end)
    if hotkey is not None:
        where += " AND hotkey = {hotkey:String}"
        params["hotkey"] = hotkey
    if sample is None:
        order = f"ORDER BY {SHARE_ORDER}"
    else:
        order = (
            "ORDER BY SHA256(concat(toString({seed:UInt64}), ':', hash, ':', session)), ts, proxy_id "
            "LIMIT {sample:UInt64}"
        )
        params |= {"seed": seed, "sample": sample}
    result = client.query(f"SELECT {SHARE_SELECT} FROM {database}.shares WHERE {where} {order}", parameters=params)
    return [ShareRow(*row) for row in result.result_rows]


def jobs_from_clickhouse(client: Client, database: str, keys: Iterable[str]) -> dict[str, JobRow]:
    wanted = sorted(set(keys))
    out: dict[str, JobRow] = {}
    for i in range(0, len(wanted), _KEYS_PER_QUERY):
        result = client.query(
            f"SELECT {JOB_SELECT} FROM {database}.jobs WHERE job_key IN {{keys:Array(String)}} "
            "ORDER BY job_key, first_seen, proxy_id LIMIT 1 BY job_key",
            parameters={"keys": wanted[i : i + _KEYS_PER_QUERY]},
        )
        for values in result.result_rows:
            row = JobRow(*values)
            out[row.job_key] = JobRow(*row[:8], list(row.merkle_branch), *row[9:])
    return out


def facts_from_clickhouse(client: Client, database: str, start: float, end: float) -> WindowFacts:
    """`facts_of` over all credited shares of the window, computed by ClickHouse."""
    where = window("ts") + " AND accepted = 1"
    params = _window_params(start, end)
    duplicates = client.query(
        f"SELECT hash FROM {database}.shares WHERE {where} AND hash != '' GROUP BY hash HAVING count() > 1",
        parameters=params,
    ).result_rows
    split = client.query(
        f"SELECT proxy_id, session, job_key FROM {database}.shares "
        f"WHERE {where} AND job_key != '' AND extranonce1 != '' "
        "GROUP BY proxy_id, session, job_key HAVING uniqExact(extranonce1) > 1",
        parameters=params,
    ).result_rows
    shared = client.query(
        f"SELECT job_key, extranonce1 FROM {database}.shares "
        f"WHERE {where} AND job_key != '' AND extranonce1 != '' "
        "GROUP BY job_key, extranonce1 HAVING uniqExact(proxy_id, session) > 1",
        parameters=params,
    ).result_rows
    return WindowFacts(
        frozenset(str(r[0]) for r in duplicates),
        frozenset((str(a), str(b), str(c)) for a, b, c in split),
        frozenset((str(a), str(b)) for a, b in shared),
    )


ROLLUP_EXAMPLES: Final = 20
ROLLUP_SAMPLE_MINUTES: Final = 3  # whole minutes a sampled audit compares (a full one: every one)
# A shares part and its view's part commit a moment apart, and on a cluster the two Distributed reads
# may pick replicas that lag differently: what differs is looked at again after each of these waits.
_ROLLUP_RECHECKS: Final = (1.0, 2.0, 4.0)

_ROLLUP_SQL: Final = """
SELECT toUnixTimestamp(minute), hotkey, worker, rollup.d, rollup.a, rollup.r, raw.d, raw.a, raw.r
FROM (
    SELECT minute, hotkey, worker,
        sum(accepted_difficulty) AS d, sum(accepted_shares) AS a, sum(rejected_shares) AS r
    FROM {db}.shares_per_minute
    WHERE {minutes} {hotkey}
    GROUP BY minute, hotkey, worker
) AS rollup
FULL OUTER JOIN (
    SELECT toStartOfMinute(toDateTime(ts, 'UTC')) AS minute, hotkey, worker,
        sumIf(difficulty, accepted = 1) AS d, countIf(accepted = 1) AS a, countIf(accepted != 1) AS r
    FROM {db}.shares
    WHERE {raw_minutes} {hotkey}
    GROUP BY minute, hotkey, worker
) AS raw USING (minute, hotkey, worker)
WHERE rollup.a != raw.a OR rollup.r != raw.r OR abs(rollup.d - raw.d) > 1e-9 * greatest(abs(rollup.d), abs(raw.d))
ORDER BY minute, hotkey, worker
LIMIT {limit}
"""


def rollup_from_clickhouse(
    client: Client,
    database: str,
    start: float,
    end: float,
    *,
    hotkey: str | None = None,
    sample_minutes: int | None = None,
    seed: int = 0,
    rechecks: Sequence[float] = _ROLLUP_RECHECKS,
) -> RollupCheck:
    """Compare `shares_per_minute` with the raw rows over the whole minutes of [start, end) (unix
    seconds) younger than the shares' TTL, or over `sample_minutes` of them chosen by `seed`.
    Differences float sums can make (1e-9 relative) are none. What differs is looked at again after
    each of `rechecks` (seconds), and only what differed every time is reported."""
    first, last = math.ceil(start / 60) * 60, math.floor(end / 60) * 60  # the whole minutes inside
    ttl_days = current_ttl_days(client, database, "shares")
    if ttl_days is not None:  # past the TTL, the two tables lose their rows at their own merges
        first = max(first, math.ceil((time.time() - ttl_days * 86_400) / 60) * 60 + 60)
    every = range(first, max(first, last), 60)
    chosen = (
        list(every)
        if sample_minutes is None
        else sorted(random.Random(seed).sample(every, min(sample_minutes, len(every))))
    )
    if not chosen:
        return RollupCheck(0, [])
    low, high = f"toDateTime({chosen[0]}, 'UTC')", f"toDateTime({chosen[-1] + 60}, 'UTC')"
    minutes, raw_minutes = f"minute >= {low} AND minute < {high}", f"ts >= {low} AND ts < {high}"
    if sample_minutes is not None:  # (a full audit: the span is every minute; a list would be as long)
        listed = ", ".join(str(m) for m in chosen)
        minutes += f" AND toUnixTimestamp(minute) IN ({listed})"
        raw_minutes += f" AND toUnixTimestamp(toStartOfMinute(toDateTime(ts, 'UTC'))) IN ({listed})"
    sql = _ROLLUP_SQL.format(
        db=database,
        minutes=minutes,
        raw_minutes=raw_minutes,
        hotkey="AND hotkey = {hotkey:String}" if hotkey is not None else "",
        limit=ROLLUP_EXAMPLES,
    )
    parameters = {"hotkey": hotkey} if hotkey is not None else {}

    def differing() -> dict[tuple[int, str, str], RollupMismatch]:
        rows = client.query(sql, parameters=parameters).result_rows
        found = [
            RollupMismatch(int(m), str(h), str(w), (float(rd), int(ra), int(rr)), (float(sd), int(sa), int(sr)))
            for m, h, w, rd, ra, rr, sd, sa, sr in rows
        ]
        return {(f.minute, f.hotkey, f.worker): f for f in found}

    found = differing()
    for wait in rechecks:
        if not found:
            break
        time.sleep(wait)
        again = differing()
        found = {key: again[key] for key in found if key in again}
    return RollupCheck(len(chosen), sorted(found.values(), key=lambda f: (f.minute, f.hotkey, f.worker)))


def audit_clickhouse(
    client: Client,
    database: str,
    start: float,
    end: float,
    *,
    hotkey: str | None = None,
    sample: int | None = None,
    seed: int = 0,
    examples: int = 20,
) -> AuditReport:
    """The shares re-hashed (all credited ones, or a sample) and the rollup compared with them (every
    whole minute, or ROLLUP_SAMPLE_MINUTES of them with a sample)."""
    shares = credited_shares_from_clickhouse(client, database, start, end, hotkey=hotkey, sample=sample, seed=seed)
    jobs = jobs_from_clickhouse(client, database, (s.job_key for s in shares if s.job_key))
    facts = facts_from_clickhouse(client, database, start, end)
    report = audit(shares, jobs, facts, examples=examples)
    minutes = None if sample is None else ROLLUP_SAMPLE_MINUTES
    report.rollup = rollup_from_clickhouse(
        client, database, start, end, hotkey=hotkey, sample_minutes=minutes, seed=seed
    )
    return report


def audit_rows(
    shares: Sequence[ShareRow],
    jobs: Mapping[str, JobRow],
    *,
    sample: int | None = None,
    seed: int = 0,
    examples: int = 20,
) -> AuditReport:
    """Audit rows already in memory (downloaded from the export): facts over all, then the sample."""
    facts = facts_of(shares)
    chosen = shares if sample is None else choose_sample(shares, sample, seed)
    return audit(chosen, jobs, facts, examples=examples)
