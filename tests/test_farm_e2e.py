"""Farm mode end to end: the real proxy (`--mode aggregate`) between verifying simulated pools and a
simulated ASIC fleet, the ledger in the real ClickHouse engine. The pool sees one connection per
hotkey, not one per ASIC; the ledger equals what the pool accepted and re-hashes; a pool failover
hands every ASIC a clean job from the next pool without a reconnect.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from pathlib import Path
from typing import Any

import pytest

from ledger.audit import audit_clickhouse
from ledger.target import LedgerTarget
from proxy.app import ProxyApp
from proxy.config import Limits, ProxyConfig
from proxy.farm_net import FarmProxy
from simulation import BrokenPool, Fleet, SimulatedPool
from simulation.broken import Behaviour
from simulation.fleet import PROFILES
from simulation.hotkeys import hotkeys
from tests.test_proxy_e2e import go, until

HOST = "127.0.0.1"
HOTKEYS = hotkeys(2, namespace="farm-e2e")
POOL_DIFFICULTY = 2.0**-26  # powers of two: sums compare with ==
SUGGESTED = 2.0**-25  # above the pool's: honoured (one ASIC asks for it)
POOL_EXTRANONCE2 = 8  # what Luxor-like pools give; the farm takes 2 bytes of it for the prefix


def farm_config(pools: list[SimulatedPool], data_dir: Path, **options: Any) -> ProxyConfig:
    return ProxyConfig(
        listen=f"{HOST}:0",
        upstream=tuple(f"stratum+tcp://{HOST}:{p.port}" for p in pools),
        data_dir=data_dir,
        metrics=f"{HOST}:0",
        proxy_id="farm-e2e",
        ledger_flush_interval=0.05,
        limits=Limits(),
        mode="aggregate",
        **options,
    )


def pool(seed: int, **options: Any) -> SimulatedPool:
    return SimulatedPool(difficulty=POOL_DIFFICULTY, extranonce2_size=POOL_EXTRANONCE2, seed=seed, **options)


def read_ledger(data_dir: Path, query: str) -> list[Any]:
    client = LedgerTarget.parse(None, data_dir=data_dir).connect()
    try:
        return list(client.query(query).result_rows)
    finally:
        client.close()


def audit(data_dir: Path) -> Any:
    client = LedgerTarget.parse(None, data_dir=data_dir).connect()
    try:
        return audit_clickhouse(client, "infinitehash", 0.0, 4_102_444_800.0)
    finally:
        client.close()


def rigs(port: int, count: int, **options: Any) -> Fleet:
    """`count` ASICs of hotkey 0 (rig0, rig1, ...) submitting at a fixed rate."""
    return Fleet(HOST, port, [f"infinite.{HOTKEYS[0]}.rig{i}" for i in range(count)], mode="rate", **options)


def accepted_by_hotkey(*pools: SimulatedPool) -> dict[str, float]:
    """What the pools accepted, per hotkey, in all (zeros dropped)."""
    totals = {hk: sum(p.accepted_by_hotkey().get(hk, 0.0) for p in pools) for hk in HOTKEYS}
    return {hk: d for hk, d in totals.items() if d}


def test_asics_of_one_hotkey_share_one_pool_connection_and_the_ledger_equals_what_the_pool_accepted(
    tmp_path: Path,
) -> None:
    result: dict[str, Any] = {}

    async def scenario() -> None:
        async with pool(seed=11) as upstream:
            app = ProxyApp(farm_config([upstream], tmp_path))
            await app.start()
            assert isinstance(app.stratum, FarmProxy)
            # 6 ASICs of hotkey 0, 2 of hotkey 1; every 5th share is bad (answered by the proxy).
            fleet = Fleet(
                HOST,
                app.port,
                [f"infinite.{HOTKEYS[0]}.rig{i}" for i in range(6)]
                + [f"infinite.{HOTKEYS[1]}.rig{i}" for i in range(2)],
                max_shares=30,
                bad_every=5,
                bad_kinds=("duplicate", "low-difficulty", "stale", "bad-extranonce2", "unauthorized"),
                profiles=("antminer", "cpuminer", "bitaxe"),
            )
            for asic in fleet.asics:
                if asic.profile.name == "bitaxe":  # asks for more than the pool's difficulty: honoured
                    asic.profile = dataclasses.replace(PROFILES["bitaxe"], suggest_difficulty=SUGGESTED)
            await fleet.start()
            await until(lambda: all(a.accepted for a in fleet.asics), "every ASIC mining")
            result["proxy_pool_connections"] = app.stratum.pool_connections
            result["pool_workers"] = sorted({w for s in upstream.sessions.values() for w in s.workers})
            await fleet.wait(timeout=60)
            await fleet.stop()
            await app.ledger.flush()
            result["pool_connections"] = upstream.connections_total
            result["pool_by_hotkey"] = upstream.accepted_by_hotkey()
            result["pool_submits"] = list(upstream.submits_seen)
            result["fleet_by_worker"] = {
                a.worker: (a.accepted, a.rejected, a.difficulty, a.reconnects) for a in fleet.asics
            }
            result["prefixes"] = [a.extranonce1 for a in fleet.asics]
            result["lost"] = fleet.lost
            await app.stop()

    go(scenario)
    # The pool saw one connection per hotkey, authorized as <account>.<hotkey>.farm1, not 8.
    assert result["pool_connections"] == 2 and result["proxy_pool_connections"] == 2
    assert result["pool_workers"] == sorted(f"infinite.{hk}.farm1" for hk in HOTKEYS)
    # Each ASIC has its own extranonce1 (the proxy's prefix).
    assert len(set(result["prefixes"])) == 8
    # Everything forwarded was valid for the pool (bad shares never left the proxy)...
    submits = result["pool_submits"]
    assert submits and all(s.error is None for s in submits)
    assert result["lost"] == 0
    # ... and the ledger equals what the pool accepted, per hotkey.
    by_hotkey = dict(
        read_ledger(tmp_path, "SELECT hotkey, sum(difficulty) FROM infinitehash.shares WHERE accepted GROUP BY 1")
    )
    assert by_hotkey == result["pool_by_hotkey"]
    assert set(by_hotkey) == set(HOTKEYS)
    # Every accepted share is in the ledger under the ASIC's own worker name, as many as it was told.
    per_worker = dict(
        read_ledger(tmp_path, "SELECT worker, count() FROM infinitehash.shares WHERE accepted GROUP BY 1")
    )
    fleet = result["fleet_by_worker"]
    assert per_worker == {w: accepted for w, (accepted, _, _, _) in fleet.items() if accepted}
    assert sum(per_worker.values()) == len(submits)
    # Credit is the pool's difficulty, even for the ASIC that was told a higher one.
    credits = {
        d for (d,) in read_ledger(tmp_path, "SELECT DISTINCT difficulty FROM infinitehash.shares WHERE accepted")
    }
    assert credits == {POOL_DIFFICULTY}
    assert {d for (_, _, d, _) in fleet.values()} == {POOL_DIFFICULTY, SUGGESTED}
    # Rejections stayed at the proxy, with rows for authorized workers only.
    reasons = dict(
        read_ledger(tmp_path, "SELECT reject_reason, count() FROM infinitehash.shares WHERE NOT accepted GROUP BY 1")
    )
    assert {"duplicate", "low-difficulty", "stale", "malformed"} <= set(reasons) and "unauthorized" not in reasons
    # Every credited share re-hashes from the ledger alone.
    report = audit(tmp_path)
    assert report.checked == len(submits) and report.clean, report.examples


def test_a_pool_failover_gives_every_asic_new_work_without_a_reconnect(tmp_path: Path) -> None:
    result: dict[str, Any] = {}

    async def scenario() -> None:
        # The primary answers late, so shares are in flight when it dies.
        async with pool(seed=21, reply_delay=0.2) as primary, pool(seed=22) as backup:
            app = ProxyApp(farm_config([primary, backup], tmp_path))
            await app.start()
            fleet = rigs(app.port, 5, max_shares=60, rate=20.0, reconnect=True, profiles=("antminer", "cpuminer"))
            await fleet.start()
            await until(lambda: primary.accepted_count >= 20, "shares on the primary")
            notified = [a.notifies for a in fleet.asics]
            jobs_before = [set(a.jobs) for a in fleet.asics]
            await until(lambda: sum(a.in_flight for a in fleet.asics) > 0, "shares in flight")
            await primary.stop()  # the primary dies: its connections close, it listens no more
            # Within 2 s every ASIC holds a job from the backup (a timeout on waiting, not a measurement).
            await until(
                lambda: (
                    all(a.notifies > n for a, n in zip(fleet.asics, notified, strict=True))
                    and backup.connections_total == 1
                ),
                "new work from the backup",
                steps=200,
            )
            result["fresh_jobs"] = [
                not (set(a.jobs) & before) for a, before in zip(fleet.asics, jobs_before, strict=True)
            ]
            accepted_at_failover = backup.accepted_count
            await until(lambda: backup.accepted_count >= accepted_at_failover + 20, "mining on the backup")
            await fleet.wait(timeout=60)
            result["reconnects"] = [a.reconnects for a in fleet.asics]
            result["lost"] = fleet.lost  # every share in flight at the failover was answered
            result["connected"] = [a.connected for a in fleet.asics]
            await fleet.stop()
            await app.stop()
            result["primary_connections"] = primary.connections_total
            result["backup_connections"] = backup.connections_total
            result["pool"] = accepted_by_hotkey(primary, backup)
            result["accepted"] = primary.accepted_count + backup.accepted_count
            result["backup_accepted"] = backup.accepted_count
            result["undelivered"] = primary.undelivered_count

    go(scenario)
    assert result["reconnects"] == [0] * 5  # no ASIC lost its TCP connection
    assert result["lost"] == 0
    assert all(result["fresh_jobs"])  # the job they hold is the backup's (a clean one), not the dead pool's
    assert result["primary_connections"] == 1 and result["backup_connections"] == 1
    assert result["backup_accepted"] >= 20
    by_hotkey = dict(
        read_ledger(tmp_path, "SELECT hotkey, sum(difficulty) FROM infinitehash.shares WHERE accepted GROUP BY 1")
    )
    assert by_hotkey == result["pool"]
    # The shares the dead pool never answered are ledgered as unanswered, never credited: those it
    # judged but could not deliver, and any still on the wire to it when it closed.
    ((timeouts,),) = read_ledger(tmp_path, "SELECT count() FROM infinitehash.shares WHERE reject_reason = 'timeout'")
    assert timeouts >= result["undelivered"] > 0
    report = audit(tmp_path)
    assert report.checked == result["accepted"] and report.clean, report.examples


@pytest.mark.parametrize("behaviour", ["close", "garbage"])
def test_a_pool_that_takes_the_connection_and_then_fails_the_handshake_is_backed_off_not_hammered(
    tmp_path: Path, behaviour: Behaviour
) -> None:
    result: dict[str, Any] = {}

    async def scenario() -> None:
        async with BrokenPool(behaviour) as broken:
            config = dataclasses.replace(
                farm_config([], tmp_path), upstream=(f"stratum+tcp://{HOST}:{broken.port}",), proxy_id="broken"
            )
            app = ProxyApp(config)
            await app.start()
            _, writer = await asyncio.open_connection(HOST, app.port)
            writer.write(
                b'{"id":1,"method":"mining.subscribe","params":["cpuminer/2.5.1"]}\n'
                b'{"id":2,"method":"mining.authorize","params":["infinite.' + HOTKEYS[0].encode() + b'.rig0","x"]}\n'
            )
            await until(lambda: broken.connections >= 1, "the slot's first pool connection")
            # Two seconds: backoff (0.5-1 s after the first failure, doubling) allows a few attempts;
            # reconnecting at once, as farm mode did, made thousands.
            await asyncio.sleep(2.0)
            result["connections"] = broken.connections
            result["up"] = app.metrics.registry.get_sample_value(
                "ih_upstream_up", {"upstream": f"{HOST}:{broken.port}"}
            )
            result["sessions"] = app.stratum.sessions  # the ASIC stays, waiting for a pool
            writer.close()
            await app.stop()

    go(scenario)
    assert 1 <= result["connections"] <= 4, result
    assert result["up"] == 0.0 and result["sessions"] == 1


def stratum_pools(app: ProxyApp) -> list[Any]:
    """The farm proxy's live pool links."""
    assert isinstance(app.stratum, FarmProxy)
    return [link for link in app.stratum.pools.values() if link.transport is not None]


def test_a_pool_that_stops_reading_is_failed_over_and_what_it_never_read_credits_nothing(tmp_path: Path) -> None:
    """The primary keeps its sockets but reads nothing: the slot's submits would pile up in the proxy
    for ever. After max_write_stall the link is dropped (its unanswered shares ledgered as timeouts)
    and the slot goes to the backup; the ASICs keep their connections."""
    result: dict[str, Any] = {}

    async def scenario() -> None:
        async with pool(seed=23) as primary, pool(seed=24) as backup:
            config = dataclasses.replace(farm_config([primary, backup], tmp_path), limits=Limits(max_write_stall=1.0))
            app = ProxyApp(config)
            await app.start()
            fleet = rigs(app.port, 10, max_shares=400, rate=200.0, profiles=("antminer",))
            await fleet.start()
            await until(lambda: primary.accepted_count >= 50, "shares on the primary")
            assert primary.stop_reading() == 1
            # The kernel's buffers on our side made small too, so the backlog reaches the proxy's own
            # buffer within the fleet's submits in flight (a farm fills megabytes of them, in time).
            for link in stratum_pools(app):
                link.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            await until(lambda: backup.accepted_count >= 200, "the slot mining on the backup", steps=3000)
            await fleet.wait(timeout=60)
            result["reconnects"] = [a.reconnects for a in fleet.asics]
            result["backup_connections"] = backup.connections_total
            await fleet.stop()
            await app.stop()
            result["pool"] = accepted_by_hotkey(primary, backup)

    go(scenario)
    assert result["reconnects"] == [0] * 10 and result["backup_connections"] == 1
    by_hotkey = dict(
        read_ledger(tmp_path, "SELECT hotkey, sum(difficulty) FROM infinitehash.shares WHERE accepted GROUP BY 1")
    )
    assert by_hotkey == result["pool"]
    ((timeouts,),) = read_ledger(tmp_path, "SELECT count() FROM infinitehash.shares WHERE reject_reason = 'timeout'")
    assert timeouts > 0  # the shares the primary never read: answered, ledgered, never credited
