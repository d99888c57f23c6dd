"""``--proxy-api``: hashrate from a proxy's ``GET /api/v1/workers`` (a local aiohttp server serves the shape)."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from scorer.hashrate import Window
from scorer.sources import ProxyApiSource, SourceError, hotkey_of_worker, parse_workers_response

REPO = Path(__file__).resolve().parent.parent
ALICE = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY"
BOB = "5FHneW46xGXgs5mUiveU4sbTyGBzmstUspZC92UhjJM694ty"
CHARLIE = "5FLSigC9HGRKVhB9FiEo4Y3koPsNmBmLJbpXg2mp1hXcS59Y"
OWNER = "5DAAnrj7VHTznn2AWBemMuyBwZWs6FNFjdyVXUeYum3PTXFy"
WORKERS = [
    {"worker_id": f"infinite.{ALICE}.rig1", "hashrate": 1.0e12},
    {"worker_id": f"infinite.{ALICE}.rig2", "hashrate": 2.0e12},
    {"worker_id": f"infinite.{BOB}.x", "hashrate": 1.0e12},
    {"worker_id": f"infinite.{CHARLIE}.w", "hashrate": 4.0e12},
    {"worker_id": "not-a-miner", "hashrate": 9.0e15},
]


class FakeProxy:
    """The proxy's workers endpoint on 127.0.0.1: answers ``body`` with ``status``, records queries."""

    def __init__(self, body: Any, status: int = 200) -> None:
        self.body = body
        self.status = status
        self.queries: list[dict[str, str]] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.queries.append(dict(request.query))
        if self.status != 200:
            return web.Response(status=self.status, text="boom")
        return web.json_response(self.body)

    async def __aenter__(self) -> FakeProxy:
        app = web.Application()
        app.router.add_get("/api/v1/workers", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = self.runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


def run(factory: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(factory())


@pytest.mark.parametrize(
    ("worker", "hotkey"),
    [
        (f"infinite.{ALICE}.rig1", ALICE),
        (f"other.{ALICE}.rig1", ALICE),
        (f"other.{ALICE}.rig.with.dots", None),  # the one worker-name rule: no dots in a workerID
        (f"{ALICE}.rig1", ALICE),  # the one rule: a bare name is the default account's
        ("infinite..rig", None),
        (f"infinite.{ALICE}.", None),
        ("solo", None),
    ],
)
def test_hotkey_of_worker(worker: str, hotkey: str | None) -> None:
    assert hotkey_of_worker(worker) == hotkey


@pytest.mark.parametrize(
    "body",
    [
        [],
        {},
        {"workers": {}},
        {"workers": [1]},
        {"workers": [{"hashrate": 1}]},
        {"workers": [{"worker_id": "a.b.c", "hashrate": -1}]},
        {"workers": [{"worker_id": "a.b.c", "hashrate": [1]}]},
        {"workers": [{"worker_id": "a.b.c", "hashrate": "fast"}]},
        {"workers": [{"worker_id": "a.b.c", "hashrate": True}]},
    ],
)
def test_malformed_workers_bodies(body: Any) -> None:
    with pytest.raises(SourceError):
        parse_workers_response(body)


def test_hashrate_values_integers_floats_and_null() -> None:
    stats = parse_workers_response(
        {
            "workers": [
                {"worker_id": f"i.{ALICE}.1", "hashrate": 120_000_000_000_000},
                {"worker_id": f"i.{ALICE}.2", "hashrate": 1.5e12},
                {"worker_id": f"i.{ALICE}.3", "hashrate": "7"},
                {"worker_id": f"i.{ALICE}.4", "hashrate": None},
                {"worker_id": f"i.{ALICE}.5"},
            ]
        }
    )
    assert [w.hashrate for w in stats] == [120e12, 1.5e12, 7.0, 0.0, 0.0], "null or missing is 0, as theirs reads it"


def test_proxy_api_source() -> None:
    window = Window(datetime(2025, 1, 1, 0, 0, tzinfo=UTC), datetime(2025, 1, 1, 6, 0, tzinfo=UTC))

    async def scenario() -> None:
        async with FakeProxy({"workers": WORKERS}) as proxy:
            source = ProxyApiSource(proxy.url + "/", pattern="infinite.*")
            stats = await source.fetch(window)
            assert proxy.queries == [
                {
                    "pattern": "infinite.*",
                    "limit": "500",
                    "start_time": "2025-01-01T00:00:00+00:00",
                    "end_time": "2025-01-01T06:00:00+00:00",
                    "offset": "0",
                }
            ]
            by = {s.hotkey: s for s in stats}
            assert set(by) == {ALICE, BOB, CHARLIE}
            assert by[ALICE].hashrate == 3.0e12
            assert [w.worker for w in by[ALICE].workers] == [f"infinite.{ALICE}.rig2", f"infinite.{ALICE}.rig1"]
            assert all(s.shares is None for s in stats), "the proxy API does not report shares"
            # the full endpoint URL is accepted as well
            assert len(await ProxyApiSource(proxy.url + "/api/v1/workers").fetch(window)) == 3

    run(scenario)


def test_proxy_api_errors() -> None:
    window = Window(datetime(2025, 1, 1, tzinfo=UTC), datetime(2025, 1, 1, 1, tzinfo=UTC))

    async def scenario() -> None:
        async with FakeProxy({}, status=503) as proxy:
            with pytest.raises(SourceError, match="HTTP 503"):
                await ProxyApiSource(proxy.url).fetch(window)
        with pytest.raises(SourceError, match="cannot read"):
            await ProxyApiSource(proxy.url).fetch(window)  # nobody listens any more

    run(scenario)


async def scorer(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "scorer", "--min-coverage", "0", *args, cwd=REPO,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def test_cli_with_proxy_api(tmp_path: Path) -> None:
    metagraph = tmp_path / "metagraph.json"
    metagraph.write_text(json.dumps({"0": OWNER, "1": ALICE, "2": BOB}))

    async def scenario() -> None:
        async with FakeProxy({"workers": WORKERS}) as proxy:
            code, out, err = await scorer(
                "--proxy-api", proxy.url, "--dry-run", "--json", "--metagraph-file", str(metagraph),
                "--window", "90m", "--end", "2025-01-01T12:00:30Z",
            )  # fmt: skip
            assert code == 0, err
            assert proxy.queries[0]["start_time"] == "2025-01-01T10:30:00+00:00"
            assert proxy.queries[0]["end_time"] == "2025-01-01T12:00:00+00:00"
            doc = json.loads(out.strip().splitlines()[-1])
            assert doc["shares_known"] is False
            assert "does not report share counts" in out
            miners = {m["hotkey"]: m for m in doc["miners"]}
            assert miners[ALICE]["shares"] is None
            assert miners[ALICE]["hashrate"] == 3.0e12
            assert miners[ALICE]["weight"] == pytest.approx(0.75)
            assert miners[BOB]["weight"] == pytest.approx(0.25)
            assert doc["unregistered"] == [CHARLIE]
            assert doc["weights"] == {"0": 0.0, "1": pytest.approx(0.75), "2": pytest.approx(0.25)}

        async with FakeProxy({"workers": WORKERS}, status=500) as proxy:
            code, out, err = await scorer("--proxy-api", proxy.url, "--dry-run", "--metagraph-file", str(metagraph))
            assert code == 1
            assert "HTTP 500" in err

    run(scenario)


# -- paging ----------------------------------------------------------------------------------------


def fleet(n: int) -> list[dict[str, Any]]:
    """``n`` workers under three hotkeys; each worker's H/s is its index + 1 (an integer, as the API sends)."""
    hotkeys = [ALICE, BOB, CHARLIE]
    return [{"worker_id": f"infinite.{hotkeys[i % 3]}.rig{i:05d}", "hashrate": i + 1} for i in range(n)]


class PagedProxy:
    """``/api/v1/workers`` on 127.0.0.1 serving ``workers`` in pages; ``mode`` decides how it pages.

    * ``"pages"``: honours ``limit`` and ``offset`` (the API as it is meant to be);
    * ``"ignore"``: ignores both and always answers the whole list;
    * ``"no-offset"``: honours ``limit`` but ignores ``offset`` (always the first page);
    * ``"endless"``: always a full page of new workers (a broken server that never ends).
    """

    def __init__(self, workers: list[dict[str, Any]], mode: str = "pages") -> None:
        self.workers = workers
        self.mode = mode
        self.queries: list[dict[str, str]] = []
        self.served: list[str] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.queries.append(dict(request.query))
        limit, offset = int(request.query["limit"]), int(request.query["offset"])
        if self.mode == "ignore":
            page = self.workers
        elif self.mode == "no-offset":
            page = self.workers[:limit]
        elif self.mode == "endless":
            page = [{"worker_id": f"infinite.{ALICE}.e{offset + i}", "hashrate": 1} for i in range(limit)]
        else:
            page = self.workers[offset : offset + limit]
        self.served += [w["worker_id"] for w in page]
        return web.json_response({"workers": page})

    async def __aenter__(self) -> PagedProxy:
        app = web.Application()
        app.router.add_get("/api/v1/workers", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


WINDOW = Window(datetime(2025, 1, 1, 0, 0, tzinfo=UTC), datetime(2025, 1, 1, 6, 0, tzinfo=UTC))


def expected_by_hotkey(workers: list[dict[str, Any]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for w in workers:
        hotkey = w["worker_id"].split(".")[1]
        out[hotkey] = out.get(hotkey, 0.0) + float(w["hashrate"])
    return out


@pytest.mark.parametrize(("count", "pages"), [(1203, 3), (1000, 3), (499, 1), (0, 1)])
def test_paging_reads_every_worker_once(count: int, pages: int) -> None:
    workers = fleet(count)

    async def scenario() -> None:
        async with PagedProxy(workers) as proxy:
            source = ProxyApiSource(proxy.url)
            stats = await source.fetch(WINDOW)
            assert [q["offset"] for q in proxy.queries] == [str(500 * i) for i in range(pages)]
            assert all(q["limit"] == "500" and q["pattern"] == "*" for q in proxy.queries)
            assert source.pages_read == pages
            names = [w.worker for s in stats for w in s.workers]
            assert sorted(names) == sorted(w["worker_id"] for w in workers), "each worker exactly once"
            assert {s.hotkey: s.hashrate for s in stats} == expected_by_hotkey(workers)

    run(scenario)


def test_a_server_that_ignores_limit_and_offset_is_read_once() -> None:
    workers = fleet(1203)

    async def scenario() -> None:
        async with PagedProxy(workers, mode="ignore") as proxy:
            stats = await ProxyApiSource(proxy.url).fetch(WINDOW)
            assert len(proxy.queries) == 1, "the whole list came at offset 0: no second page asked for"
            assert sum(len(s.workers) for s in stats) == 1203
            assert {s.hotkey: s.hashrate for s in stats} == expected_by_hotkey(workers), "nobody counted twice"

    run(scenario)


def test_a_server_that_ignores_offset_is_an_error_not_a_double_count() -> None:
    async def scenario() -> None:
        async with PagedProxy(fleet(1203), mode="no-offset") as proxy:
            with pytest.raises(SourceError, match=r"twice .*offset 500"):
                await ProxyApiSource(proxy.url).fetch(WINDOW)
            assert len(proxy.queries) == 2

    run(scenario)


def test_pages_are_bounded() -> None:
    async def scenario() -> None:
        async with PagedProxy([], mode="endless") as proxy:
            with pytest.raises(SourceError, match="after 4 pages"):
                await ProxyApiSource(proxy.url, page_size=10, max_pages=4).fetch(WINDOW)
            assert [q["offset"] for q in proxy.queries] == ["0", "10", "20", "30"]

    run(scenario)
