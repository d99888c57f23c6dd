"""The ONE place the ledger schema lives (contract: docs/LEDGER.md).

Migrations are applied by the proxy at start, in version order, and recorded in
`schema_migrations`. Rules for adding one:
- append a new (version, description, [SQL...]) entry; never edit an applied one;
- every statement must be idempotent (IF NOT EXISTS / IF EXISTS): two proxies may start at once
  against one ClickHouse and both run the same migration;
- placeholders: `{db}` (database name) and `{ttl_days}` (row retention in days);
- columns live in `ledger/rows.py`, each with the migration that added it; a migration adds them
  with `_added_columns` (a test checks every table against its row type after the last migration).
"""

from __future__ import annotations

import re
from typing import Final

from clickhouse_connect.driver.client import Client

from ledger.rows import COVERAGE, JOBS, SHARES, Column

# Blocks remembered per table for insert deduplication. A retried batch is dropped only while its
# first copy is within this many most recent inserts. Every proxy sharing the server inserts ~4
# blocks/s, so 10,000 covers minutes of retries even with many proxies. It must also be set on the
# view's target table, or a retried batch is counted twice in `shares_per_minute`.
DEDUP_WINDOW: Final = 10_000

SHARES_COLUMNS: Final = tuple((c.name, c.type) for c in SHARES)
SHARES_PER_MINUTE_COLUMNS: Final[tuple[tuple[str, str], ...]] = (
    ("minute", "DateTime('UTC')"),
    ("hotkey", "String"),
    ("worker", "String"),
    ("accepted_difficulty", "Float64"),
    ("accepted_shares", "UInt64"),
    ("rejected_shares", "UInt64"),
)

_TTL: Final = {
    "shares": "toDateTime(ts) + INTERVAL {ttl_days} DAY",
    "shares_per_minute": "minute + INTERVAL {ttl_days} DAY",
    # A job outlives the shares that point at it: they arrive within minutes of its first sighting.
    "jobs": "toDateTime(first_seen) + INTERVAL {ttl_days} DAY + INTERVAL 1 DAY",
    "coverage": "minute + INTERVAL {ttl_days} DAY",
}


def _column_list(columns: tuple[Column, ...], since: int) -> str:
    return ",\n".join(f"    {c.name} {c.type}" for c in columns if c.since == since)


def _added_columns(table: str, columns: tuple[Column, ...], since: int) -> list[str]:
    """ALTERs that add the columns of migration `since` to an existing table, in column order."""
    return [
        f"ALTER TABLE {{db}}.{table} ADD COLUMN IF NOT EXISTS {c.name} {c.type}" for c in columns if c.since == since
    ]


MIGRATIONS: Final[list[tuple[int, str, list[str]]]] = [
    (
        1,
        "shares, shares_per_minute and the view that feeds it",
        [
            f"""
            CREATE TABLE IF NOT EXISTS {{db}}.shares
            (
                ts DateTime64(3, 'UTC'),
                proxy_id LowCardinality(String),
                hotkey String,
                worker String,
                session String,
                job_id String,
                difficulty Float64,
                share_difficulty Float64,
                hash String,
                accepted UInt8,
                reject_reason LowCardinality(String),
                upstream LowCardinality(String),
                block UInt8
            )
            ENGINE = MergeTree
            PARTITION BY toYYYYMMDD(ts)
            ORDER BY (hotkey, ts)
            TTL {_TTL["shares"]}
            SETTINGS non_replicated_deduplication_window = {DEDUP_WINDOW}
            """,
            f"""
            CREATE TABLE IF NOT EXISTS {{db}}.shares_per_minute
            (
                minute DateTime('UTC'),
                hotkey String,
                worker String,
                accepted_difficulty Float64,
                accepted_shares UInt64,
                rejected_shares UInt64
            )
            ENGINE = SummingMergeTree
            ORDER BY (hotkey, worker, minute)
            TTL {_TTL["shares_per_minute"]}
            SETTINGS non_replicated_deduplication_window = {DEDUP_WINDOW}
            """,
            """
            CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.shares_per_minute_mv TO {db}.shares_per_minute AS
            SELECT
                toStartOfMinute(toDateTime(ts, 'UTC')) AS minute,
                hotkey,
                worker,
                sumIf(difficulty, accepted = 1) AS accepted_difficulty,
                countIf(accepted = 1) AS accepted_shares,
                countIf(accepted != 1) AS rejected_shares
            FROM {db}.shares
            GROUP BY hotkey, worker, minute
            """,
        ],
    ),
    (
        2,
        "re-hashable ledger: submitted fields on shares, the jobs table, per-minute proxy coverage",
        [
            *_added_columns("shares", SHARES, 2),
            f"""
            CREATE TABLE IF NOT EXISTS {{db}}.jobs
            (
{_column_list(JOBS, 2)}
            )
            ENGINE = ReplacingMergeTree
            PARTITION BY toYYYYMM(first_seen)
            ORDER BY job_key
            TTL {_TTL["jobs"]}
            SETTINGS non_replicated_deduplication_window = {DEDUP_WINDOW}
            """,
            f"""
            CREATE TABLE IF NOT EXISTS {{db}}.coverage
            (
{_column_list(COVERAGE, 2)}
            )
            ENGINE = MergeTree
            PARTITION BY toYYYYMM(minute)
            ORDER BY (proxy_id, minute)
            TTL {_TTL["coverage"]}
            SETTINGS non_replicated_deduplication_window = {DEDUP_WINDOW}
            """,
        ],
    ),
]

_TTL_DAYS = re.compile(r"\bTTL\b.*?toIntervalDay\((\d+)\)")


def applied_versions(client: Client, database: str) -> set[int]:
    rows = client.query(f"SELECT DISTINCT version FROM {database}.schema_migrations").result_rows
    return {int(r[0]) for r in rows}


def apply_migrations(client: Client, database: str, ttl_days: int) -> list[int]:
    """Bring `database` up to the latest schema; returns the versions applied now (empty: no-op).

    Blocking (run it in a worker thread). Also applies a changed `ttl_days` to existing tables.
    """
    if ttl_days < 1:
        raise ValueError(f"ttl_days must be at least 1, got {ttl_days}")
    client.command(f"CREATE DATABASE IF NOT EXISTS {database}")
    # ReplacingMergeTree: two proxies racing through the same migration both record it; readers
    # use DISTINCT, and merges collapse the duplicates eventually.
    client.command(
        f"""
        CREATE TABLE IF NOT EXISTS {database}.schema_migrations
        (version UInt32, description String, applied_at DateTime64(3, 'UTC') DEFAULT now64(3))
        ENGINE = ReplacingMergeTree ORDER BY version
        """
    )
    done = applied_versions(client, database)
    applied: list[int] = []
    for version, description, statements in MIGRATIONS:
        if version in done:
            continue
        for sql in statements:
            client.command(sql.format(db=database, ttl_days=ttl_days))
        client.insert(
            f"{database}.schema_migrations",
            [[version, description]],
            column_names=["version", "description"],
        )
        applied.append(version)
    _apply_ttl(client, database, ttl_days)
    return applied


def _apply_ttl(client: Client, database: str, ttl_days: int) -> None:
    for table, expression in _TTL.items():
        current = current_ttl_days(client, database, table)
        if current != ttl_days:
            client.command(f"ALTER TABLE {database}.{table} MODIFY TTL {expression.format(ttl_days=ttl_days)}")


def current_ttl_days(client: Client, database: str, table: str) -> int | None:
    """The table's TTL in days as ClickHouse reports it (None: no TTL, or no such table)."""
    rows = client.query(
        "SELECT engine_full FROM system.tables WHERE database = {db:String} AND name = {table:String}",
        parameters={"db": database, "table": table},
    ).result_rows
    if not rows:
        return None
    match = _TTL_DAYS.search(str(rows[0][0]))
    return int(match.group(1)) if match else None
