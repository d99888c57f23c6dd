"""`GET /api/v1/workers` as InfiniteHash's validators read it (worker_windows.fetch_workers_window):
`pattern`, `start_time`/`end_time` to the second with an offset, `limit=500` and `offset` paged until a
page is shorter than `limit`; `{"workers": [{"worker_id", "hashrate"}]}` with an integer H/s.

The ledger is written by the proxy's own writer into the real engine (chdb) and served by the proxy's
HTTP app on a real 127.0.0.1 socket. Expected figures are computed here from the rows written, never
read back from the code under test. Difficulties are powers of two, so every sum is exact in float.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import math
import random
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager
from fractions import Fraction
from pathlib import Path
from typing import Any

import aiohttp
import clickhouse_connect
import pytest
from aiohttp import web

from ledger.rows import ShareRow
from ledger.target import LedgerTarget
from proxy.config import LedgerBudget
from proxy.http import Answers, HTTPServer, build_app
from proxy.ledger import LedgerWriter
from proxy.metrics import ProxyMetrics
from simulation import run
from simulation.hotkeys import hotkeys

HOST = "127.0.0.1"
B = dt.datetime(2024, 6, 1, tzinfo=dt.UTC)
TTL_DAYS = 20_000
HOTKEYS = hotkeys(7, namespace="api")
AUCTION_WORKERS = 1_203  # more than two pages of 500
INFINITE_WORKERS = 40
TOKEN = "s3cret-token-for-validators-0123"


def _rows() -> list[ShareRow]:
    rng = random.Random(89)
    rows = []
    names = [f"sn89auction.{HOTKEYS[i % 7]}.rig{i:04d}" for i in range(AUCTION_WORKERS)]
    names += [f"infinite.{HOTKEYS[i % 7]}.w{i}" for i in range(INFINITE_WORKERS)]
    for name in names:
        for _ in range(6):
            ms = rng.randrange(0, 10 * 60_000)  # 10 minutes from B, to the millisecond
            accepted = rng.random() < 0.85
            rows.append(
                ShareRow(
                    ts=(B.timestamp() * 1000 + ms) / 1000,
                    proxy_id=rng.choice(["proxy-a", "proxy-b"]),  # several proxies, one ledger
                    hotkey=name.split(".")[1],
                    worker=name,
                    session="s",
                    job_id="j",
                    difficulty=2.0 ** rng.randrange(0, 24),
                    share_difficulty=2.0**30,
                    hash="00" * 32,
                    accepted=1 if accepted else 0,
                    reject_reason="" if accepted else "stale",
                    upstream="127.0.0.1:3333",
                    block=0,
                )
            )
    return rows


ROWS = _rows()


def expected(start: dt.datetime, end: dt.datetime, prefix: str = "") -> dict[str, int]:
    """Σ accepted difficulty · 2^32 / seconds per worker, floored, from the rows written."""
    lo, hi = round(start.timestamp() * 1000), round(end.timestamp() * 1000)
    sums: dict[str, float] = {}
    for row in ROWS:
        if row.accepted and row.worker.startswith(prefix) and lo <= round(row.ts * 1000) < hi:
            sums[row.worker] = sums.get(row.worker, 0.0) + row.difficulty
    seconds = Fraction(hi - lo, 1000)
    return {w: math.floor(Fraction(d) * 2**32 / seconds) for w, d in sums.items() if d > 0}


def go(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(scenario(), 120)

    asyncio.run(bounded())


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("workers-api")
    target = LedgerTarget.parse(f"chdb://{root / 'ledger'}", data_dir=root)

    async def write() -> None:
        writer = LedgerWriter(
            target.connect, spool_dir=root / "spool", ttl_days=TTL_DAYS, budget=LedgerBudget(batch_rows=4000)
        )
        await writer.start()
        for row in ROWS:
            writer.record(row)
        await writer.stop()
        assert writer.rows_written == len(ROWS)

    go(write)
    return root / "ledger"


@asynccontextmanager
async def serve(ledger: Path, asked: list[str] | None = None, **options: Any) -> AsyncIterator[str]:
    """The proxy's HTTP app on the ledger; each query it makes is appended to `asked`."""
    client = clickhouse_connect.get_client(interface="chdb", path=str(ledger))

    async def query(sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        if asked is not None:
            asked.append(sql)
        return await asyncio.to_thread(lambda: [tuple(r) for r in client.query(sql, parameters=params).result_rows])

    runner = web.AppRunner(build_app(ProxyMetrics(), query, "infinitehash", **options))
    await runner.setup()
    try:
        await web.TCPSite(runner, HOST, 0).start()
        yield f"http://{HOST}:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()
        client.close()


def _iso_seconds(ts: dt.datetime) -> str:
    # As the validators' client formats a bound: isoformat(timespec="seconds"), e.g. ...+00:00.
    return ts.isoformat(timespec="seconds")


async def validators_loop(
    http: aiohttp.ClientSession, base: str, start: dt.datetime, end: dt.datetime, pattern: str, limit: int = 500
) -> tuple[list[dict[str, Any]], int]:
    """A re-implementation of fetch_workers_window's loop (bounded): pages until one is short."""
    params_base = {"pattern": pattern, "limit": limit, "start_time": _iso_seconds(start), "end_time": _iso_seconds(end)}
    workers: list[dict[str, Any]] = []
    page_offset = 0
    for requests in range(1, 100):
        async with http.get(base + "/api/v1/workers", params={**params_base, "offset": page_offset}) as r:
            assert r.status == 200, await r.text()
            page = (await r.json()).get("workers", []) or []
        workers.extend(page)
        if len(page) < limit:
            return workers, requests
        page_offset += limit
    raise AssertionError("the validators' loop did not stop")


async def all_workers(http: aiohttp.ClientSession, base: str, start: str, end: str, pattern: str = "*") -> Any:
    params = {"pattern": pattern, "start_time": start, "end_time": end, "limit": "5000"}
    async with http.get(base + "/api/v1/workers", params=params) as r:
        assert r.status == 200, await r.text()
        return await r.json()


def test_the_validators_paging_loop_reads_every_worker_exactly_once(ledger: Path) -> None:
    async def scenario() -> None:
        async with serve(ledger) as base, aiohttp.ClientSession() as http:
            start, end = B - dt.timedelta(minutes=1), B + dt.timedelta(minutes=11)
            want = expected(start, end, "sn89auction.")
            assert len(want) > 1000  # more than two pages
            for limit in (500, len(want) // 3):
                got, requests = await validators_loop(http, base, start, end, "sn89auction.*.*", limit)
                ids = [w["worker_id"] for w in got]
                assert len(ids) == len(set(ids)) == len(want)  # no overlap, no skip
                assert ids == sorted(ids, key=str.encode)  # one stable order across pages
                assert {w["worker_id"]: w["hashrate"] for w in got} == want
                assert all(type(w["hashrate"]) is int and set(w) == {"worker_id", "hashrate"} for w in got)
                # Full pages, then one shorter (empty when limit divides the list: 1,203 = 3 · 401).
                assert requests == len(want) // limit + 1
            # Our own single page agrees, and the pattern keeps the other account out.
            body = await all_workers(http, base, "2024-05-31T23:59:00Z", "2024-06-01T00:11:00Z", "sn89auction.*")
            assert {w["worker_id"]: w["hashrate"] for w in body["workers"]} == want
            body = await all_workers(http, base, "2024-05-31T23:59:00Z", "2024-06-01T00:11:00Z", "infinite.*.w1?")
            assert {w["worker_id"]: w["hashrate"] for w in body["workers"]} == {
                k: v
                for k, v in expected(start, end, "infinite.").items()
                if k.split(".")[2][:2] == "w1" and len(k.split(".")[2]) == 3
            }

    go(scenario)


UNALIGNED = [
    ("2024-06-01T00:00:17Z", "2024-06-01T00:09:43Z"),  # edges from raw rows on both sides
    ("2024-06-01T02:01:05+02:00", "2024-06-01T02:01:50+02:00"),  # inside one minute, with an offset
    ("2024-06-01T00:02:00Z", "2024-06-01T00:02:01Z"),  # one second
    ("2024-06-01T00:03:00Z", "2024-06-01T00:07:00Z"),  # aligned: whole minutes only
    ("2024-06-01T00:00:59.500Z", "2024-06-01T00:08:00.250Z"),  # milliseconds
    ("2024-05-31T19:04:30-05:00", "2024-06-01T00:05:00Z"),  # mixed offsets
]


@pytest.mark.parametrize(("start", "end"), UNALIGNED)
def test_unaligned_windows_equal_the_raw_rows(ledger: Path, start: str, end: str) -> None:
    want = expected(dt.datetime.fromisoformat(start), dt.datetime.fromisoformat(end))
    assert want  # the window holds shares: the comparison means something

    async def scenario() -> None:
        async with serve(ledger) as base, aiohttp.ClientSession() as http:
            body = await all_workers(http, base, start, end)
        assert {w["worker_id"]: w["hashrate"] for w in body["workers"]} == want

    go(scenario)


def test_an_unencoded_plus_offset_is_read_as_the_offset(ledger: Path) -> None:
    async def scenario() -> None:
        async with serve(ledger) as base, aiohttp.ClientSession() as http:
            # A client that pastes "+00:00" into the URL unencoded: the server sees a space.
            url = f"{base}/api/v1/workers?start_time=2024-06-01T00:00:17+00:00&end_time=2024-06-01T00:09:43+00:00"
            async with http.get(url + "&limit=5000") as r:
                assert r.status == 200, await r.text()
                body = await r.json()
        got = {w["worker_id"]: w["hashrate"] for w in body["workers"]}
        assert got == expected(dt.datetime.fromisoformat(UNALIGNED[0][0]), dt.datetime.fromisoformat(UNALIGNED[0][1]))

    go(scenario)


def test_validators_asking_at_once_for_the_same_pages_cost_the_ledger_one_query_each(ledger: Path) -> None:
    """24 validators page through the same window at the same moment: the ledger answers each distinct
    page once, every validator reads every worker once, and the same page after --api-cache-seconds
    is asked of the ledger again."""
    now = [0.0]
    answers = Answers(5.0, clock=lambda: now[0])
    asked: list[str] = []
    start, end = B - dt.timedelta(minutes=1), B + dt.timedelta(minutes=11)
    want = expected(start, end, "sn89auction.")

    async def scenario() -> None:
        async with serve(ledger, asked, answers=answers) as base, aiohttp.ClientSession() as http:
            loops = await asyncio.gather(
                *(validators_loop(http, base, start, end, "sn89auction.*.*") for _ in range(24))
            )
            pages = len(want) // 500 + 1
            for got, requests in loops:
                assert requests == pages
                assert {w["worker_id"]: w["hashrate"] for w in got} == want and len(got) == len(want)
            assert len(asked) == pages  # one query per distinct page, for 24 × pages requests
            # Within the time an answer serves, no new query; after it, one.
            now[0] += 4.9
            await validators_loop(http, base, start, end, "sn89auction.*.*")
            assert len(asked) == pages
            now[0] += 0.2
            got, _ = await validators_loop(http, base, start, end, "sn89auction.*.*")
            assert len(asked) == 2 * pages and {w["worker_id"]: w["hashrate"] for w in got} == want
            # Another window is another answer.
            await all_workers(http, base, "2024-06-01T00:00:17Z", "2024-06-01T00:09:43Z")
            assert len(asked) == 2 * pages + 1

    go(scenario)


def test_shared_answers_keep_no_failure_and_no_hang_up_cancels_them() -> None:
    async def scenario() -> None:
        answers = Answers(60.0, max_bytes=10)
        calls: list[str] = []
        release = asyncio.Event()

        async def failing() -> bytes:
            calls.append("fail")
            await release.wait()
            raise web.HTTPServiceUnavailable(text="down")

        waiters = [asyncio.ensure_future(answers.get("k", failing)) for _ in range(3)]
        await asyncio.sleep(0)
        waiters[0].cancel()  # a client hangs up: the others still get the answer
        release.set()
        results = await asyncio.gather(*waiters, return_exceptions=True)
        assert isinstance(results[0], asyncio.CancelledError)
        assert all(isinstance(r, web.HTTPServiceUnavailable) for r in results[1:])
        assert calls == ["fail"]  # one computation for three requests

        async def body(text: bytes) -> bytes:
            calls.append(text.decode())
            return text

        assert await answers.get("k", lambda: body(b"ok")) == b"ok"  # the failure was not kept
        assert await answers.get("k", lambda: body(b"again")) == b"ok"  # the answer is
        assert await answers.get("big", lambda: body(b"x" * 11)) == b"x" * 11  # over max_bytes: not kept
        assert await answers.get("big", lambda: body(b"y" * 11)) == b"y" * 11
        # At most max_bytes kept: the least recently used goes first.
        assert await answers.get("a", lambda: body(b"aaaa")) == b"aaaa"
        assert await answers.get("k", lambda: body(b"no")) == b"ok"  # k used: a is now the oldest
        assert await answers.get("b", lambda: body(b"bbbbbb")) == b"bbbbbb"  # 2 + 4 + 6 > 10: a goes
        assert await answers.get("a", lambda: body(b"AAAA")) == b"AAAA"
        assert calls == ["fail", "ok", "x" * 11, "y" * 11, "aaaa", "bbbbbb", "AAAA"]

    go(scenario)


BAD = [
    ({"start_time": ""}, "start_time is required"),
    ({"start_time": "yesterday", "end_time": "2024-06-01T01:00:00Z"}, "ISO 8601"),
    ({"start_time": "2024-06-01T00:00:00", "end_time": "2024-06-01T01:00:00Z"}, "time zone"),
    ({"start_time": "2024-06-01T01:00:00Z", "end_time": "2024-06-01T01:00:00Z"}, "after start_time"),
    ({"limit": "0"}, "limit"),
    ({"limit": "5001"}, "limit"),
    ({"limit": "ten"}, "limit"),
    ({"offset": "-1"}, "offset"),
    ({"start_time": "2024-06-01T00:00:00.0001Z", "end_time": "2024-06-01T01:00:00Z"}, "millisecond"),
]


def test_bad_parameters_get_a_400_with_a_json_reason(ledger: Path) -> None:
    async def scenario() -> None:
        async with serve(ledger) as base, aiohttp.ClientSession() as http:
            for params, reason in BAD:
                query = {"start_time": "2024-06-01T00:00:00Z", "end_time": "2024-06-01T01:00:00Z", **params}
                async with http.get(base + "/api/v1/workers", params=query) as r:
                    assert r.status == 400, params
                    assert r.content_type == "application/json"
                    assert reason in (await r.json())["error"], params
            async with http.get(base + "/api/v1/coverage", params={"start_time": "x", "end_time": "y"}) as r:
                assert r.status == 400

    go(scenario)


def test_token_required_and_accepted_as_bearer_or_basic_password(ledger: Path) -> None:
    async def scenario() -> None:
        async with serve(ledger, api_token=TOKEN) as base, aiohttp.ClientSession() as http:
            params = {"start_time": "2024-06-01T00:00:00Z", "end_time": "2024-06-01T00:10:00Z", "limit": "5000"}
            basic = base64.b64encode(f"validator:{TOKEN}".encode()).decode()
            cases = [
                ({}, 401),
                ({"Authorization": "Bearer wrong-token-wrong-token"}, 401),
                ({"Authorization": f"Bearer {TOKEN}x"}, 401),
                ({"Authorization": f"Basic {base64.b64encode(b'validator:nope').decode()}"}, 401),
                ({"Authorization": "Basic !!!"}, 401),
                ({"Authorization": f"Bearer {TOKEN}"}, 200),
                ({"Authorization": f"Basic {basic}"}, 200),  # what httpx sends for https://user:token@host
            ]
            for headers, status in cases:
                for path in ("/api/v1/workers", "/api/v1/coverage"):
                    async with http.get(base + path, params=params, headers=headers) as r:
                        assert r.status == status, (headers, path)
                        if status == 401:
                            assert "token" in (await r.json())["error"]
            want = expected(B, B + dt.timedelta(minutes=10))
            # Credentials in the URL, as a validator configures it, work through a real client too.
            authed = base.replace("http://", f"http://validator:{TOKEN}@")
            async with (
                aiohttp.ClientSession() as with_url,
                with_url.get(authed + "/api/v1/workers", params=params) as r,
            ):
                assert r.status == 200
                assert {w["worker_id"]: w["hashrate"] for w in (await r.json())["workers"]} == want
            for path in ("/metrics", "/healthz", "/readyz"):
                async with http.get(base + path) as r:
                    assert r.status == 200, path

    go(scenario)


@pytest.fixture
def clickhouse_http(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """chdb behind the ClickHouse HTTP interface in its own process (SIGUSR1: down, SIGUSR2: up)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.clickhouse_http", "--data-dir", str(tmp_path / "ch"), "--port", "0"],
        cwd=Path(__file__).resolve().parent.parent,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline().strip().split()[-1])
        yield process, port
    finally:
        process.terminate()
        process.wait(timeout=60)


def test_ledger_down_is_a_503_and_back_is_a_200(tmp_path: Path, clickhouse_http: tuple[Any, int]) -> None:
    process, port = clickhouse_http
    target = LedgerTarget.parse(f"http://127.0.0.1:{port}/", data_dir=tmp_path)

    async def scenario() -> None:
        writer = LedgerWriter(target.connect, spool_dir=tmp_path / "spool", ttl_days=TTL_DAYS)
        await writer.start()
        for row in ROWS[:600]:
            writer.record(row)
        await writer.flush()
        runner = web.AppRunner(build_app(ProxyMetrics(), writer.query, "infinitehash"))
        await runner.setup()
        try:
            await web.TCPSite(runner, HOST, 0).start()
            base = f"http://{HOST}:{runner.addresses[0][1]}"
            params = {"start_time": "2024-06-01T00:00:00Z", "end_time": "2024-06-01T00:10:00Z", "limit": "5000"}
            async with aiohttp.ClientSession() as http:

                async def status() -> tuple[int, Any]:
                    async with http.get(base + "/api/v1/workers", params=params) as r:
                        return r.status, await r.json()

                code, body = await status()
                assert code == 200 and len(body["workers"]) > 50
                process.send_signal(signal.SIGUSR1)  # ClickHouse stops listening
                for _ in range(200):
                    code, down = await status()
                    if code == 503:
                        break
                    await asyncio.sleep(0.05)
                assert code == 503 and "not reachable" in down["error"]
                process.send_signal(signal.SIGUSR2)  # and is back
                for _ in range(200):
                    code, again = await status()
                    if code == 200:
                        break
                    await asyncio.sleep(0.05)
                assert code == 200 and again == body
        finally:
            await runner.cleanup()
            await writer.stop()

    go(scenario)


async def _status(port: int, local: str = HOST) -> int:
    connector = aiohttp.TCPConnector(local_addr=(local, 0))
    async with aiohttp.ClientSession(connector=connector) as http, http.get(f"http://{HOST}:{port}/healthz") as r:
        return r.status


async def _closed_at_once(port: int, local: str = HOST) -> bool:
    reader, writer = await asyncio.open_connection(HOST, port, local_addr=(local, 0))
    try:
        return await asyncio.wait_for(reader.read(1), 5) == b""
    except ConnectionError:
        return True  # reset: closed too
    except TimeoutError:
        return False
    finally:
        writer.close()


async def _held(connections: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]) -> int:
    """How many of `connections` the server keeps open (the others it closed at once)."""
    await asyncio.sleep(0.2)
    return sum(not reader.at_eof() for reader, _ in connections)


def _refused(metrics: ProxyMetrics, limit: str) -> float:
    return metrics.registry.get_sample_value("ih_http_connections_refused_total", {"limit": limit}) or 0.0


@asynccontextmanager
async def _http_port(**limits: Any) -> AsyncIterator[tuple[HTTPServer, ProxyMetrics]]:
    """The HTTP port with `limits`, on an API nobody asks anything of but /healthz."""

    async def query(sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        return []

    metrics = ProxyMetrics()
    server = HTTPServer(build_app(metrics, query, "infinitehash"), HOST, 0, metrics=metrics, **limits)
    await server.start()
    try:
        yield server, metrics
    finally:
        await server.stop()


async def _until(condition: Callable[[], bool]) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the server never got there")


def test_clients_holding_connections_cannot_take_more_than_the_http_limit() -> None:
    """Connections that never send a request fill the limit: one more is closed at accept, before
    a byte is read; as they go (closed by their clients, or idle past the timeout) the port serves
    again. The file descriptors they hold are the ASICs' sessions' too."""

    async def scenario() -> None:
        idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        async with _http_port(max_connections=4, max_per_ip=0, idle_timeout=1.0) as (server, metrics):
            try:
                assert await _status(server.port) == 200
                await _until(lambda: server.open == 0)
                idle += [await asyncio.open_connection(HOST, server.port) for _ in range(4)]
                await _until(lambda: server.open == 4)
                assert await _closed_at_once(server.port)
                assert _refused(metrics, "all") == 1
                idle.pop()[1].close()
                await _until(lambda: server.open == 3)
                assert await _status(server.port) == 200  # one place free again
                # The three left send nothing: the idle timeout closes them.
                await _until(lambda: all(reader.at_eof() for reader, _ in idle))
                for _, writer in idle:
                    writer.close()
                await _until(lambda: server.open == 0)
                idle = [await asyncio.open_connection(HOST, server.port) for _ in range(4)]  # the limit is whole again
                await _until(lambda: server.open == 4)
                assert await _closed_at_once(server.port) and _refused(metrics, "all") == 2
                assert metrics.registry.get_sample_value("ih_http_connections") == 4
            finally:
                for _, writer in idle:
                    writer.close()

    run(scenario())


@pytest.mark.parametrize("use_uvloop", [True, False], ids=["uvloop", "asyncio"])
def test_connections_opened_at_once_never_overshoot_the_http_limit(use_uvloop: bool) -> None:
    """Accepted in one batch, connections are counted as they are made, not a loop iteration later
    (asyncio's loop makes a whole batch's protocols before the first is connected): of 24 opened at
    once with room for 4, exactly 4 stay open."""

    async def scenario() -> None:
        connections: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        async with _http_port(max_connections=4, max_per_ip=0, idle_timeout=30.0) as (server, metrics):
            try:
                connections = list(
                    await asyncio.gather(*(asyncio.open_connection(HOST, server.port) for _ in range(24)))
                )
                await _until(lambda: _refused(metrics, "all") == 20)
                assert server.open == 4 and await _held(connections) == 4
                assert metrics.registry.get_sample_value("ih_http_connections") == 4
            finally:
                for _, writer in connections:
                    writer.close()

    run(scenario(), use_uvloop=use_uvloop)


def test_one_address_cannot_hold_the_validators_api() -> None:
    """One address opening connections and keeping them gets its share of the port and no more: the
    validators, from their own addresses, are still served."""

    async def scenario() -> None:
        greedy: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        async with _http_port(max_connections=8, max_per_ip=3, idle_timeout=30.0) as (server, metrics):
            try:
                greedy = [
                    await asyncio.open_connection(HOST, server.port, local_addr=("127.0.0.2", 0)) for _ in range(5)
                ]
                await _until(lambda: _refused(metrics, "address") == 2)
                assert await _held(greedy) == 3 and server.open == 3
                assert await _closed_at_once(server.port, "127.0.0.2")
                assert await _status(server.port, HOST) == 200  # a validator from another address
                assert _refused(metrics, "address") == 3 and _refused(metrics, "all") == 0
                greedy.pop(0)[1].close()
                await _until(lambda: server.open == 2)
                assert await _status(server.port, "127.0.0.2") == 200  # its freed place is its own again
            finally:
                for _, writer in greedy:
                    writer.close()

    run(scenario())
