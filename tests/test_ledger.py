"""The share ledger: schema, writer, and the faults it must survive without losing or doubling a share.

Every test uses the real ClickHouse engine: chdb in-process, or chdb behind the ClickHouse-HTTP test
server (tests/clickhouse_http.py) when ClickHouse must go down, fail, or lose a reply. Totals are
checked row by row (`shares`) and per minute (`shares_per_minute`) against what was recorded.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import logging
import os
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import clickhouse_connect
import msgspec
import pytest
from clickhouse_connect.driver.client import Client

from ledger.rows import SHARES, ShareRow
from ledger.schema import (
    DEDUP_WINDOW,
    MIGRATIONS,
    SHARES_COLUMNS,
    SHARES_PER_MINUTE_COLUMNS,
    applied_versions,
    apply_migrations,
    current_ttl_days,
)
from ledger.target import DEFAULT_DATABASE, LedgerTarget, redact
from proxy.config import LedgerBudget
from proxy.journal import Journal, batch_token, leftovers
from proxy.ledger import ONE_BLOCK_ROWS, LedgerWriter, insert_batch, insert_context, to_columns
from proxy.metrics import ProxyMetrics
from tests.clickhouse_http import ClickHouseHTTPServer

DB = DEFAULT_DATABASE
REPO = Path(__file__).resolve().parent.parent
BASE_TS = float(int(time.time()) // 60 * 60 - 3600)  # an hour ago, minute-aligned: well inside the TTL


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(coro)


def make_rows(n: int, *, first: int = 0, hotkeys: int = 4, base: float = BASE_TS) -> list[ShareRow]:
    """Rows with unique job ids, several hotkeys/workers/minutes, accepted and rejected.

    Difficulties are exact binary fractions, so float sums do not depend on summation order.
    """
    rows = []
    for i in range(first, first + n):
        hotkey = f"5Hotkey{i % hotkeys}"
        accepted = 0 if i % 5 == 0 else 1
        rows.append(
            ShareRow(
                ts=base + i * 0.037,
                proxy_id="proxy-a",
                hotkey=hotkey,
                worker=f"infinite.{hotkey}.w{i % 3}",
                session=f"s{i % 7}",
                job_id=str(i),
                difficulty=(1.0, 2.0, 0.5, 4096.0)[i % 4],
                share_difficulty=(1.0, 2.0, 0.5, 4096.0)[i % 4] * 1.5,
                hash=f"{i:064x}",
                accepted=accepted,
                reject_reason="" if accepted else ("stale" if i % 2 else "pool: Duplicate share"),
                upstream="127.0.0.1:3333",
                block=1 if i % 997 == 0 else 0,
            )
        )
    return rows


@contextmanager
def chdb_client(path: Path) -> Iterator[Client]:
    client = clickhouse_connect.get_client(interface="chdb", path=str(path))
    try:
        yield client
    finally:
        client.close()  # chdb: one engine directory per process, so never leave one open


def chdb_connect(path: Path) -> Callable[[], Client]:
    return LedgerTarget.parse(f"chdb://{path}", data_dir=path).connect


def minute_of(ts: float) -> int:
    return round(ts * 1000) // 60_000 * 60


def assert_ledger(path: Path, rows: list[ShareRow]) -> None:
    """`shares` holds exactly `rows` (each once) and `shares_per_minute` sums match them."""
    with chdb_client(path) as client:
        stored = client.query(
            f"SELECT toUnixTimestamp64Milli(ts), {', '.join(c.name for c in SHARES[1:])} FROM {DB}.shares"
        ).result_rows
        per_minute = client.query(
            f"SELECT hotkey, worker, toUnixTimestamp(minute), sum(accepted_difficulty), sum(accepted_shares),"
            f" sum(rejected_shares) FROM {DB}.shares_per_minute GROUP BY hotkey, worker, minute"
        ).result_rows
    expected = Counter((round(r.ts * 1000), *r[1:]) for r in rows)
    assert Counter(tuple(r) for r in stored) == expected

    sums: dict[tuple[str, str, int], list[float]] = {}
    for r in rows:
        s = sums.setdefault((r.hotkey, r.worker, minute_of(r.ts)), [0.0, 0, 0])
        if r.accepted:
            s[0] += r.difficulty
            s[1] += 1
        else:
            s[2] += 1
    assert {(h, w, m): [d, a, x] for h, w, m, d, a, x in per_minute} == sums


async def wait_until(condition: Callable[[], bool], what: str, attempts: int = 500) -> None:
    """Poll a bounded number of times (at most ~10 s); never asserts on elapsed time."""
    for _ in range(attempts):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"gave up waiting for {what}")


def spool_files(spool: Path, pattern: str = "*.batch") -> list[Path]:
    return sorted(spool.glob(pattern))


def writer(connect: Callable[[], Client], spool: Path, **kw: Any) -> LedgerWriter:
    """A writer with small batches and quick retries; LedgerBudget's fields may be given as keywords."""
    budget: dict[str, Any] = {"batch_rows": 100, "max_retry_delay": 0.05}
    budget |= {k: kw.pop(k) for k in list(kw) if k in LedgerBudget.__dataclass_fields__}
    return LedgerWriter(connect, spool_dir=spool, budget=LedgerBudget(**budget), **kw)


# -- URLs and secrets ---------------------------------------------------------------------------


def test_urls_parse_and_never_show_the_password(tmp_path: Path) -> None:
    t = LedgerTarget.parse("https://ops:p%40ss@ch.example:9440/ledger", data_dir=tmp_path)
    assert (t.kind, t.host, t.port, t.username, t.password, t.database) == (
        "https",
        "ch.example",
        9440,
        "ops",
        "p@ss",
        "ledger",
    )
    assert "p@ss" not in str(t) and "p@ss" not in repr(t)
    assert LedgerTarget.parse("http://ch:8123", data_dir=tmp_path).database == DB
    assert LedgerTarget.parse("http://ch", data_dir=tmp_path).port == 8123
    assert LedgerTarget.parse("chdb:///abs/dir", data_dir=tmp_path).path == Path("/abs/dir")
    assert LedgerTarget.parse("chdb://rel/dir", data_dir=tmp_path).path == Path("rel/dir").absolute()
    default = LedgerTarget.parse(None, data_dir=tmp_path)
    assert (default.kind, default.path) == ("chdb", tmp_path / "ledger")
    assert LedgerTarget.parse("", data_dir=tmp_path) == default
    with pytest.raises(ValueError, match="invalid database"):
        LedgerTarget.parse("http://h/bad-name;drop", data_dir=tmp_path)
    with pytest.raises(ValueError) as err:
        LedgerTarget.parse("ftp://u:hunter2@h/", data_dir=tmp_path)
    assert "hunter2" not in str(err.value)

    assert redact("http://u:hunter2@h:1/db") == "http://u:***@h:1/db"
    assert redact("error at https://:hunter2@h/ and ?user=u&password=hunter2&x=1") == (
        "error at https://:***@h/ and ?user=u&password=***&x=1"
    )
    assert redact("chdb:///no/secret") == "chdb:///no/secret"


def test_connection_errors_do_not_leak_the_password(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    secret = "s3cr3t-Pa55"
    with ClickHouseHTTPServer(tmp_path / "ch", user="ih", password="other") as server:
        target = LedgerTarget.parse(f"http://ih:{secret}@127.0.0.1:{server.port}/", data_dir=tmp_path)
        with pytest.raises(ConnectionError) as err:
            target.connect()  # wrong password: the server answers AUTHENTICATION_FAILED
        assert "AUTHENTICATION_FAILED" in str(err.value)
        assert secret not in str(err.value) and err.value.__cause__ is None

        async def scenario() -> None:
            w = writer(target.connect, tmp_path / "spool")
            with caplog.at_level(logging.DEBUG):
                await w.start()
                w.record(make_rows(1)[0])
                await w.stop()
            assert w.spooled_rows == 1

        run(scenario())
    assert "AUTHENTICATION_FAILED" in caplog.text
    assert secret not in caplog.text


# -- schema --------------------------------------------------------------------------------------


def test_migrations_are_idempotent_and_match_the_contract(tmp_path: Path) -> None:
    with chdb_client(tmp_path / "ch") as client:
        assert apply_migrations(client, DB, 90) == [v for v, _, _ in MIGRATIONS]
        assert apply_migrations(client, DB, 90) == []  # second run: no-op
        assert applied_versions(client, DB) == {v for v, _, _ in MIGRATIONS}

        def columns(table: str) -> tuple[tuple[str, str], ...]:
            return tuple(
                (name, ctype)
                for name, ctype in client.query(
                    "SELECT name, type FROM system.columns WHERE database = {db:String} AND table = {t:String}"
                    " ORDER BY position",
                    parameters={"db": DB, "t": table},
                ).result_rows
            )

        assert columns("shares") == SHARES_COLUMNS
        assert columns("shares_per_minute") == SHARES_PER_MINUTE_COLUMNS
        tables = {
            name: (engine, sorting_key, partition_key, engine_full)
            for name, engine, sorting_key, partition_key, engine_full in client.query(
                "SELECT name, engine, sorting_key, partition_key, engine_full FROM system.tables"
                " WHERE database = {db:String}",
                parameters={"db": DB},
            ).result_rows
        }
        engine, key, partition, full = tables["shares"]
        assert (engine, key, partition) == ("MergeTree", "hotkey, ts", "toYYYYMMDD(ts)")
        assert f"non_replicated_deduplication_window = {DEDUP_WINDOW}" in full
        engine, key, _, full = tables["shares_per_minute"]
        assert (engine, key) == ("SummingMergeTree", "hotkey, worker, minute")
        assert f"non_replicated_deduplication_window = {DEDUP_WINDOW}" in full
        assert DEDUP_WINDOW >= 1000
        assert tables["shares_per_minute_mv"][0] == "MaterializedView"
        assert current_ttl_days(client, DB, "shares") == 90
        assert current_ttl_days(client, DB, "shares_per_minute") == 90

        # A changed retention is applied to both tables at the next start; nothing else re-runs.
        assert apply_migrations(client, DB, 30) == []
        assert current_ttl_days(client, DB, "shares") == 30
        assert current_ttl_days(client, DB, "shares_per_minute") == 30

        # A database named in the URL is created on demand.
        apply_migrations(client, "ledger_two", 7)
        assert current_ttl_days(client, "ledger_two", "shares") == 7


def test_second_start_on_the_same_directory(tmp_path: Path) -> None:
    rows = make_rows(250)

    async def scenario() -> None:
        for part, ttl in ((rows[:120], 90), (rows[120:], 45)):
            w = writer(chdb_connect(tmp_path / "ch"), tmp_path / "spool", ttl_days=ttl)
            await w.start()
            for row in part:
                w.record(row)
            await w.stop()
            assert (w.rows_written, w.queue_rows, w.spooled_batches) == (len(part), 0, 0)

    run(scenario())
    assert_ledger(tmp_path / "ch", rows)
    with chdb_client(tmp_path / "ch") as client:
        assert applied_versions(client, DB) == {v for v, _, _ in MIGRATIONS}
        assert current_ttl_days(client, DB, "shares") == 45


# -- normal operation ----------------------------------------------------------------------------


def test_recorded_rows_land_exactly_once(tmp_path: Path) -> None:
    rows = make_rows(2_345)
    metrics = ProxyMetrics()

    async def scenario() -> None:
        w = writer(chdb_connect(tmp_path / "ch"), tmp_path / "spool", batch_rows=500, metrics=metrics)
        await w.start()
        for row in rows[:1_600]:
            w.record(row)
        # The background task cuts by size and by time without being asked.
        await wait_until(lambda: w.rows_written == 1_600, "the background flush")
        for row in rows[1_600:]:
            w.record(row)
        await w.stop()  # the final flush writes the rest
        assert (w.rows_written, w.queue_rows, w.spooled_batches) == (len(rows), 0, 0)

    run(scenario())
    assert_ledger(tmp_path / "ch", rows)
    assert metrics.registry.get_sample_value("ih_ledger_rows_written_total") == len(rows)
    assert metrics.registry.get_sample_value("ih_ledger_flush_errors_total") == 0
    assert metrics.registry.get_sample_value("ih_ledger_queue_rows") == 0

    # Each written batch's oldest and newest share: rows recorded an hour after their ts (BASE_TS).
    def lag(row: str, part: str) -> float:
        value = metrics.registry.get_sample_value(f"ih_ledger_ingest_lag_seconds_{part}", {"row": row})
        assert value is not None, (row, part)
        return value

    batches = lag("oldest", "count")
    assert len(rows) // 500 <= batches == lag("newest", "count")
    assert batches * 3_000 < lag("newest", "sum") < lag("oldest", "sum") < batches * (3_600 + len(rows) * 0.037 + 600)
    assert not spool_files(tmp_path / "spool")


def test_queued_rows_are_left_alone_by_the_garbage_collector(tmp_path: Path) -> None:
    # A row waits up to the flush interval: kept as a NamedTuple it stayed tracked, and every
    # collection meanwhile walked it (thousands of rows a second, half a second each).
    PROXY = "proxy-gc"

    async def scenario() -> None:
        w = writer(chdb_connect(tmp_path / "ch"), tmp_path / "spool", batch_rows=100_000, flush_interval=3600.0)
        await w.start()
        for row in make_rows(500):
            w.record(row._replace(proxy_id=PROXY))  # told apart from other tests' rows still alive
        del row  # only the writer holds them now
        await asyncio.sleep(0)  # the journal's commit, as after a loop iteration
        gc.collect()
        assert w.queue_rows == 500
        queued = [
            o
            for o in gc.get_objects()  # tracked objects only
            if isinstance(o, tuple) and len(o) == len(SHARES) and o[1:2] == (PROXY,)
        ]
        assert queued == []
        await w.stop()
        assert w.rows_written == 500

    run(scenario())
    assert_ledger(tmp_path / "ch", [row._replace(proxy_id=PROXY) for row in make_rows(500)])


def test_unencodable_text_does_not_wedge_the_ledger(tmp_path: Path) -> None:
    # A lone surrogate cannot be UTF-8 encoded: the batch must still be written (and spoolable).
    row = make_rows(1)[0]._replace(worker="infinite.x.\ud800")

    async def scenario() -> None:
        w = writer(chdb_connect(tmp_path / "ch"), tmp_path / "spool")
        await w.start()
        w.record(row)
        await w.stop()
        assert w.rows_written == 1

    run(scenario())
    with chdb_client(tmp_path / "ch") as client:
        assert client.query(f"SELECT worker FROM {DB}.shares").result_rows == [("infinite.x.?",)]


# -- faults --------------------------------------------------------------------------------------


def test_outage_spools_then_replays_in_the_background(tmp_path: Path) -> None:
    """(a) ClickHouse off (connections refused), then failing (server errors), then back."""
    rows = make_rows(1_000)
    metrics = ProxyMetrics()
    spool = tmp_path / "spool"
    with ClickHouseHTTPServer(tmp_path / "ch") as server:
        target = LedgerTarget.parse(server.url, data_dir=tmp_path)

        async def scenario() -> None:
            w = writer(target.connect, spool, metrics=metrics)
            await w.start()
            for row in rows[:150]:
                w.record(row)
            await w.flush()
            assert w.rows_written == 150

            server.stop()  # connections refused from now on
            for row in rows[150:500]:
                w.record(row)
            await wait_until(lambda: w.spooled_rows == 350, "rows spooled during the outage")
            assert w.queue_rows == 0 and w.rows_written == 150  # on disk, not in memory
            assert metrics.registry.get_sample_value("ih_ledger_spool_rows") == 350

            server.set_failing(True, inserts_only=True)  # back up, but every insert rejected (TOO_MANY_PARTS)
            server.start()
            for row in rows[500:700]:
                w.record(row)
            await wait_until(lambda: w.spooled_rows == 550, "rows spooled while inserts fail")
            assert w.rows_written == 150

            server.set_failing(False)
            for row in rows[700:]:
                w.record(row)
            # No flush(): the background task finds ClickHouse back and replays, oldest first.
            # (The spool file is removed just after its rows count as written: wait for both.)
            await wait_until(lambda: w.rows_written == len(rows) and not w.spooled_batches, "the replay")
            assert (w.spooled_batches, w.spooled_rows, w.queue_rows) == (0, 0, 0)
            await w.stop()

        run(scenario())
        assert metrics.registry.get_sample_value("ih_ledger_flush_errors_total")  # > 0
        assert metrics.registry.get_sample_value("ih_ledger_rows_written_total") == len(rows)
        assert not list(spool.glob("*.batch*"))
        assert_ledger(tmp_path / "ch", rows)


def test_lost_reply_of_a_committed_insert_is_counted_once(tmp_path: Path) -> None:
    """(b) The insert committed but its answer was lost: the retry carries the same token."""
    rows = make_rows(300)
    with ClickHouseHTTPServer(tmp_path / "ch") as server:
        target = LedgerTarget.parse(server.url, data_dir=tmp_path)

        async def scenario() -> None:
            # Only flush() cuts batches here, so the dropped reply hits exactly the batch we flush.
            w = writer(target.connect, tmp_path / "spool", batch_rows=1_000, flush_interval=3600)
            await w.start()
            for row in rows[:200]:
                w.record(row)
            # clickhouse-connect re-sends once by itself; the second lost reply makes insert() raise.
            server.drop_reply_after_insert(2)
            committed = server.inserts_committed
            await w.flush()
            assert server.inserts_committed == committed + 2  # both copies reached the engine
            assert w.spooled_rows == 200 and w.rows_written == 0  # the writer believes it failed
            for row in rows[200:]:
                w.record(row)
            await w.flush()  # replays the spooled batch (same token), then the new rows
            assert (w.spooled_rows, w.rows_written) == (0, 300)
            await w.stop()

        run(scenario())
        tokens = [
            r.settings.get("insert_deduplication_token") for r in server.history if "shares" in r.sql and r.is_insert
        ]
        assert len(tokens) == 4 and tokens[0] == tokens[1] == tokens[2] != tokens[3]
        assert_ledger(tmp_path / "ch", rows)  # `shares` AND `shares_per_minute` counted once


def test_writer_stopped_while_clickhouse_is_down_replays_in_a_new_writer(tmp_path: Path) -> None:
    """(c) The process goes away during an outage: the spool on disk is all that is left."""
    rows = make_rows(777)
    spool = tmp_path / "spool"
    with ClickHouseHTTPServer(tmp_path / "ch") as server:
        target = LedgerTarget.parse(server.url, data_dir=tmp_path)

        async def first_run() -> None:
            w = writer(target.connect, spool)
            await w.start()
            for row in rows[:100]:
                w.record(row)
            await w.flush()
            server.stop()
            for row in rows[100:]:
                w.record(row)
            await w.stop()
            assert (w.rows_written, w.spooled_rows, w.queue_rows) == (100, 677, 0)

        async def second_run() -> None:
            w = writer(target.connect, spool)
            assert w.spooled_rows == 0
            await w.start()
            await wait_until(lambda: w.rows_written == 677, "the replay of the previous run's spool")
            await w.stop()
            assert w.spooled_batches == 0

        run(first_run())
        names = [p.name for p in spool_files(spool)]
        assert len(names) == 7 and names == sorted(names)
        server.start()
        run(second_run())
        assert not list(spool.glob("*.batch*"))
        assert_ledger(tmp_path / "ch", rows)


def test_crash_between_insert_and_spool_delete_counts_once(tmp_path: Path) -> None:
    """(c) Killed after ClickHouse took a spooled batch but before its file was deleted."""
    rows = make_rows(450)
    spool = tmp_path / "spool"
    down = {"yes": True}
    real = chdb_connect(tmp_path / "ch")

    def connect() -> Client:
        if down["yes"]:
            raise ConnectionError("ClickHouse is down (simulated: connection refused)")
        return real()

    async def spool_everything() -> None:
        w = writer(connect, spool)
        await w.start()
        for row in rows:
            w.record(row)
        await w.stop()
        assert w.spooled_rows == len(rows)

    async def replay() -> None:
        w = writer(connect, spool)
        await w.start()
        await w.flush()
        await w.stop()
        assert w.spooled_batches == 0

    run(spool_everything())
    saved = tmp_path / "saved"
    shutil.copytree(spool, saved)
    down["yes"] = False
    run(replay())
    assert not spool_files(spool)
    # Put the files back, as if the process died before deleting them: the replay is a no-op.
    for path in saved.glob("*.batch"):
        shutil.copy(path, spool / path.name)
    run(replay())
    assert_ledger(tmp_path / "ch", rows)


def test_corrupt_spool_file_is_set_aside(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """(d) Garbage, a truncated file and a torn or zero-filled temp file never block the good batches,
    and never replay as one."""
    rows = make_rows(300)
    spool = tmp_path / "spool"

    def down() -> Client:
        raise ConnectionError("ClickHouse is down (simulated)")

    async def spool_everything() -> None:
        w = writer(down, spool)
        await w.start()
        for row in rows:
            w.record(row)
        await w.stop()

    run(spool_everything())
    good = spool_files(spool)
    assert len(good) == 3
    # A truncated copy of a real batch (seq 100), garbage between the good ones, a torn temp file,
    # and one a power cut left full-sized with zeros in a block that never landed (inside a hash: it
    # decodes, only its checksum tells). A batch spooled by an earlier version (no mark) replays.
    first = good[0].read_bytes()
    (spool / "000000000100-100.batch").write_bytes(first[:-10])
    (spool / "000000000001-5.batch").write_bytes(b"\x00garbage")
    (spool / "000000000101-100.batch.tmp").write_bytes(first[:50])
    hole = first.index(f"{50:064x}".encode())
    (spool / "000000000102-100.batch.tmp").write_bytes(first[:hole] + b"\0" * 32 + first[hole + 32 :])
    good[2].write_bytes(good[2].read_bytes()[8:])

    async def replay() -> None:
        w = writer(chdb_connect(tmp_path / "ch"), spool)
        await w.start()
        assert w.spooled_batches == 5
        with caplog.at_level(logging.ERROR):
            await w.flush()
        assert (w.spooled_batches, w.rows_written) == (0, 300)
        await w.stop()

    run(replay())
    assert sorted(p.name for p in spool.glob("*.batch*")) == ["000000000001-5.batch.bad", "000000000100-100.batch.bad"]
    assert caplog.text.count("corrupt spool file") == 2
    assert_ledger(tmp_path / "ch", rows)


def kill_and_drain(child: subprocess.Popen[str]) -> tuple[str, str]:
    """SIGKILL the child, then read what it still printed through the same buffered files the test
    read lines from: communicate() reads the raw pipes and would drop what readline() had already
    buffered (an acknowledgement lost that way made a row look written twice)."""
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    assert child.stdout is not None and child.stderr is not None
    return child.stdout.read(), child.stderr.read()


_CHILD = textwrap.dedent(
    """
    import asyncio, logging, sys
    from pathlib import Path
    from ledger.target import LedgerTarget
    from proxy.config import LedgerBudget
    from proxy.ledger import LedgerWriter
    from tests.test_ledger import make_rows

    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr, format="%(relativeCreated)d %(name)s %(message)s")

    async def main() -> None:
        target = LedgerTarget.parse(sys.argv[1], data_dir=Path(sys.argv[2]))
        w = LedgerWriter(target.connect, spool_dir=Path(sys.argv[2]),
                         budget=LedgerBudget(batch_rows=50, flush_interval=0.01, max_retry_delay=0.02))
        await w.start()
        for step in range(2_000):
            for row in make_rows(50, first=step * 50, base=float(sys.argv[3])):
                w.record(row)
            await w.flush()
            print((step + 1) * 50, flush=True)  # every row up to here is in ClickHouse or on disk

    asyncio.run(main())
    """
)


@pytest.mark.slow
def test_sigkill_in_the_middle_loses_and_doubles_nothing(tmp_path: Path) -> None:
    """A real process is SIGKILLed while writing, with ClickHouse failing now and then."""
    spool = tmp_path / "spool"
    secret = "kill-test-Secret"
    with ClickHouseHTTPServer(tmp_path / "ch", user="ih", password=secret) as server:
        server.fail_next(3, inserts_only=True)  # the first inserts fail: the child spools and replays
        child = subprocess.Popen(
            [sys.executable, "-c", _CHILD, server.url, str(spool), repr(BASE_TS)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        acknowledged = 0
        try:
            assert child.stdout is not None
            for _ in range(30):  # bounded: 30 acknowledged flushes, then the kill
                line = child.stdout.readline()
                if not line:
                    break
                acknowledged = int(line)
                if acknowledged in (500, 1_400):
                    # More failures mid-stream: the kill likely lands while the child spools or replays.
                    server.fail_next(2, inserts_only=True)
        finally:
            rest, stderr = kill_and_drain(child)
        # Lines already in the pipe when the kill landed count as acknowledged too.
        acknowledged = max([acknowledged, *(int(line) for line in rest.split())])
        assert acknowledged >= 1_500, stderr[-2000:]
        assert secret not in stderr
        assert "TOO_MANY_PARTS" in stderr and "spooling" in stderr  # the failures did happen

        target = LedgerTarget.parse(server.url, data_dir=tmp_path)

        async def recover() -> None:
            w = writer(target.connect, spool)
            await w.start()
            await w.flush()
            await w.stop()
            assert w.spooled_batches == 0

        run(recover())
    with chdb_client(tmp_path / "ch") as client:
        (written,) = client.query(f"SELECT count() FROM {DB}.shares").result_rows[0]
    # The child may have got the rows after its last acknowledgement to ClickHouse or disk before dying.
    assert acknowledged <= written <= acknowledged + 50
    assert_ledger(tmp_path / "ch", make_rows(written))  # each exactly once, in both tables
    assert not list(spool.glob("*.bad"))


_JOURNAL_CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from ledger.target import LedgerTarget
    from proxy.config import LedgerBudget
    from proxy.ledger import LedgerWriter
    from tests.test_ledger import make_rows

    async def main() -> None:
        target = LedgerTarget.parse(sys.argv[1], data_dir=Path(sys.argv[2]))
        w = LedgerWriter(target.connect, spool_dir=Path(sys.argv[2]),
                         budget=LedgerBudget(batch_rows=64, flush_interval=0.05, max_retry_delay=0.05))
        await w.start()
        for step in range(4_000):
            for row in make_rows(10, first=step * 10, base=float(sys.argv[3])):
                w.record(row)
            w.commit()  # what the proxy does before it answers miners: no flush, no insert awaited
            print((step + 1) * 10, flush=True)
            await asyncio.sleep(0.002)

    asyncio.run(main())
    """
)


@pytest.mark.slow
def test_sigkill_loses_no_row_the_proxy_had_answered(tmp_path: Path) -> None:
    """Rows only recorded (in memory, not yet in a batch) when a SIGKILL lands come back from the
    journal at the next start, exactly once, with ClickHouse failing now and then."""
    spool = tmp_path / "spool"
    with ClickHouseHTTPServer(tmp_path / "ch") as server:
        server.fail_next(2, inserts_only=True)
        child = subprocess.Popen(
            [sys.executable, "-c", _JOURNAL_CHILD, server.url, str(spool), repr(BASE_TS)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        acknowledged = 0
        try:
            assert child.stdout is not None
            for _ in range(150):  # bounded: 150 acknowledgements, then the kill
                line = child.stdout.readline()
                if not line:
                    break
                acknowledged = int(line)
                if acknowledged == 600:
                    server.fail_next(2, inserts_only=True)
        finally:
            rest, stderr = kill_and_drain(child)
        acknowledged = max([acknowledged, *(int(line) for line in rest.split())])
        assert acknowledged >= 1_000, stderr[-2000:]
        journal = list((spool / "journal").glob("*.journal"))
        assert journal, "the kill left rows in the journal"

        async def recover() -> None:
            w = writer(LedgerTarget.parse(server.url, data_dir=tmp_path).connect, spool)
            await w.start()
            await w.flush()
            await w.stop()
            assert w.spooled_batches == 0

        run(recover())
    with chdb_client(tmp_path / "ch") as client:
        (written,) = client.query(f"SELECT count() FROM {DB}.shares").result_rows[0]
    # Everything answered is there; at most the rows recorded after the last acknowledgement more.
    assert acknowledged <= written <= acknowledged + 10
    assert_ledger(tmp_path / "ch", make_rows(written))
    assert not list((spool / "journal").glob("*.journal"))


def test_a_converted_batch_is_never_walked_by_the_collector() -> None:
    """A batch's columns live from their conversion to the insert's end, made in the insert thread:
    tracked, the loop's next young collection walked every value of every column (6-20 ms passes at
    10,000 shares/s). They come out untracked, holding the values the plain conversions give."""
    rows = make_rows(50)
    odd = rows[7]
    rows[7] = odd._replace(worker="infinite.h\u00e9.w\ud800", block=7, ts=odd.ts + 0.0005)
    columns = to_columns("shares", rows)
    assert [c.name for c, column in zip(SHARES, columns, strict=True) if gc.is_tracked(column)] == []
    by_name = {c.name: column for c, column in zip(SHARES, columns, strict=True)}
    assert by_name["ts"] == tuple(round(r.ts * 1000) for r in rows)  # DateTime64(3) ticks, rounded
    assert by_name["block"] == tuple(1 if r.block else 0 for r in rows)  # any truthy flag is 1
    assert by_name["difficulty"] == tuple(float(r.difficulty) for r in rows)
    workers = [r.worker for r in rows]
    workers[7] = "infinite.h\u00e9.w?"  # a lone surrogate cannot be UTF-8: replaced, not a failed batch
    assert list(by_name["worker"]) == workers
    kept = {"ts", "block", "difficulty", "worker"}
    for c, column in zip(SHARES, columns, strict=True):
        if c.name not in kept:
            assert list(column) == [getattr(r, c.name) for r in rows], c.name


def test_a_batch_goes_to_clickhouse_as_one_block_up_to_its_limit(tmp_path: Path) -> None:
    """clickhouse-connect cuts a batch into blocks of ~2 MiB by slicing every column (new tracked
    tuples, walked by the loop's collections); ours goes whole up to ONE_BLOCK_ROWS rows, bigger
    ones in blocks as before. Every row lands either way."""
    small, big = make_rows(20_000), make_rows(ONE_BLOCK_ROWS + 1, first=20_000)
    with chdb_client(tmp_path / "ch") as client:
        apply_migrations(client, DB, 90)
        into = f"{DB}.shares"
        plain = client.create_insert_context(
            into,
            data=to_columns("shares", small),
            column_oriented=True,
            column_names=[c.name for c in SHARES],
            column_type_names=[c.type for c in SHARES],
        )
        assert len(list(plain.next_block())) > 1  # what clickhouse-connect alone would send
        whole = insert_context(client, into, "shares", "t-small", to_columns("shares", small))
        assert [block.row_count for block in whole.next_block()] == [len(small)]
        client.insert(context=insert_context(client, into, "shares", "t-small", to_columns("shares", small)))
        cut = insert_context(client, into, "shares", "t-big", to_columns("shares", big))
        assert len(list(cut.next_block())) > 1
        client.insert(context=insert_context(client, into, "shares", "t-big", to_columns("shares", big)))
    assert_ledger(tmp_path / "ch", small + big)


def test_a_written_batch_is_freed_by_the_insert_not_by_a_collection_on_the_loop(tmp_path: Path) -> None:
    """clickhouse-connect's insert context refers to itself, so only a collection frees it and what
    it holds: on the loop, a batch's 200,000 values took full passes of 14-21 ms to free. Once
    written, the batch's columns go with the insert; the collector is off, so nothing else frees them."""
    rows = make_rows(5_000)
    columns = to_columns("shares", rows)
    ts = columns[0]
    held = sys.getrefcount(ts)
    with chdb_client(tmp_path / "ch") as client:
        apply_migrations(client, DB, 90)
        gc.disable()
        try:
            span = insert_batch(client, f"{DB}.shares", "shares", "t-1", columns)
            assert columns == []
            assert sys.getrefcount(ts) == held - 1  # only `ts` here holds it now
        finally:
            gc.enable()
    assert span == (min(ts), max(ts))
    assert_ledger(tmp_path / "ch", rows)


def test_a_journal_replays_in_the_batches_the_dead_run_cut(tmp_path: Path) -> None:
    """The run that died cut 64-row batches and had inserted the first one; the proxy restarts with
    another batch size. The replay must cut as the dead run did: a bigger batch under the first
    batch's token would be dropped by ClickHouse as a duplicate, and its other rows lost."""
    rows = make_rows(100)
    spool = tmp_path / "spool"
    journal = Journal(spool / "journal", "0badc0de", 64, lambda callback: callback())
    journal.open(7)
    for row in rows:
        journal.append(row)
    journal.close()
    with chdb_client(tmp_path / "ch") as client:
        apply_migrations(client, DB, 90)
        client.insert(
            f"{DB}.shares",
            to_columns("shares", rows[:64]),
            column_names=[c.name for c in SHARES],
            column_oriented=True,
            settings={"insert_deduplication_token": batch_token("0badc0de", 7, "shares", 0)},
        )

    async def restart() -> None:
        w = writer(chdb_connect(tmp_path / "ch"), spool, batch_rows=10_000)
        await w.start()
        await w.flush()
        await w.stop()

    run(restart())
    assert_ledger(tmp_path / "ch", rows)


def test_a_journal_keeps_every_committed_row_and_drops_only_a_torn_tail(tmp_path: Path) -> None:
    """Rows of many commits (one record each) come back in order; a record cut short by a power cut
    is dropped whole; a file of the one-row-per-record format of earlier versions still replays."""
    rows = make_rows(25)
    directory = tmp_path / "journal"
    journal = Journal(directory, "0badc0de", 64, lambda callback: None)
    journal.open(3)
    for i, row in enumerate(rows[:20]):
        journal.append(row)
        if i % 7 == 6:
            journal.commit()
    journal.commit()
    journal.append(rows[20])
    journal.append(rows[21])
    journal.commit()
    path = next(directory.glob("*.journal"))
    whole = path.read_bytes()
    journal.close()
    path.write_bytes(whole[:-5])  # the last commit's record torn
    (found,) = leftovers(directory)
    assert found.generation == 3 and found.run == "0badc0de" and found.batch_rows == 64
    assert [tuple(r) for r in found.rows["shares"]] == [tuple(r) for r in rows[:20]]

    old = directory / f"{4:012d}-0badc0de-64.journal"
    encode = msgspec.msgpack.encode
    old.write_bytes(b"".join(struct.pack("<I", len(rec)) + rec for rec in (encode(["shares", r]) for r in rows[20:])))
    path.unlink()
    (found,) = leftovers(directory)
    assert [tuple(r) for r in found.rows["shares"]] == [tuple(r) for r in rows[20:]]


def test_a_journal_cut_at_any_byte_gives_back_exactly_the_commits_written_whole(tmp_path: Path) -> None:
    """A SIGKILL or power cut can stop the file anywhere, and a power cut may leave zeros or stale
    bytes after the cut (the file's new size on disk before its data): every cut replays, in order,
    the rows of each record whose bytes are what was written, and never a row of one it tore."""
    rows = make_rows(9)
    directory = tmp_path / "journal"
    journal = Journal(directory, "0badc0de", 64, lambda callback: None)
    journal.open(1)
    path = next(directory.glob("*.journal"))
    ends = [0]  # where each record ends, and the rows whole by then
    committed = 0
    for size in (1, 3, 1, 4):
        for row in rows[committed : committed + size]:
            journal.append(row)
        journal.commit()
        committed += size
        ends.append(path.stat().st_size)
    whole = path.read_bytes()
    journal.close()
    counts = [0, 1, 4, 5, 9]
    for cut in range(len(whole) + 1):
        for tail in (b"", b"\0" * 16, whole[:16]):  # nothing, zeros, stale bytes
            data = whole[:cut] + tail
            records = 0  # the leading records whose bytes are what was written (a zero may be one)
            while (
                records + 1 < len(ends)
                and data[ends[records] : ends[records + 1]] == whole[ends[records] : ends[records + 1]]
            ):
                records += 1
            path.write_bytes(data)
            (found,) = leftovers(directory)
            kept = rows[: counts[records]]
            assert [tuple(r) for r in found.rows.get("shares", [])] == [tuple(r) for r in kept], (cut, tail)


def test_spool_is_bounded_in_memory(tmp_path: Path) -> None:
    """While ClickHouse is down, rows go to disk every cycle instead of piling up in RAM."""
    spool = tmp_path / "spool"

    def down() -> Client:
        raise ConnectionError("ClickHouse is down (simulated)")

    async def scenario() -> None:
        w = writer(down, spool, batch_rows=50, flush_interval=0.01)
        await w.start()
        for step in range(20):
            for row in make_rows(50, first=step * 50):
                w.record(row)
            await wait_until(lambda: w.queue_rows == 0, "the cycle to spool the rows")
        assert w.spooled_rows == 1_000
        await w.stop()

    run(scenario())
    names = [p.name for p in spool_files(spool)]
    assert len(names) == 20 and names == sorted(names)


def test_a_crashing_event_loop_still_exits(tmp_path: Path) -> None:
    """asyncio.run cancels the writer's task when the program dies: the task must end.

    (Regression: with asyncio.wait_for on Python 3.11 the cancellation could be swallowed when it
    raced with a size-triggered wake-up, and the process hung on exit.)
    """

    def down() -> Client:
        raise ConnectionError("ClickHouse is down (simulated)")

    async def crash() -> None:
        w = writer(down, tmp_path / "spool")
        await w.start()
        await asyncio.sleep(0)  # the background task is now waiting for a wake-up
        for row in make_rows(1_000):  # past batch_rows: wake it up
            w.record(row)
        await asyncio.sleep(0)
        raise RuntimeError("the proxy crashed")

    outcome: list[BaseException] = []

    def main() -> None:
        try:
            run(crash())
        except BaseException as exc:
            outcome.append(exc)

    for _ in range(5):  # the race is timing-dependent: try it a bounded number of times
        thread = threading.Thread(target=main, daemon=True)
        thread.start()
        thread.join(30)
        assert not thread.is_alive(), "asyncio.run hung while cancelling the ledger writer"
    assert len(outcome) == 5 and all(isinstance(e, RuntimeError) for e in outcome)


_PER_WORKER_SQL = f"""
SELECT worker, sum(accepted_difficulty), sum(accepted_shares)
FROM {DB}.shares_per_minute
WHERE minute >= toStartOfMinute({{start:DateTime64(3, 'UTC')}}) AND worker LIKE {{pattern:String}}
GROUP BY worker ORDER BY worker
"""


def _per_worker(rows: list[ShareRow], hotkey: str) -> list[tuple[str, float, int]]:
    sums: dict[str, tuple[float, int]] = {}
    for r in rows:
        if r.accepted and r.hotkey == hotkey:
            d, n = sums.get(r.worker, (0.0, 0))
            sums[r.worker] = (d + r.difficulty, n + 1)
    return [(w, d, n) for w, (d, n) in sorted(sums.items())]


@pytest.mark.parametrize("backend", ["chdb", "http"])
def test_query_reads_the_ledger_while_it_is_written(tmp_path: Path, backend: str) -> None:
    """query() (the proxy's HTTP API) has its own client: it works next to inserts and after outages."""
    rows = make_rows(3_000)
    params = {"start": dt.datetime.fromtimestamp(BASE_TS, dt.UTC), "pattern": "infinite.5Hotkey1.%"}
    server = ClickHouseHTTPServer(tmp_path / "ch") if backend == "http" else None
    if server is not None:
        server.start()
        connect: Callable[[], Client] = LedgerTarget.parse(server.url, data_dir=tmp_path).connect
    else:
        connect = chdb_connect(tmp_path / "ch")

    async def scenario() -> None:
        w = writer(connect, tmp_path / "spool")
        await w.start()
        for row in rows[:1_000]:
            w.record(row)
        await w.flush()
        assert await w.query(_PER_WORKER_SQL, params) == _per_worker(rows[:1_000], "5Hotkey1")
        for row in rows[1_000:]:
            w.record(row)
        # Reads interleaved with the background inserts of the rest.
        for _ in range(5):
            await w.query(_PER_WORKER_SQL, params)
        await wait_until(lambda: w.rows_written == len(rows), "the background flush")
        assert await w.query(_PER_WORKER_SQL, params) == _per_worker(rows, "5Hotkey1")
        if server is not None:
            server.stop()
            with pytest.raises(Exception):  # noqa: B017 - any error: the HTTP API answers 503
                await w.query(_PER_WORKER_SQL, params)
            server.start()
            assert await w.query(_PER_WORKER_SQL, params) == _per_worker(rows, "5Hotkey1")
        await w.stop()

    try:
        run(scenario())
    finally:
        if server is not None:
            server.close()
    assert_ledger(tmp_path / "ch", rows)


def test_the_journal_creates_and_removes_its_files_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Creating or removing a file can wait hundreds of milliseconds for the file system's own
    journal (in the benchmark every loop stall over 250 ms was the journal's unlink on the loop):
    while the writer runs, the loop only writes to files already open."""
    journal_dir = tmp_path / "spool" / "journal"
    calls: list[tuple[str, str, bool]] = []  # (what, file, on the loop's thread)
    loop_thread = threading.get_ident()  # asyncio.run runs the loop in this thread
    real_open, real_unlink = os.open, os.unlink

    def spy_open(path: Any, flags: int, *args: Any, **kw: Any) -> int:
        if Path(path).parent == journal_dir and flags & os.O_CREAT:
            calls.append(("create", Path(path).name, threading.get_ident() == loop_thread))
        return real_open(path, flags, *args, **kw)

    def spy_unlink(path: Any, *args: Any, **kw: Any) -> None:
        if Path(path).parent == journal_dir:
            calls.append(("remove", Path(path).name, threading.get_ident() == loop_thread))
        real_unlink(path, *args, **kw)

    rows = make_rows(200)

    async def scenario() -> None:
        w = writer(chdb_connect(tmp_path / "ch"), tmp_path / "spool", batch_rows=100_000, flush_interval=3600.0)
        await w.start()
        monkeypatch.setattr(os, "open", spy_open)
        monkeypatch.setattr(os, "unlink", spy_unlink)
        for cycle in range(4):  # four cuts: four rotations, four generations settled
            for row in rows[cycle * 50 : (cycle + 1) * 50]:
                w.record(row)
            await asyncio.sleep(0)  # the journal's commit, as after a loop iteration
            await w.flush()
        monkeypatch.undo()
        await w.stop()
        assert w.rows_written == 200

    run(scenario())
    assert [c for c in calls if c[2]] == []  # nothing created or removed on the loop
    # Four cuts: each opened a file made ahead of it and settled one; the last cut's own file work
    # may still be in flight when the spying ends.
    assert sum(c[0] == "create" for c in calls) >= 3 and sum(c[0] == "remove" for c in calls) >= 3
    assert list(journal_dir.iterdir()) == []  # a clean stop leaves no journal file behind
    assert_ledger(tmp_path / "ch", rows)


def test_a_dead_runs_unused_spare_journal_file_is_removed_at_the_next_start(tmp_path: Path) -> None:
    """A proxy killed between opening the next generation's file (ahead of its cut) and that cut
    leaves an empty file beside the one with its rows: the next start replays the rows once and
    removes both, spooling nothing for the empty one."""
    rows = make_rows(30)
    spool = tmp_path / "spool"
    dead = Journal(spool / "journal", "deadbeef", 100, lambda callback: None)
    dead.open(5)
    for row in rows:
        dead.append(row)
    dead.commit()
    dead.take_spare(6, dead.prepare([], dead.spare_wanted()))  # generation 6's file, never written
    files = sorted(p.name for p in (spool / "journal").iterdir())
    assert len(files) == 2  # what a SIGKILL now leaves: no close(), both files on disk

    async def scenario() -> None:
        w = writer(chdb_connect(tmp_path / "ch"), spool)
        await w.start()
        assert not set(files) & {p.name for p in (spool / "journal").iterdir()}  # both gone
        assert w.spooled_rows == len(rows)  # the dead run's rows go through the spool; the empty file adds none
        await w.flush()  # the recovered batch replayed from the spool
        await w.stop()

    run(scenario())
    assert_ledger(tmp_path / "ch", rows)
    assert spool_files(spool) == []
