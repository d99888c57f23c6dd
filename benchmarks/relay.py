"""A bare byte relay: for every connection, one connection to the pool, bytes passed both ways as
they are (no framing, no parsing, no ledger). The floor of any proxy that opens a pool connection
per session, as passthrough does: the benchmark connects its 9,000 sessions through it, on the
proxy's core, to tell the cost of the design from the cost of our code.

    python -m benchmarks.relay --upstream-port P [--cpus C]

Prints {"port": N} when listening, then takes JSON commands on stdin: {"op": "exit"} (or EOF).
"""

from __future__ import annotations

import argparse
import asyncio
from typing import cast

import uvloop

from benchmarks.common import HOST, commands, pin_self, raise_fd_limit, reply


class _ToPool(asyncio.Protocol):
    def __init__(self, miner: _FromMiner) -> None:
        self.miner = miner

    def data_received(self, data: bytes) -> None:
        if self.miner.transport is not None:
            self.miner.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.miner.transport is not None:
            self.miner.transport.close()


class _FromMiner(asyncio.Protocol):
    """Bytes the miner sends before its pool connection is up wait in `early`."""

    def __init__(self, pool_port: int, opening: set[asyncio.Task[None]]) -> None:
        self.pool_port = pool_port
        self.opening = opening
        self.transport: asyncio.Transport | None = None
        self.pool: asyncio.Transport | None = None
        self.early: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # (uvloop's is not an asyncio.Transport subclass)
        task = asyncio.get_running_loop().create_task(self._open_pool())
        self.opening.add(task)
        task.add_done_callback(self.opening.discard)

    async def _open_pool(self) -> None:
        try:
            pool, _ = await asyncio.get_running_loop().create_connection(lambda: _ToPool(self), HOST, self.pool_port)
        except OSError:
            if self.transport is not None:
                self.transport.close()
            return
        if self.transport is None:  # the miner left meanwhile
            pool.close()
            return
        self.pool = pool
        for data in self.early:
            pool.write(data)
        self.early.clear()

    def data_received(self, data: bytes) -> None:
        if self.pool is None:
            self.early.append(data)
        else:
            self.pool.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.pool is not None:
            self.pool.close()


async def serve(pool_port: int) -> None:
    opening: set[asyncio.Task[None]] = set()
    server = await asyncio.get_running_loop().create_server(
        lambda: _FromMiner(pool_port, opening), HOST, 0, backlog=16384
    )
    inbox = await commands()
    reply({"port": server.sockets[0].getsockname()[1], "fd_limit": raise_fd_limit()})
    while (await inbox.get()).get("op") != "exit":
        reply({"error": "the relay takes only exit"})
    server.close()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.relay", description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream-port", type=int, required=True, help="the pool's port on the loopback")
    parser.add_argument("--cpus", default="", help="CPUs to pin to, comma-separated (default: not pinned)")
    args = parser.parse_args()
    pin_self(args.cpus)
    raise_fd_limit()
    uvloop.run(serve(args.upstream_port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
