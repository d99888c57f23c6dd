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
        (f"other.{ALICE}.rig.with.dots", ALICE),
        (f"{ALICE}.rig1", None),
        ("infinite..rig", None),
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
        {"workers": [{"worker_id": "a.b.c"}]},
        {"workers": [{"worker_id": "a.b.c", "hashrate": -1}]},
        {"workers": [{"worker_id": "a.b.c", "hashrate": "fast"}]},
        {"workers": [{"worker_id": "a.b.c", "hashrate": True}]},
    ],
)
def test_malformed_workers_bodies(body: Any) -> None:
    with pytest.raises(SourceError):
        parse_workers_response(body)


def test_proxy_api_source() -> None:
    window = Window(datetime(2025, 1, 1, 0, 0, tzinfo=UTC), datetime(2025, 1, 1, 6, 0, tzinfo=UTC))

    async def scenario() -> None:
        async with FakeProxy({"workers": WORKERS}) as proxy:
            source = ProxyApiSource(proxy.url + "/", pattern="infinite.*")
            stats = await source.fetch(window)
            assert proxy.queries == [
                {"pattern": "infinite.*", "start_time": "2025-01-01T00:00:00Z", "end_time": "2025-01-01T06:00:00Z"}
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
        sys.executable, "-m", "scorer", *args, cwd=REPO,
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
            assert proxy.queries[0]["start_time"] == "2025-01-01T10:30:00Z"
            assert proxy.queries[0]["end_time"] == "2025-01-01T12:00:00Z"
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
