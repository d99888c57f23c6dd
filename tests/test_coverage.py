"""Coverage: each proxy's liveness per minute in the ledger, `GET /api/v1/coverage`, and the scorer
refusing a window the proxies did not cover.

Two proxies write coverage rows into the real engine (chdb) through the proxy's own recorder and
sink; their clocks are driven by the test (no wall-clock waits): proxy-a is stopped for minutes
10-14 of a 30-minute window, proxy-b loses its pool for minutes 20-21.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import clickhouse_connect
import pytest
from aiohttp import web

from ledger.rows import CoverageRow
from ledger.schema import apply_migrations
from ledger.target import LedgerTarget
from proxy.coverage import CoverageRecorder
from proxy.http import build_app
from proxy.ledger import LedgerWriter
from proxy.metrics import ProxyMetrics
from scorer.coverage import CoverageGate, CoverageTooLow
from scorer.hashrate import Window
from scorer.sources import parse_clickhouse_url
from simulation.hotkeys import hotkeys

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parent.parent
T0 = dt.datetime(2024, 6, 1, tzinfo=dt.UTC)
T = T0.timestamp()


def go(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(scenario(), 120)

    asyncio.run(bounded())


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_the_recorder_writes_one_row_per_minute_with_the_minutes_figures() -> None:
    rows: list[CoverageRow] = []
    clock, shares, up = Clock(T + 30), [0], [True]
    recorder = CoverageRecorder(
        "p", sessions=lambda: 7, shares=lambda: shares[0], upstream_up=lambda: up[0], record=rows.append, clock=clock
    )
    recorder.begin()
    shares[0] = 5
    clock.now = T + 60.01
    recorder.tick()  # minute 0 ends: 5 shares
    shares[0] = 12
    up[0] = False
    clock.now = T + 90
    recorder.tick()  # a sample while the pool is down
    up[0] = True
    clock.now = T + 125
    recorder.tick()  # minute 1 ends: 7 shares, the pool was down during it
    clock.now = T + 130
    recorder.finish()  # minute 2, in progress at shutdown
    assert rows == [
        CoverageRow(int(T), "p", 7, 5, 1),
        CoverageRow(int(T) + 60, "p", 7, 7, 0),
        CoverageRow(int(T) + 120, "p", 7, 0, 1),
    ]


def run_proxy(
    proxy_id: str,
    record: Callable[[CoverageRow], None],
    start: float,
    end: float,
    up: Callable[[float], bool],
    crash: bool,
) -> None:
    """A proxy's coverage from `start` to `end` (seconds), ticking every 20 s of its clock."""
    clock = Clock(start)
    recorder = CoverageRecorder(
        proxy_id,
        sessions=lambda: 3,
        shares=lambda: int(clock.now),
        upstream_up=lambda: up(clock.now),
        record=record,
        clock=clock,
    )
    recorder.begin()
    while clock.now < end:
        clock.now = min(end, clock.now + 20)
        recorder.tick()
    if not crash:
        recorder.finish()


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("coverage")
    target = LedgerTarget.parse(f"chdb://{root / 'ledger'}", data_dir=root)
    client = target.connect()
    apply_migrations(client, "infinitehash", 20_000)
    client.close()

    async def write() -> None:
        writer = LedgerWriter(target.connect, spool_dir=root / "spool", ttl_days=20_000)
        await writer.start()
        sink = writer.record
        # proxy-a: up from minute 0, killed at 10:00 (its minute 10 is never written), back at 15:30.
        run_proxy("proxy-a", sink, T, T + 600, lambda now: True, crash=True)
        run_proxy("proxy-a", sink, T + 930, T + 1800, lambda now: True, crash=False)
        # proxy-b: alive all along; its pool is unreachable from 20:05 to 21:30.
        run_proxy("proxy-b", sink, T - 5, T + 1800, lambda now: not T + 1205 <= now <= T + 1290, crash=False)
        await writer.stop()

    go(write)
    return root / "ledger"


@asynccontextmanager
async def serve(ledger: Path) -> AsyncIterator[str]:
    client = clickhouse_connect.get_client(interface="chdb", path=str(ledger))

    async def query(sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        return await asyncio.to_thread(lambda: [tuple(r) for r in client.query(sql, parameters=params).result_rows])

    runner = web.AppRunner(build_app(ProxyMetrics(), query, "infinitehash"))
    await runner.setup()
    try:
        await web.TCPSite(runner, HOST, 0).start()
        yield f"http://{HOST}:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()
        client.close()


async def coverage(base: str, start: str, end: str) -> Any:
    async with (
        aiohttp.ClientSession() as http,
        http.get(base + "/api/v1/coverage", params={"start_time": start, "end_time": end}) as r,
    ):
        assert r.status == 200, await r.text()
        return await r.json()


def test_coverage_reports_the_minutes_a_stopped_proxy_missed(ledger: Path) -> None:
    async def scenario() -> None:
        async with serve(ledger) as base:
            body = await coverage(base, "2024-06-01T00:00:00Z", "2024-06-01T00:30:00Z")
            unaligned = await coverage(base, "2024-06-01T00:09:30Z", "2024-06-01T00:16:00Z")
        by_proxy = {p["proxy_id"]: p for p in body["proxies"]}
        assert set(by_proxy) == {"proxy-a", "proxy-b"}
        a, b = by_proxy["proxy-a"], by_proxy["proxy-b"]
        assert a["gaps"] == [["2024-06-01T00:10:00Z", "2024-06-01T00:15:00Z"]]
        assert (a["covered_minutes"], a["window_minutes"], a["fraction"]) == (25, 30, 25 / 30)
        assert b["gaps"] == [["2024-06-01T00:20:00Z", "2024-06-01T00:22:00Z"]]
        assert (b["covered_minutes"], b["upstream_down_minutes"], b["fraction"]) == (28, 2, 28 / 30)
        assert body["fraction"] == 25 / 30  # the least covered proxy
        # An unaligned window counts seconds: proxy-a covered 09:30-10:00 and 15:00-16:00 of 6.5 min.
        a = {p["proxy_id"]: p for p in unaligned["proxies"]}["proxy-a"]
        assert a["fraction"] == pytest.approx(90 / 390)
        assert a["gaps"] == [["2024-06-01T00:10:00Z", "2024-06-01T00:15:00Z"]]

    go(scenario)


def test_the_scorer_refuses_a_window_below_the_threshold_from_either_source(ledger: Path) -> None:
    window = Window(T0, T0 + dt.timedelta(minutes=30))
    well_covered = Window(T0 + dt.timedelta(minutes=22), T0 + dt.timedelta(minutes=30))
    url = parse_clickhouse_url(f"chdb://{ledger}")

    def connect() -> Any:
        return clickhouse_connect.get_client(interface="chdb", path=str(ledger))

    async def scenario() -> None:
        async with serve(ledger) as base:
            for gate_of in (
                lambda m: CoverageGate(m, clickhouse=url, connect=connect),
                lambda m: CoverageGate(m, proxy_api=base),
            ):
                with pytest.raises(
                    CoverageTooLow, match=r"proxy 'proxy-a' covered 83\.3%.*00:10:00Z, 2024-06-01T00:15"
                ):
                    await gate_of(0.9).check(window)
                assert (await gate_of(0.8).check(window)).fraction == pytest.approx(25 / 30)
                assert (await gate_of(0.9).check(well_covered)).fraction == 1.0
                with pytest.raises(CoverageTooLow, match="no proxy reported coverage"):
                    await gate_of(0.5).check(Window(T0 + dt.timedelta(days=1), T0 + dt.timedelta(days=1, hours=1)))

            # The command line says so and sets nothing (exit 1).
            metagraph = ledger.parent / "metagraph.json"
            metagraph.write_text(json.dumps({"0": hotkeys(1, namespace="cov")[0]}))
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "scorer", "--proxy-api", base, "--dry-run", "--metagraph-file", str(metagraph),
                "--window", "30m", "--end", "2024-06-01T00:30:00Z",
                cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            _, err = await asyncio.wait_for(process.communicate(), timeout=120)
            assert process.returncode == 1
            assert "below --min-coverage 90.0%" in err.decode() and "proxy-a" in err.decode()

    go(scenario)
