"""The benchmark's pool: `simulation.SimulatedPool` in its own process, answering every submit.

    python -m benchmarks.pool [--verify sample|none|all] [--sample-every 100] [--job-interval 30]
                              [--extranonce2-size 8] [--seed 89]

Prints {"port": N} when listening, then takes JSON commands on stdin:
    {"op": "stats"}  -> accepted/rejected counts and open connections
    {"op": "exit"}   (or EOF)
The pool difficulty is 2**-33: every hash meets it, so every unique share is valid, while the proxy
in front still hashes each one. With verify="sample" the pool hashes one share in `sample_every`.
Extranonce2 is 8 bytes, as Luxor gives: farm mode takes a prefix (2 bytes at 20,000 sessions) out
of it for its ASICs, which keep the rest.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any, cast

from benchmarks.common import HOST, POOL_DIFFICULTY, commands, pin_self, raise_fd_limit, reply
from simulation import SimulatedPool, run
from simulation.pool import VerifyMode


async def serve(args: argparse.Namespace) -> None:
    pool = SimulatedPool(
        host=HOST,
        difficulty=POOL_DIFFICULTY,
        verify=cast(VerifyMode, args.verify),
        sample_every=args.sample_every,
        job_interval=args.job_interval,
        record_submits=False,
        extranonce2_size=args.extranonce2_size,
        seed=args.seed,
    )
    await pool.start()
    inbox = await commands()
    reply({"port": pool.port, "fd_limit": raise_fd_limit()})
    try:
        while True:
            command = await inbox.get()
            op = command.get("op")
            if op == "exit":
                break
            if op == "stats":
                stats: dict[str, Any] = {
                    "accepted": pool.accepted_count,
                    "rejected": pool.rejected_count,
                    "rejected_by_code": {str(k): v for k, v in pool.rejected_by_code.items()},
                    "sessions": len(pool.sessions),
                    "connections_total": pool.connections_total,
                    "jobs_sent": pool.jobs_sent,
                    "extranonce2_size": pool.extranonce2_size,
                }
                reply(stats)
            else:
                reply({"error": f"unknown op {op!r}"})
    finally:
        await asyncio.wait_for(pool.stop(), 30)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pool", description=__doc__)
    parser.add_argument("--verify", choices=("all", "sample", "none"), default="sample")
    parser.add_argument("--sample-every", type=int, default=100)
    parser.add_argument("--job-interval", type=float, default=30.0, help="seconds between new jobs (0: never)")
    parser.add_argument("--extranonce2-size", type=int, default=8, help="bytes of extranonce2 per connection")
    parser.add_argument("--seed", type=int, default=89, help="the pool's jobs and extranonce1s are drawn from it")
    parser.add_argument("--cpus", default="", help="CPUs to pin to, comma-separated (default: not pinned)")
    args = parser.parse_args()
    pin_self(args.cpus)
    raise_fd_limit()
    run(serve(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
