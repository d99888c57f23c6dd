"""The proxy's NDJSON export over a real chdb ledger on 127.0.0.1, and the audit through `--from-url`.

The server is the proxy's own HTTP app (proxy.http.build_app, which registers proxy/export.py) over
the proxy's own ledger reader (LedgerWriter.query); the rows are the real vector shares.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import clickhouse_connect
import pytest
from aiohttp import web

from ledger.audit import audit_clickhouse, choose_sample
from ledger.export import job_of, share_of
from ledger.rows import JobRow, ShareRow
from proxy.http import build_app
from proxy.ledger import LedgerWriter
from proxy.metrics import ProxyMetrics
from scorer import cli
from scorer.audit import AuditFailed, ExportClient, audit_from_export
from scorer.hashrate import Window
from tests.ledger_vectors import BOB, DATABASE, T0, TTL_DAYS, chdb_ledger, insert
from tests.test_audit import END, END_ISO, ledger, shares

WINDOW = Window(datetime.fromtimestamp(T0, UTC), datetime.fromtimestamp(END, UTC))
TOKEN = "s3cret-token"


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 60))


@asynccontextmanager
async def export_server(path: Path, tmp_path: Path, *, token: str | None = None) -> AsyncIterator[str]:
    writer = LedgerWriter(
        lambda: clickhouse_connect.get_client(interface="chdb", path=str(path)),
        spool_dir=tmp_path / "spool",
        ttl_days=TTL_DAYS,  # its stop() applies the schema: a shorter TTL would drop the 2024 rows
    )
    app = build_app(ProxyMetrics(), writer.query, DATABASE)
    seen: list[str] = []

    @web.middleware
    async def bearer(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> Any:
        seen.append(request.headers.get("Authorization", ""))
        if token is not None and request.headers.get("Authorization") != f"Bearer {token}":
            raise web.HTTPUnauthorized(text="token")
        return await handler(request)

    app.middlewares.append(bearer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()
        await writer.stop()


def write(path: Path, rows: list[ShareRow], jobs: list[JobRow] | None = None) -> None:
    with chdb_ledger(path) as client:
        insert(client, rows, list(ledger()[1]) if jobs is None else jobs)


async def ndjson(url: str, **params: str) -> tuple[int, list[Any]]:
    async with aiohttp.ClientSession() as session, session.get(url, params=params) as response:
        body = await response.read()
        if response.status != 200:
            return response.status, [body.decode()]
        assert response.headers["Content-Type"].startswith("application/x-ndjson")
        return 200, [json.loads(line) for line in body.splitlines()]


def test_shares_and_jobs_stream_as_ndjson_rows_and_page_without_gaps(tmp_path: Path) -> None:
    rows = shares()
    write(tmp_path / "ch", rows)
    window = {"start_time": "2024-06-01T00:00:00Z", "end_time": END_ISO}

    async def scenario() -> None:
        async with export_server(tmp_path / "ch", tmp_path) as base:
            status, everything = await ndjson(f"{base}/api/v1/shares", **window)
            assert status == 200
            assert [share_of(o) for o in everything] == sorted(rows, key=lambda r: r.ts)
            paged: list[ShareRow] = []
            for offset in range(0, 20, 3):
                _, page = await ndjson(f"{base}/api/v1/shares", **window, limit="3", offset=str(offset))
                paged += [share_of(o) for o in page]
            assert paged == [share_of(o) for o in everything]
            _, bob = await ndjson(f"{base}/api/v1/shares", **window, hotkey=BOB)
            assert {share_of(o).hotkey for o in bob} == {BOB} and len(bob) == sum(r.hotkey == BOB for r in rows)
            # The version bits of a share without rolling are null, not 0.
            assert {o["version_bits"] is None for o in everything} == {True, False}

            _, jobs = await ndjson(f"{base}/api/v1/jobs", **window)
            assert sorted((job_of(o) for o in jobs), key=lambda j: j.job_key) == sorted(ledger()[1])
            keys = ",".join({r.job_key for r in rows[:1]})
            _, some = await ndjson(f"{base}/api/v1/jobs", keys=keys)
            assert [job_of(o).job_key for o in some] == [rows[0].job_key]

            for bad in (
                {"start_time": "yesterday", "end_time": END_ISO},
                {**window, "limit": "-1"},
                {"start_time": END_ISO, "end_time": "2024-06-01T00:00:00Z"},
            ):
                status, _ = await ndjson(f"{base}/api/v1/shares", **bad)
                assert status == 400
            status, _ = await ndjson(f"{base}/api/v1/jobs", keys="not-a-key")
            assert status == 400

    run(scenario())


def test_audit_from_the_export_matches_the_audit_from_clickhouse(tmp_path: Path) -> None:
    rows = shares()
    rows[3] = rows[3]._replace(nonce=rows[3].nonce ^ 0x10)
    rows[6] = rows[6]._replace(hotkey=BOB, session="a-2")  # a-3's share moved into BOB's session
    write(tmp_path / "ch", rows)
    direct = {}

    async def scenario() -> None:
        async with export_server(tmp_path / "ch", tmp_path, token=TOKEN) as base:
            client = ExportClient(base, TOKEN, page_rows=2)  # several pages
            full = await audit_from_export(client, WINDOW, sample=None, seed=0)
            sampled = await audit_from_export(client, WINDOW, sample=4, seed=5)
            with pytest.raises(AuditFailed, match="HTTP 401"):
                await audit_from_export(ExportClient(base, "wrong"), WINDOW, sample=None, seed=0)
        direct["full"], direct["sampled"] = full, sampled

    run(scenario())
    with chdb_ledger(tmp_path / "ch") as client:
        reference = audit_clickhouse(client, DATABASE, T0, END)
        reference_sample = audit_clickhouse(client, DATABASE, T0, END, sample=4, seed=5)
    full, sampled = direct["full"].report, direct["sampled"].report
    assert full.checked == len(rows) and not full.clean
    assert full.totals() == reference.totals() and full.totals()["hash"] == 1 and full.totals()["session"] > 0
    assert {h: (a.checked, a.mismatches) for h, a in full.hotkeys.items()} == {
        h: (a.checked, a.mismatches) for h, a in reference.hotkeys.items()
    }
    # The same seed samples the same shares whichever way the ledger is read.
    assert sampled.checked == 4
    assert sorted(m.row for m in sampled.examples) == sorted(m.row for m in reference_sample.examples)
    assert {h: a.checked for h, a in sampled.hotkeys.items()} == {
        h: a.checked for h, a in reference_sample.hotkeys.items()
    }
    chosen = choose_sample(rows, 4, 5)
    assert sum(a.checked for a in sampled.hotkeys.values()) == len(chosen)


def test_ih_scorer_audit_from_url(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The command against a server running in another thread (the command runs its own event loop)."""
    write(tmp_path / "ch", shares())
    ready = threading.Event()
    stop = threading.Event()
    found: list[str] = []

    async def serve() -> None:
        async with export_server(tmp_path / "ch", tmp_path, token=TOKEN) as base:
            found.append(base)
            ready.set()
            for _ in range(600):  # bounded: at most 60 s
                if stop.is_set():
                    return
                await asyncio.sleep(0.1)

    thread = threading.Thread(target=asyncio.run, args=(serve(),))
    thread.start()
    try:
        assert ready.wait(30)
        argv = ["audit", "--from-url", found[0], "--api-token", TOKEN, "--window", "1h", "--end", END_ISO, "--json"]
        assert cli.main([*argv, "--sample", "3", "--seed", "9"]) == 0
        doc = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert (doc["checked"], doc["clean"], doc["seed"], doc["source"]) == (3, True, 9, f"export {found[0]}")
        assert cli.main(argv[:3] + argv[5:]) == 1  # no token: the server refuses, the audit cannot run
        assert "HTTP 401" in capsys.readouterr().err
    finally:
        stop.set()
        thread.join(60)
