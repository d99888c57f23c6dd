"""The benchmark's load generator: N `simulation.SimulatedASIC` sessions in one process.

    python -m benchmarks.loadgen [--hotkeys 64] [--profiles antminer,bitaxe] [--en2 fresh|reused]

Driven by JSON commands on stdin, one answer per line on stdout:
    {"op": "connect", "port": P, "sessions": N, "offset": K}  handshake N devices (bounded concurrency)
    {"op": "run", "mode": "closed"|"rate", "duration": S, "pipeline": 1, "rate": R}
        -> {"started": ...} at once, then {"done": ...} with counts and a latency histogram
    {"op": "close"}                                            stop every device (waits for owed replies)
    {"op": "exit"} (or EOF)

Each device handshakes as its profile's firmware does (antminer: mining.configure with version
rolling, subscribe, authorize, extranonce.subscribe; bitaxe: subscribe, configure,
suggest_difficulty, authorize), with a worker `infinite.<valid SS58 hotkey>.w<index>`.

The shares. The pool difficulty is 2**-33, below the difficulty of the worst possible hash, so
every header is a valid share and the generator need not grind: `BenchASIC` takes the next unused
(extranonce2, nonce, version bits) of its cursor instead of hashing. With --en2 fresh (the default)
every share has a new extranonce2, as a real ASIC at pool difficulty has (it exhausts nonce x
version space, 2**48 hashes, between two shares), so the proxy pays the full check: the coinbase,
the 12-branch merkle fold and the header, 14 sha256d. --en2 reused keeps the extranonce2 and moves
the nonce (the proxy's merkle cache then hits: 1 sha256d per share).
"""

from __future__ import annotations

import argparse
import array
import asyncio
import time
from typing import Any

from benchmarks.common import HOST, bucket_of, commands, raise_fd_limit, reply
from simulation import ShareParams, SimulatedASIC, run
from simulation.fleet import _Work
from simulation.hotkeys import hotkeys

CONNECT_TIMEOUT = 20.0  # per device handshake


class BenchASIC(SimulatedASIC):
    """A SimulatedASIC whose shares need no grinding (every hash is valid at 2**-33) and whose
    mining can be started again for the next measurement on the same connection."""

    fresh_en2 = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._cursor = 0

    def _valid_share(self, work: _Work) -> ShareParams | None:
        n = self._cursor
        self._cursor = n + 1
        size = work.job.extranonce2_size
        if self.fresh_en2:
            en2, nonce = n % (1 << (8 * size)), (n * 2654435761) & 0xFFFFFFFF
        else:
            en2, nonce = 0, n & 0xFFFFFFFF
        mask = work.mask
        vbits = ((n << ((mask & -mask).bit_length() - 1)) & mask) if mask else 0
        share = ShareParams(
            work.job_id, en2.to_bytes(size, "big").hex(), work.ntime, f"{nonce:08x}", self._version_param(vbits)
        )
        self.last_share = share
        return share

    async def begin(self, mode: str, duration: float, pipeline: int, rate: float) -> None:
        """Mine again for `duration` seconds (the previous run must be over)."""
        self.mode = "closed" if mode == "closed" else "rate"
        self.duration = duration
        self.pipeline = max(1, pipeline)
        self.rate = rate
        self._done = asyncio.get_running_loop().create_future()
        self._expired = False
        self._mined = 0
        self.latencies = array.array("d")
        await self.start()


class Generator:
    def __init__(self, args: argparse.Namespace) -> None:
        self.keys = hotkeys(args.hotkeys, namespace="benchmark")
        self.profiles = [p.strip() for p in args.profiles.split(",") if p.strip()]
        self.fresh = args.en2 == "fresh"
        self.asics: list[BenchASIC] = []

    async def connect(self, port: int, sessions: int, offset: int, concurrency: int, timeout: float) -> dict[str, Any]:
        started = time.perf_counter()
        semaphore = asyncio.Semaphore(concurrency)
        errors: list[str] = []

        async def one(index: int) -> BenchASIC | None:
            async with semaphore:
                asic = BenchASIC(
                    HOST,
                    port,
                    f"infinite.{self.keys[index % len(self.keys)]}.w{index}",
                    profile=self.profiles[index % len(self.profiles)],  # type: ignore[arg-type]
                    record_submits=False,
                    reconnect=False,
                    handshake_timeout=CONNECT_TIMEOUT,
                    max_in_flight=64,
                    drain_timeout=5.0,
                    seed=index,
                )
                asic.fresh_en2 = self.fresh
                try:
                    await asic.connect()
                except (OSError, Exception) as exc:  # counted and reported, never fatal here
                    if len(errors) < 5:
                        errors.append(f"{type(exc).__name__}: {exc}")
                    await asic.stop(drain=False)
                    return None
                return asic

        tasks = [asyncio.ensure_future(one(offset + i)) for i in range(sessions)]
        done, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        connected = [t.result() for t in done if not t.cancelled() and t.exception() is None]
        self.asics = [a for a in connected if a is not None]
        return {
            "connected": len(self.asics),
            "failed": sessions - len(self.asics),
            "seconds": time.perf_counter() - started,
            "errors": errors,
        }

    async def run(self, mode: str, duration: float, pipeline: int, rate: float) -> dict[str, Any]:
        before = [(a.submitted, a.accepted, a.rejected, a.lost) for a in self.asics]
        started = time.perf_counter()
        await asyncio.gather(*(a.begin(mode, duration, pipeline, rate) for a in self.asics))
        reply({"started": time.time()})
        waits = [asyncio.ensure_future(a.wait()) for a in self.asics]
        _, pending = await asyncio.wait(waits, timeout=duration + 20.0)
        for task in pending:
            task.cancel()
        elapsed = time.perf_counter() - started
        counts: dict[int, int] = {}
        latency_max = 0.0
        replied = 0
        for asic in self.asics:
            lat = asic.latencies
            replied += len(lat)
            if lat:
                latency_max = max(latency_max, max(lat))
            for value in lat:
                b = bucket_of(value)
                counts[b] = counts.get(b, 0) + 1
        totals = [0, 0, 0, 0]
        for asic, (s, a, r, lost) in zip(self.asics, before, strict=True):
            totals[0] += asic.submitted - s
            totals[1] += asic.accepted - a
            totals[2] += asic.rejected - r
            totals[3] += asic.lost - lost
        rejected_codes: dict[str, int] = {}
        for asic in self.asics:
            for code, n in asic.rejected_by_code.items():
                rejected_codes[str(code)] = rejected_codes.get(str(code), 0) + n
        return {
            "done": True,
            "elapsed": elapsed,
            "submitted": totals[0],
            "accepted": totals[1],
            "rejected": totals[2],
            "lost": totals[3],
            "replied": replied,
            "unfinished": len(pending),
            "latency_hist": counts,
            "latency_max": latency_max,
            "rejected_by_code": rejected_codes,
        }

    async def close(self) -> dict[str, Any]:
        started = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(a.stop() for a in self.asics)), 60)
        n, self.asics = len(self.asics), []
        return {"closed": n, "seconds": time.perf_counter() - started}


async def serve(args: argparse.Namespace) -> None:
    generator = Generator(args)
    inbox = await commands()
    reply({"ready": True, "fd_limit": raise_fd_limit()})
    while True:
        command = await inbox.get()
        op = command.get("op")
        try:
            if op == "exit":
                break
            if op == "connect":
                reply(
                    await generator.connect(
                        int(command["port"]),
                        int(command["sessions"]),
                        int(command.get("offset", 0)),
                        int(command.get("concurrency", 200)),
                        float(command.get("timeout", 120.0)),
                    )
                )
            elif op == "run":
                reply(
                    await generator.run(
                        str(command["mode"]),
                        float(command["duration"]),
                        int(command.get("pipeline", 1)),
                        float(command.get("rate", 1.0)),
                    )
                )
            elif op == "close":
                reply(await generator.close())
            else:
                reply({"error": f"unknown op {op!r}"})
        except Exception as exc:
            reply({"error": f"{op}: {type(exc).__name__}: {exc}"})
    if generator.asics:
        await generator.close()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.loadgen", description=__doc__)
    parser.add_argument("--hotkeys", type=int, default=64, help="distinct hotkeys the workers use")
    parser.add_argument("--profiles", default="antminer,bitaxe", help="device profiles, round-robin")
    parser.add_argument("--en2", choices=("fresh", "reused"), default="fresh")
    args = parser.parse_args()
    raise_fd_limit()
    run(serve(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
