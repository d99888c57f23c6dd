"""The demo pipeline (`ih-demo`): a simulated pool, the real proxy and a simulated ASIC fleet doing
real sha256d work, on the embedded ClickHouse; then the ledger read back per hotkey and compared
with what the pool itself accepted.

    ih-demo [--seconds 20] [--hotkeys 4] [--asics 8] [--data-dir demo-data]

It leaves `<data-dir>/ledger` (the embedded ledger) and `<data-dir>/metagraph.json` behind, and prints
an `ih-scorer` command whose window is exactly the whole minutes the demo's shares fall in, so the
scorer's hashrate per hotkey equals the demo's "H/s window" column.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import logging
import shutil
import time
from pathlib import Path

from ledger.target import LedgerTarget
from proxy.app import ProxyApp
from proxy.config import Limits, ProxyConfig
from simulation import Fleet, SimulatedPool, run
from simulation.hotkeys import hotkeys

DEMO_DIFFICULTY = 2.0**-26  # ~64 real sha256d per share: cheap in Python, still real work
SHARES_PER_SECOND = 25.0  # per ASIC: far more than a real device sends, well inside the proxy's limits


@dataclasses.dataclass
class HotkeyResult:
    hotkey: str
    ledger_shares: int
    ledger_difficulty: float
    refused: int
    pool_difficulty: float

    @property
    def matches(self) -> bool:
        return abs(self.ledger_difficulty - self.pool_difficulty) <= 1e-9 * max(1.0, self.pool_difficulty)


@dataclasses.dataclass
class DemoRun:
    results: list[HotkeyResult]
    elapsed: float  # seconds the fleet mined
    window_start: dt.datetime  # the whole minutes holding every ledgered share: what ih-scorer reads
    window_end: dt.datetime

    @property
    def window_seconds(self) -> int:
        return int((self.window_end - self.window_start).total_seconds())


def minute_window(first: dt.datetime, last: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """[start, end): the minute `first` falls in up to the end of the minute `last` falls in."""
    start = first.astimezone(dt.UTC).replace(second=0, microsecond=0)
    end = last.astimezone(dt.UTC).replace(second=0, microsecond=0) + dt.timedelta(minutes=1)
    return start, end


async def run_demo(data_dir: Path, seconds: float, n_hotkeys: int, n_asics: int) -> DemoRun:
    keys = hotkeys(n_hotkeys)
    pool = SimulatedPool(difficulty=DEMO_DIFFICULTY, job_interval=5.0)
    await pool.start()
    config = ProxyConfig(
        listen="127.0.0.1:0",
        upstream=(f"stratum+tcp://127.0.0.1:{pool.port}",),
        data_dir=data_dir,
        metrics="127.0.0.1:0",
        proxy_id="demo",
        limits=Limits(),
    )
    app = ProxyApp(config)
    await app.start()
    print(
        f"pool on 127.0.0.1:{pool.port}, proxy on 127.0.0.1:{app.port}, "
        f"metrics on http://127.0.0.1:{app.http_port}/metrics; mining for {seconds:.0f}s ...",
        flush=True,
    )
    # Mixed devices; one in ten shares is deliberately bad (duplicate, stale, low difficulty, ...),
    # which the proxy must answer itself and never forward.
    fleet = Fleet.for_hotkeys(
        "127.0.0.1",
        app.port,
        keys,
        n_asics,
        profiles=("bitaxe", "antminer", "cpuminer"),
        mode="rate",
        rate=SHARES_PER_SECOND,
        duration=seconds,
        bad_every=10,
    )
    started = time.monotonic()
    await fleet.start()
    await fleet.wait(timeout=seconds + 30)
    await fleet.stop()
    elapsed = time.monotonic() - started
    await app.stop()
    await pool.stop()

    client = LedgerTarget.parse(config.clickhouse_url, data_dir=data_dir).connect()
    try:
        rows = client.query(
            "SELECT hotkey, countIf(accepted = 1), sumIf(difficulty, accepted = 1), countIf(accepted = 0) "
            "FROM infinitehash.shares WHERE proxy_id = 'demo' GROUP BY hotkey ORDER BY hotkey"
        ).result_rows
        first, last = client.query(
            "SELECT min(ts), max(ts) FROM infinitehash.shares WHERE proxy_id = 'demo' AND accepted = 1"
        ).result_rows[0]
    finally:
        client.close()
    by_pool = pool.accepted_by_hotkey()
    results = [
        HotkeyResult(hotkey, int(shares), float(difficulty), int(refused), by_pool.get(hotkey, 0.0))
        for hotkey, shares, difficulty, refused in rows
        if hotkey
    ]
    metagraph = {str(uid + 1): hk for uid, hk in enumerate(keys)}
    metagraph["0"] = "5C4hrfjw9DjXZTzV3MwzrrAr9P1MJhSrvWGWqi1eSuyUpnhM"  # uid 0: the subnet owner (burn)
    (data_dir / "metagraph.json").write_text(json.dumps(metagraph, indent=2) + "\n")
    start, end = minute_window(_utc(first), _utc(last))
    return DemoRun(results, elapsed, start, end)


def _utc(moment: dt.datetime) -> dt.datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ih-demo", description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=20.0, help="how long the fleet mines (default 20)")
    parser.add_argument("--hotkeys", type=int, default=4, help="miners (hotkeys) in the fleet (default 4)")
    parser.add_argument("--asics", type=int, default=8, help="ASIC sessions, spread over the hotkeys (default 8)")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path("demo-data"),
        help="where the embedded ledger goes; emptied first (default demo-data)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    shutil.rmtree(args.data_dir, ignore_errors=True)
    args.data_dir.mkdir(parents=True)
    demo = run(run_demo(args.data_dir, args.seconds, args.hotkeys, args.asics))
    results, elapsed = demo.results, demo.elapsed
    window = f"{demo.window_start:%H:%M}-{demo.window_end:%H:%M} UTC"

    print(f"\nledger (chdb://{args.data_dir}/ledger) after {elapsed:.1f}s of mining, per hotkey:")
    print(f"{'hotkey':<50} {'accepted':>9} {'refused':>8} {'H/s mining':>11} {'H/s window':>11}  ledger = pool?")
    for r in results:
        mining = r.ledger_difficulty * 2**32 / elapsed
        over_window = r.ledger_difficulty * 2**32 / demo.window_seconds
        verdict = "yes" if r.matches else f"NO: pool accepted {r.pool_difficulty:.6g}"
        print(f"{r.hotkey:<50} {r.ledger_shares:>9} {r.refused:>8} {mining:>11.0f} {over_window:>11.0f}  {verdict}")
    print(
        "\n  accepted    shares the pool accepted, as the ledger holds them (these are credited)\n"
        "  refused     shares not credited: the proxy refused them itself and never forwarded them (the fleet\n"
        "              sends one bad share in ten on purpose: duplicate, stale job, low difficulty, bad nonce\n"
        "              ...), or the pool rejected them\n"
        f"  H/s mining  accepted difficulty x 2^32 / the {elapsed:.0f} s the fleet mined\n"
        f"  H/s window  the same over the whole minutes {window} ({demo.window_seconds // 60} min) that hold\n"
        "              the shares: what ih-scorer reads, so the command below prints these figures\n"
        "  ledger = pool?  the ledger's accepted difficulty equals what the simulated pool itself accepted"
    )
    ok = bool(results) and all(r.matches for r in results)
    print(
        "\nevery hotkey's ledgered difficulty equals what the pool accepted"
        if ok
        else "\nMISMATCH between the ledger and the pool"
    )
    # The scorer reads whole minutes [end - window, end): the ones that hold the demo's shares.
    print(
        f"\nscore it (its hashrate column is the demo's H/s window):\n"
        f"  uv run ih-scorer --dry-run --clickhouse-url chdb://{args.data_dir}/ledger "
        f"--metagraph-file {args.data_dir}/metagraph.json --burn-uid 0 --window {demo.window_seconds // 60}m "
        f"--end {demo.window_end.strftime('%Y-%m-%dT%H:%M:%SZ')}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
