"""The ledger's rows as JSON objects (the proxy's NDJSON export) and the SQL that reads them.

One JSON object per row, keyed by the column names of `ledger/rows.py`; times (`ts`, `first_seen`)
are unix seconds with milliseconds, `version_bits` is null when the miner sent none, and
`merkle_branch` is a list of hex strings. `share_of` / `job_of` turn an object back into the row, so
a validator who downloaded a window audits exactly what the ledger holds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final

from ledger.rows import JOBS, SHARES, Column, JobRow, ShareRow


def _select(columns: tuple[Column, ...]) -> str:
    # DateTime64 → unix seconds (float) so the row reads back as the row type holds it.
    return ", ".join(
        f"toUnixTimestamp64Milli({c.name}) / 1000 AS {c.name}" if c.kind == "ms" else c.name for c in columns
    )


SHARE_SELECT: Final = _select(SHARES)
JOB_SELECT: Final = _select(JOBS)

# A total order, so LIMIT/OFFSET pages of a window that has ended neither skip nor repeat rows
# (rows equal in all these columns are equal as ledger rows, whichever comes first).
SHARE_ORDER: Final = "ts, proxy_id, session, hash, accepted, nonce, extranonce2, ntime, hotkey, reject_reason"


def window(column: str) -> str:
    """`column` within [start_ms, end_ms) (unix milliseconds, parameters)."""
    return (
        f"{column} >= fromUnixTimestamp64Milli({{start_ms:Int64}}, 'UTC') "
        f"AND {column} < fromUnixTimestamp64Milli({{end_ms:Int64}}, 'UTC')"
    )


def shares_sql(database: str, *, hotkey: bool, credited_only: bool = False) -> str:
    """A page of `shares` in a window; parameters start_ms, end_ms, limit, offset [, hotkey]."""
    where = window("ts")
    if hotkey:
        where += " AND hotkey = {hotkey:String}"
    if credited_only:
        where += " AND accepted = 1"
    return (
        f"SELECT {SHARE_SELECT} FROM {database}.shares WHERE {where} "
        f"ORDER BY {SHARE_ORDER} LIMIT {{limit:UInt64}} OFFSET {{offset:UInt64}}"
    )


def jobs_sql(database: str, *, by_keys: bool) -> str:
    """Jobs first seen in a window (start_ms, end_ms, limit, offset) or the jobs with given keys (keys).

    `jobs` is a ReplacingMergeTree: until a merge, one content may be there twice; one row per key.
    """
    where = "job_key IN {keys:Array(String)}" if by_keys else window("first_seen")
    page = "" if by_keys else " LIMIT {limit:UInt64} OFFSET {offset:UInt64}"
    return (
        f"SELECT {JOB_SELECT} FROM {database}.jobs WHERE {where} "
        f"ORDER BY job_key, first_seen, proxy_id LIMIT 1 BY job_key{page}"
    )


def to_ms(unix_seconds: float) -> int:
    return round(unix_seconds * 1000)


def as_json(columns: tuple[Column, ...], values: tuple[Any, ...]) -> dict[str, Any]:
    """A row as read by the SQL above → its JSON object (plain types only)."""
    out: dict[str, Any] = {}
    for column, value in zip(columns, values, strict=True):
        if column.kind == "ms" or column.kind == "float":
            out[column.name] = float(value)
        elif column.kind == "texts":
            out[column.name] = [str(v) for v in value]
        elif column.kind == "opt":
            out[column.name] = None if value is None else int(value)
        elif column.kind in ("uint", "flag", "minute"):
            out[column.name] = int(value)
        else:
            out[column.name] = str(value)
    return out


class BadRow(ValueError):
    """A JSON object that is not a ledger row."""


def _value(column: Column, obj: Mapping[str, Any]) -> Any:
    if column.name not in obj:
        raise BadRow(f"missing column {column.name!r}")
    value = obj[column.name]
    kind = column.kind
    if kind in ("ms", "float"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise BadRow(f"{column.name} must be a number")
        number = float(value)
        if kind == "ms" and not math.isfinite(number):
            raise BadRow(f"{column.name} must be finite")
        return number
    if kind in ("uint", "flag", "minute"):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise BadRow(f"{column.name} must be a non-negative integer")
        return value
    if kind == "opt":
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise BadRow(f"{column.name} must be null or a non-negative integer")
        return value
    if kind == "texts":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise BadRow(f"{column.name} must be a list of strings")
        return list(value)
    if not isinstance(value, str):
        raise BadRow(f"{column.name} must be a string")
    return value


def share_of(obj: Any) -> ShareRow:
    if not isinstance(obj, dict):
        raise BadRow("a share row must be a JSON object")
    return ShareRow(*(_value(c, obj) for c in SHARES))


def job_of(obj: Any) -> JobRow:
    if not isinstance(obj, dict):
        raise BadRow("a job row must be a JSON object")
    return JobRow(*(_value(c, obj) for c in JOBS))
