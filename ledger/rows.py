"""The ledger's rows: ONE place where each table's columns are spelled (contract: docs/LEDGER.md).

Each row type is a NamedTuple whose fields are the table's columns in insert order; the annotation
carries the column's ClickHouse type, how a batch converts it, and the migration that added it.
`ledger/schema.py` generates the DDL from these, `proxy/ledger.py` the insert columns, and readers
the SELECT lists, so adding a column is one line here plus a migration number.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Annotated, Literal, NamedTuple

# How a batch turns a Python value into what clickhouse-connect inserts, off the share path:
#   ms     unix seconds (float) → DateTime64(3) ticks       text   str, lone surrogates replaced
#   float  float(value)                                      flag   1 if value else 0 (UInt8)
#   uint   int(value)                                        texts  list of str (Array(String))
#   minute unix seconds (int) → DateTime                     opt    int or None (Nullable(UInt32))
Kind = Literal["ms", "text", "float", "flag", "uint", "texts", "minute", "opt"]


@dataclass(frozen=True)
class Col:
    type: str  # ClickHouse type
    kind: Kind
    since: int = 1  # the migration that added the column (ledger/schema.py)


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    kind: Kind
    since: int


# --- shares: one row per share the proxy judged ------------------------------------------------------


class ShareRow(NamedTuple):
    """One judged share, as ledgered. Field order is the `shares` column order."""

    ts: Annotated[float, Col("DateTime64(3, 'UTC')", "ms")]  # unix seconds when the submit arrived
    proxy_id: Annotated[str, Col("LowCardinality(String)", "text")]
    hotkey: Annotated[str, Col("String", "text")]
    worker: Annotated[str, Col("String", "text")]
    session: Annotated[str, Col("String", "text")]
    job_id: Annotated[str, Col("String", "text")]
    difficulty: Annotated[float, Col("Float64", "float")]  # the credit when accepted
    share_difficulty: Annotated[float, Col("Float64", "float")]
    hash: Annotated[str, Col("String", "text")]
    accepted: Annotated[int, Col("UInt8", "flag")]
    reject_reason: Annotated[str, Col("LowCardinality(String)", "text")]
    upstream: Annotated[str, Col("LowCardinality(String)", "text")]
    block: Annotated[int, Col("UInt8", "flag")]
    # Since 2: what a re-hash needs (docs/LEDGER.md, "Re-hashing a share").
    job_key: Annotated[str, Col("String", "text", 2)] = ""  # jobs.job_key of the job the share was for
    extranonce1: Annotated[str, Col("String", "text", 2)] = ""  # the session's, hex
    extranonce2: Annotated[str, Col("String", "text", 2)] = ""  # hex as submitted (lower case)
    ntime: Annotated[int, Col("UInt32", "uint", 2)] = 0
    nonce: Annotated[int, Col("UInt32", "uint", 2)] = 0
    version_bits: Annotated[int | None, Col("Nullable(UInt32)", "opt", 2)] = None  # None: none submitted
    version_mask: Annotated[int, Col("UInt32", "uint", 2)] = 0  # the mask the share was rolled under


# --- jobs: every job the proxy relayed, once per distinct content ------------------------------------


class JobRow(NamedTuple):
    """One mining.notify's content as the pool sent it (hex as on the wire, lower case)."""

    job_key: Annotated[str, Col("String", "text", 2)]  # content hash: protocol.work.job_key
    first_seen: Annotated[float, Col("DateTime64(3, 'UTC')", "ms", 2)]
    proxy_id: Annotated[str, Col("LowCardinality(String)", "text", 2)]
    upstream: Annotated[str, Col("LowCardinality(String)", "text", 2)]
    job_id: Annotated[str, Col("String", "text", 2)]
    prevhash: Annotated[str, Col("String", "text", 2)]  # Stratum's word-swapped form
    coinb1: Annotated[str, Col("String", "text", 2)]
    coinb2: Annotated[str, Col("String", "text", 2)]
    merkle_branch: Annotated[list[str], Col("Array(String)", "texts", 2)]
    version: Annotated[int, Col("UInt32", "uint", 2)]
    nbits: Annotated[int, Col("UInt32", "uint", 2)]
    ntime: Annotated[int, Col("UInt32", "uint", 2)]
    clean: Annotated[int, Col("UInt8", "flag", 2)]


# --- coverage: which minutes each proxy was live -----------------------------------------------------


class CoverageRow(NamedTuple):
    """One proxy's liveness in one minute (written once a minute; a restart may add a second row)."""

    minute: Annotated[int, Col("DateTime('UTC')", "minute", 2)]  # unix seconds, whole minute
    proxy_id: Annotated[str, Col("LowCardinality(String)", "text", 2)]
    sessions: Annotated[int, Col("UInt32", "uint", 2)]  # authorized sessions at the end of the minute
    shares: Annotated[int, Col("UInt64", "uint", 2)]  # shares judged during the minute
    upstream_up: Annotated[int, Col("UInt8", "flag", 2)]  # 1 when some pool took connections


Row = ShareRow | JobRow | CoverageRow


def columns_of(row_type: type[tuple[object, ...]]) -> tuple[Column, ...]:
    hints = typing.get_type_hints(row_type, include_extras=True)
    out = []
    for name in row_type._fields:  # type: ignore[attr-defined]
        col = hints[name].__metadata__[0]
        assert isinstance(col, Col), f"{row_type.__name__}.{name} has no Col annotation"
        out.append(Column(name, col.type, col.kind, col.since))
    return tuple(out)


SHARES = columns_of(ShareRow)
JOBS = columns_of(JobRow)
COVERAGE = columns_of(CoverageRow)

# The table each row type is written to.
TABLE_OF: dict[type[tuple[object, ...]], str] = {ShareRow: "shares", JobRow: "jobs", CoverageRow: "coverage"}
COLUMNS_OF_TABLE: dict[str, tuple[Column, ...]] = {"shares": SHARES, "jobs": JOBS, "coverage": COVERAGE}
