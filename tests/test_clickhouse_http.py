"""The chdb-backed ClickHouse HTTP test server is faithful enough for clickhouse-connect.

Every test talks to the server only through 127.0.0.1; waits are bounded in count and time.
"""

from __future__ import annotations

import datetime as dt
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import clickhouse_connect
import pytest
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

from tests.clickhouse_http import ClickHouseHTTPServer

REPO = Path(__file__).resolve().parent.parent
USER, PASSWORD = "ih", "s3cret:p@ss"  # a password that needs quoting in a URL

SHARES_DDL = """
CREATE TABLE IF NOT EXISTS ih.shares
(
    ts DateTime64(3, 'UTC'),
    proxy_id LowCardinality(String),
    hotkey String,
    difficulty Float64,
    accepted UInt8
)
ENGINE = MergeTree
ORDER BY (hotkey, ts)
SETTINGS non_replicated_deduplication_window = 1000
"""
COLUMNS = ["ts", "proxy_id", "hotkey", "difficulty", "accepted"]


def make_rows(n: int, start: int = 0) -> list[list[Any]]:
    base = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    return [
        [base + dt.timedelta(milliseconds=250 * i), f"proxy-{i % 2}", f"hk{i % 3}", 1.5 * i, i % 2]
        for i in range(start, start + n)
    ]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ClickHouseHTTPServer]:
    srv = ClickHouseHTTPServer(tmp_path / "clickhouse", user=USER, password=PASSWORD)
    srv.start()
    try:
        yield srv
    finally:
        srv.close()


def connect(srv: ClickHouseHTTPServer, **kwargs: Any) -> Client:
    options: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": srv.port,
        "username": USER,
        "password": PASSWORD,
        "connect_timeout": 5,
        "send_receive_timeout": 30,
        "autogenerate_session_id": False,
        **kwargs,
    }
    return clickhouse_connect.get_client(**options)


@pytest.fixture
def client(server: ClickHouseHTTPServer) -> Iterator[Client]:
    c = connect(server)
    c.command("CREATE DATABASE IF NOT EXISTS ih")
    c.command(SHARES_DDL)
    try:
        yield c
    finally:
        c.close()


def count(c: Client, table: str = "ih.shares") -> int:
    value = c.command(f"SELECT count() FROM {table}")
    assert isinstance(value, int)
    return value


def insert(c: Client, rows: list[list[Any]], token: str | None = None) -> Any:
    settings = {"insert_deduplication_token": token} if token else None
    return c.insert("ih.shares", rows, column_names=COLUMNS, settings=settings)


def wait_until(predicate: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    for _ in range(1000):
        if predicate():
            return True
        if time.monotonic() > deadline:
            break
        time.sleep(0.02)
    return False


def port_refuses(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return False
    except ConnectionRefusedError:
        return True
    except OSError:  # e.g. reset while the listener is closing: not refusing (yet)
        return False


def http(url: str, data: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, bytes, Any]:
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read(), response.headers
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers


# ---- connecting, commands, queries -------------------------------------------------------------


def test_get_client_connects_and_sees_the_chdb_engine(server: ClickHouseHTTPServer) -> None:
    c = connect(server)
    try:
        assert c.server_version == server.execute("SELECT version()").decode().strip()
        assert c.ping()
        assert c.command("SELECT 1 + 1") == 2
        assert c.command("SELECT 'a', 'b'") == ["a", "b"]
    finally:
        c.close()


def test_dsn_url_is_usable(server: ClickHouseHTTPServer) -> None:
    assert server.url == f"http://ih:s3cret%3Ap%40ss@127.0.0.1:{server.port}/"
    c = clickhouse_connect.get_client(dsn=server.url, autogenerate_session_id=False)
    try:
        assert c.command("SELECT currentUser() != ''") == 1
    finally:
        c.close()


def test_ddl_insert_and_query(client: Client) -> None:
    assert client.command("EXISTS TABLE ih.shares") == 1
    settings = client.query(
        "SELECT value FROM system.merge_tree_settings WHERE name = 'non_replicated_deduplication_window'"
    )
    assert settings.result_rows  # the MergeTree setting is known to the engine
    create = client.command("SHOW CREATE TABLE ih.shares")
    assert "non_replicated_deduplication_window = 1000" in str(create).replace("\\n", "\n")

    rows = make_rows(6)
    summary = insert(client, rows)
    assert summary.written_rows == 6
    result = client.query("SELECT * FROM ih.shares ORDER BY ts")
    assert [list(r) for r in result.result_rows] == [[r[0].replace(tzinfo=None), *r[1:]] for r in rows]
    assert result.column_names == tuple(COLUMNS)
    # command() on a statement with an empty result set returns "", on DDL a QuerySummary
    assert client.command("SELECT hotkey FROM ih.shares WHERE accepted > 5") == ""
    assert not isinstance(client.command("CREATE TABLE IF NOT EXISTS ih.x (a UInt8) ENGINE = Memory"), str)


def test_query_results_equal_in_process_chdb(server: ClickHouseHTTPServer, client: Client) -> None:
    insert(client, make_rows(50), token="batch-1")
    queries = [
        "SELECT * FROM ih.shares ORDER BY ts",
        "SELECT hotkey, sum(difficulty) AS d, countIf(accepted = 1) AS a FROM ih.shares"
        " GROUP BY hotkey ORDER BY hotkey",
        "SELECT toStartOfMinute(ts) AS m, proxy_id, count() FROM ih.shares GROUP BY m, proxy_id ORDER BY m, proxy_id",
    ]
    over_http = [client.query(q) for q in queries]
    # chdb in this process, opened on the same data directory (the only one this process may open)
    local = clickhouse_connect.get_client(interface="chdb", path=str(server.data_dir))
    try:
        in_process = [local.query(q) for q in queries]
    finally:
        local.close()
    for a, b in zip(over_http, in_process, strict=True):
        assert a.result_rows == b.result_rows
        assert a.column_names == b.column_names
        assert [t.name for t in a.column_types] == [t.name for t in b.column_types]
    assert count(client) == 50  # closing the in-process client left the server's session alone


@pytest.mark.parametrize("compress", [True, False, "lz4", "zstd", "gzip"])
def test_every_client_compression_works(server: ClickHouseHTTPServer, client: Client, compress: bool | str) -> None:
    c = connect(server, compress=compress)
    try:
        insert(c, make_rows(20), token=f"compress-{compress}")
        assert count(c) == 20
        assert c.query("SELECT sum(difficulty) FROM ih.shares").result_rows == [(sum(1.5 * i for i in range(20)),)]
    finally:
        c.close()


def test_settings_apply_to_one_request_only(client: Client) -> None:
    default = client.command("SELECT getSetting('max_block_size')")
    assert client.command("SELECT getSetting('max_block_size')", settings={"max_block_size": 777}) == 777
    assert client.command("SELECT getSetting('max_block_size')") == default
    token = client.command(
        "SELECT getSetting('insert_deduplication_token')", settings={"insert_deduplication_token": "t"}
    )
    assert token == "t"
    assert client.command("SELECT getSetting('insert_deduplication_token')") == ""


def test_server_side_parameters(client: Client) -> None:
    result = client.query("SELECT {n:UInt32} * 2 AS x, {s:String} AS s", parameters={"n": 21, "s": "it's"})
    assert result.result_rows == [(42, "it's")]


def test_errors_look_like_clickhouse(server: ClickHouseHTTPServer, client: Client) -> None:
    with pytest.raises(DatabaseError) as unknown:
        client.query("SELECT * FROM ih.nope")
    assert "UNKNOWN_TABLE" in str(unknown.value)
    with pytest.raises(DatabaseError, match="SYNTAX_ERROR"):
        client.command("SELEC 1")
    with pytest.raises(DatabaseError, match="UNKNOWN_SETTING"):
        client.command("SELECT 1", settings={"no_such_setting_xyz": 1})
    # status and headers, as the server sends them
    status, body, headers = http(f"http://127.0.0.1:{server.port}/?user={USER}&password=s3cret%3Ap%40ss", b"SELEC 1")
    assert status == 400
    assert headers["X-ClickHouse-Exception-Code"] == "62"
    assert body.startswith(b"Code: 62. DB::Exception:")


def test_authentication(server: ClickHouseHTTPServer) -> None:
    with pytest.raises(DatabaseError) as wrong:
        connect(server, password="wrong")
    assert "516" in str(wrong.value)
    assert "AUTHENTICATION_FAILED" in str(wrong.value)
    status, _, headers = http(f"http://127.0.0.1:{server.port}/", b"SELECT 1")
    assert status == 403
    assert headers["X-ClickHouse-Exception-Code"] == "516"
    status, body, _ = http(f"http://127.0.0.1:{server.port}/ping")
    assert (status, body) == (200, b"Ok.\n")  # /ping needs no credentials


def test_raw_http_query_parameter_and_body(server: ClickHouseHTTPServer, client: Client) -> None:
    auth = {"X-ClickHouse-User": USER, "X-ClickHouse-Key": PASSWORD}
    base = f"http://127.0.0.1:{server.port}/"
    query = urllib.parse.quote("INSERT INTO ih.shares (hotkey, difficulty) FORMAT CSV")
    status, _, _ = http(f"{base}?query={query}", b'"hk9",2.5\n"hk9",3.5\n', auth)
    assert status == 200
    status, body, headers = http(
        f"{base}?database=ih&default_format=JSONEachRow", b"SELECT sum(difficulty) AS d FROM shares", auth
    )
    assert (status, body) == (200, b'{"d":6}\n')
    assert headers["X-ClickHouse-Format"] == "JSONEachRow"
    status, body, _ = http(f"{base}?query=SELECT%20hotkey%20FROM%20ih.shares%20LIMIT%201", None, auth)
    assert (status, body) == (200, b"hk9\n")


# ---- deduplication ---------------------------------------------------------------------------------


def test_insert_with_the_same_token_twice_keeps_one_copy(client: Client) -> None:
    rows = make_rows(10)
    insert(client, rows, token="proxy-a:1")
    insert(client, rows, token="proxy-a:1")
    assert count(client) == 10
    insert(client, rows, token="proxy-a:2")  # same rows, new token: a new batch
    assert count(client) == 20


def test_materialized_view_is_not_fed_twice_on_a_retried_token(client: Client) -> None:
    client.command(
        """
        CREATE TABLE ih.per_hotkey (hotkey String, shares UInt64, difficulty Float64)
        ENGINE = SummingMergeTree ORDER BY hotkey
        SETTINGS non_replicated_deduplication_window = 1000
        """
    )
    client.command(
        """
        CREATE MATERIALIZED VIEW ih.per_hotkey_mv TO ih.per_hotkey AS
        SELECT hotkey, count() AS shares, sum(difficulty) AS difficulty FROM ih.shares GROUP BY hotkey
        """
    )
    rows = make_rows(12)
    for _ in range(3):
        insert(client, rows, token="batch-7")
    assert count(client) == 12
    assert client.command("SELECT sum(shares) FROM ih.per_hotkey") == 12
    insert(client, make_rows(12, start=12), token="batch-8")
    assert client.command("SELECT sum(shares) FROM ih.per_hotkey") == 24


# ---- outages ------------------------------------------------------------------------------------------


def test_stop_refuses_connections_and_start_brings_the_data_back(server: ClickHouseHTTPServer, client: Client) -> None:
    insert(client, make_rows(8), token="before-outage")
    port = server.port
    server.stop()
    assert not server.running
    assert port_refuses(port)
    with pytest.raises(OperationalError, match="Connection refused"):
        insert(client, make_rows(8, start=8), token="during-outage")
    with pytest.raises(OperationalError):
        client.query("SELECT 1")
    assert not client.ping()
    assert server.execute("SELECT count() FROM ih.shares") == b"8\n"  # the engine is still there

    server.start()
    assert server.port == port
    assert client.ping()
    assert count(client) == 8
    insert(client, make_rows(8, start=8), token="during-outage")  # the retry after the outage
    assert count(client) == 16


def test_stop_lets_an_in_flight_request_finish(server: ClickHouseHTTPServer, client: Client) -> None:
    results: list[Any] = []
    request = threading.Thread(target=lambda: results.append(client.command("SELECT 40 + 2")))
    stopper = threading.Thread(target=server.stop)
    port = server.port
    with server.paused():  # the request reaches the server and waits there
        request.start()
        assert wait_until(lambda: server.in_flight == 1)
        stopper.start()
        assert wait_until(lambda: port_refuses(port))  # no new connections while it is in flight
        assert request.is_alive()
    request.join(30)
    stopper.join(30)
    assert results == [42]
    assert not server.running


def test_paused_server_makes_the_client_time_out(server: ClickHouseHTTPServer, client: Client) -> None:
    impatient = connect(server, send_receive_timeout=1)
    try:
        with server.paused(), pytest.raises(OperationalError, match=r"(?i)timed out"):
            impatient.query("SELECT 1")
        assert impatient.command("SELECT 1") == 1
    finally:
        impatient.close()


def test_stop_and_start_repeatedly(server: ClickHouseHTTPServer, client: Client) -> None:
    for i in range(3):
        insert(client, make_rows(2, start=2 * i), token=f"cycle-{i}")
        server.stop()
        assert port_refuses(server.port)
        server.start()
    assert count(client) == 6


def test_failing_mode_answers_errors(server: ClickHouseHTTPServer, client: Client) -> None:
    server.set_failing(True)
    with pytest.raises(DatabaseError) as failed:
        insert(client, make_rows(3), token="t1")
    assert "252" in str(failed.value)
    assert "TOO_MANY_PARTS" in str(failed.value)
    with pytest.raises(DatabaseError):
        client.query("SELECT 1")
    assert client.ping()  # up, but rejecting work
    server.set_failing(False)
    insert(client, make_rows(3), token="t1")
    assert count(client) == 3


def test_failing_inserts_only_and_fail_next(server: ClickHouseHTTPServer, client: Client) -> None:
    server.set_failing(True, inserts_only=True, status=503, code=202, name="TOO_MANY_SIMULTANEOUS_QUERIES")
    assert count(client) == 0  # queries still work
    with pytest.raises(DatabaseError, match="202"):
        insert(client, make_rows(3), token="t2")
    server.set_failing(False)

    server.fail_next(2, inserts_only=True)
    for _ in range(2):
        with pytest.raises(DatabaseError, match="TOO_MANY_PARTS"):
            insert(client, make_rows(3), token="t2")
    insert(client, make_rows(3), token="t2")
    assert count(client) == 3
    assert [r.outcome for r in server.history if r.is_insert][-3:] == ["simulated-error", "simulated-error", "ok"]


def test_lost_reply_after_a_committed_insert(server: ClickHouseHTTPServer, client: Client) -> None:
    # clickhouse-connect re-sends an insert once by itself when the connection closes without a
    # reply, so two dropped replies are needed to make client.insert raise.
    server.drop_reply_after_insert(2)
    with pytest.raises(OperationalError):
        insert(client, make_rows(5), token="lost-ack")
    assert server.inserts_committed == 2
    assert count(client) == 5  # committed, and the client's own re-send was deduplicated
    insert(client, make_rows(5), token="lost-ack")  # the application's retry: same token
    assert count(client) == 5
    outcomes = [r.outcome for r in server.history if r.is_insert]
    assert outcomes == ["dropped-after", "dropped-after", "ok"]


def test_one_lost_reply_is_absorbed_by_the_client_resend(server: ClickHouseHTTPServer, client: Client) -> None:
    server.drop_reply_after_insert(1)
    insert(client, make_rows(5), token="lost-once")
    assert count(client) == 5
    assert [r.outcome for r in server.history if r.is_insert] == ["dropped-after", "ok"]


def test_lost_reply_does_not_double_the_materialized_view(server: ClickHouseHTTPServer, client: Client) -> None:
    client.command(
        "CREATE TABLE ih.n (hotkey String, shares UInt64) ENGINE = SummingMergeTree ORDER BY hotkey"
        " SETTINGS non_replicated_deduplication_window = 1000"
    )
    client.command(
        "CREATE MATERIALIZED VIEW ih.n_mv TO ih.n AS SELECT hotkey, count() AS shares FROM ih.shares GROUP BY hotkey"
    )
    server.drop_reply_after_insert(2)
    with pytest.raises(OperationalError):
        insert(client, make_rows(9), token="mv-lost-ack")
    insert(client, make_rows(9), token="mv-lost-ack")
    assert count(client) == 9
    assert client.command("SELECT sum(shares) FROM ih.n") == 9


def test_dropped_request_before_insert_commits_nothing(server: ClickHouseHTTPServer, client: Client) -> None:
    server.drop_request_before_insert(2)
    with pytest.raises(OperationalError):
        insert(client, make_rows(4), token="never-arrived")
    assert server.inserts_committed == 0
    assert count(client) == 0
    insert(client, make_rows(4), token="never-arrived")
    assert count(client) == 4


# ---- as its own process ---------------------------------------------------------------------------


@pytest.mark.slow
def test_runs_as_a_process_with_outage_signals(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.clickhouse_http", "--data-dir", str(tmp_path / "ch"), "--port", "0"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            assert sel.select(timeout=60), "the server did not print its port"
        port = int(proc.stdout.readline())
        c = clickhouse_connect.get_client(host="127.0.0.1", port=port, autogenerate_session_id=False)
        try:
            c.command("CREATE TABLE t (a UInt32) ENGINE = MergeTree ORDER BY a")
            c.insert("t", [[1], [2]], column_names=["a"])
            proc.send_signal(signal.SIGUSR1)  # outage
            assert wait_until(lambda: port_refuses(port))
            proc.send_signal(signal.SIGUSR2)  # back
            assert wait_until(lambda: not port_refuses(port))
            assert c.command("SELECT sum(a) FROM t") == 3
        finally:
            c.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
