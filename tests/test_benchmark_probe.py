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


def test_the_bare_probe_runs_alone_until_sigterm_and_writes_its_seconds(tmp_path: Path) -> None:
    """`--bare`: the machine's stall floor, the same per-second lines as inside a proxy."""
    import signal
    import subprocess
    import sys

    out = tmp_path / "floor.jsonl"
    repo = Path(__file__).parent.parent
    child = subprocess.Popen([sys.executable, "-m", "benchmarks.probe", "--bare", "--probe-out", str(out)], cwd=repo)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (not out.exists() or len(out.read_text().splitlines()) < 2):
            time.sleep(0.1)
    finally:
        child.send_signal(signal.SIGTERM)
        code = child.wait(30)
    assert code == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) >= 2
    assert all(line["ticks"] > 0 and line["max_lag_ms"] >= 0 and "over_10ms" in line for line in lines)


def test_the_bare_probe_takes_no_proxy_flags(tmp_path: Path) -> None:
    import subprocess
    import sys

    argv = [sys.executable, "-m", "benchmarks.probe", "--bare", "--probe-out", str(tmp_path / "f"), "--", "--listen"]
    done = subprocess.run(argv, cwd=Path(__file__).parent.parent, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--bare runs no proxy" in done.stderr
