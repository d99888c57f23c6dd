"""`/healthz` and `/readyz` of the real proxy (pool, ledger, registry), and its own coverage rows."""

from __future__ import annotations

import asyncio
import shutil
import socket
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ledger.target import LedgerTarget
from proxy.app import ProxyApp
from proxy.config import Limits, ProxyConfig
from simulation import Fleet, SimulatedASIC, SimulatedPool
from simulation.hotkeys import hotkeys, worker_name
from tests.test_workers_api import ROWS

HOST = "127.0.0.1"
DIFFICULTY = 2.0**-26


def go(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(scenario(), 90)

    asyncio.run(bounded())


def config(tmp_path: Path, pool_port: int, **options: Any) -> ProxyConfig:
    return ProxyConfig(
        listen=f"{HOST}:0",
        upstream=(f"stratum+tcp://{HOST}:{pool_port}",),
        data_dir=tmp_path,
        metrics=f"{HOST}:0",
        proxy_id="health",
        ledger_flush_interval=0.05,
        upstream_connect_timeout=2.0,
        limits=Limits(),
        **options,
    )


async def ready(app: ProxyApp) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.get(f"http://{HOST}:{app.http_port}/readyz") as r:
        return r.status, await r.json()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def test_ready_with_a_pool_and_the_ledger_and_coverage_written_at_stop(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with SimulatedPool(difficulty=DIFFICULTY, seed=5) as pool:
            app = ProxyApp(config(tmp_path, pool.port))
            await app.start()
            async with aiohttp.ClientSession() as http, http.get(f"http://{HOST}:{app.http_port}/healthz") as r:
                assert r.status == 200 and (await r.json())["status"] == "alive"
            status, body = await ready(app)
            assert status == 200 and body["status"] == "ready"
            assert body["checks"]["pool"]["ok"] and body["checks"]["ledger"] == {"ok": True, "reason": "writing"}
            assert "registry" not in body["checks"]  # not required
            fleet = Fleet.for_hotkeys(HOST, app.port, hotkeys(2, namespace="health"), 2, max_shares=10)
            await fleet.run(timeout=60)
            await app.stop()
            judged = sum(app.metrics.share_counts.values())
        client = LedgerTarget.parse(None, data_dir=tmp_path).connect()
        try:
            rows = client.query("SELECT proxy_id, shares, upstream_up FROM infinitehash.coverage").result_rows
        finally:
            client.close()
        # Started and stopped within a minute or across one: the shares of its minutes add up.
        assert rows and all(r[0] == "health" and r[2] == 1 for r in rows)
        assert sum(int(r[1]) for r in rows) == judged > 0

    go(scenario)


def test_not_ready_when_no_pool_answers(tmp_path: Path) -> None:
    async def scenario() -> None:
        app = ProxyApp(config(tmp_path, closed_port()))
        await app.start()
        try:
            miner = SimulatedASIC(HOST, app.port, worker_name(hotkeys(1, namespace="health")[0], "rig"))
            with pytest.raises(Exception):  # noqa: B017 - whatever the miner sees, the pool is gone
                await miner.connect(timeout=10)
            await miner.stop(drain=False)
            status, body = await ready(app)
            assert status == 503 and body["status"] == "not ready"
            assert body["checks"]["pool"] == {"ok": False, "reason": "every pool is in backoff"}
        finally:
            await app.stop()

    go(scenario)


class NeverLoads:
    async def registered_hotkeys(self) -> set[str]:
        raise ConnectionError("the chain is not reachable")


def test_not_ready_while_a_required_registry_is_not_loaded(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with SimulatedPool(difficulty=DIFFICULTY) as pool:
            app = ProxyApp(config(tmp_path, pool.port, require_registered=True), registry=NeverLoads())
            await app.start()
            try:
                status, body = await ready(app)
                assert status == 503 and body["checks"]["registry"]["ok"] is False
                assert body["checks"]["pool"]["ok"] and body["checks"]["ledger"]["ok"]
            finally:
                await app.stop()

    go(scenario)


def test_spooling_is_ready_and_neither_writing_nor_spooling_is_not(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with SimulatedPool(difficulty=DIFFICULTY) as pool:
            # ClickHouse nobody listens on: every batch goes to the spool.
            app = ProxyApp(
                config(tmp_path, pool.port, clickhouse_url=f"http://{HOST}:{closed_port()}/", ledger_batch_rows=2)
            )
            await app.start()
            spool = tmp_path / "spool"
            try:
                for row in ROWS[:4]:
                    app.ledger.record(row)
                await app.ledger.flush()
                status, body = await ready(app)
                assert status == 200 and body["checks"]["ledger"]["reason"].startswith("spooling: 4 rows")
                # The spool directory becomes a file: nothing can be spooled either.
                shutil.rmtree(spool)
                spool.write_text("not a directory")
                for row in ROWS[4:20]:
                    app.ledger.record(row)
                await app.ledger.flush()
                status, body = await ready(app)
                assert status == 503
                assert body["checks"]["ledger"] == {
                    "ok": False,
                    "reason": "cannot write nor spool: 16 rows held in memory",
                }
            finally:
                if spool.is_file():
                    spool.unlink()
                    spool.mkdir(exist_ok=True)  # the writer, retrying its spool, may have made it meanwhile
                await app.stop()

    go(scenario)
