"""The ONE place the ledger schema lives (contract: docs/LEDGER.md).

Migrations are applied by the proxy at start, in version order, and recorded in
`schema_migrations`. Rules for adding one:
- append a new (version, description, [SQL...]) entry; never edit an applied one;
- every statement must be idempotent (IF NOT EXISTS / IF EXISTS): two proxies may start at once
  against one ClickHouse and both run the same migration;
- placeholders: `{db}` (database name) and `{ttl_days}` (row retention in days);
- columns live in `ledger/rows.py`, each with the migration that added it; a migration adds them
  with `_added_columns` (a test checks every table against its row type after the last migration);
- `--clickhouse-cluster` runs the same statements in their cluster rendering (`cluster_statements`):
  a statement of a new shape needs a rule there (tests/test_cluster_ddl.py renders every migration).
"""

from __future__ import annotations

import re
from typing import Final

from clickhouse_connect.driver.client import Client

from ledger.rows import COLUMNS_OF_TABLE, COVERAGE, JOBS, SHARES, Column

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

DEFAULT_TTL_DAYS: Final = 90  # rows kept this many days unless the operator says otherwise

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


def apply_migrations(client: Client, database: str, ttl_days: int, cluster: str | None = None) -> list[int]:
    """Bring `database` up to the latest schema; returns the versions applied now (empty: no-op).

    Blocking (run it in a worker thread). Also applies a changed `ttl_days` to existing tables.
    With `cluster`, every statement runs ON CLUSTER in its cluster rendering (`cluster_statements`).
    Without it, a database that already has the cluster layout keeps it: the cluster is read from
    its tables, so a proxy started without --clickhouse-cluster never adds single-node tables to it.
    """
    if ttl_days < 1:
        raise ValueError(f"ttl_days must be at least 1, got {ttl_days}")
    exists, found = detect_cluster(client, database)
    if cluster is None:
        cluster = found
    else:
        check_cluster_name(cluster)
        if exists and found != cluster:
            where = f"cluster {found!r}" if found else "one server (single-node tables)"
            raise ValueError(f"database {database} was created for {where}, not cluster {cluster!r}")
    if cluster is None or not exists:
        _create_migrations_table(client, database, cluster)
    # On a cluster that has the tables, a reconnect runs no ON CLUSTER DDL unless a migration or a
    # TTL change is due: such DDL waits for every server, and one replica down must not stop writes.
    done = applied_versions(client, database)
    applied: list[int] = []
    for version, description, statements in MIGRATIONS:
        if version in done:
            continue
        for sql in statements if cluster is None else cluster_statements(statements, cluster):
            client.command(sql.format(db=database, ttl_days=ttl_days))
        client.insert(
            f"{database}.schema_migrations",
            [[version, description]],
            column_names=["version", "description"],
        )
        applied.append(version)
    _apply_ttl(client, database, ttl_days, cluster)
    return applied


def _create_migrations_table(client: Client, database: str, cluster: str | None) -> None:
    on = f" ON CLUSTER '{cluster}'" if cluster else ""
    client.command(f"CREATE DATABASE IF NOT EXISTS {database}{on}")
    # ReplacingMergeTree: two proxies racing through the same migration both record it; readers
    # use DISTINCT, and merges collapse the duplicates eventually.
    if cluster is None:
        client.command(
            f"""
        CREATE TABLE IF NOT EXISTS {database}.schema_migrations
        (version UInt32, description String, applied_at DateTime64(3, 'UTC') DEFAULT now64(3))
        ENGINE = ReplacingMergeTree ORDER BY version
        """
        )
    else:
        # One copy for the whole cluster (no {shard} in the path): every node sees every migration.
        client.command(
            f"CREATE TABLE IF NOT EXISTS {database}.schema_migrations{on}\n"
            "(version UInt32, description String, applied_at DateTime64(3, 'UTC') DEFAULT now64(3))\n"
            f"ENGINE = ReplicatedReplacingMergeTree('{MIGRATIONS_KEEPER_PATH}', '{{replica}}') ORDER BY version"
        )


def _apply_ttl(client: Client, database: str, ttl_days: int, cluster: str | None = None) -> None:
    on = f" ON CLUSTER '{cluster}'" if cluster else ""
    for table, expression in _TTL.items():
        name = local_table(table) if cluster else table  # a Distributed table has no TTL of its own
        current = current_ttl_days(client, database, name)
        if current != ttl_days:
            client.command(f"ALTER TABLE {database}.{name}{on} MODIFY TTL {expression.format(ttl_days=ttl_days)}")


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


# --- several ClickHouse servers: the cluster rendering of the same migrations ----------------------
#
# Writers insert into `<table>_local`, a Replicated table on the server they are connected to; the
# replicas of its shard copy it through Keeper, and a batch's dedup token is recorded in Keeper, so a
# retry on ANY replica of the shard is dropped. Readers (scorer, API, dashboards, ih-ledger) keep the
# table names they know: `<table>` is a Distributed table over every shard's `<table>_local`. The
# Distributed tables have no sharding key: nothing inserts through them (a batch split by a key
# would not dedup per shard on a retry), and on more than one shard ClickHouse refuses such inserts.

KEEPER_PATH: Final = "/clickhouse/tables/{{shard}}/{{database}}/{{table}}"  # a template: format() → {shard}
MIGRATIONS_KEEPER_PATH: Final = "/clickhouse/tables/all/{database}/{table}"  # used as final SQL text
_CLUSTER_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_CREATE_TABLE = re.compile(r"\s*CREATE TABLE IF NOT EXISTS \{db\}\.(\w+)\s*\(")
_ENGINE = re.compile(r"\bENGINE = (MergeTree|SummingMergeTree|ReplacingMergeTree)\b")
_CREATE_VIEW = re.compile(r"\s*CREATE MATERIALIZED VIEW IF NOT EXISTS \{db\}\.(\w+) TO \{db\}\.(\w+) AS\b")
_FROM = re.compile(r"\bFROM \{db\}\.(\w+)\b")
_ALTER = re.compile(r"\s*ALTER TABLE \{db\}\.(\w+) (ADD COLUMN IF NOT EXISTS .*)", re.DOTALL)
_DISTRIBUTED = re.compile(r"Distributed\('([^']+)'")


def local_table(table: str) -> str:
    """The name of the Replicated table behind the Distributed `table` in the cluster layout."""
    return f"{table}_local"


def check_cluster_name(cluster: str) -> None:
    if not _CLUSTER_NAME.fullmatch(cluster):
        raise ValueError(f"cluster name must be letters, digits, _ . - (as in remote_servers), got {cluster!r}")


def cluster_statements(statements: list[str], cluster: str) -> list[str]:
    """The cluster rendering of one migration's statements (still with {db} and {ttl_days}).

    CREATE TABLE t   → t_local ON CLUSTER, Replicated<engine>(Keeper path, replica), the dedup window
                       as replicated_deduplication_window; then t ON CLUSTER AS t_local, Distributed
    MATERIALIZED VIEW → ON CLUSTER, from and to the _local tables (it fires where the insert lands)
    ALTER ADD COLUMN → on t_local and on the Distributed t, ON CLUSTER
    Any other shape raises: a new migration needs a rule here (tests render every migration)."""
    check_cluster_name(cluster)
    on = f" ON CLUSTER '{cluster}'"
    out: list[str] = []
    for sql in statements:
        if match := _CREATE_TABLE.match(sql):
            table, rest = match.group(1), sql[match.end() :]
            if len(_ENGINE.findall(rest)) != 1 or rest.count("non_replicated_deduplication_window") != 1:
                raise ValueError(f"no cluster rendering for this CREATE TABLE {table}: {sql.strip()[:80]}")
            rest = _ENGINE.sub(lambda m: f"ENGINE = Replicated{m.group(1)}('{KEEPER_PATH}', '{{{{replica}}}}')", rest)
            rest = rest.replace("non_replicated_deduplication_window", "replicated_deduplication_window")
            local = local_table(table)
            out.append(f"CREATE TABLE IF NOT EXISTS {{db}}.{local}{on}\n(" + rest)
            out.append(
                f"CREATE TABLE IF NOT EXISTS {{db}}.{table}{on} AS {{db}}.{local}\n"
                f"ENGINE = Distributed('{cluster}', '{{db}}', '{local}')"
            )
        elif match := _CREATE_VIEW.match(sql):
            view, target, rest = match.group(1), match.group(2), sql[match.end() :]
            if len(_FROM.findall(rest)) != 1:
                raise ValueError(f"no cluster rendering for view {view}: it must read one table")
            rest = _FROM.sub(lambda m: f"FROM {{db}}.{local_table(m.group(1))}", rest)
            out.append(
                f"CREATE MATERIALIZED VIEW IF NOT EXISTS {{db}}.{view}{on} TO {{db}}.{local_table(target)} AS{rest}"
            )
        elif match := _ALTER.match(sql):
            table, action = match.group(1), match.group(2)
            out.append(f"ALTER TABLE {{db}}.{local_table(table)}{on} {action}")
            out.append(f"ALTER TABLE {{db}}.{table}{on} {action}")
        else:
            raise ValueError(f"no cluster rendering for: {sql.strip()[:80]}")
    return out


def detect_cluster(client: Client, database: str) -> tuple[bool, str | None]:
    """(the ledger's tables exist, the cluster they were created for or None for one server)."""
    rows = client.query(
        "SELECT engine, engine_full FROM system.tables WHERE database = {db:String} AND name = 'shares'",
        parameters={"db": database},
    ).result_rows
    if not rows:
        return False, None
    engine, engine_full = str(rows[0][0]), str(rows[0][1])
    if engine != "Distributed":
        return True, None
    match = _DISTRIBUTED.search(engine_full)
    return True, match.group(1) if match else None


def write_tables(client: Client, database: str) -> dict[str, str]:
    """The table a writer inserts each ledger table's rows into: itself, or `<table>_local` on a cluster."""
    _, cluster = detect_cluster(client, database)
    return {table: local_table(table) if cluster else table for table in COLUMNS_OF_TABLE}
