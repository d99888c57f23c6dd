"""Reference measurements of the machine, taken in the same run as the benchmark, so that figures
from different machines can be compared: a bare sha256d of a block header, the proxy's share check
(12 branches, fresh extranonce2: 14 sha256d), and a bare uvloop echo round trip over loopback TCP
(client and server in one process and one loop: 4 socket operations, write and read on each side,
plus two passes of the event loop), and the same round trip between two processes (adds two
cross-process wake-ups, which on a virtual machine cost far more than the socket operations).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
import time
from functools import partial
from typing import Any, cast

from benchmarks import sharepath
from benchmarks.common import HOST, REPO
from benchmarks.micro import best_ns_per_op, make_notify, sha256d_header, share_checker, share_path_sha256d_header
from protocol.work import sha256 as work_sha256

ECHO_ROUND_TRIPS = 20_000
ECHO_LINE = b'{"id":1,"result":true,"error":null}\n'


class _Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


class _Client(asyncio.Protocol):
    def __init__(self, rounds: int, done: asyncio.Future[float]) -> None:
        self.left = rounds
        self.rounds = rounds
        self.done = done
        self.started = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.started = time.perf_counter()
        self.transport.write(ECHO_LINE)

    def data_received(self, data: bytes) -> None:
        self.left -= 1
        if self.left > 0:
            self.transport.write(ECHO_LINE)
        elif not self.done.done():
            self.done.set_result((time.perf_counter() - self.started) / self.rounds)


async def _echo_round_trip(port: int | None = None) -> float:
    """Seconds per round trip; against our own echo server unless `port` (another process's) is given."""
    loop = asyncio.get_running_loop()
    server = None
    if port is None:
        server = await loop.create_server(_Echo, HOST, 0)
        port = server.sockets[0].getsockname()[1]
    done: asyncio.Future[float] = loop.create_future()
    transport, _ = await loop.create_connection(lambda: _Client(ECHO_ROUND_TRIPS, done), HOST, port)
    try:
        return await asyncio.wait_for(done, 60)
    finally:
        transport.close()
        if server is not None:
            server.close()
            await server.wait_closed()


def echo_round_trip_us(port: int | None = None) -> float:
    import uvloop

    return uvloop.run(_echo_round_trip(port)) * 1e6


async def _serve_echo() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Echo, HOST, 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await loop.run_in_executor(None, sys.stdin.read)  # until EOF
    server.close()


def echo_two_processes_us() -> float:
    child = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.reference", "--echo-server"],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline())
        return min(echo_round_trip_us(port) for _ in range(3))
    finally:
        assert child.stdin is not None
        child.stdin.close()
        try:
            child.wait(10)
        except subprocess.TimeoutExpired:
            child.kill()


def cpu_seconds_of(fn: Any) -> float:
    started = time.process_time()
    fn()
    return time.process_time() - started


def measure() -> dict[str, float]:
    notify = make_notify()
    hashlib.sha256(os.urandom(80)).digest()
    return {
        "sha256d_header_ns": best_ns_per_op(sha256d_header, 200_000),
        # What the share check calls: protocol._sha256d (C, OpenSSL) where it was built ...
        "sha256d_header_share_path_ns": best_ns_per_op(share_path_sha256d_header, 200_000),
        # ... and its Python fallback, CPython's own SHA-256 (faster than hashlib's on short inputs).
        "sha256d_header_python_ns": best_ns_per_op(partial(sha256d_header, sha256=work_sha256), 200_000),
        "share_check_fresh_en2_ns": best_ns_per_op(share_checker(notify, fresh_extranonce2=True), 10_000),
        "share_check_reused_en2_ns": best_ns_per_op(share_checker(notify, fresh_extranonce2=False), 20_000),
        "uvloop_echo_round_trip_us": min(echo_round_trip_us() for _ in range(3)),
        "uvloop_echo_two_processes_us": echo_two_processes_us(),
        **{f"sans_io_{k}": v for k, v in sharepath.measure().items()},
    }


if __name__ == "__main__":
    if sys.argv[1:] == ["--echo-server"]:
        import uvloop

        uvloop.run(_serve_echo())
        raise SystemExit(0)
    for key, value in measure().items():
        print(f"{key:<28} {value:10.1f}")
