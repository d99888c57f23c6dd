"""Passthrough's writes to the pools: what the sessions of one loop iteration send their pool
connections goes out once that iteration's reads are handled (one wake-up of the pool's side for all
of them, measured in benchmarks/README.md), in order, and every share still gets its verdict.
Real proxy, real loopback sockets, the embedded ledger.
"""

from __future__ import annotations

import asyncio
import fcntl
import struct
import termios
from pathlib import Path

from protocol.messages import encode_request, parse_notify, subscribe_result
from proxy.app import ProxyApp
from proxy.server import Rig, Server
from simulation import SimulatedPool
from simulation.hotkeys import hotkeys, worker_name
from simulation.pool import PoolSession
from tests.test_attacks import config
from tests.test_attacks_credit import RawMiner
from tests.test_proxy_e2e import go, ledger_counts, read_ledger, until

HOTKEYS = hotkeys(3, namespace="server-writes")
# Below the difficulty of any hash: every well-formed share on a live job is valid.
DIFFICULTY = 2.0**-40
MINERS = 3
SHARES_EACH = 2


def unread(session: PoolSession) -> int:
    """Bytes waiting in the kernel for the pool to read on this connection (FIONREAD)."""
    transport = session.stream.transport
    assert transport is not None
    fd = transport.get_extra_info("socket").fileno()
    (count,) = struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))
    return int(count)


def submit_line(miner: RawMiner, worker: str, index: int) -> bytes:
    notify = parse_notify(miner.notified("mining.notify")[-1]["params"])
    size = subscribe_result(miner.subscribed).extranonce2_size  # type: ignore[union-attr]
    params = [worker, notify.job_id, f"{index:0{2 * size}x}", notify.ntime, f"{index:08x}"]
    return encode_request(100 + index, "mining.submit", params)


def test_the_pool_requests_of_one_loop_iteration_go_out_together_after_its_reads(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with SimulatedPool(difficulty=DIFFICULTY, seed=11) as pool:
            app = ProxyApp(config(pool, tmp_path))
            await app.start()
            try:
                assert isinstance(app.stratum, Server)
                workers = [worker_name(HOTKEYS[i], f"w{i}") for i in range(MINERS)]
                miners = []
                for worker in workers:
                    miner = await RawMiner.connect(app.port)
                    assert (await miner.handshake(worker))["result"] is True
                    await until(lambda m=miner: bool(m.notified("mining.notify")), "the first job")  # type: ignore[misc]
                    miners.append(miner)
                rigs: list[Rig] = list(app.stratum.state.rigs)  # oldest first: the miners' order
                assert len(rigs) == MINERS and all(rig.pool is not None for rig in rigs)
                await until(lambda: len(pool.sessions) == MINERS, "a pool connection per miner")
                connections = list(pool.sessions.values())
                assert sum(unread(c) for c in connections) == 0
                received = pool.submits_received

                # Every miner's shares, read in this one callback as one loop iteration reads them.
                for i, (rig, miner, worker) in enumerate(zip(rigs, miners, workers, strict=True)):
                    for k in range(SHARES_EACH):
                        rig.miner_data(submit_line(miner, worker, i * SHARES_EACH + k))
                assert sum(unread(c) for c in connections) == 0, "a pool write went out in the middle of the reads"

                await asyncio.sleep(0)  # the iteration's writes run before this task resumes
                pending = [unread(c) for c in connections]
                assert all(pending), f"each pool connection has its miner's shares: {pending}"

                await until(lambda: pool.submits_received == received + MINERS * SHARES_EACH, "every submit read")
                for i, miner in enumerate(miners):
                    for k in range(SHARES_EACH):
                        assert (await miner.reply(100 + i * SHARES_EACH + k))["result"] is True
                assert {c.workers[0] for c in connections if c.workers} == set(workers)
                for miner in miners:
                    await miner.close()
            finally:
                await app.stop()
        counts = read_ledger(tmp_path, ledger_counts)
        assert counts == {"accepted": MINERS * SHARES_EACH}, counts

    go(scenario)
