"""Attacks on the real proxy over real loopback sockets (issue 9), each checked from three sides: the
ledger, the pool's view (simulation/pool.py) and the honest miner's experience.

No assertion on wall-clock time: the honest miner must complete all its shares, the attackers must be
throttled or closed, and the pool must see what the counts say.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import clickhouse_connect
import msgspec
import pytest

from proxy.app import REFUSED_WHILE_LEDGER_FULL, ProxyApp
from proxy.config import Limits, ProxyConfig
from proxy.farm_net import FarmProxy
from proxy.sockets import watch_peer
from simulation import Fleet, SimulatedPool
from simulation.hotkeys import hotkeys, worker_name
from tests.test_proxy_e2e import HOST, go, ledger_by_hotkey, ledger_counts, read_ledger, until

HOTKEYS = hotkeys(6, namespace="attacks")
DIFFICULTY = 2.0**-26


def config(pool: SimulatedPool, data_dir: Path, clickhouse_url: str | None = None, **options: Any) -> ProxyConfig:
    limits = {k: options.pop(k) for k in list(options) if k in Limits.__dataclass_fields__}
    return ProxyConfig(
        listen=f"{HOST}:0",
        upstream=(f"stratum+tcp://{HOST}:{pool.port}",),
        data_dir=data_dir,
        clickhouse_url=clickhouse_url,
        metrics=f"{HOST}:0",
        proxy_id="attacks",
        limits=Limits(**limits),
        **{"ledger_flush_interval": 0.05, **options},
    )


def sample(app: ProxyApp, name: str, **labels: str) -> float:
    return app.metrics.registry.get_sample_value(name, labels) or 0.0


async def authorized_raw(port: int, hotkey: str, name: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw connection that subscribed and authorized a valid worker (an attacker with a real hotkey)."""
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(
        b'{"id":1,"method":"mining.subscribe","params":["flooder"]}\n'
        + msgspec.json.encode({"id": 2, "method": "mining.authorize", "params": [worker_name(hotkey, name), "x"]})
        + b"\n"
    )
    for _ in range(50):
        line = await asyncio.wait_for(reader.readline(), 10)
        if not line:
            raise AssertionError("closed during the handshake")
        message = msgspec.json.decode(line)
        if message.get("id") == 2:
            assert message.get("result") is True, message
            return reader, writer
    raise AssertionError("no authorize reply")


async def drain_reader(reader: asyncio.StreamReader) -> bool:
    """Read until EOF or a reset; True when the proxy closed the connection."""
    try:
        for _ in range(1_000_000):
            if not await reader.read(1 << 16):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    return False


def honest_fleet(port: int, shares: int, hotkey_index: int = 0) -> Fleet:
    return Fleet.for_hotkeys(HOST, port, HOTKEYS[hotkey_index : hotkey_index + 1], 1, max_shares=shares, mode="closed")


def test_an_extranonce_subscribe_flood_from_four_sessions_costs_the_honest_miner_nothing(tmp_path: Path) -> None:
    result: dict[str, Any] = {}
    flood_lines = 200_000
    line = b'{"id":7,"method":"mining.extranonce.subscribe","params":[]}\n'

    async def scenario() -> None:
        async with SimulatedPool(difficulty=DIFFICULTY, seed=21) as pool:
            app = ProxyApp(config(pool, tmp_path))
            await app.start()
            flooders = [await authorized_raw(app.port, HOTKEYS[1 + i], f"flood{i}") for i in range(4)]
            readers = [asyncio.create_task(drain_reader(r)) for r, _ in flooders]
            sent = [0] * 4

            async def flood(i: int) -> None:
                writer = flooders[i][1]
                chunk = line * 1000
                with contextlib.suppress(ConnectionError, TimeoutError):
                    while sent[i] < flood_lines and not writer.is_closing():
                        writer.write(chunk)
                        sent[i] += 1000
                        await asyncio.wait_for(writer.drain(), 5)

            flooding = [asyncio.create_task(flood(i)) for i in range(4)]
            fleet = honest_fleet(app.port, 60)
            await fleet.run(timeout=60)
            await asyncio.gather(*flooding)
            closed = await asyncio.wait_for(asyncio.gather(*readers), 30)
            for _, writer in flooders:
                writer.close()
            await app.stop()
            result.update(
                accepted=fleet.accepted,
                lost=fleet.lost,
                rejected=fleet.rejected,
                closed=closed,
                sent=sum(sent),
                relayed=sum(s.requests for s in pool.sessions.values()),
                closed_metric=sample(
                    app, "ih_sessions_closed_total", reason="requests cost more than the session may spend"
                ),
                pool=pool.accepted_by_hotkey(),
            )

    go(scenario)
    # The honest miner got every one of its shares accepted, none lost.
    assert result["accepted"] == 60 and result["lost"] == 0 and result["rejected"] == 0
    # Every flooder was closed by its cost, and the pool saw a small part of the flood.
    assert all(result["closed"]) and result["closed_metric"] == 4
    limits = Limits()
    per_session = 2 * limits.cost_hard_limit / limits.request_cost
    assert result["relayed"] < 4 * per_session + 100 < result["sent"] / 4
    assert read_ledger(tmp_path, ledger_by_hotkey) == result["pool"]


@pytest.mark.parametrize("mode", ["passthrough", "aggregate"])
def test_a_miner_that_does_not_read_while_the_pool_floods_notifies_is_aborted_and_its_slot_freed(
    tmp_path: Path, mode: str
) -> None:
    result: dict[str, Any] = {}

    async def scenario() -> None:
        async with SimulatedPool(difficulty=DIFFICULTY, extranonce2_size=8, seed=22, job_interval=0) as pool:
            # Passthrough closes a miner whose writes stalled for max_write_stall, farm mode one whose
            # buffer passed max_miner_buffer; both then reset its socket after close_grace.
            limits: dict[str, Any] = {"max_write_stall": 1.0, "max_miner_buffer": 64 * 1024, "close_grace": 0.5}
            app = ProxyApp(config(pool, tmp_path, mode=mode, **limits))
            await app.start()
            fleet = Fleet.for_hotkeys(HOST, app.port, HOTKEYS[:1], max_shares=40, profiles=("antminer",))
            await fleet.start()
            # The deaf miner: authorizes, then never reads a byte again.
            deaf = socket.create_connection((HOST, app.port))
            deaf.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            deaf.sendall(
                b'{"id":1,"method":"mining.subscribe","params":["deaf"]}\n'
                + msgspec.json.encode(
                    {"id": 2, "method": "mining.authorize", "params": [worker_name(HOTKEYS[2], "deaf"), "x"]}
                )
                + b"\n"
            )
            await until(lambda: app.stratum.sessions == 2 and len(pool.sessions) >= 2, "both sessions up")
            await until(lambda: sample(app, "ih_sessions", state="mining") == 2, "both sessions mining")
            closed = "ih_sessions_closed_total"
            for _ in range(400):  # the pool floods every session with jobs
                if sample(app, closed, reason="miner is not reading") >= 1:
                    break
                for _ in range(20):
                    pool.new_job(clean=False)
                await asyncio.sleep(0.02)
            await until(lambda: app.stratum.sessions == 1, "the deaf miner's slot freed")
            # Its pool connection goes too, once the pool's last in-flight answer to it is in.
            with contextlib.suppress(AssertionError, TimeoutError):
                await until(lambda: app.stratum.pool_connections == 1, "the deaf miner's pool connection closed")
            result["pool_connections"] = app.stratum.pool_connections
            await fleet.wait(timeout=60)
            await fleet.stop()
            deaf.setblocking(False)
            reset: str = "gave up"
            got = 0
            for _ in range(500):
                try:
                    data = deaf.recv(1 << 16)
                    got += len(data)
                    if not data:
                        reset = f"EOF after {got}"
                        break
                except BlockingIOError:
                    await asyncio.sleep(0.01)
                except ConnectionResetError:
                    reset = "reset"
                    break
            deaf.close()
            result["closed"] = sample(app, closed, reason="miner is not reading")
            result["reset"] = reset
            result["fleet"] = (fleet.accepted, fleet.lost, fleet.rejected)
            await app.stop()
            result["pool"] = pool.accepted_by_hotkey()

    go(scenario)
    assert result["closed"] == 1
    assert result["pool_connections"] == 1  # only the honest miner's is left
    assert result["reset"] == "reset"  # aborted: its unread bytes were thrown away, not waited on
    assert result["fleet"] == (40, 0, 0)
    assert read_ledger(tmp_path, ledger_by_hotkey) == result["pool"]


def test_two_thousand_silent_sockets_open_no_pool_connection_and_do_not_starve_an_honest_miner(
    tmp_path: Path,
) -> None:
    result: dict[str, Any] = {}

    async def scenario() -> None:
        async with SimulatedPool(difficulty=DIFFICULTY, seed=23) as pool:
            app = ProxyApp(config(pool, tmp_path, max_sessions_per_ip=5000, max_sessions=5000))
            await app.start()
            silent = []
            for _ in range(2000):
                silent.append(await asyncio.open_connection(HOST, app.port))
            await until(lambda: app.stratum.sessions == 2000, "2,000 sessions admitted")
            fleet = honest_fleet(app.port, 40)
            await fleet.run(timeout=60)
            result["pool_connections_total"] = pool.connections_total
            result["sessions"] = app.stratum.sessions
            result["fleet"] = (fleet.accepted, fleet.lost, fleet.rejected)
            for _, writer in silent:
                writer.close()
            await app.stop()
            result["pool"] = pool.accepted_by_hotkey()

    go(scenario)
    assert result["pool_connections_total"] == 1  # the honest miner's; silence opens nothing upstream
    assert result["sessions"] >= 2000
    assert result["fleet"] == (40, 0, 0)
    assert read_ledger(tmp_path, ledger_by_hotkey) == result["pool"]


@contextlib.asynccontextmanager
async def full_proxy(tmp_path: Path, mode: str, max_sessions: int) -> AsyncIterator[tuple[SimulatedPool, ProxyApp]]:
    """A pool and a proxy in `mode` with room for `max_sessions` sessions; the proxy stops on exit."""
    # (8 bytes: room for farm mode's prefix and the ASIC's own extranonce2 from the first subscribe.)
    async with SimulatedPool(difficulty=DIFFICULTY, extranonce2_size=8, seed=24) as pool:
        app = ProxyApp(config(pool, tmp_path, max_sessions=max_sessions, mode=mode))
        await app.start()
        try:
            yield pool, app
        finally:
            await app.stop()


@pytest.mark.parametrize("mode", ["passthrough", "aggregate"])
def test_at_the_session_limit_the_oldest_never_authorized_session_is_shed(tmp_path: Path, mode: str) -> None:
    result: dict[str, Any] = {}

    async def scenario() -> None:
        async with full_proxy(tmp_path, mode, max_sessions=10) as (pool, app):
            silent: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
            for _ in range(10):  # one at a time, so the first is the oldest
                silent.append(await asyncio.open_connection(HOST, app.port))
                await until(lambda: app.stratum.sessions == len(silent), "admitted")
            # (An antminer: a Bitaxe suggests a difficulty farm mode honours and a CPU cannot meet.)
            fleet = Fleet.for_hotkeys(HOST, app.port, HOTKEYS[:1], max_shares=20, profiles=("antminer",))
            await fleet.run(timeout=60)  # the limit is reached: room is made for it
            oldest_closed = await asyncio.wait_for(drain_reader(silent[0][0]), 10)
            result["shed"] = sample(app, "ih_connections_refused_total", reason="shed")
            result["refused"] = sample(app, "ih_connections_refused_total", reason="too many sessions")
            result["oldest_closed"] = oldest_closed
            result["fleet"] = (fleet.accepted, fleet.lost, fleet.rejected)
            result["sessions"] = app.stratum.sessions
            for _, writer in silent:
                writer.close()
        result["pool"] = pool.accepted_by_hotkey()

    go(scenario)
    assert result["shed"] >= 1 and result["refused"] == 0 and result["oldest_closed"]
    assert result["fleet"] == (20, 0, 0)
    assert result["sessions"] <= 10
    assert read_ledger(tmp_path, ledger_by_hotkey) == result["pool"]


@pytest.mark.parametrize("mode", ["passthrough", "aggregate"])
def test_at_the_session_limit_an_authorized_session_is_never_shed(tmp_path: Path, mode: str) -> None:
    result: dict[str, Any] = {}

    async def scenario() -> None:
        async with full_proxy(tmp_path, mode, max_sessions=1) as (_, app):
            _, writer = await authorized_raw(app.port, HOTKEYS[0], "rig0")
            late_reader, late_writer = await asyncio.open_connection(HOST, app.port)
            result["late_closed"] = await asyncio.wait_for(drain_reader(late_reader), 10)
            result["refused"] = sample(app, "ih_connections_refused_total", reason="too many sessions")
            result["shed"] = sample(app, "ih_connections_refused_total", reason="shed")
            result["sessions"] = app.stratum.sessions
            for w in (writer, late_writer):
                w.close()

    go(scenario)
    assert result == {"late_closed": True, "refused": 1, "shed": 0, "sessions": 1}


def test_a_long_clickhouse_outage_refuses_new_shares_with_a_clear_error_and_drops_nothing(tmp_path: Path) -> None:
    from tests.clickhouse_http import ClickHouseHTTPServer

    result: dict[str, Any] = {}
    server = ClickHouseHTTPServer(tmp_path / "clickhouse")
    server.start()
    try:

        async def scenario() -> None:
            async with SimulatedPool(difficulty=DIFFICULTY, seed=25) as pool:
                app = ProxyApp(
                    config(
                        pool,
                        tmp_path / "proxy",
                        clickhouse_url=server.url,
                        ledger_max_spool_rows=20,
                        ledger_max_memory_rows=30,
                    )
                )
                await app.start()
                fleet = Fleet.for_hotkeys(HOST, app.port, HOTKEYS[:2], 2, max_shares=120, mode="rate", rate=20.0)
                await fleet.start()
                await until(lambda: pool.accepted_count >= 10, "shares before the outage")
                server.stop()
                gauge = "ih_ledger_backpressure"
                await until(lambda: sample(app, gauge) == 1, "the ledger full")
                refused_from = fleet.rejected
                await until(lambda: fleet.rejected >= refused_from + 5, "shares refused while full")
                result["ready_while_full"] = app.readiness()["ledger"].ok
                pool_while_full = pool.accepted_count
                server.start()  # ClickHouse is back: the spool and the memory drain, shares are taken again
                await until(lambda: sample(app, gauge) == 0, "the ledger taking rows again")
                await fleet.wait(timeout=60)
                await fleet.stop()
                await app.stop()
                result["accepted_after"] = pool.accepted_count - pool_while_full
                result["codes"] = fleet.rejected_by_code()
                messages = [
                    r.error.message
                    for a in fleet.asics
                    for r in a.records
                    if r.error is not None and r.error.code == 20
                ]
                result["messages"] = set(messages)
                result["pool"] = pool.accepted_by_hotkey()
                result["accepted"] = pool.accepted_count
                result["pool_rejected"] = pool.rejected_count

        go(scenario)
        client = clickhouse_connect.get_client(host=HOST, port=server.port)
        try:
            assert result["codes"].get(20, 0) >= 5 and result["messages"] == {REFUSED_WHILE_LEDGER_FULL}
            assert result["ready_while_full"] is False
            assert result["accepted_after"] > 0  # recovery: shares flow again
            assert result["pool_rejected"] == 0  # refused shares never reached the pool
            assert ledger_by_hotkey(client) == result["pool"]  # nothing the pool accepted was dropped
            assert ledger_counts(client)["accepted"] == result["accepted"]
        finally:
            client.close()
    finally:
        server.close()


def test_a_pool_that_dies_is_down_at_once_and_the_miner_is_told_why_before_the_disconnect(tmp_path: Path) -> None:
    result: dict[str, Any] = {}

    async def scenario() -> None:
        async with SimulatedPool(difficulty=DIFFICULTY, seed=26) as pool:
            app = ProxyApp(config(pool, tmp_path))
            await app.start()
            reader, writer = await authorized_raw(app.port, HOTKEYS[3], "told")
            label = f"{HOST}:{pool.port}"
            result["up_before"] = sample(app, "ih_upstream_up", upstream=label)
            writer.write(b'{"id":9,"method":"mining.suggest_difficulty","params":[1]}\n')
            await writer.drain()
            await pool.stop()
            pool.disconnect_all(abort=True)
            lines = []
            for _ in range(100):
                line = await asyncio.wait_for(reader.readline(), 10)
                if not line:
                    break
                lines.append(msgspec.json.decode(line))
            result["up_after"] = sample(app, "ih_upstream_up", upstream=label)
            result["lines"] = lines
            writer.close()
            await app.stop()

    go(scenario)
    assert result["up_before"] == 1 and result["up_after"] == 0  # not waiting for the next connect
    shown = [m for m in result["lines"] if m.get("method") == "client.show_message"]
    assert len(shown) == 1 and "pool connection lost" in shown[0]["params"][0]
    answered = [m for m in result["lines"] if m.get("id") == 9]
    # the request in flight got an error (or its answer, if the pool answered before it died)
    assert len(answered) == 1
    assert result["lines"].index(answered[0]) < result["lines"].index(shown[0])


def test_the_session_limit_defaults_to_what_the_open_file_limit_allows() -> None:
    import resource

    from proxy.admission import session_limit

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    automatic = session_limit(Limits())
    # two fds a session (miner, pool), headroom for the ledger, spool, HTTP and the listener
    assert 2 * automatic < soft and automatic >= min(16, soft)
    assert session_limit(Limits(max_sessions=7)) == 7


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_running_out_of_file_descriptors_is_not_a_pool_failure(tmp_path: Path) -> None:
    """Sockets accepted while fds last, then the process's open-file limit is lowered below what is open:
    the pool connections their first requests need fail with EMFILE. Those miners are told why, the
    pool is not put in backoff (it did nothing wrong), and once fds are back an honest miner mines."""
    result: dict[str, Any] = {}
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)

    async def scenario() -> None:
        async with SimulatedPool(difficulty=DIFFICULTY, seed=29) as pool:
            app = ProxyApp(config(pool, tmp_path, ledger_flush_interval=30.0))
            await app.start()
            clients = [await asyncio.open_connection(HOST, app.port) for _ in range(5)]
            await until(lambda: app.stratum.sessions == 5, "5 sessions admitted")
            # Below what is open, so no fd frees up for a pool connection meanwhile (the in-process pool
            # would take it and, itself starved, hang up: a failure of that pool, rightly backed off).
            resource.setrlimit(resource.RLIMIT_NOFILE, (_open_fds() - 16, hard))
            try:
                for _, writer in clients:
                    writer.write(b'{"id":1,"method":"mining.subscribe","params":["starved"]}\n')
                answers = []
                for reader, _ in clients:
                    line = await asyncio.wait_for(reader.readline(), 10)
                    answers.append(msgspec.json.decode(line) if line else {})
            finally:
                resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            result["answers"] = answers
            result["local_errors"] = sample(
                app, "ih_upstream_connects_total", upstream=f"{HOST}:{pool.port}", result="local-error"
            )
            url = app.stratum.upstreams.urls[0]
            result["healthy"] = app.stratum.upstreams.is_healthy(url)
            for _, writer in clients:
                writer.close()
            fleet = honest_fleet(app.port, 20)
            await fleet.run(timeout=60)
            result["fleet"] = (fleet.accepted, fleet.lost, fleet.rejected)
            await app.stop()
            result["pool"] = pool.accepted_by_hotkey()

    go(scenario)
    assert result["local_errors"] >= 1
    assert result["healthy"], "EMFILE put the pool in backoff"
    # Each starved miner got a reason it can log (an error answer or a message), not a silent close.
    assert all(a.get("error") or a.get("method") == "client.show_message" for a in result["answers"]), result
    assert any("out of resources" in str(a) for a in result["answers"]), result["answers"]
    assert result["fleet"] == (20, 0, 0)
    assert read_ledger(tmp_path, ledger_by_hotkey) == result["pool"]


@pytest.mark.parametrize("mode", ["passthrough", "aggregate"])
def test_pool_connections_are_dropped_by_the_kernel_soon_after_their_peer_vanishes(tmp_path: Path, mode: str) -> None:
    """A half-open pool connection (a NAT dropped its state) cannot be made on loopback, so this checks
    what the kernel is told: keepalive probes and TCP_USER_TIMEOUT after `pool_dead_after`."""
    result: dict[str, Any] = {}

    async def scenario() -> None:
        async with SimulatedPool(difficulty=DIFFICULTY, extranonce2_size=8, seed=26) as pool:
            app = ProxyApp(config(pool, tmp_path, mode=mode, pool_dead_after=12.0))
            await app.start()
            _, writer = await authorized_raw(app.port, HOTKEYS[0], "rig0")
            stratum = app.stratum
            if isinstance(stratum, FarmProxy):
                transports = [link.transport for link in stratum.pools.values()]
            else:
                transports = [rig.pool for rig in stratum.state.rigs]
            sockets = [t.get_extra_info("socket") for t in transports if t is not None]
            result["options"] = [
                (
                    s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                    s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                    s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
                    s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
                    s.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
                )
                for s in sockets
            ]
            writer.close()
            await app.stop()

    go(scenario)
    assert result["options"] == [(1, 6, 2, 3, 12_000)]


def test_watching_a_pool_connection_that_closed_meanwhile_is_a_no_op() -> None:
    """A pool that hangs up at once: its transport's socket is gone (fd -1) by the time it would be
    watched; that must cost nothing, not raise in the connect path."""
    outcome: dict[str, Any] = {}

    async def scenario() -> None:
        server = await asyncio.start_server(lambda r, w: w.close(), HOST, 0)
        port = server.sockets[0].getsockname()[1]
        transport, _ = await asyncio.get_running_loop().create_connection(asyncio.Protocol, HOST, port)
        sock = transport.get_extra_info("socket")  # taken before, as anything reading its address does
        transport.abort()
        await asyncio.sleep(0)  # the loop lets go of the fd
        outcome["fd"] = sock.fileno()
        watch_peer(transport, 30.0)
        outcome["watched"] = True
        server.close()
        await server.wait_closed()

    go(scenario)
    assert outcome == {"fd": -1, "watched": True}
