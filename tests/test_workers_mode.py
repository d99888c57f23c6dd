"""`ih-proxy --workers N`: N proxy processes on one port, under a supervisor, against a ClickHouse
server (the real engine behind ClickHouse's HTTP interface, tests/clickhouse_http.py) and a pool
that verifies every share. The supervisor runs as a real subprocess: signals, a SIGKILLed worker and
its crash journal are the real thing.
"""

from __future__ import annotations

import asyncio
import collections
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import clickhouse_connect
import pytest

from proxy.config import ConfigError, load_config
from simulation import Fleet, SimulatedPool
from simulation.hotkeys import hotkeys
from tests.clickhouse_http import ClickHouseHTTPServer
from tests.test_proxy_e2e import DIFFICULTY, HOST, REPO, go, start_proxy, until

HOTKEYS = hotkeys(3, namespace="workers")
ASICS = 24  # both workers get sessions unless the kernel hashes all 24 onto one: p = 2**-23
READY = re.compile(r"worker (\d+) ready \(pid (\d+)")


@pytest.fixture
def clickhouse(tmp_path: Path) -> Iterator[ClickHouseHTTPServer]:
    """A ClickHouse server in its own process (the real engine behind HTTP): the ledger every worker shares."""
    server = ClickHouseHTTPServer(tmp_path / "clickhouse")
    server.start()
    try:
        yield server
    finally:
        server.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def start_supervisor(
    tmp_path: Path, clickhouse_url: str, pool_port: int, port: int, *extra: str
) -> subprocess.Popen[bytes]:
    options = ("--workers", "2", "--clickhouse-url", clickhouse_url, "--shutdown-grace", "5", *extra)
    return start_proxy(tmp_path / "proxy", pool_port, port, tmp_path / "proxy.log", *options, proxy_id="wk")


def proxy_log(tmp_path: Path) -> str:
    return (tmp_path / "proxy.log").read_text(errors="replace")


def ready_pids(tmp_path: Path) -> dict[int, list[int]]:
    """Worker index → the pid of each time it became ready, in order."""
    found: dict[int, list[int]] = collections.defaultdict(list)
    for index, pid in READY.findall(proxy_log(tmp_path)):
        found[int(index)].append(int(pid))
    return found


def gone(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists()


async def wait_for(proc: subprocess.Popen[bytes], seconds: float) -> int:
    return await asyncio.get_running_loop().run_in_executor(None, proc.wait, seconds)


async def until_slow(predicate: Callable[[], bool], what: str) -> None:
    await until(predicate, what, steps=6000)  # 60 s: spawned interpreters start slowly on a loaded machine


def proxy_ids(port: int) -> set[str]:
    client = clickhouse_connect.get_client(host=HOST, port=port)
    try:
        return {row[0] for row in client.query("SELECT DISTINCT proxy_id FROM infinitehash.shares").result_rows}
    finally:
        client.close()


def share_key(
    extranonce1: str, extranonce2: str, ntime: int, nonce: int, job_id: str
) -> tuple[str, str, int, int, str]:
    return extranonce1.lower(), extranonce2.lower(), ntime, nonce, job_id


def test_two_workers_share_the_port_and_a_killed_one_comes_back_without_losing_or_doubling_a_share(
    tmp_path: Path, clickhouse: ClickHouseHTTPServer
) -> None:
    port = _free_port()
    result: dict[str, Any] = {}

    async def scenario() -> None:
        async with SimulatedPool(difficulty=DIFFICULTY, seed=11) as pool:
            # A long flush interval: what worker 1 ledgers before its SIGKILL is only in its journal
            # (the first mining round takes a second or two; its first cut is due 15 s after its start).
            proc = start_supervisor(tmp_path, clickhouse.url, pool.port, port, "--ledger-flush-interval", "15")
            try:
                await until_slow(lambda: len(ready_pids(tmp_path)) == 2, "both workers ready")

                async def mine() -> Fleet:
                    fleet = Fleet.for_hotkeys(HOST, port, HOTKEYS, ASICS, max_shares=4, mode="rate", rate=20.0)
                    await fleet.start()
                    await fleet.wait(timeout=60)
                    await fleet.stop()
                    return fleet

                first = await mine()
                journal = tmp_path / "proxy" / "spool" / "worker-1" / "journal"
                result["journaled"] = sum(p.stat().st_size for p in journal.glob("*.journal"))
                killed = ready_pids(tmp_path)[1][0]
                os.kill(killed, signal.SIGKILL)
                await until_slow(lambda: len(ready_pids(tmp_path)[1]) == 2, "worker 1 restarted")
                # Its journal, recovered into its spool, is written at its first flush.
                for _ in range(120):
                    if "wk-1" in await asyncio.to_thread(proxy_ids, clickhouse.port):
                        break
                    await asyncio.sleep(0.5)
                second = await mine()
                result["fleet_accepted"] = first.accepted + second.accepted
                pids = [pid for started in ready_pids(tmp_path).values() for pid in started]
                proc.send_signal(signal.SIGTERM)
                result["rc"] = await wait_for(proc, 60)
                await until_slow(lambda: all(gone(pid) for pid in pids), "every worker gone")
            finally:
                if proc.poll() is None:
                    proc.kill()
            result["pool"] = collections.Counter(
                share_key(s.extranonce1, s.extranonce2, int(s.ntime, 16), int(s.nonce, 16), s.job_id)
                for s in pool.submits_seen
                if s.accepted
            )
            result["pool_accepted"] = pool.accepted_count

    go(scenario)
    log = proxy_log(tmp_path)
    assert result["rc"] == 0, log[-3000:]
    assert result["journaled"] > 0  # the kill landed with rows only in the journal
    assert re.search(r"worker-1/proxy\.ledger: ledger: recovered \d+ rows from the journal", log), log[-3000:]
    assert "worker 1 (proxy id wk-1) died (killed by signal 9)" in log
    assert result["fleet_accepted"] == result["pool_accepted"] > 0  # every verdict reached its miner
    client = clickhouse_connect.get_client(host=HOST, port=clickhouse.port)
    try:
        rows = client.query(
            "SELECT proxy_id, extranonce1, extranonce2, ntime, nonce, job_id FROM infinitehash.shares "
            "WHERE accepted = 1"
        ).result_rows
        covered = {r[0] for r in client.query("SELECT DISTINCT proxy_id FROM infinitehash.coverage").result_rows}
    finally:
        client.close()
    assert {row[0] for row in rows} == {"wk-0", "wk-1"}  # the kernel gave both workers sessions
    assert covered == {"wk-0", "wk-1"}
    ledgered = collections.Counter(share_key(*row[1:]) for row in rows)
    assert ledgered == result["pool"]  # every accepted share exactly once: none lost, none twice


def test_a_worker_that_keeps_dying_at_start_stops_the_supervisor_with_status_2(tmp_path: Path) -> None:
    # ClickHouse is down (nothing listens there): the proxy starts anyway and spools.
    clickhouse = f"http://{HOST}:{_free_port()}/"
    (tmp_path / "proxy" / "spool").mkdir(parents=True)
    (tmp_path / "proxy" / "spool" / "worker-1").write_text("not a directory")  # worker 1 cannot take its spool
    result: dict[str, Any] = {}

    async def scenario() -> None:
        proc = start_supervisor(tmp_path, clickhouse, _free_port(), _free_port())
        try:
            result["rc"] = await wait_for(proc, 90)
        finally:
            if proc.poll() is None:
                proc.kill()

    go(scenario)
    log = proxy_log(tmp_path)
    assert result["rc"] == 2, log[-3000:]
    assert "ih-proxy: worker 1 died 5 times in a row before it was ready" in log
    assert len(ready_pids(tmp_path)[0]) == 1 and 1 not in ready_pids(tmp_path)  # worker 0 ran, then was stopped
    assert "worker 0 stopped (exit status 0)" in log


def test_workers_never_outlive_a_killed_supervisor(tmp_path: Path) -> None:
    clickhouse = f"http://{HOST}:{_free_port()}/"
    result: dict[str, Any] = {}

    async def scenario() -> None:
        proc = start_supervisor(tmp_path, clickhouse, _free_port(), _free_port())
        try:
            await until_slow(lambda: len(ready_pids(tmp_path)) == 2, "both workers ready")
            pids = [started[0] for started in ready_pids(tmp_path).values()]
            proc.kill()
            await wait_for(proc, 30)
            await until_slow(lambda: all(gone(pid) for pid in pids), "the orphaned workers gone")
            result["pids"] = pids
        finally:
            if proc.poll() is None:
                proc.kill()

    go(scenario)
    assert len(result["pids"]) == 2
    assert proxy_log(tmp_path).count("the supervisor (pid") == 2  # each shut itself down, gracefully


def test_more_than_one_worker_needs_a_clickhouse_server(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs a ClickHouse server"):
        load_config(["--workers", "2", "--data-dir", str(tmp_path)], environ={})
    with pytest.raises(ConfigError, match="needs a ClickHouse server"):
        load_config(["--workers", "2", "--clickhouse-url", f"chdb://{tmp_path}/ledger"], environ={})
    assert load_config(["--workers", "2", "--clickhouse-url", "http://ch:8123/"], environ={}).workers == 2
    assert load_config([], environ={"IH_WORKERS": "3", "IH_CLICKHOUSE_URL": "http://ch:8123/"}).workers == 3
    done = subprocess.run(
        [sys.executable, "-m", "proxy", "--workers", "2", "--data-dir", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("ih-proxy: workers: more than one proxy process needs a ClickHouse server")
    assert not (tmp_path / "ledger").exists()  # refused before anything was opened


def test_the_supervisor_writes_what_a_one_process_run_and_a_retired_worker_left_spooled(
    tmp_path: Path, clickhouse: ClickHouseHTTPServer
) -> None:
    from ledger.rows import ShareRow
    from proxy.config import LedgerBudget
    from proxy.ledger import LedgerWriter
    from tests.test_ledger import make_rows

    spool = tmp_path / "proxy" / "spool"

    def down() -> Any:
        raise ConnectionError("ClickHouse is down (simulated: connection refused)")

    async def spool_rows(directory: Path, rows: list[ShareRow]) -> None:
        writer = LedgerWriter(down, spool_dir=directory, budget=LedgerBudget(max_retry_delay=0.01))
        await writer.start()
        for row in rows:
            writer.record(row)
        await writer.flush()
        await writer.stop()
        assert writer.spooled_rows == len(rows)

    one_process = [r._replace(proxy_id="wk") for r in make_rows(7)]
    retired = [r._replace(proxy_id="wk-5") for r in make_rows(5, first=100)]
    go(lambda: spool_rows(spool, one_process))
    go(lambda: spool_rows(spool / "worker-5", retired))  # a worker of an earlier --workers 6
    result: dict[str, Any] = {}

    async def scenario() -> None:
        proc = start_supervisor(tmp_path, clickhouse.url, _free_port(), _free_port())
        try:
            await until_slow(lambda: len(ready_pids(tmp_path)) == 2, "both workers ready")
            proc.send_signal(signal.SIGTERM)
            result["rc"] = await wait_for(proc, 60)
        finally:
            if proc.poll() is None:
                proc.kill()

    go(scenario)
    assert result["rc"] == 0, proxy_log(tmp_path)[-3000:]
    client = clickhouse_connect.get_client(host=HOST, port=clickhouse.port)
    try:
        ledgered = client.query("SELECT proxy_id, job_id FROM infinitehash.shares ORDER BY proxy_id, job_id")
    finally:
        client.close()
    expected = sorted((r.proxy_id, r.job_id) for r in one_process + retired)
    assert sorted(tuple(row) for row in ledgered.result_rows) == expected
    assert not list(spool.glob("*.batch")) and not list((spool / "worker-5").glob("*.batch"))


def test_farm_mode_runs_under_workers_each_aggregating_its_own_asics(
    tmp_path: Path, clickhouse: ClickHouseHTTPServer
) -> None:
    port = _free_port()
    result: dict[str, Any] = {}

    async def scenario() -> None:
        # The farm takes 2 bytes of the pool's extranonce2 for each ASIC's prefix.
        async with SimulatedPool(difficulty=DIFFICULTY, extranonce2_size=8, seed=12) as pool:
            proc = start_supervisor(tmp_path, clickhouse.url, pool.port, port, "--mode", "aggregate")
            try:
                await until_slow(lambda: len(ready_pids(tmp_path)) == 2, "both workers ready")
                # Not the bitaxe profile: it suggests a difficulty the farm honours, too high to grind here.
                fleet = Fleet.for_hotkeys(
                    HOST,
                    port,
                    HOTKEYS,
                    ASICS,
                    max_shares=4,
                    mode="rate",
                    rate=20.0,
                    profiles=("antminer", "cpuminer"),
                )
                await fleet.start()
                await fleet.wait(timeout=60)
                await fleet.stop()
                result["fleet"] = {a.worker: a.accepted for a in fleet.asics if a.accepted}
                result["pool_connections"] = pool.connections_total
                proc.send_signal(signal.SIGTERM)
                result["rc"] = await wait_for(proc, 60)
            finally:
                if proc.poll() is None:
                    proc.kill()
            result["pool"] = pool.accepted_by_hotkey()

    go(scenario)
    assert result["rc"] == 0, proxy_log(tmp_path)[-3000:]
    client = clickhouse_connect.get_client(host=HOST, port=clickhouse.port)
    try:
        shares = client.query(
            "SELECT proxy_id, hotkey, worker, difficulty FROM infinitehash.shares WHERE accepted = 1"
        ).result_rows
    finally:
        client.close()
    assert {row[0] for row in shares} == {"wk-0", "wk-1"}
    by_hotkey: dict[str, float] = collections.defaultdict(float)
    for _, hotkey, _, difficulty in shares:
        by_hotkey[hotkey] += difficulty
    assert by_hotkey == result["pool"]
    assert collections.Counter(row[2] for row in shares) == result["fleet"]
    # One pool connection per hotkey per worker that has ASICs of it: far fewer than the ASICs.
    assert len(HOTKEYS) < result["pool_connections"] <= 2 * len(HOTKEYS)
