"""benchmarks/probe.py: the lag probe sees a stall, and its watchdog writes down who stalled."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from benchmarks.probe import STALL_HEADER, LagProbe, stacks_path


def a_callback_that_blocks_the_loop() -> None:
    time.sleep(0.3)


def test_a_stall_is_measured_and_the_watchdog_dumps_the_stalling_stack(tmp_path: Path) -> None:
    out = tmp_path / "probe.jsonl"

    async def scenario() -> None:
        probe = LagProbe(out, watchdog=0.1)
        probe.start()
        await asyncio.sleep(0.05)
        asyncio.get_running_loop().call_soon(a_callback_that_blocks_the_loop)
        await asyncio.sleep(1.1)  # past the probe's once-a-second line
        probe.stop()

    asyncio.run(scenario())
    stacks = stacks_path(out).read_text()
    assert stacks.count(STALL_HEADER) == 1  # once per stall, however long
    assert "a_callback_that_blocks_the_loop" in stacks
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert sum(line["over_10ms"] for line in lines) >= 1  # a 300 ms sleep cannot read shorter
