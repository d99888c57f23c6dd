"""--clickhouse-cluster: the cluster rendering of the ledger migrations.

No ClickHouse cluster (Keeper, two servers) runs where the tests run, so the ON CLUSTER DDL is
checked as text; the parts chdb can run (the local tables' columns, keys and TTL, and that the view
reads and feeds the _local tables) are executed in chdb with the replication stripped.
"""

from __future__ import annotations

import re
from pathlib import Path

import clickhouse_connect
import pytest

from ledger.rows import COLUMNS_OF_TABLE
from ledger.schema import KEEPER_PATH, MIGRATIONS, apply_migrations, cluster_statements, local_table
from tests.test_ledger import make_rows

DB = "infinitehash"
CLUSTER = "ih_cluster"


def rendered() -> list[str]:
    out = []
    for _, _, statements in MIGRATIONS:
        out += [sql.format(db=DB, ttl_days=30) for sql in cluster_statements(statements, CLUSTER)]
    return out


def test_every_statement_runs_on_the_cluster() -> None:
    statements = rendered()
    assert statements
    for sql in statements:
        assert f" ON CLUSTER '{CLUSTER}'" in sql, sql
        assert "non_replicated_deduplication_window" not in sql


def test_each_table_is_replicated_locally_and_read_through_distributed() -> None:
    statements = rendered()
    engines = {"shares": "MergeTree", "shares_per_minute": "SummingMergeTree", "jobs": "ReplacingMergeTree"}
    engines["coverage"] = "MergeTree"
    keeper = KEEPER_PATH.format()  # the template as the server receives it
    assert keeper == "/clickhouse/tables/{shard}/{database}/{table}"
    for table, engine in engines.items():
        local = local_table(table)
        (create_local,) = [s for s in statements if s.startswith(f"CREATE TABLE IF NOT EXISTS {DB}.{local} ")]
        assert f"ENGINE = Replicated{engine}('{keeper}', '{{replica}}')" in create_local
        assert "SETTINGS replicated_deduplication_window = 10000" in create_local
        (create_reader,) = [s for s in statements if s.startswith(f"CREATE TABLE IF NOT EXISTS {DB}.{table} ")]
        assert f"AS {DB}.{local}\nENGINE = Distributed('{CLUSTER}', '{DB}', '{local}')" in create_reader
        # No sharding key: nothing inserts through the Distributed table (writers use the local one).
        assert create_reader.rstrip().endswith(f"'{local}')")
        # The local table comes first: the Distributed one copies its columns.
        assert statements.index(create_local) < statements.index(create_reader)


def test_the_view_reads_and_feeds_the_local_tables() -> None:
    (view,) = [s for s in rendered() if "MATERIALIZED VIEW" in s]
    assert f"TO {DB}.shares_per_minute_local AS" in view
    assert re.search(rf"FROM {DB}\.shares_local\b", view)
    assert not re.search(rf"\b{DB}\.shares\b(?!_)", view)


def test_added_columns_reach_both_the_local_and_the_distributed_table() -> None:
    alters = [s for s in rendered() if s.startswith("ALTER TABLE")]
    added = [c.name for c in COLUMNS_OF_TABLE["shares"] if c.since == 2]
    for name in added:
        on_local = [s for s in alters if s.startswith(f"ALTER TABLE {DB}.shares_local ") and f" {name} " in s]
        on_reader = [s for s in alters if s.startswith(f"ALTER TABLE {DB}.shares ") and f" {name} " in s]
        assert len(on_local) == len(on_reader) == 1


def test_an_unknown_statement_shape_is_refused() -> None:
    with pytest.raises(ValueError, match="no cluster rendering"):
        cluster_statements(["DROP TABLE IF EXISTS {db}.shares"], CLUSTER)
    with pytest.raises(ValueError, match="cluster name"):
        cluster_statements(MIGRATIONS[0][2], "x' ON CLUSTER 'y")


def _for_chdb(sql: str) -> str | None:
    """A rendered statement with the replication taken out, or None for the Distributed ones."""
    if "ENGINE = Distributed(" in sql:
        return None
    sql = sql.replace(f" ON CLUSTER '{CLUSTER}'", "")
    sql = re.sub(r"Replicated(\w+)\('[^']*', '[^']*'\)", r"\1", sql)
    return sql.replace("replicated_deduplication_window", "non_replicated_deduplication_window")


def test_the_local_tables_and_the_view_run_in_chdb(tmp_path: Path) -> None:
    client = clickhouse_connect.get_client(interface="chdb", path=str(tmp_path))
    try:
        client.command(f"CREATE DATABASE {DB}")
        for sql in rendered():
            runnable = _for_chdb(sql)
            if runnable is None:
                continue
            if runnable.startswith(f"ALTER TABLE {DB}.shares "):
                continue  # the Distributed table's half of an ALTER
            client.command(runnable)
        rows = make_rows(20)
        columns = COLUMNS_OF_TABLE["shares"]
        client.insert(
            f"{DB}.shares_local",
            [[round(r.ts * 1000), *r[1:]] for r in rows],
            column_names=[c.name for c in columns],
            column_type_names=[c.type for c in columns],
        )
        (total,) = client.query(f"SELECT sum(accepted_difficulty) FROM {DB}.shares_per_minute_local").result_rows[0]
        assert total == sum(r.difficulty for r in rows if r.accepted)
        tables = {r[0] for r in client.query(f"SELECT name FROM system.tables WHERE database = '{DB}'").result_rows}
        assert {local_table(t) for t in COLUMNS_OF_TABLE} | {"shares_per_minute_local"} <= tables
        # The single-node path on the same engine is untouched by all this: plain tables, no _local.
        apply_migrations(client, "single", 30)
        single = {r[0] for r in client.query("SELECT name FROM system.tables WHERE database = 'single'").result_rows}
        assert "shares" in single and not any(name.endswith("_local") for name in single)
        with pytest.raises(ValueError, match="created for one server"):
            apply_migrations(client, "single", 30, cluster=CLUSTER)
    finally:
        client.close()


# --- the `cluster` compose profile ---------------------------------------------------------------


def test_the_compose_cluster_profile_matches_its_clickhouse_config() -> None:
    import xml.etree.ElementTree as ET

    from proxy.config import load_config
    from tests.test_deploy import DEPLOY, REPO, compose, expand

    services = compose()["services"]
    profile = {name for name, s in services.items() if "cluster" in s.get("profiles", [])}
    assert profile == {"keeper", "clickhouse-1", "clickhouse-2", "proxy-cluster"}
    assert not any(s.get("profiles") for name, s in services.items() if name not in profile)  # the default stays

    cluster_xml = ET.parse(DEPLOY / "clickhouse-cluster" / "cluster.xml").getroot()
    servers = cluster_xml.find("remote_servers")
    assert servers is not None
    (cluster,) = list(servers)
    hosts = sorted(r.findtext("host") or "" for r in cluster.iter("replica"))
    assert hosts == ["clickhouse-1", "clickhouse-2"]
    assert cluster_xml.findtext("zookeeper/node/host") == "keeper"

    env = {
        k: expand(str(v), {"CLICKHOUSE_PASSWORD": "pw"}) for k, v in services["proxy-cluster"]["environment"].items()
    }
    config = load_config([], environ=env)
    assert config.clickhouse_cluster == cluster.tag
    assert config.ledger_url.startswith("http://ih:pw@clickhouse-1:8123/")

    replicas = set()
    for host in hosts:
        mounts = services[host]["volumes"]
        assert "./deploy/clickhouse-cluster/cluster.xml:/etc/clickhouse-server/config.d/cluster.xml:ro" in mounts
        (own,) = [m.split(":")[0] for m in mounts if "/replica-" in m]
        macros = ET.parse(REPO / own).getroot()
        assert macros.findtext("macros/shard") and macros.findtext("interserver_http_host") == host
        replicas.add(macros.findtext("macros/replica"))
    assert len(replicas) == 2  # each replica its own name in the Keeper paths
    keeper_mount = services["keeper"]["volumes"][0]
    assert (REPO / keeper_mount.split(":")[0]).exists()
