"""The benchmark's CPU layout: the proxy alone on its core, the load on the others, and a check that
says so. (A run once computed the layout after the orchestrator had pinned itself to the load
core: it saw one core, pinned nothing, and every process shared that core while the proxy's sat idle.)"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from benchmarks.run import core_busy, cpu_layout, pin_pid, pinned_to

CORES = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
needs_two_cores = pytest.mark.skipif(len(CORES) < 2, reason="pinning needs two cores")


@pytest.fixture
def child() -> Iterator[int]:
    # A child with a second thread: the pin must reach every thread, not only the main one.
    code = (
        "import threading, time; threading.Thread(target=time.sleep, args=(30,), daemon=True).start(); time.sleep(30)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait(10)


@needs_two_cores
def test_the_layout_gives_the_proxy_the_last_core_and_the_load_the_rest() -> None:
    proxy, load = cpu_layout(True)
    assert proxy == str(CORES[-1])
    assert load == ",".join(map(str, CORES[:-1]))
    assert cpu_layout(False) == ("", "")


@needs_two_cores
def test_a_child_pinned_to_the_proxy_core_passes_the_check_and_an_unpinned_one_fails_it(child: int) -> None:
    proxy, load = cpu_layout(True)
    assert pinned_to(child, proxy) is False  # inherits every core
    pin_pid(child, proxy)
    assert pinned_to(child, proxy) is True
    assert pinned_to(child, load) is False
    assert pinned_to(child, "") is None  # not pinned by choice (--no-pin): nothing to check


@needs_two_cores
def test_core_busy_counts_the_cores_asked_for() -> None:
    proxy, load = cpu_layout(True)
    assert core_busy("") == 0.0
    alone = core_busy(proxy)
    assert 0.0 < alone <= core_busy(f"{load},{proxy}")  # read after: busy time only grows
