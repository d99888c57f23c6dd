"""The Luxor cross-check against a local fake of Luxor's workers-hashrate-efficiency API (the shape the
InfiniteHash validators read): paging, the Authorization header, hourly ticks → H/s, the report."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from scorer.hashrate import Window
from scorer.luxor import (
    LuxorClient,
    LuxorError,
    discrepancies,
    hashrate_by_hotkey,
    hotkey_of_luxor_worker,
    tick_hours,
)

REPO = Path(__file__).resolve().parent.parent
ALICE = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY"
BOB = "5FHneW46xGXgs5mUiveU4sbTyGBzmstUspZC92UhjJM694ty"
DAVE = "5DAAnrj7VHTznn2AWBemMuyBwZWs6FNFjdyVXUeYum3PTXFy"
KEY = "lux-api-key-Zq8-never-print"
SUB = "infinite"
WINDOW = Window(datetime(2025, 1, 1, 0, 30, tzinfo=UTC), datetime(2025, 1, 1, 2, 30, tzinfo=UTC))


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IH_")}
    env["IH_LUXOR_API_KEY"] = KEY
    return env


def tick(hour: str, hashrate: float) -> dict[str, Any]:
    return {"date_time": f"2025-01-01T{hour}:00:00.000Z", "hashrate": str(int(hashrate)), "efficiency": 1,
            "est_revenue": 1.8e-06}  # fmt: skip


PAGES: list[dict[str, list[dict[str, Any]]]] = [
    {
        f"{ALICE}-1": [tick("00", 3e12), tick("01", 3e12), tick("02", 3e12), tick("03", 100e12)],
        f"{ALICE}.rig2": [tick("01", 3e12)],  # ticks missing at 00 and 02 count as 0
    },
    {f"{SUB}.{BOB}.rig": [tick("00", 1e12), tick("01", 1e12), tick("02", 1e12)]},
]


class FakeLuxor:
    """127.0.0.1 server for ``/pool/workers-hashrate-efficiency/BTC/{sub}`` (and the proxy's workers API)."""

    def __init__(self, pages: list[dict[str, list[dict[str, Any]]]], status: int = 200) -> None:
        self.pages = pages
        self.status = status
        self.requests: list[tuple[str, dict[str, str], str | None]] = []
        self.workers: list[dict[str, Any]] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def luxor(self, request: web.Request) -> web.Response:
        self.requests.append((request.match_info["sub"], dict(request.query), request.headers.get("Authorization")))
        if request.headers.get("Authorization") != KEY:
            return web.json_response({"error": "unauthorized"}, status=401)
        if self.status != 200:
            return web.Response(status=self.status)
        number = int(request.query["page_number"])
        last = number >= len(self.pages)
        return web.json_response({
            "currency_type": "BTC",
            "start_date": request.query["start_date"],
            "end_date": request.query["end_date"],
            "tick_size": request.query["tick_size"],
            "hashrate_efficiency_revenue": self.pages[number - 1],
            "pagination": {
                "page_number": number, "page_size": int(request.query["page_size"]), "item_count": 3,
                "previous_page_url": None,
                # never followed: the client asks for the next page by number at its own base URL
                "next_page_url": None if last else f"http://unrelated.invalid/page/{number + 1}",
            },
        })  # fmt: skip

    async def proxy_workers(self, request: web.Request) -> web.Response:
        return web.json_response({"workers": self.workers})

    async def __aenter__(self) -> FakeLuxor:
        app = web.Application()
        app.router.add_get("/api/v1/pool/workers-hashrate-efficiency/BTC/{sub}", self.luxor)
        app.router.add_get("/api/v1/workers", self.proxy_workers)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


@pytest.mark.parametrize(
    ("name", "hotkey"),
    [
        (f"{ALICE}-1", ALICE),
        (f"{ALICE}.rig2", ALICE),
        (f"{SUB}.{ALICE}.rig2", ALICE),
        (ALICE, ALICE),
        ("short.rig", "short"),
    ],
)
def test_hotkey_of_luxor_worker(name: str, hotkey: str) -> None:
    assert hotkey_of_luxor_worker(name, SUB) == hotkey


def test_ticks_overlapping_the_window() -> None:
    assert [t.hour for t in tick_hours(WINDOW)] == [0, 1, 2]
    exact = Window(datetime(2025, 1, 1, 0, tzinfo=UTC), datetime(2025, 1, 1, 6, tzinfo=UTC))
    assert len(tick_hours(exact)) == 6
    short = Window(datetime(2025, 1, 1, 0, 10, tzinfo=UTC), datetime(2025, 1, 1, 0, 40, tzinfo=UTC))
    assert len(tick_hours(short)) == 1


def test_hashrate_by_hotkey() -> None:
    merged = {**PAGES[0], **PAGES[1]}
    rates = hashrate_by_hotkey(merged, WINDOW, SUB)
    assert rates == {ALICE: pytest.approx(3e12 + 1e12), BOB: pytest.approx(1e12)}
    with pytest.raises(LuxorError):
        hashrate_by_hotkey({"x": [{"hashrate": "1"}]}, WINDOW, SUB)


@pytest.mark.parametrize(
    ("ours", "luxor", "expected"),
    [
        ({"a": 100.0}, {"a": 100.0}, [("a", 1.0, False)]),
        ({"a": 105.0}, {"a": 100.0}, [("a", 1.05, False)]),
        ({"a": 120.0}, {"a": 100.0}, [("a", 1.2, True)]),
        ({"a": 80.0}, {"a": 100.0}, [("a", 0.8, True)]),
        ({"a": 100.0}, {}, [("a", None, True)]),
        ({}, {"a": 100.0}, [("a", 0.0, True)]),
        ({"a": 0.0}, {"a": 0.0}, []),
        ({"b": 100.0, "a": 300.0}, {"a": 100.0, "b": 100.0}, [("a", 3.0, True), ("b", 1.0, False)]),
    ],
)
def test_discrepancies(
    ours: dict[str, float], luxor: dict[str, float], expected: list[tuple[str, float | None, bool]]
) -> None:
    report = discrepancies(ours, luxor, threshold=0.1)
    assert [(d.hotkey, None if d.ratio is None else pytest.approx(d.ratio), d.flagged) for d in report] == expected


def test_luxor_client_pages_and_authorization() -> None:
    async def scenario() -> None:
        async with FakeLuxor(PAGES) as fake:
            client = LuxorClient(KEY, SUB, fake.url + "/api/v1/", page_size=2)
            assert await client.hashrates(WINDOW) == {ALICE: pytest.approx(4e12), BOB: pytest.approx(1e12)}
            assert [(sub, q["page_number"], auth) for sub, q, auth in fake.requests] == [
                (SUB, "1", KEY),
                (SUB, "2", KEY),
            ]
            query = fake.requests[0][1]
            assert (query["start_date"], query["end_date"], query["tick_size"], query["page_size"]) == (
                "2025-01-01", "2025-01-01", "1h", "2",
            )  # fmt: skip

            with pytest.raises(LuxorError, match="HTTP 401") as info:
                await LuxorClient("wrong-" + KEY, SUB, fake.url + "/api/v1").hashrates(WINDOW)
            assert KEY not in str(info.value)

        async with FakeLuxor([{"w": "not a list"}]) as fake:  # type: ignore[dict-item]
            with pytest.raises(LuxorError, match="no list of ticks"):
                await LuxorClient(KEY, SUB, fake.url + "/api/v1").hashrates(WINDOW)
        with pytest.raises(LuxorError, match="cannot read the Luxor API"):
            await LuxorClient(KEY, SUB, fake.url + "/api/v1").hashrates(WINDOW)

    asyncio.run(scenario())


def test_cli_cross_check_is_a_report_only(tmp_path: Path) -> None:
    metagraph = tmp_path / "metagraph.json"
    metagraph.write_text(json.dumps({"0": DAVE, "1": ALICE, "2": BOB}))

    async def scenario() -> None:
        async with FakeLuxor(PAGES) as fake:
            # ours: Alice 4 TH/s (agrees), Bob 2 TH/s (Luxor saw 1 TH/s: flagged)
            fake.workers = [
                {"worker_id": f"infinite.{ALICE}.rig1", "hashrate": 4e12},
                {"worker_id": f"infinite.{BOB}.rig", "hashrate": 2e12},
            ]
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "scorer", "--proxy-api", fake.url, "--dry-run", "--json", "--min-coverage", "0",
                "--metagraph-file", str(metagraph), "--window", "2h", "--end", "2025-01-01T02:30:00Z",
                "--luxor-url", fake.url + "/api/v1", "--luxor-subaccount", SUB,
                cwd=REPO, env=environment(),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            out_b, err_b = await asyncio.wait_for(process.communicate(), timeout=120)
            out, err = out_b.decode(), err_b.decode()
            assert process.returncode == 0, err
            assert KEY not in out + err
            doc = json.loads(out.strip().splitlines()[-1])
            report = {d["hotkey"]: d for d in doc["luxor"]["hotkeys"]}
            assert report[ALICE]["flagged"] is False and report[ALICE]["ratio"] == pytest.approx(1.0)
            assert report[BOB]["flagged"] is True and report[BOB]["ratio"] == pytest.approx(2.0)
            assert doc["luxor"]["error"] is None
            # the weights come from our own figures only
            assert doc["weights"] == {"0": 0.0, "1": pytest.approx(4 / 6), "2": pytest.approx(2 / 6)}
            assert "FLAG" in out and "Luxor disagrees" in err

    asyncio.run(scenario())
