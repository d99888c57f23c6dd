"""proxy/priority.py: every thread but the event loop's runs at a lower CPU priority (Linux), and
background threads keep the GIL for at most the configured switch interval.

Checked in a child process: the sweep lowers every thread of the process it runs in, and the test
runner's own threads are not the test's to lower."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import pytest

from proxy.config import ConfigError, load_config
from proxy.priority import BackgroundPriority

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="per-thread nice is Linux")

CHILD = r"""
import asyncio, json, os, threading, time
from proxy.priority import BackgroundPriority, lower_other_threads
import proxy.priority as priority

def nice_of(tid):
    return os.getpriority(os.PRIO_PROCESS, tid)

started = threading.Event()
before_ids = []
def worker():
    before_ids.append(threading.get_native_id())
    started.set()
    time.sleep(5)
threading.Thread(target=worker, daemon=True).start()
started.wait(5)
main = threading.get_native_id()
out = {"lowered_first": lower_other_threads(7, main), "lowered_again": lower_other_threads(7, main)}
out["worker"], out["main"] = nice_of(before_ids[0]), nice_of(main)
out["off"] = lower_other_threads(0, main)

async def loop_side():
    priority.SWEEP_EVERY = 0.05
    keeper = BackgroundPriority(9)
    keeper.start()
    late = []
    def later():  # a thread the loop starts after the first sweep: lowered by the next one
        late.append(threading.get_native_id())
        time.sleep(1.0)
    t = threading.Thread(target=later, daemon=True); t.start()
    for _ in range(100):  # bounded: 100 × 20 ms
        await asyncio.sleep(0.02)
        if late and nice_of(late[0]) >= 9:
            break
    out["late"], out["loop"] = nice_of(late[0]), nice_of(threading.get_native_id())
    keeper.stop()
asyncio.run(loop_side())
print(json.dumps(out))
"""


def test_every_thread_but_the_loops_is_lowered_and_later_ones_by_the_next_sweep() -> None:
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60, check=True)
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["lowered_first"] >= 1 and out["lowered_again"] == 0  # once lowered, left as it is
    assert out["worker"] == 7 and out["main"] == 0
    assert out["off"] == 0  # nice 0: nothing touched
    assert out["late"] >= 9 and out["loop"] == 0  # a thread started later is caught; the loop never


def test_the_nice_is_bounded_by_the_config() -> None:
    assert load_config(["--background-nice", "0"]).background_nice == 0
    with pytest.raises(ConfigError, match="background_nice"):
        load_config(["--background-nice", "20"])


def test_the_gil_switch_interval_is_set_while_started_and_restored_after() -> None:
    before = sys.getswitchinterval()
    seen: dict[str, float] = {}

    async def scenario() -> None:
        policy = BackgroundPriority(0, 0.0007)  # nice 0: only the interval
        policy.start()
        seen["started"] = sys.getswitchinterval()
        policy.stop()
        seen["stopped"] = sys.getswitchinterval()
        untouched = BackgroundPriority(0, 0.0)
        untouched.start()
        seen["zero"] = sys.getswitchinterval()
        untouched.stop()

    try:
        asyncio.run(scenario())
    finally:
        sys.setswitchinterval(before)
    assert seen["started"] == pytest.approx(0.0007)
    assert seen["stopped"] == pytest.approx(before) and seen["zero"] == pytest.approx(before)


def test_the_gil_switch_interval_defaults_to_a_millisecond_and_is_bounded() -> None:
    assert load_config([]).gil_switch_interval == pytest.approx(0.001)
    assert load_config(["--gil-switch-interval", "0"]).gil_switch_interval == 0
    with pytest.raises(ConfigError, match="gil_switch_interval"):
        load_config(["--gil-switch-interval", "0.5"])
