"""Floods of fresh sessions (issue 9, item 4): the soft limit stops handling a read's lines, and a
source address whose sessions keep being closed for abuse is refused at accept until a strike is
forgiven, while an honest farm behind one address is never refused.

Every test session comes from 127.0.0.1, so flooder and honest miner share an address here: the
honest miner connects before the flood and keeps its session (a refusal only ever applies to new
connections), and the farm test has no flooder at all. Strikes are forgiven after minutes, so no
outcome here depends on how fast the machine runs; nothing asserts on wall-clock time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from pathlib import Path
from typing import Any

import msgspec
import pytest

from proxy.admission import ABUSE, AddressStrikes, address_key
from proxy.app import ProxyApp
from proxy.config import Limits
from proxy.metrics import ProxyMetrics
from proxy.session import MinerSession, SessionRules
from simulation import Fleet, SimulatedPool
from simulation.hotkeys import hotkeys, worker_name
from tests.test_attacks import config, sample
from tests.test_proxy_e2e import HOST, go, ledger_by_hotkey, read_ledger, until
from tests.test_session import WORKER, Harness

HOTKEYS = hotkeys(4, namespace="flood")
DIFFICULTY = 2.0**-26
FLOOD_LINE = b'{"id":7,"method":"mining.extranonce.subscribe","params":[]}\n'


class EveryPoolSession(dict[int, Any]):
    """`SimulatedPool.sessions`, remembering the sessions that closed too (the flood's are short)."""

    def __init__(self) -> None:
        super().__init__()
        self.every: list[Any] = []

    def __setitem__(self, key: int, value: Any) -> None:
        self.every.append(value)
        super().__setitem__(key, value)


def closed_for(app: ProxyApp, reason: str) -> float:
    """Sessions closed for `reason` (the metric's label is the reason's beginning, bounded in length)."""
    return sum(
        sample.value
        for metric in app.metrics.registry.collect()
        for sample in metric.samples
        if sample.name == "ih_sessions_closed_total" and reason.startswith(sample.labels["reason"])
    )


def hotkeys_in_ledger(client: Any) -> set[str]:
    return {hotkey for (hotkey,) in client.query("SELECT DISTINCT hotkey FROM infinitehash.shares").result_rows}


async def flood_once(port: int, hotkey: str, name: str, lines: int) -> int:
    """One flooder connection, as benchmarks/flood.py's: a real hotkey's subscribe and authorize, and
    right behind them `lines` extranonce.subscribe, in one write; then read until the proxy closes it.
    Returns the bytes the proxy sent it (none: it never got a pool's reply)."""
    reader, writer = await asyncio.open_connection(HOST, port)
    received = 0
    with contextlib.suppress(ConnectionError, TimeoutError):
        writer.write(
            b'{"id":1,"method":"mining.subscribe","params":["flooder"]}\n'
            + msgspec.json.encode({"id": 2, "method": "mining.authorize", "params": [worker_name(hotkey, name), "x"]})
            + b"\n"
            + FLOOD_LINE * lines
        )
        for _ in range(100_000):
            data = await asyncio.wait_for(reader.read(1 << 16), 10)
            if not data:
                break
            received += len(data)
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()
    return received


async def _read_to_end(reader: asyncio.StreamReader) -> None:
    with contextlib.suppress(ConnectionError):
        for _ in range(100_000):
            if not await reader.read(1 << 16):
                return


def test_a_reconnecting_flood_from_one_address_is_refused_and_the_honest_miner_keeps_mining(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    limits = Limits(address_strike_limit=3, address_strike_forgiven_after=3600.0)
    attempts = 12
    lines = 5_000  # about 300 KB: the proxy's first read holds the handshake and about a thousand of them
    honest_shares = 80
    served: list[float] = []  # flood connections the proxy had accepted, after each attempt
    result: dict[str, Any] = {}

    async def scenario() -> None:
        async with SimulatedPool(difficulty=DIFFICULTY, seed=91) as pool:
            pool.sessions = EveryPoolSession()
            app = ProxyApp(config(pool, tmp_path, address_strike_limit=3, address_strike_forgiven_after=3600.0))
            await app.start()
            # The honest miner is mining before the flood starts, from the same address (127.0.0.1).
            fleet = Fleet.for_hotkeys(HOST, app.port, HOTKEYS[:1], 1, max_shares=honest_shares, mode="rate", rate=20.0)
            await fleet.start()
            await until(lambda: sample(app, "ih_sessions", state="mining") == 1, "the honest miner mining")
            honest_pool_session = next(iter(pool.sessions.every))
            # The flood: each connection closed by its cost reconnects at once (bounded in count).
            outcomes = []
            for _ in range(attempts):
                outcomes.append(await flood_once(app.port, HOTKEYS[1], "flood", lines))
                served.append(sample(app, "ih_connections_total") - 1)
            refused_metric = sample(app, "ih_connections_refused_total", reason=ABUSE)
            closed_early = closed_for(app, "too many requests before the pool connection was up")
            await fleet.wait(timeout=60)
            await fleet.stop()
            await app.stop()
            flood_sessions = [s for s in pool.sessions.every if s is not honest_pool_session]
            result.update(
                outcomes=outcomes,
                refused_metric=refused_metric,
                closed_early=closed_early,
                accepted_connections=sample(app, "ih_connections_total"),
                strikes=sample(app, "ih_address_strikes_total"),
                addresses_refused=sample(app, "ih_addresses_refused"),
                relayed=sum(s.requests for s in flood_sessions),
                fleet=(fleet.accepted, fleet.rejected, fleet.lost),
                pool=pool.accepted_by_hotkey(),
            )

    with caplog.at_level(logging.INFO, logger="proxy"):
        go(scenario)
    limit = limits.address_strike_limit
    # The first `limit` flooders were served and closed for what they sent; every later one was refused
    # at accept, before it read a byte or opened a pool connection.
    assert served == [min(i + 1, limit) for i in range(attempts)]
    assert result["outcomes"][limit:] == [0] * (attempts - limit)
    assert result["strikes"] == limit and result["addresses_refused"] == 1
    assert result["closed_early"] == limit  # the flood came before their pool connection was up
    assert result["refused_metric"] == attempts - limit
    assert result["accepted_connections"] == 1 + limit  # the honest miner and the served flooders
    # One log line when the address started being refused, none per refused connection.
    refusing = [r for r in caplog.records if "refusing new connections from 127.0.0.1" in r.getMessage()]
    assert len(refusing) == 1
    assert not [r for r in caplog.records if "refused connection from" in r.getMessage()]
    # What reached the pool of the flood: per served session at most its handshake and the requests
    # handled up to the soft limit (here none: the flood came before its pool connection was up).
    sent = attempts * lines
    per_session = limits.cost_soft_limit / limits.request_cost + 3
    assert result["relayed"] <= limit * per_session < sent / 10
    # The honest miner got every share answered and credited, and only it is in the ledger.
    assert result["fleet"] == (honest_shares, 0, 0)
    assert read_ledger(tmp_path, ledger_by_hotkey) == result["pool"] != {}
    assert read_ledger(tmp_path, hotkeys_in_ledger) == {HOTKEYS[0]}


def test_an_honest_farm_behind_one_address_reconnecting_often_is_never_refused(tmp_path: Path) -> None:
    # A strike limit of 1 would refuse the address at the first session closed for abuse: the farm's
    # sessions, however many and however often they reconnect, must never be one.
    rounds, rigs, shares = 3, 30, 3
    result: dict[str, Any] = {}

    async def scenario() -> None:
        async with SimulatedPool(difficulty=DIFFICULTY, seed=92, extranonce2_size=8) as pool:  # room for prefixes
            app = ProxyApp(config(pool, tmp_path, address_strike_limit=1, address_strike_forgiven_after=3600.0))
            await app.start()
            accepted = rejected = lost = 0
            for _ in range(rounds):  # the whole farm reconnects: a power cut, a switch reboot
                # bad_every: now and then a share that does not meet the difficulty (rejected, it costs more).
                fleet = Fleet.for_hotkeys(
                    HOST, app.port, HOTKEYS[2:4], rigs, max_shares=shares, mode="closed", bad_every=2
                )
                await fleet.run(timeout=60)
                accepted, rejected, lost = accepted + fleet.accepted, rejected + fleet.rejected, lost + fleet.lost
                await until(lambda: app.stratum.sessions == 0, "the farm's sessions closed")
            await app.stop()
            result.update(
                fleet=(accepted, rejected, lost),
                connections=sample(app, "ih_connections_total"),
                refused=sample(app, "ih_connections_refused_total", reason=ABUSE),
                strikes=sample(app, "ih_address_strikes_total"),
                pool=pool.accepted_by_hotkey(),
            )

    go(scenario)
    assert result["connections"] == rounds * rigs
    assert result["refused"] == 0 and result["strikes"] == 0
    accepted, rejected, lost = result["fleet"]
    assert accepted + rejected == rounds * rigs * shares and rejected > 0 and lost == 0
    assert read_ledger(tmp_path, ledger_by_hotkey) == result["pool"]


# --- the parts, without sockets -----------------------------------------------------------------------


def test_the_soft_limit_stops_handling_a_read_and_the_rest_waits_for_the_cost_to_decay() -> None:
    limits = Limits()
    h = Harness(limits)
    h.handshake()
    lines = 600  # past the soft limit (400 requests), and priced at 25 each still under the hard one
    price = limits.request_cost + (len(FLOOD_LINE) - 1) * limits.byte_cost
    up_to_soft = math.floor((limits.cost_soft_limit - h.session.cost) / price) + 1  # the one that crosses it
    h.line((FLOOD_LINE * lines).rstrip(b"\n"))
    handled = len(h.to_pool())
    assert handled == up_to_soft
    assert h.session.waiting and h.session.close_reason is None
    wait = h.session.throttle(h.now)
    assert wait > 0
    # Once decayed, the network layer calls again with no new bytes: the waiting lines come first.
    total = handled
    for _ in range(100):
        h.now += limits.cost_soft_limit / limits.cost_decay_per_second
        assert h.session.throttle(h.now) == 0
        h.line(b"")  # (an empty line: dropped by the framer)
        total += len(h.to_pool())
        if not h.session.waiting or total == lines:
            break
    assert total == lines and h.session.close_reason is None and not h.session.misbehaved


def test_a_read_whose_waiting_lines_would_pass_the_hard_limit_closes_the_session_at_once() -> None:
    limits = Limits()
    h = Harness(limits)
    h.handshake()
    price = limits.request_cost + (len(FLOOD_LINE) - 1) * limits.byte_cost
    up_to_soft = math.floor((limits.cost_soft_limit - h.session.cost) / price) + 1
    h.line((FLOOD_LINE * 3000).rstrip(b"\n"))
    assert len(h.to_pool()) == up_to_soft < 2_000  # not up to the hard limit: the soft one stopped it
    assert h.session.close_reason is not None and "cost" in h.session.close_reason
    assert h.session.misbehaved


def test_requests_piled_up_before_the_pool_connection_close_the_session_at_the_limit() -> None:
    limits = Limits()
    session = MinerSession(SessionRules(("infinite",), limits), "s1", "", Harness.at(1000.0))  # no pool yet
    handshake = (
        b'{"id":1,"method":"mining.subscribe","params":["flooder"]}\n'
        + msgspec.json.encode({"id": 2, "method": "mining.authorize", "params": [WORKER, "x"]})
        + b"\n"
    )
    session.receive_miner(handshake + FLOOD_LINE * 1000, Harness.at(1000.0))
    assert session.close_reason == "too many requests before the pool connection was up"
    assert len(session.outbox.to_pool) == limits.max_queued_before_pool + 1 and session.misbehaved
    # An honest miner's pipelined handshake is far below it.
    honest = MinerSession(SessionRules(("infinite",), limits), "s2", "", Harness.at(1000.0))
    honest.receive_miner(handshake + FLOOD_LINE * 3, Harness.at(1000.0))
    assert honest.close_reason is None and len(honest.outbox.to_pool) == 5 and not honest.misbehaved


def test_a_farm_burst_in_one_read_is_handled_whole() -> None:
    h = Harness()
    h.handshake()
    submit = msgspec.json.encode(
        {"id": 4, "method": "mining.submit", "params": [WORKER, "old", "00000001", "64b3f3ec", "00000000"]}
    )
    h.line(b"\n".join([submit] * 1500))  # a block change's stale shares, in one read
    assert len(h.rows) == 1500 and not h.session.waiting and h.session.throttle(h.now) == 0


def test_strikes_decay_and_an_address_is_refused_from_the_limit_until_one_is_forgiven(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = ProxyMetrics()
    strikes = AddressStrikes(Limits(address_strike_limit=3, address_strike_forgiven_after=60.0), metrics)
    with caplog.at_level(logging.INFO, logger="proxy"):
        strikes.strike("10.0.0.1", "cost", 0.0)
        strikes.strike("10.0.0.1", "cost", 1.0)
        assert not strikes.refuses("10.0.0.1", 2.0)
        strikes.strike("10.0.0.1", "cost", 2.0)
        assert strikes.refuses("10.0.0.1", 2.0) and strikes.refuses("10.0.0.1", 50.0)
        assert not strikes.refuses("10.0.0.2", 2.0)
        assert metrics.registry.get_sample_value("ih_addresses_refused") == 1
        assert not strikes.refuses("10.0.0.1", 63.0)  # one forgiven: in again
        assert metrics.registry.get_sample_value("ih_addresses_refused") == 0
        strikes.strike("10.0.0.1", "cost", 64.0)  # still two strikes: the next one refuses it again
        assert strikes.refuses("10.0.0.1", 64.0)
        strikes.sweep(500.0)  # all forgiven: pardoned and forgotten
        assert not strikes.refused and not strikes.refuses("10.0.0.1", 500.0)
    messages = [r.getMessage() for r in caplog.records]
    assert sum("refusing new connections from 10.0.0.1" in m for m in messages) == 2
    assert sum("accepting new connections from 10.0.0.1 again" in m for m in messages) == 2


def test_strikes_count_against_an_ipv6_host_by_its_64_and_a_mapped_ipv4_by_its_address() -> None:
    assert address_key("2001:db8:1:2:aaaa::1") == address_key("2001:db8:1:2:bbbb::9") == "2001:db8:1:2::/64"
    assert address_key("2001:db8:1:3::1") != address_key("2001:db8:1:2::1")
    assert address_key("::ffff:192.0.2.7") == "192.0.2.7" == address_key("192.0.2.7")
    strikes = AddressStrikes(Limits(address_strike_limit=1), ProxyMetrics())
    strikes.strike("2001:db8:1:2::5", "cost", 0.0)
    assert strikes.refuses("2001:db8:1:2::6", 0.0) and not strikes.refuses("2001:db8:9::1", 0.0)


def test_a_strike_limit_of_zero_never_refuses() -> None:
    strikes = AddressStrikes(Limits(address_strike_limit=0), ProxyMetrics())
    for i in range(10):
        strikes.strike("10.0.0.1", "cost", float(i))
    assert not strikes.refuses("10.0.0.1", 10.0)


def test_in_farm_mode_a_reconnecting_sender_of_garbage_is_refused_and_the_farm_keeps_mining(tmp_path: Path) -> None:
    """Farm mode pays strikes the same way: each connection sends malformed lines until it is closed for
    them; from the limit on its address is refused at accept, and the ASIC mining before keeps mining."""
    attempts, limit, honest_shares = 8, 2, 30
    result: dict[str, Any] = {}

    async def garbage_once(port: int) -> int:
        reader, writer = await asyncio.open_connection(HOST, port)
        received = 0
        with contextlib.suppress(ConnectionError, TimeoutError):
            writer.write(b'{"id":5,"method":"mining.submit","params":[1]}\n' * 50)  # malformed, answered
            for _ in range(10_000):
                data = await asyncio.wait_for(reader.read(1 << 16), 10)
                if not data:
                    break
                received += len(data)
        writer.close()
        return received

    async def scenario() -> None:
        async with SimulatedPool(difficulty=DIFFICULTY, seed=92, extranonce2_size=8) as pool:  # room for prefixes
            app = ProxyApp(
                config(
                    pool,
                    tmp_path,
                    mode="aggregate",
                    max_bad_lines=5,
                    address_strike_limit=limit,
                    address_strike_forgiven_after=3600.0,
                )
            )
            await app.start()
            # An antminer: it suggests no difficulty (farm mode honours a Bitaxe's 1000, out of a CPU's reach).
            fleet = Fleet.for_hotkeys(
                HOST, app.port, HOTKEYS[:1], 1, max_shares=honest_shares, mode="rate", rate=20.0, profiles=("antminer",)
            )
            await fleet.start()
            await until(lambda: fleet.accepted >= 1, "the honest ASIC mining")
            result["outcomes"] = [await garbage_once(app.port) for _ in range(attempts)]
            result["refused"] = sample(app, "ih_connections_refused_total", reason=ABUSE)
            result["strikes"] = sample(app, "ih_address_strikes_total")
            await fleet.wait(timeout=60)
            await fleet.stop()
            await app.stop()
            result["fleet"] = (fleet.accepted, fleet.rejected, fleet.lost)
            result["pool"] = pool.accepted_by_hotkey()

    go(scenario)
    outcomes = result["outcomes"]
    assert all(received > 0 for received in outcomes[:limit])  # served: its errors answered, then closed
    assert outcomes[limit:] == [0] * (attempts - limit)  # refused at accept: not a byte
    assert result["strikes"] == limit and result["refused"] == attempts - limit
    assert result["fleet"] == (honest_shares, 0, 0)
    assert read_ledger(tmp_path, ledger_by_hotkey) == result["pool"] != {}
