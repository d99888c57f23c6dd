"""The operators' files (docker-compose.yml, Dockerfile, deploy/) agree with the programs they run.

No Docker engine runs here, so these check what can go stale without one: the compose file is valid
by the compose specification (tests/compose-spec.json: schema/compose-spec.json of compose-spec/compose-spec
at 170098ba07d9, Apache-2.0, vendored as it is),
every setting it passes is one the proxy or scorer really reads, images are pinned, every metric a
dashboard panel or an alert rule names is one the proxy really exports, and the image installs every
package and entry point.
"""

from __future__ import annotations

import json
import re
import tomllib
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from prometheus_client import generate_latest

from proxy.config import load_config
from proxy.metrics import ProxyMetrics
from scorer.config import build_parser as scorer_parser

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
DASHBOARDS = sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))
# Series Prometheus makes itself, not the proxy.
PROMETHEUS_OWN = frozenset({"up"})
_DEFAULTED = re.compile(r"\$\{(\w+)(?::-([^}]*)|:\?[^}]*)?\}")


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    return data


def expand(value: str, env: dict[str, str]) -> str:
    """${VAR:-default} and ${VAR:?error} as compose expands them."""
    return _DEFAULTED.sub(lambda m: env.get(m.group(1), m.group(2) or ""), value)


def test_third_party_images_are_pinned_to_a_version() -> None:
    for name, service in compose()["services"].items():
        if "build" in service or service.get("image", "").startswith("infinitehash/"):
            continue
        image = service["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name}: {image} is not pinned"


def test_the_proxy_service_environment_is_a_valid_proxy_config() -> None:
    service = compose()["services"]["proxy"]
    env = {k: expand(str(v), {"CLICKHOUSE_PASSWORD": "pw"}) for k, v in service["environment"].items()}
    assert all(k.startswith("IH_") for k in env)
    config = load_config([], environ=env)  # raises on an unknown value; unknown names are checked below
    option_names = {f"IH_{name.upper()}" for name in (*vars(config), *vars(config.limits))}
    assert set(env) <= option_names, set(env) - option_names
    assert config.listen == "0.0.0.0:3333" and config.ledger_url.startswith("http://ih:pw@clickhouse:8123/")
    ports = {p.split(":")[-1] for p in service["ports"]}
    assert {"3333", "9464"} <= ports
    assert "127.0.0.1:9464:9464" in service["ports"]  # metrics and the API stay on the host
    # ... so validators reach it through the host's reverse proxy, all from Docker's gateway address:
    # a per-address limit there would be one limit for every validator together.
    assert config.limits.max_http_connections_per_ip == 0


def test_the_scorer_service_command_is_one_ih_scorer_accepts() -> None:
    service = compose()["services"]["scorer"]
    assert service["entrypoint"] == ["ih-scorer"]
    scorer_parser().parse_args(service["command"])  # exits on an unknown flag
    assert "IH_CLICKHOUSE_URL" in service["environment"]  # the password stays off the command line


def test_the_image_installs_every_package_and_the_entry_points() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    for package in project["tool"]["setuptools"]["packages"]:
        assert f"COPY {package} ./{package}" in dockerfile
    assert "COPY setup.py" in dockerfile  # the C extension's build
    # protocol/_sha256d.c needs a compiler and OpenSSL's headers at build time, and they leave with it.
    runs = dockerfile.replace("\\\n", " ").splitlines()
    build = next(line for line in runs if "uv sync --locked --no-dev" in line and "apt-get" in line)
    assert "gcc" in build and "libssl-dev" in build and "apt-get purge" in build
    assert "import protocol._sha256d" in build  # the image fails to build rather than hash in Python
    assert "uv sync --locked" in dockerfile
    assert '"ih-proxy"' in dockerfile and "ih-proxy" in project["project"]["scripts"]


# --- compose ----------------------------------------------------------------------------------------


def test_the_compose_file_is_valid_by_the_compose_specification() -> None:
    schema = json.loads((REPO / "tests" / "compose-spec.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.validate(compose(), schema, cls=jsonschema.Draft7Validator)


def test_the_compose_specification_check_catches_a_misspelt_key() -> None:
    schema = json.loads((REPO / "tests" / "compose-spec.json").read_text())
    broken = compose()
    broken["services"]["proxy"]["healtcheck"] = broken["services"]["proxy"].pop("healthcheck")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema, cls=jsonschema.Draft7Validator)


def test_every_service_builds_or_pulls_what_it_runs_and_has_a_healthcheck() -> None:
    for name, service in compose()["services"].items():
        assert "healthcheck" in service and service["healthcheck"]["test"], f"{name} has no healthcheck"
        if service.get("image", "").startswith("infinitehash/"):
            assert service.get("build") == ".", f"{name} runs our image but does not build it"
            assert service.get("pull_policy") == "build", f"{name} would try a registry pull first"
    proxy_check = " ".join(compose()["services"]["proxy"]["healthcheck"]["test"])
    assert "127.0.0.1:9464/healthz" in proxy_check


def test_secrets_come_from_the_environment() -> None:
    text = (REPO / "docker-compose.yml").read_text()
    services = compose()["services"]
    for variable in ("CLICKHOUSE_PASSWORD", "CLICKHOUSE_READER_PASSWORD", "GRAFANA_ADMIN_PASSWORD"):
        assert f"${{{variable}:?" in text, f"{variable} must be required (${{{variable}:?…}})"
        assert f"{variable}=" in (REPO / ".env.example").read_text()
    assert services["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:?")
    for value in (*services["proxy"]["environment"].values(), *services["scorer"]["environment"].values()):
        for match in re.finditer(r"://[^:/@]+:([^@]+)@", str(value)):
            assert match.group(1).startswith("${"), f"a literal password in {value}"


def test_the_scorer_and_grafana_use_the_read_only_clickhouse_user() -> None:
    services = compose()["services"]
    users = ET.parse(DEPLOY / "clickhouse" / "users.d" / "readonly.xml").getroot()
    reader = users.find("users/ih_reader")
    assert reader is not None
    password = reader.find("password")
    assert password is not None and password.get("from_env") == "CLICKHOUSE_READER_PASSWORD" and not password.text
    grants = [q.text or "" for q in reader.findall("grants/query")]
    assert grants == ["GRANT SELECT ON infinitehash.*"]
    profile = users.find(f"profiles/{reader.findtext('profile')}")
    assert profile is not None and profile.findtext("readonly") in ("1", "2")
    mounts = services["clickhouse"]["volumes"]
    assert any(m.startswith("./deploy/clickhouse/users.d/readonly.xml:/etc/clickhouse-server/users.d/") for m in mounts)
    assert "CLICKHOUSE_READER_PASSWORD" in services["clickhouse"]["environment"]

    scorer_url = expand(services["scorer"]["environment"]["IH_CLICKHOUSE_URL"], {"CLICKHOUSE_READER_PASSWORD": "r"})
    assert scorer_url.startswith("http://ih_reader:r@clickhouse:8123/")
    datasources = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/datasources.yml").read_text())
    clickhouse = next(d for d in datasources["datasources"] if d["type"] == "grafana-clickhouse-datasource")
    assert clickhouse["jsonData"]["username"] == "ih_reader"
    assert clickhouse["secureJsonData"]["password"] == "$CLICKHOUSE_READER_PASSWORD"
    grafana = services["grafana"]
    assert "CLICKHOUSE_READER_PASSWORD" in grafana["environment"]
    assert grafana["environment"]["GF_INSTALL_PLUGINS"].split()[0] == "grafana-clickhouse-datasource"


def test_the_proxy_may_open_more_files_than_its_sessions_need() -> None:
    service = compose()["services"]["proxy"]
    config = load_config([], environ={k: expand(str(v), {}) for k, v in service["environment"].items()})
    nofile = service["ulimits"]["nofile"]
    # Each session holds its ASIC's socket and its pool socket; the rest is the ledger, spool, HTTP.
    assert min(nofile["soft"], nofile["hard"]) >= 3 * config.limits.max_sessions


def test_grafana_and_prometheus_get_their_provisioning() -> None:
    services = compose()["services"]
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning:ro" in services["grafana"]["volumes"]
    assert "./deploy/grafana/dashboards:/var/lib/grafana/dashboards:ro" in services["grafana"]["volumes"]
    providers = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/dashboards.yml").read_text())
    assert providers["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    prometheus = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    mounted = {m.split(":")[1]: m.split(":")[0] for m in services["prometheus"]["volumes"] if m.startswith("./")}
    for rule_file in prometheus["rule_files"]:
        assert (REPO / mounted[rule_file]).is_file(), f"{rule_file} is not mounted into prometheus"


# --- dashboards and alert rules against the real metric names ---------------------------------------

_PROMQL_KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left", "group_right"}
    | {"inf", "nan", "le"}
)
_LABEL_LISTS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"(?<![\w:.$])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()")


def promql_metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions, keywords, label lists,
    label matchers, durations or Grafana variables."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals (label values, regexes)
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors: [5m], [$__rate_interval]
    text = _LABEL_LISTS.sub("", text)
    text = re.sub(r"\$\w+", "", text)  # Grafana variables outside matchers
    return {name for name in _IDENTIFIER.findall(text) if name.lower() not in _PROMQL_KEYWORDS}


def test_promql_metric_names_are_found_and_functions_are_not() -> None:
    names = promql_metric_names(
        'histogram_quantile(0.99, sum by (le, row) (rate(ih_x_bucket{row="oldest", a=~"b|c"}[5m]))) > 30 '
        "and on (instance) up == 0 or vector(1) * 4294967296"
    )
    assert names == {"ih_x_bucket", "up"}


def rendered_metric_names() -> set[str]:
    """Every series name the proxy's /metrics shows once each labelled metric has a sample."""
    m = ProxyMetrics()
    m.connections_total.inc()
    m.connections_refused.labels("max_sessions").inc()
    m.sessions.labels("mining").set(1)
    m.sessions_closed.labels("eof").inc()
    m.authorize.labels("ok").inc()
    m.count_share("accepted", "")
    m.count_share("refused", "stale")
    m.count_hotkey("5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY", 512.0)
    m.proxy_latency.observe(0.0001)
    m.upstream_latency.observe(0.01)
    m.upstream_up.labels("pool:700").set(1)
    m.upstream_connects.labels("pool:700", "ok").inc()
    m.ledger_ingest_lag.labels("oldest").observe(0.5)
    m.ledger_flush_seconds.observe(0.01)
    text = generate_latest(m.registry).decode()
    return {re.split(r"[{ ]", line, maxsplit=1)[0] for line in text.splitlines() if line and not line.startswith("#")}


def dashboard_exprs() -> Iterator[tuple[str, str]]:
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                if target["datasource"]["type"] == "prometheus":
                    yield f"{path.name}: {panel['title']}", target["expr"]
        for variable in dashboard["templating"]["list"]:
            if variable["datasource"]["type"] == "prometheus":
                query = re.fullmatch(r"label_values\((\w+), \w+\)", variable["query"]["query"])
                assert query, variable
                yield f"{path.name}: ${variable['name']}", query.group(1)


def rule_exprs() -> Iterator[tuple[str, str]]:
    rules = yaml.safe_load((DEPLOY / "alerts.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert rule.keys() >= {"alert", "expr", "for", "labels", "annotations"}, rule
            yield f"alerts.yml: {rule['alert']}", rule["expr"]


def test_every_metric_a_panel_or_rule_names_is_one_the_proxy_exports() -> None:
    exported = rendered_metric_names() | PROMETHEUS_OWN
    checked = 0
    for where, expr in [*dashboard_exprs(), *rule_exprs()]:
        names = promql_metric_names(expr)
        assert names, f"{where}: no metric in {expr!r}"
        assert names <= exported, f"{where}: {sorted(names - exported)} not in /metrics"
        checked += 1
    assert checked >= 15


def test_the_alert_rules_cover_what_an_operator_must_hear_about() -> None:
    rules = {name.split(": ")[1]: promql_metric_names(expr) for name, expr in rule_exprs()}
    assert rules == {
        "IHProxyDown": {"up"},
        "IHNoPoolUp": {"ih_upstream_up"},
        "IHLedgerSpoolGrowing": {"ih_ledger_spool_rows"},
        "IHLedgerIngestLag": {"ih_ledger_ingest_lag_seconds_bucket"},
        "IHHighRejectRate": {"ih_shares_total"},
        "IHValidatorsAPIRefusing": {"ih_http_connections_refused_total"},
    }


def test_the_proxy_dashboard_shows_what_the_issue_asks_for() -> None:
    proxy = json.loads((DEPLOY / "grafana/dashboards/proxy.json").read_text())
    shown = set().union(*(promql_metric_names(t["expr"]) for p in proxy["panels"] for t in p["targets"]))
    assert {
        "ih_sessions",
        "ih_shares_total",
        "ih_upstream_up",
        "ih_upstream_connects_total",
        "ih_ledger_ingest_lag_seconds_bucket",
        "ih_ledger_spool_rows",
        "ih_proxy_submit_latency_seconds_bucket",
        "ih_upstream_submit_latency_seconds_bucket",
        "ih_hotkey_accepted_difficulty_total",
        "ih_build_info",
    } <= shown


def test_dashboards_use_provisioned_datasources_and_the_ledger_tables() -> None:
    datasources = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/datasources.yml").read_text())
    uids = {(d["type"], d["uid"]) for d in datasources["datasources"]}
    ledger_tables = set(re.findall(r"CREATE TABLE IF NOT EXISTS \{\{db\}\}\.(\w+)", _schema_source()))
    assert "shares_per_minute" in ledger_tables
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
        for panel in dashboard["panels"]:
            for target in [panel, *panel["targets"]]:
                source = target["datasource"]
                assert (source["type"], source["uid"]) in uids, f"{path.name}: {panel['title']}"
            for target in panel["targets"]:
                if "rawSql" in target:
                    tables = set(re.findall(r"\binfinitehash\.(\w+)", target["rawSql"]))
                    assert tables and tables <= ledger_tables, f"{path.name}: {panel['title']}: {tables}"


def _schema_source() -> str:
    return (REPO / "ledger" / "schema.py").read_text()


def test_the_image_leaves_out_the_embedded_engine_and_checks_its_health() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert not any(d.startswith("chdb") for d in project["project"]["dependencies"])
    assert project["project"]["optional-dependencies"]["embedded"] == ["chdb>=4.0"]
    assert "--extra" not in dockerfile and "--all-extras" not in dockerfile
    assert "HEALTHCHECK" in dockerfile and "/healthz" in dockerfile


def test_every_file_the_compose_file_mounts_is_in_the_repository() -> None:
    mounted = 0
    for name, service in compose()["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (REPO / source).exists(), f"{name} mounts {source}, which is not in the repository"
                mounted += 1
    assert mounted >= 6


# Grafana's ClickHouse macros as the plugin expands them, for a 60 s interval over [start, end].
def expand_clickhouse_macros(sql: str, start: int, end: int, hotkeys: list[str]) -> str:
    sql = re.sub(r"\$__timeInterval\((\w+)\)", r"toStartOfInterval(toDateTime(\1), INTERVAL 60 second)", sql)
    sql = re.sub(r"\$__timeFilter\((\w+)\)", rf"\1 >= toDateTime({start}) AND \1 <= toDateTime({end})", sql)
    sql = sql.replace("$__interval_s", "60")
    sql = sql.replace("${hotkey:singlequote}", ", ".join(f"'{h}'" for h in hotkeys))
    assert "$" not in sql, sql
    return sql


_RUN_LEDGER_PANELS = """
import asyncio, json, sys
from pathlib import Path
from ledger.target import LedgerTarget
from proxy.config import LedgerBudget
from proxy.ledger import LedgerWriter
from tests.test_ledger import make_rows

target = LedgerTarget.parse("chdb://" + sys.argv[1], data_dir=Path(sys.argv[1]))
rows = make_rows(600, base=float(sys.argv[2]))

async def write() -> None:
    budget = LedgerBudget(batch_rows=100, flush_interval=0.01)
    writer = LedgerWriter(target.connect, spool_dir=Path(sys.argv[1]) / "spool", budget=budget)
    await writer.start()
    for row in rows:
        writer.record(row)
    await writer.stop()

asyncio.run(write())
client = target.connect()
answers = [[list(r) for r in client.query(sql).result_rows] for sql in json.loads(sys.argv[3])]
expected = {}
for row in rows:
    if row.accepted:
        expected.setdefault(row.hotkey, {}).setdefault(row.worker, 0.0)
        expected[row.hotkey][row.worker] += row.difficulty
print(json.dumps({"answers": answers, "expected": expected}, default=str))
"""


def test_the_ledger_dashboard_queries_run_on_the_ledger_and_give_the_scorers_hashrate(tmp_path: Path) -> None:
    """Every ClickHouse panel query, macros expanded, on real rows written by the proxy's ledger writer."""
    import subprocess
    import sys

    from tests.test_ledger import BASE_TS

    dashboard = json.loads((DEPLOY / "grafana/dashboards/ledger.json").read_text())
    hotkeys = [f"5Hotkey{i}" for i in range(4)]  # make_rows' hotkeys
    start, end = int(BASE_TS) - 3600, int(BASE_TS) + 3600
    panels = [(p["title"], t["rawSql"]) for p in dashboard["panels"] for t in p["targets"]]
    assert len(panels) == 3
    queries = [expand_clickhouse_macros(sql, start, end, hotkeys) for _, sql in panels]
    done = subprocess.run(
        [sys.executable, "-c", _RUN_LEDGER_PANELS, str(tmp_path / "ledger"), repr(BASE_TS), json.dumps(queries)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    per_hotkey, per_worker, shares = result["answers"]
    expected: dict[str, dict[str, float]] = result["expected"]
    # hashrate × 60 s summed over the buckets = accepted difficulty × 2^32, per hotkey and per worker.
    by_hotkey: dict[str, float] = {}
    for _, hotkey, hashrate in per_hotkey:
        by_hotkey[hotkey] = by_hotkey.get(hotkey, 0.0) + hashrate * 60
    assert by_hotkey == pytest.approx({h: sum(w.values()) * 2**32 for h, w in expected.items()})
    by_worker: dict[str, float] = {}
    for _, worker, hashrate in per_worker:
        by_worker[worker] = by_worker.get(worker, 0.0) + hashrate * 60
    assert by_worker == pytest.approx({w: d * 2**32 for ws in expected.values() for w, d in ws.items()})
    assert sum(int(accepted) + int(rejected) for _, accepted, rejected in shares) == 600
