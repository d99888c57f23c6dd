"""A simulated Stratum V1 pool and a simulated ASIC fleet that do real sha256d work.

`SimulatedPool` (pool.py) is a Stratum V1 server that verifies every share with `protocol.work` and
keeps the ground-truth accounting; `SimulatedASIC` / `Fleet` (fleet.py) are miners that handshake like
real devices and mine real shares at a tiny difficulty; `simulation.hotkeys` makes valid (and
deliberately broken) SS58 hotkeys for worker names. Used by the end-to-end tests, the demo and the
benchmarks. Only `simulation.hotkeys` needs bittensor-wallet; the rest needs protocol + msgspec.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from simulation.broken import BrokenPool
from simulation.fleet import (
    BAD_KINDS,
    EXPECTED_CODE,
    PROFILES,
    DeviceProfile,
    Fleet,
    HandshakeError,
    ShareParams,
    SimulatedASIC,
    SubmitRecord,
    quantile,
    worker_names,
)
from simulation.pool import DEFAULT_DIFFICULTY, PoolSession, PoolSubmit, SimulatedPool, hotkey_of

__all__ = [
    "BAD_KINDS",
    "DEFAULT_DIFFICULTY",
    "EXPECTED_CODE",
    "PROFILES",
    "BrokenPool",
    "DeviceProfile",
    "Fleet",
    "HandshakeError",
    "PoolSession",
    "PoolSubmit",
    "ShareParams",
    "SimulatedASIC",
    "SimulatedPool",
    "SubmitRecord",
    "hotkey_of",
    "quantile",
    "run",
    "worker_names",
]

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T], *, use_uvloop: bool = True) -> T:
    """Run a coroutine on uvloop when it is installed (and asked for), else on the stdlib loop."""
    if use_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.run(main)
    return asyncio.run(main)
