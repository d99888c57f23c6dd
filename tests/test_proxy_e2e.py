"""The real proxy between a simulated pool that verifies every share and a simulated ASIC fleet doing
real sha256d work, with the ledger in the real ClickHouse engine. Afterwards the ledger must equal,
per hotkey, exactly what the pool accepted — also when ClickHouse, the pool or the proxy itself is
taken away in the middle.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import datetime as dt
import math
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Coroutine
from fractions import Fraction
from pathlib import Path
from typing import Any

import aiohttp
import clickhouse_connect
import pytest

from ledger.audit import audit_clickhouse
from ledger.target import LedgerTarget
from proxy.app import ProxyApp
from proxy.config import Limits, ProxyConfig
from proxy.farm import FarmHub
from proxy.farm_net import FarmProxy
from proxy.server import Rig, Server
from simulation import BrokenPool, Fleet, HandshakeError, SimulatedASIC, SimulatedPool, run
from simulation.hotkeys import bad_checksum, hotkeys, worker_name

HOST = "127.0.0.1"
HOTKEYS = hotkeys(3, namespace="e2e")
TEST_TIMEOUT = 90.0
REPO = Path(__file__).resolve().parent.parent
# Powers of two: sums of difficulty are exact whatever the order, so totals compare with ==.
DIFFICULTY = 2.0**-26


def go(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(scenario(), TEST_TIMEOUT)

    run(bounded())


async def until(predicate: Callable[[], bool], what: str, *, steps: int = 2000) -> None:
    for _ in range(steps):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"gave up waiting for {what}")


def proxy_config(
    pools: list[SimulatedPool], data_dir: Path, clickhouse_url: str | None = None, **limits: Any
) -> ProxyConfig:
    return ProxyConfig(
        listen=f"{HOST}:0",
        upstream=tuple(f"stratum+tcp://{HOST}:{p.port}" for p in pools),
        data_dir=data_dir,
        clickhouse_url=clickhouse_url,
        metrics=f"{HOST}:0",
        proxy_id="e2e",
        ledger_flush_interval=0.05,
        limits=Limits(**limits),
    )


def ledger_by_hotkey(client: Any) -> dict[str, float]:
    rows = client.query(
        "SELECT hotkey, sum(difficulty) FROM infinitehash.shares WHERE accepted = 1 GROUP BY hotkey"
    ).result_rows
    return {hotkey: float(total) for hotkey, total in rows}


def ledger_by_worker(client: Any) -> dict[str, float]:
    rows = client.query(
        "SELECT worker, sum(difficulty) FROM infinitehash.shares WHERE accepted = 1 GROUP BY worker"
    ).result_rows
    return {worker: float(total) for worker, total in rows}


def ledger_counts(client: Any) -> dict[str, int]:
    rows = client.query(
        "SELECT if(accepted = 1, 'accepted', reject_reason), count() FROM infinitehash.shares GROUP BY 1"
    ).result_rows
    return {reason: int(n) for reason, n in rows}


def read_ledger(data_dir: Path, read: Callable[[Any], Any]) -> Any:
    client = LedgerTarget.parse(None, data_dir=data_dir).connect()
    try:
        return read(client)
    finally:
        client.close()


def test_the_ledger_equals_what_the_pool_accepted_and_bad_shares_never_reach_it(tmp_path: Path) -> None:
    fleet_stats: dict[str, Any] = {}

    async def scenario() -> None:
        async with SimulatedPool(difficulty=DIFFICULTY, seed=3) as pool:
            app = ProxyApp(proxy_config([pool], tmp_path))
            await app.start()
            # Every 4th share is deliberately bad: duplicate, low difficulty, stale, bad extranonce2,
            # bad version bits, malformed, unauthorized worker.
            fleet = Fleet.for_hotkeys(
                HOST, app.port, HOTKEYS, 6, max_shares=40, bad_every=4, profiles=("bitaxe", "antminer", "cpuminer")
            )
            await fleet.run(timeout=60)
            # A worker whose hotkey checksum is wrong is refused at authorize, before the pool.
            refused = SimulatedASIC(HOST, app.port, worker_name(bad_checksum(HOTKEYS[0]), "evil"))
            with pytest.raises(Exception, match=r"24|SS58"):
                await refused.connect(timeout=10)
            await refused.stop(drain=False)
            # The validators' API answers from the same ledger (once the last batch is in it).
            await app.ledger.flush()
            fleet_stats["api"] = await get_json(
                app.http_port,
                "/api/v1/workers",
                pattern="infinite.*",
                start_time="2000-01-01T00:00:00Z",
                end_time="2100-01-01T00:00:00Z",
            )
            fleet_stats["metrics"] = await get_text(app.http_port, "/metrics")
            await app.stop()
            fleet_stats["lost"] = fleet.lost
            fleet_stats["rejected"] = fleet.rejected_by_code()
            fleet_stats["pool"] = pool.accepted_by_hotkey()
            fleet_stats["pool_submits"] = list(pool.submits_seen)
            fleet_stats["pool_workers"] = {w for s in pool.sessions.values() for w in s.workers}

    go(scenario)
    assert fleet_stats["lost"] == 0
    # Bad shares were answered by the proxy with their codes ...
    assert {21, 22, 23, 24, 20} <= set(fleet_stats["rejected"])
    # ... and none of them reached the pool: everything the pool saw, it accepted.
    assert fleet_stats["pool_submits"] and all(s.error is None for s in fleet_stats["pool_submits"])
    assert not any("evil" in w for w in fleet_stats["pool_workers"])
    by_hotkey = read_ledger(tmp_path, ledger_by_hotkey)
    assert by_hotkey == fleet_stats["pool"]
    # Every credited share re-hashes from the ledger alone (issue 13): the proxy wrote what a re-hash needs.
    report = read_ledger(tmp_path, lambda client: audit_clickhouse(client, "infinitehash", 0.0, 4_102_444_800.0))
    assert report.checked == len(fleet_stats["pool_submits"]) and report.clean, report.examples
    assert set(by_hotkey) == set(HOTKEYS)
    counts = read_ledger(tmp_path, ledger_counts)
    assert counts["accepted"] == len(fleet_stats["pool_submits"])
    assert {"duplicate", "stale", "low-difficulty", "malformed"} <= set(counts)
    assert "unauthorized" not in counts  # a worker never authorized leaves no row
    # /api/v1/workers: one entry per worker, hashrate = floor(Σ difficulty · 2^32 / window seconds)
    window = int((dt.datetime(2100, 1, 1) - dt.datetime(2000, 1, 1)).total_seconds())
    workers = {w["worker_id"]: w["hashrate"] for w in fleet_stats["api"]["workers"]}
    assert len(workers) == 6 and all(w.startswith("infinite.") for w in workers)
    by_worker = read_ledger(tmp_path, ledger_by_worker)
    assert workers == {w: math.floor(Fraction(d) * 2**32 / window) for w, d in by_worker.items()}
    assert 'ih_shares_total{outcome="accepted",reason=""}' in fleet_stats["metrics"]
    assert "ih_proxy_submit_latency_seconds_count" in fleet_stats["metrics"]


def test_sessions_per_address_are_limited_and_the_limit_costs_no_one_else(tmp_path: Path) -> None:
    result: dict[str, Any] = {}

    async def scenario() -> None:
        async with SimulatedPool(difficulty=DIFFICULTY, seed=9) as pool:
            app = ProxyApp(proxy_config([pool], tmp_path, max_sessions_per_ip=2))
            await app.start()
            fleet = Fleet.for_hotkeys(HOST, app.port, HOTKEYS[:2], 2, max_shares=10, mode="rate", rate=5.0)
            await fleet.start()
            await until(lambda: fleet.accepted >= 2, "both sessions mining")
            third_r, _ = await asyncio.open_connection(HOST, app.port)
            await closed_by_peer(third_r)  # the third from one address is refused at once
            await fleet.wait(timeout=30)
            await fleet.stop()
            result["refused"] = app.metrics.registry.get_sample_value(
                "ih_connections_refused_total", {"reason": "too many sessions from one address"}
            )
            result["accepted"] = fleet.accepted
            await app.stop()

    go(scenario)
    assert result["refused"] == 1 and result["accepted"] == 20


def test_clickhouse_down_for_a_while_spools_and_replays_exactly_once(tmp_path: Path) -> None:
    from tests.clickhouse_http import ClickHouseHTTPServer

    result: dict[str, Any] = {}
    server = ClickHouseHTTPServer(tmp_path / "clickhouse")
    server.start()
    try:

        async def scenario() -> None:
            async with SimulatedPool(difficulty=DIFFICULTY, seed=4) as pool:
                app = ProxyApp(proxy_config([pool], tmp_path / "proxy", clickhouse_url=server.url))
                await app.start()
                fleet = Fleet.for_hotkeys(HOST, app.port, HOTKEYS, 3, max_shares=60, mode="rate", rate=40.0)
                await fleet.start()
                await until(lambda: pool.accepted_count >= 20, "shares before the outage")
                server.stop()  # ClickHouse goes away: inserts fail, batches are spooled
                await until(lambda: app.ledger.spooled_batches >= 2, "batches spooled during the outage")
                server.start()  # back: the spool is replayed in order
                await fleet.wait(timeout=60)
                await fleet.stop()
                await app.stop()
                result["pool"] = pool.accepted_by_hotkey()
                result["accepted"] = pool.accepted_count
                result["spooled_after_stop"] = app.ledger.spooled_batches
                result["flush_errors"] = app.metrics.ledger_flush_errors._value.get()

        go(scenario)
        client = clickhouse_connect.get_client(host=HOST, port=server.port)
        try:
            assert result["spooled_after_stop"] == 0
            assert result["flush_errors"] > 0  # the outage really happened
            assert ledger_by_hotkey(client) == result["pool"]
            assert ledger_counts(client)["accepted"] == result["accepted"]
            per_minute = client.query(
                "SELECT hotkey, sum(accepted_difficulty) FROM infinitehash.shares_per_minute GROUP BY hotkey"
            ).result_rows
            assert {h: float(d) for h, d in per_minute} == result["pool"]
        finally:
            client.close()
    finally:
        server.close()


def test_the_upstream_dying_sends_asics_back_and_the_next_pool_takes_over(tmp_path: Path) -> None:
    result: dict[str, Any] = {}

    async def scenario() -> None:
        async with (
            SimulatedPool(difficulty=DIFFICULTY, seed=5) as primary,
            SimulatedPool(difficulty=DIFFICULTY, seed=6) as backup,
        ):
            app = ProxyApp(proxy_config([primary, backup], tmp_path))
            await app.start()
            fleet = Fleet.for_hotkeys(
                HOST,
                app.port,
                HOTKEYS,
                3,
                max_shares=50,
                mode="rate",
                rate=40.0,
                reconnect=True,
                max_reconnects=20,
                reconnect_delay=0.05,
            )
            await fleet.start()
            await until(lambda: primary.accepted_count >= 15, "shares on the primary")
            await primary.stop()
            primary.disconnect_all(abort=True)
            await fleet.wait(timeout=60)
            await fleet.stop()
            await app.stop()
            result["pool"] = {
                hk: primary.accepted_by_hotkey().get(hk, 0.0) + backup.accepted_by_hotkey().get(hk, 0.0)
                for hk in HOTKEYS
            }
            result["backup"] = backup.accepted_count
            result["reconnects"] = sum(a.reconnects for a in fleet.asics)
            result["fleet_accepted"] = fleet.accepted_by_hotkey()

    go(scenario)
    assert result["reconnects"] >= 3  # every ASIC was told (disconnected) and came back
    assert result["backup"] > 0  # the next URL took over
    by_hotkey = read_ledger(tmp_path, ledger_by_hotkey)
    assert by_hotkey == {hk: d for hk, d in result["pool"].items() if d}


def test_a_primary_that_accepts_and_hangs_up_is_failed_over_to_the_next_pool(tmp_path: Path) -> None:
    """A load balancer with no pool behind it takes the TCP connection and closes it. That is a
    failed pool, not a healthy one: new sessions go to the backup (it used to be chosen first for
    ever, every session dying on it)."""
    result: dict[str, Any] = {}

    async def scenario() -> None:
        async with BrokenPool("close") as primary, SimulatedPool(difficulty=DIFFICULTY, seed=7) as backup:
            config = dataclasses.replace(
                proxy_config([backup], tmp_path),
                upstream=(f"stratum+tcp://{HOST}:{primary.port}", f"stratum+tcp://{HOST}:{backup.port}"),
            )
            app = ProxyApp(config)
            await app.start()
            app.stratum.upstreams.base_backoff = 30.0  # outlasts the test: the counts below are exact
            first = Fleet.for_hotkeys(HOST, app.port, HOTKEYS[:1], 1, max_shares=1)
            with pytest.raises(HandshakeError):  # the first to try the primary: lost with it
                await first.run(timeout=30)
            fleet = Fleet.for_hotkeys(HOST, app.port, HOTKEYS, 3, max_shares=20)
            await fleet.run(timeout=60)
            await app.stop()
            result["fleet"] = (fleet.accepted, fleet.lost, fleet.rejected)
            result["primary_connections"] = primary.connections
            result["pool"] = backup.accepted_by_hotkey()

    go(scenario)
    assert result["fleet"] == (60, 0, 0)
    assert result["primary_connections"] == 1
    assert read_ledger(tmp_path, ledger_by_hotkey) == result["pool"]


async def closed_by_peer(reader: asyncio.StreamReader) -> None:
    """Read until the proxy closes the connection (EOF, or a reset when our writes were unread)."""
    try:
        for _ in range(100_000):
            if not await asyncio.wait_for(reader.read(65536), 30):
                return
    except ConnectionResetError:
        return
    raise AssertionError("the proxy kept the connection open")


async def get_json(port: int, path: str, **params: str) -> Any:
    async with aiohttp.ClientSession() as http, http.get(f"http://{HOST}:{port}{path}", params=params) as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def get_text(port: int, path: str) -> str:
    async with aiohttp.ClientSession() as http, http.get(f"http://{HOST}:{port}{path}") as r:
        assert r.status == 200
        return await r.text()


def in_flight(fleet: Fleet) -> int:
    return sum(asic.in_flight for asic in fleet.asics)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def start_proxy(
    data_dir: Path, pool_port: int, port: int, log: Path, *extra: str, proxy_id: str = "e2e"
) -> subprocess.Popen[bytes]:
    """`python -m proxy` (on the embedded ledger in `data_dir` unless `extra` says otherwise), its
    output to `log`: a pipe nobody reads would fill and block it."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "proxy",
                "--listen",
                f"{HOST}:{port}",
                "--upstream",
                f"stratum+tcp://{HOST}:{pool_port}",
                "--data-dir",
                str(data_dir),
                "--metrics",
                f"{HOST}:0",
                "--proxy-id",
                proxy_id,
                *extra,
            ],
            cwd=REPO,
            env={**os.environ, "IH_LOG_LEVEL": "INFO"},
            stdout=out,
            stderr=subprocess.STDOUT,
        )


async def listening(port: int) -> None:
    for _ in range(600):  # 60 s: a spawned interpreter starts slowly on a loaded machine
        try:
            socket.create_connection((HOST, port), timeout=0.2).close()
            return
        except OSError:
            await asyncio.sleep(0.1)
    raise AssertionError(f"nothing listens on {port}")


def test_sigterm_with_shares_in_flight_records_every_one(tmp_path: Path) -> None:
    port = _free_port()
    result: dict[str, Any] = {}

    async def scenario() -> None:
        # The pool takes its time to answer, so shares are in flight when SIGTERM arrives.
        async with SimulatedPool(difficulty=DIFFICULTY, seed=7, reply_delay=0.5) as pool:
            proc = start_proxy(tmp_path, pool.port, port, tmp_path / "proxy.log")
            try:
                await listening(port)
                fleet = Fleet.for_hotkeys(HOST, port, HOTKEYS, 3, mode="rate", rate=20.0, duration=30, reconnect=False)
                await fleet.start()
                await until(lambda: pool.accepted_count >= 10 and in_flight(fleet) > 0, "shares in flight")
                result["in_flight_at_sigterm"] = in_flight(fleet)
                proc.send_signal(signal.SIGTERM)
                rc = await asyncio.get_running_loop().run_in_executor(None, proc.wait, 60)
                await fleet.stop()
            finally:
                if proc.poll() is None:
                    proc.kill()
            result["rc"] = rc
            result["log"] = (tmp_path / "proxy.log").read_text(errors="replace")
            result["pool"] = pool.accepted_by_hotkey()
            result["accepted"] = pool.accepted_count

    go(scenario)
    assert result["rc"] == 0, result["log"][-3000:]
    assert result["in_flight_at_sigterm"] > 0
    assert read_ledger(tmp_path, ledger_by_hotkey) == result["pool"]
    assert read_ledger(tmp_path, ledger_counts).get("accepted") == result["accepted"]


def test_a_flood_of_junk_and_a_slow_socket_cost_only_their_own_sessions(tmp_path: Path) -> None:
    result: dict[str, Any] = {}

    async def scenario() -> None:
        async with SimulatedPool(difficulty=DIFFICULTY, seed=8) as pool:
            app = ProxyApp(proxy_config([pool], tmp_path, max_bad_lines=50, max_miner_buffer=64 * 1024))
            await app.start()
            fleet = Fleet.for_hotkeys(HOST, app.port, HOTKEYS, 3, max_shares=60, mode="rate", rate=30.0)
            await fleet.start()

            # A flood of malformed lines: answered, then the session is closed.
            flood_r, flood_w = await asyncio.open_connection(HOST, app.port)
            flood_w.write(
                b"".join(b'{"id": %d, "method": "mining.submit", "params": [1,2]}\n' % i for i in range(5000))
            )
            await closed_by_peer(flood_r)
            # An over-long line: closed without buffering it.
            long_r, long_w = await asyncio.open_connection(HOST, app.port)
            long_w.write(b"{" + b"x" * 200_000)
            await closed_by_peer(long_r)
            # A slow socket: asks for a lot and never reads the answers.
            slow = socket.create_connection((HOST, app.port))
            slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            slow.sendall(
                b'{"id":1,"method":"mining.subscribe","params":["slow"]}\n'
                + b"".join(
                    b'{"id":%d,"method":"mining.extranonce.subscribe","params":[]}\n' % i for i in range(2, 3000)
                )
            )

            await fleet.wait(timeout=60)
            await fleet.stop()
            slow.close()
            flood_w.close()
            long_w.close()
            await app.stop()
            closed = app.metrics.registry.get_sample_value
            result["closed_flood"] = closed("ih_sessions_closed_total", {"reason": "too many malformed lines"})
            result["closed_long"] = closed("ih_sessions_closed_total", {"reason": "line too long"})
            result["malformed_rows"] = closed("ih_shares_total", {"outcome": "refused", "reason": "malformed"})
            result["pool"] = pool.accepted_by_hotkey()
            result["fleet_lost"] = fleet.lost
            result["fleet_rejected"] = fleet.rejected

    go(scenario)
    assert result["closed_flood"] == 1 and result["closed_long"] == 1
    assert result["malformed_rows"] == 51  # each answered and counted (never ledgered) until the limit closed it
    assert result["fleet_lost"] == 0 and result["fleet_rejected"] == 0
    assert read_ledger(tmp_path, ledger_by_hotkey) == result["pool"]


@pytest.mark.parametrize("mode", ["passthrough", "aggregate"])
def test_the_sweep_looks_at_every_session_once_a_round_a_slice_per_callback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    """One callback never walks every session (at 9,000 that was a ~33 ms stall each second in
    passthrough): each of the round's slices looks at its tenth, and at every session once a round."""
    calls: list[list[int]] = []  # per sweep callback, the sessions it looked at; call i is slice i % 10
    if mode == "passthrough":
        sweep_slice, tick = Server.sweep_slice, Rig.tick

        def recording_tick(self: Rig, at: Any) -> None:
            calls[-1].append(id(self))
            tick(self, at)

        monkeypatch.setattr(Rig, "tick", recording_tick)
    else:
        sweep_slice, expire = FarmProxy.sweep_slice, FarmHub.expire_asics  # type: ignore[assignment]

        def recording_expire(self: FarmHub, asics: Any, now: float) -> None:
            asics = list(asics)
            calls[-1].extend(id(a) for a in asics)
            expire(self, asics, now)

        monkeypatch.setattr(FarmHub, "expire_asics", recording_expire)

    def recording_slice(self: Any) -> None:
        calls.append([])
        sweep_slice(self)

    monkeypatch.setattr(FarmProxy if mode == "aggregate" else Server, "sweep_slice", recording_slice)
    sessions = 40

    async def scenario() -> None:
        async with SimulatedPool(difficulty=DIFFICULTY, extranonce2_size=8) as pool:
            app = ProxyApp(dataclasses.replace(proxy_config([pool], tmp_path), mode=mode))
            await app.start()
            try:
                silent = [await asyncio.open_connection(HOST, app.port) for _ in range(sessions)]
                await until(lambda: app.stratum.sessions == sessions, "every session admitted")
                first = -(-len(calls) // 10) * 10  # the first round that starts with all of them
                await until(lambda: len(calls) >= first + 10, "a whole round", steps=500)
                stratum = app.stratum
                members = stratum.state.rigs if isinstance(stratum, Server) else stratum.hub.asics
                one_round = calls[first : first + 10]
                assert max(len(c) for c in one_round) <= -(-sessions // 10)
                assert sorted(i for c in one_round for i in c) == sorted(id(m) for m in members)  # each once
                assert len(members) == sessions
                for _, writer in silent:
                    writer.close()
            finally:
                await app.stop()

    go(scenario)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["passthrough", "aggregate"])
def test_a_sigkill_with_shares_in_flight_loses_no_answered_share_and_credits_none_twice(
    tmp_path: Path, mode: str
) -> None:
    """The proxy is SIGKILLed while its ASICs mine: with shares waiting for the pool, rows written to
    ClickHouse, rows only in the journal, maybe an insert under way. A new proxy on the same data
    directory then mines on. Every share an ASIC was told was accepted is in the ledger; the ledger
    holds only shares the pool accepted, each once, and each re-hashes."""
    port = _free_port()
    result: dict[str, Any] = {}
    told: collections.Counter[str] = collections.Counter()  # worker → shares its ASIC was told were accepted

    async def mine(pool: SimulatedPool, attempt: str) -> None:
        log = tmp_path / f"proxy-{attempt}.log"
        proc = start_proxy(tmp_path, pool.port, port, log, "--mode", mode, "--ledger-flush-interval", "0.5")
        try:
            await listening(port)
            # Not the bitaxe profile: it suggests a difficulty the farm honours, too high to grind here.
            fleet = Fleet.for_hotkeys(
                HOST, port, HOTKEYS, 6, mode="rate", rate=20.0, reconnect=False, profiles=("antminer", "cpuminer")
            )
            await fleet.start()
            if attempt == "killed":
                # Past the first flushes (rows in ClickHouse), with rows since in the journal.
                await until(lambda: pool.accepted_count >= 100 and in_flight(fleet) > 0, "shares in flight")
                result["in_flight"] = in_flight(fleet)
                proc.kill()
                await asyncio.get_running_loop().run_in_executor(None, proc.wait, 30)
                result["pool_at_kill"] = pool.accepted_count
            else:
                await until(lambda: pool.accepted_count >= result["pool_at_kill"] + 50, "mining again")
            await fleet.stop()
            # By worker: in farm mode an ASIC sees the farm's job ids and extranonces, not the pool's.
            for asic in fleet.asics:
                told[asic.worker] += asic.accepted
            if attempt == "next":
                proc.send_signal(signal.SIGTERM)
                result["rc"] = await asyncio.get_running_loop().run_in_executor(None, proc.wait, 60)
        finally:
            if proc.poll() is None:
                proc.kill()

    async def scenario() -> None:
        # The pool answers after 50 ms, so shares are in flight whenever the kill lands.
        async with SimulatedPool(difficulty=DIFFICULTY, extranonce2_size=8, seed=13, reply_delay=0.05) as pool:
            await mine(pool, "killed")
            await mine(pool, "next")  # a new proxy on the same data directory
            # A share by its coinbase's extranonce bytes: in farm mode the pool sees its own extranonce1,
            # and the ASIC's prefix in its extranonce2; the ASIC and the ledger, the prefix in extranonce1.
            result["pool"] = collections.Counter(
                (s.extranonce1 + s.extranonce2.lower(), int(s.ntime, 16), int(s.nonce, 16), s.job_id)
                for s in pool.submits_seen
                if s.accepted
            )

    go(scenario)
    restarted = (tmp_path / "proxy-next.log").read_text(errors="replace")
    assert result["rc"] == 0, restarted[-3000:]
    assert result["in_flight"] > 0

    def rows(client: Any) -> list[Any]:
        return list(
            client.query(
                "SELECT worker, extranonce1, extranonce2, ntime, nonce, job_id FROM infinitehash.shares "
                "WHERE accepted = 1"
            ).result_rows
        )

    ledgered = read_ledger(tmp_path, rows)
    keys = collections.Counter((en1 + en2, ntime, nonce, job) for _, en1, en2, ntime, nonce, job in ledgered)
    assert keys and max(keys.values()) == 1  # none twice
    assert not keys - result["pool"]  # only what the pool accepted
    # Every share an ASIC heard accepted, the killed run's too; more only where the kill came
    # between the pool's verdict and the ASIC's hearing it.
    assert sum(told.values()) > 0
    assert not told - collections.Counter(worker for worker, *_ in ledgered), told
    report = read_ledger(tmp_path, lambda client: audit_clickhouse(client, "infinitehash", 0.0, 4_102_444_800.0))
    assert report.checked == len(ledgered) and report.clean, report.examples
    # The killed run had cut batches before (its journal file was not its first): rows in ClickHouse
    # and rows only in the journal at the kill.
    recovered = re.search(r"recovered \d+ rows from the journal of a run .*\((\d{12})-", restarted)
    assert recovered is not None and int(recovered[1]) > 0, restarted[-3000:]
