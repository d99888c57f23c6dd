"""Ledger → hashrate against the real engine, and the ``python -m scorer --json`` contract.

The ledger is written by the proxy's own writer (proxy.ledger.LedgerWriter, which applies the schema
of ledger/schema.py) into a chdb directory; the scorer reads it in-process, as a subprocess
(``chdb://``), and through the ClickHouse HTTP interface (tests/clickhouse_http.py, chdb behind HTTP).
Share timestamps are fixed (2024) and the TTL is set long enough to keep them.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import clickhouse_connect
import pytest

from ledger.rows import ShareRow
from proxy.ledger import LedgerWriter
from scorer.hashrate import Window, iso
from scorer.sources import ClickHouseSource, parse_clickhouse_url
from tests.clickhouse_http import ClickHouseHTTPServer

REPO = Path(__file__).resolve().parent.parent
B = datetime(2024, 6, 1, tzinfo=UTC)  # the hour [B, B+60m) is the main window
HOUR = Window(B, B + timedelta(hours=1))
ALICE = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY"
BOB = "5FHneW46xGXgs5mUiveU4sbTyGBzmstUspZC92UhjJM694ty"
CHARLIE = "5FLSigC9HGRKVhB9FiEo4Y3koPsNmBmLJbpXg2mp1hXcS59Y"  # shares, but not registered
OWNER = "5DAAnrj7VHTznn2AWBemMuyBwZWs6FNFjdyVXUeYum3PTXFy"
TTL_DAYS = 20_000  # 2024 + 20,000 days stays inside DateTime's range


def share(at: datetime, hotkey: str, worker: str, difficulty: float, accepted: int = 1) -> ShareRow:
    return ShareRow(
        ts=at.timestamp(),
        proxy_id="proxy-test",
        hotkey=hotkey,
        worker=f"infinite.{hotkey}.{worker}" if hotkey else worker,
        session="s1",
        job_id="j1",
        difficulty=difficulty,
        share_difficulty=difficulty * 2,
        hash="00" * 32,
        accepted=accepted,
        reject_reason="" if accepted else "pool: Above target",
        upstream="127.0.0.1:3333",
        block=0,
    )


def first_batch() -> list[ShareRow]:
    rows = [share(B + timedelta(minutes=m, seconds=30), ALICE, "rig1", 65536.0) for m in range(60)]
    rows += [share(B + timedelta(minutes=m, seconds=5), ALICE, "rig2", 1024.0) for m in range(10)]
    rows.append(share(B + timedelta(minutes=3), ALICE, "rig2", 1e9, accepted=0))  # rejected: no credit
    rows.append(share(B + timedelta(minutes=59, seconds=59.999), BOB, "a", 4096.0))  # last minute: in
    rows.append(share(B + timedelta(minutes=60), BOB, "a", 4096.0))  # minute == end: out of HOUR
    rows.append(share(B - timedelta(seconds=1), BOB, "a", 8192.0))  # minute before start: out
    rows.append(share(B + timedelta(minutes=30), CHARLIE, "x", 2048.0))
    rows.append(share(B + timedelta(minutes=1), "", "garbage.worker", 1e6))  # never authorized
    return rows


def second_batch() -> list[ShareRow]:
    # Same (hotkey, worker, minute) as rows of the first insert: a second part the reader must sum.
    return [share(B + timedelta(seconds=45), ALICE, "rig1", 65536.0)]


async def write_ledger(path: Path, spool: Path) -> None:
    writer = LedgerWriter(
        lambda: clickhouse_connect.get_client(interface="chdb", path=str(path)),
        spool_dir=spool,
        ttl_days=TTL_DAYS,
    )
    await writer.start()
    for row in first_batch():
        writer.record(row)
    await writer.flush()
    for row in second_batch():
        writer.record(row)
    await writer.stop()
    assert writer.rows_written == len(first_batch()) + len(second_batch())
    assert writer.spooled_rows == 0


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("scorer-ledger")
    asyncio.run(write_ledger(base / "ledger", base / "spool"))
    return base / "ledger"


def expected_hour() -> dict[str, dict[str, Any]]:
    s = 3600
    return {
        ALICE: {
            "difficulty": 61 * 65536.0 + 10 * 1024.0,
            "shares": 71,
            "rejected": 1,
            "workers": {
                f"infinite.{ALICE}.rig1": (61 * 65536.0 * 2**32 / s, 61),
                f"infinite.{ALICE}.rig2": (10 * 1024.0 * 2**32 / s, 10),
            },
        },
        BOB: {
            "difficulty": 4096.0,
            "shares": 1,
            "rejected": 0,
            "workers": {f"infinite.{BOB}.a": (4096.0 * 2**32 / s, 1)},
        },
        CHARLIE: {
            "difficulty": 2048.0,
            "shares": 1,
            "rejected": 0,
            "workers": {f"infinite.{CHARLIE}.x": (2048.0 * 2**32 / s, 1)},
        },
    }


def test_ledger_hashrate_per_hotkey_and_worker(ledger: Path) -> None:
    stats = asyncio.run(ClickHouseSource(parse_clickhouse_url(f"chdb://{ledger}")).fetch(HOUR))
    expected = expected_hour()
    assert [s.hotkey for s in stats] == [ALICE, BOB, CHARLIE], "highest hashrate first"
    for stat in stats:
        e = expected[stat.hotkey]
        assert stat.accepted_difficulty == e["difficulty"]
        assert stat.hashrate == pytest.approx(e["difficulty"] * 2**32 / 3600, rel=1e-12)
        assert (stat.shares, stat.rejected) == (e["shares"], e["rejected"])
        assert {w.worker: (pytest.approx(w.hashrate, rel=1e-12), w.shares) for w in stat.workers} == e["workers"]


def test_window_bounds_are_minutes_from_start_inclusive_to_end_exclusive(ledger: Path) -> None:
    source = ClickHouseSource(parse_clickhouse_url(f"chdb://{ledger}"))
    later = Window(B + timedelta(minutes=30), B + timedelta(minutes=90))
    stats = {s.hotkey: s for s in asyncio.run(source.fetch(later))}
    assert stats[ALICE].shares == 30  # rig1 minutes 30..59
    assert stats[BOB].shares == 2  # minutes 59 and 60
    assert stats[CHARLIE].shares == 1  # minute 30 is >= start
    earlier = Window(B - timedelta(minutes=1), B)
    assert [(s.hotkey, s.shares) for s in asyncio.run(source.fetch(earlier))] == [(BOB, 1)]
    assert asyncio.run(source.fetch(Window(B + timedelta(days=1), B + timedelta(days=2)))) == []


def run_scorer(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        # These ledgers hold no coverage rows; tests/test_coverage.py covers the check.
        [sys.executable, "-m", "scorer", "--min-coverage", "0", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )


def last_json(stdout: str) -> dict[str, Any]:
    lines = stdout.strip().splitlines()
    assert lines, "no output"
    doc: dict[str, Any] = json.loads(lines[-1])
    return doc


@pytest.fixture()
def metagraph_file(tmp_path: Path) -> Path:
    path = tmp_path / "metagraph.json"
    path.write_text(
        json.dumps({"0": OWNER, "1": ALICE, "2": BOB, "3": "5HGjWAeFDfFCWPsjFQdVV2Msvz2XtMktvgocEZcCj68kUMaw"})
    )
    return path


def test_json_contract(ledger: Path, metagraph_file: Path) -> None:
    end = B + timedelta(hours=1, seconds=42)  # rounded down to the minute
    result = run_scorer(
        "--dry-run", "--json", "--metagraph-file", str(metagraph_file), "--clickhouse-url", f"chdb://{ledger}",
        "--window", "60m", "--end", iso(end), "--hashrate-share", "0.5", "--burn-uid", "0",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    doc = last_json(result.stdout)
    assert doc["window"] == {"start": "2024-06-01T00:00:00Z", "end": "2024-06-01T01:00:00Z", "seconds": 3600}
    miners = {m["hotkey"]: m for m in doc["miners"]}
    assert set(miners) == {ALICE, BOB, CHARLIE}
    expected = expected_hour()
    for hotkey, m in miners.items():
        assert set(m) >= {"hotkey", "uid", "hashrate", "shares", "weight"}
        assert m["hashrate"] == pytest.approx(expected[hotkey]["difficulty"] * 2**32 / 3600, rel=1e-12)
        assert m["shares"] == expected[hotkey]["shares"]
    assert (miners[ALICE]["uid"], miners[BOB]["uid"], miners[CHARLIE]["uid"]) == (1, 2, None)
    total = expected[ALICE]["difficulty"] + expected[BOB]["difficulty"]
    assert miners[ALICE]["weight"] == pytest.approx(0.5 * expected[ALICE]["difficulty"] / total)
    assert miners[CHARLIE]["weight"] == 0.0
    assert set(doc["weights"]) == {"0", "1", "2", "3"}
    assert sum(doc["weights"].values()) == pytest.approx(1.0)
    assert doc["weights"]["0"] == pytest.approx(0.5)
    assert doc["weights"]["3"] == 0.0
    assert doc["unregistered"] == [CHARLIE]
    assert doc["burn_uid"] == 0
    assert doc["submitted"] is None
    # the readable table comes first
    assert "hashrate" in result.stdout.splitlines()[1] and "TH/s" in result.stdout


def test_json_contract_phase_2_and_no_burn_uid(ledger: Path, metagraph_file: Path) -> None:
    # Alice ~ 4.78 TH/s, Bob ~ 4.89 GH/s: a 1 TH/s minimum leaves Alice alone, capped at the minimum.
    result = run_scorer(
        "--dry-run", "--json", "--metagraph-file", str(metagraph_file), "--clickhouse-url", f"chdb://{ledger}",
        "--window", "1h", "--end", "2024-06-01T01:00:00Z", "--phase", "2", "--min-hashrate", "1T",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    doc = last_json(result.stdout)
    assert doc["weights"] == {"0": 0.0, "1": 1.0, "2": 0.0, "3": 0.0}
    assert doc["burn_uid"] is None

    empty = run_scorer(
        "--dry-run", "--json", "--metagraph-file", str(metagraph_file), "--clickhouse-url", f"chdb://{ledger}",
        "--end", "2030-01-01T00:00:00Z",
    )  # fmt: skip
    assert empty.returncode == 0, empty.stderr
    doc = last_json(empty.stdout)
    assert doc["miners"] == [] and doc["burn_uid"] is None
    assert set(doc["weights"].values()) == {0.0}, "nothing earned and no burn uid: all zero"
    assert doc["window"]["seconds"] == 21600


def test_clickhouse_server_url_and_the_password_stays_secret(
    ledger: Path, metagraph_file: Path, tmp_path: Path
) -> None:
    secret = "pw-Zq8-never-print"
    with ClickHouseHTTPServer(ledger, user="ih", password=secret) as server:
        url = f"http://ih:{secret}@127.0.0.1:{server.port}/infinitehash"
        common = ["--dry-run", "--json", "--metagraph-file", str(metagraph_file), "--window", "1h"]
        ok = run_scorer(*common, "--end", "2024-06-01T01:00:00Z", "--clickhouse-url", url)
        assert ok.returncode == 0, ok.stderr
        doc = last_json(ok.stdout)
        assert {m["hotkey"]: m["shares"] for m in doc["miners"]} == {ALICE: 71, BOB: 1, CHARLIE: 1}
        assert "ih:***@127.0.0.1" in ok.stdout
        assert secret not in ok.stdout + ok.stderr

        bad_secret = "wrong-Zq8-never-print"
        bad = run_scorer(*common, "--clickhouse-url", f"http://ih:{bad_secret}@127.0.0.1:{server.port}/")
        assert bad.returncode == 1
        assert "ledger" in bad.stderr
        assert bad_secret not in bad.stdout + bad.stderr

        config = tmp_path / "scorer.toml"
        config.write_text(f'clickhouse_url = "{url}"\n')
        from_file = run_scorer(*common, "--end", "2024-06-01T01:00:00Z", "--config", str(config))
        assert from_file.returncode == 0, from_file.stderr
        assert secret not in from_file.stdout + from_file.stderr


def test_locked_embedded_ledger_says_what_to_do(ledger: Path, metagraph_file: Path) -> None:
    # Another process (here: a child holding the directory) has the embedded ledger open.
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, clickhouse_connect\n"
         f"c = clickhouse_connect.get_client(interface='chdb', path={str(ledger)!r})\n"
         "print('open', flush=True)\nsys.stdin.read()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        result = run_scorer(
            "--dry-run", "--metagraph-file", str(metagraph_file), "--clickhouse-url", f"chdb://{ledger}"
        )
        assert result.returncode == 1
        assert "--proxy-api" in result.stderr
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=60)


def test_proxy_api_of_the_real_proxy_agrees_with_the_ledger(ledger: Path, metagraph_file: Path) -> None:
    """``--proxy-api`` against the proxy's own HTTP app (proxy.http) serving this ledger."""
    from aiohttp import web

    from proxy.http import build_app
    from proxy.metrics import ProxyMetrics
    from scorer.sources import ProxyApiSource

    async def scenario() -> None:
        client = clickhouse_connect.get_client(interface="chdb", path=str(ledger))

        async def query(sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
            rows: list[tuple[Any, ...]] = await asyncio.to_thread(
                lambda: [tuple(row) for row in client.query(sql, parameters=params).result_rows]
            )
            return rows

        runner = web.AppRunner(build_app(ProxyMetrics(), query, "infinitehash"))
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            url = f"http://127.0.0.1:{runner.addresses[0][1]}"
            via_api = {s.hotkey: s for s in await ProxyApiSource(url).fetch(HOUR)}
            expected = expected_hour()
            assert set(via_api) == set(expected), "the never-authorized worker is not credited"
            for hotkey, stat in via_api.items():
                assert stat.hashrate == pytest.approx(expected[hotkey]["difficulty"] * 2**32 / 3600, rel=1e-9)
                assert stat.shares is None

            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "scorer", "--proxy-api", url, "--dry-run", "--json", "--min-coverage", "0",
                "--metagraph-file", str(metagraph_file), "--window", "1h", "--end", "2024-06-01T01:00:00Z",
                cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            out, err = await asyncio.wait_for(process.communicate(), timeout=120)
            assert process.returncode == 0, err.decode()
            doc = last_json(out.decode())
            assert {m["hotkey"]: m["shares"] for m in doc["miners"]} == {ALICE: None, BOB: None, CHARLIE: None}
            total = expected[ALICE]["difficulty"] + expected[BOB]["difficulty"]
            assert doc["weights"]["1"] == pytest.approx(expected[ALICE]["difficulty"] / total)
            assert doc["unregistered"] == [CHARLIE]
        finally:
            await runner.cleanup()
            client.close()

    asyncio.run(scenario())


def test_a_ledger_directory_that_does_not_exist_is_an_error_never_created(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-ledger"
    metagraph = tmp_path / "metagraph.json"
    metagraph.write_text(json.dumps({"0": "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY"}))
    done = run_scorer("--dry-run", "--clickhouse-url", f"chdb://{missing}", "--metagraph-file", str(metagraph))
    assert done.returncode != 0
    assert f"no ledger at {missing}" in done.stderr and "Traceback" not in done.stderr
    assert not missing.exists()
