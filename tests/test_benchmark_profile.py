"""benchmarks.profile and benchmarks.report: py-spy samples in categories (idle threads apart), the direct baseline."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import report
from benchmarks.profile import IDLE, summarize

LOOP = "run (uvloop/__init__.py:92);Runner.run (asyncio/runners.py:118)"
WORKER = "Thread._bootstrap (threading.py:1002);Thread.run (threading.py:982)"


def test_samples_fall_in_the_first_category_from_the_leaf_and_idle_threads_apart(tmp_path: Path) -> None:
    folded = tmp_path / "spy.txt"
    folded.write_text(
        "\n".join(
            (
                f"{LOOP};MinerSession._submit (proxy/session.py:600);Job.hash_share (protocol/work.py:260) 6",
                f"{LOOP};FarmProxy.pool_data (proxy/farm.py:700) 2",
                f"{LOOP};Rig.flush (proxy/server.py:463) 1",
                f"{LOOP};ServerState.write_all (proxy/server.py:111);Rig.write_pool (proxy/server.py:385) 2",
                f"{WORKER};_worker (concurrent/futures/thread.py:81) 6",  # waiting for a batch
                f"{WORKER};LagProbe._watch (benchmarks/probe.py:84);Condition.wait (threading.py:331) 4",
                f"{WORKER};_worker (concurrent/futures/thread.py:83);Client.insert (clickhouse_connect/client.py:9) 1",
                "not a sample line",
            )
        )
        + "\n"
    )
    summary = summarize(folded)
    assert summary["samples"] == 22
    assert summary[IDLE] == 10 / 22
    assert summary["hashing (sha256d, merkle fold)"] == 6 / 22  # inside the session, hashing wins
    assert summary["farm mode logic (proxy/farm.py, farm_net.py)"] == 2 / 22
    assert summary["socket writes (transport.write in the flushes)"] == 3 / 22  # the flush, the iteration's pool writes
    assert summary["ledger thread (insert: chdb / clickhouse-connect)"] == 1 / 22  # working, not idle


def test_added_latency_is_taken_against_the_quieter_direct_window() -> None:
    from benchmarks.report import direct_rate

    noisy, quiet = {"p99_ms": 280.0, "p50_ms": 9.5}, {"p99_ms": 11.6, "p50_ms": 2.6}
    assert direct_rate({"direct": {"rate": noisy}, "direct_after": {"rate": quiet}}) is quiet
    assert direct_rate({"direct": {"rate": quiet}, "direct_after": {"rate": noisy}}) is quiet
    assert direct_rate({"direct": {"rate": noisy}}) is noisy
    assert direct_rate({}) is None


def test_a_phase_whose_windows_had_a_noisy_neighbour_is_flagged() -> None:
    import copy
    import json

    from benchmarks.report import NOISY_STEAL_PERCENT, targets_text

    committed = json.loads((Path(__file__).parent.parent / "benchmarks" / "results" / "results.json").read_text())
    for phase in committed["phases"].values():  # every window just below the flag, whatever the run read
        for window in phase.values() if isinstance(phase, dict) else ():
            if isinstance(window, dict) and "steal_percent" in window:
                window["steal_percent"] = NOISY_STEAL_PERCENT / 2
    committed.pop("targets", None)  # computed again from the phases
    quiet = targets_text(committed)
    noisy = copy.deepcopy(committed)
    noisy["phases"]["farm"]["rate"]["steal_percent"] = NOISY_STEAL_PERCENT * 2
    flagged = targets_text(noisy)
    assert "NOISY" not in quiet

    def phase_line(text: str, label: str) -> str:
        # The phase's heading line: [label], then its flags (SATURATED, from the committed run, may come first).
        (line,) = [line for line in text.splitlines() if line.startswith(f"  [{label}]")]
        return line

    assert "NOISY: the hypervisor's other guests took 10 %" in phase_line(flagged, "embedded, farm mode")
    assert "NOISY" not in phase_line(flagged, "embedded")


def test_the_stall_target_is_printed_beside_the_machines_floor() -> None:
    """The direct path's window carries a bare loop's stalls (benchmarks.probe --bare): the report
    prints them as the floor in the table, the direct line and every phase's stall line."""
    import copy
    import json

    from benchmarks.report import rows, targets_text

    committed = json.loads((Path(__file__).parent.parent / "benchmarks" / "results" / "results.json").read_text())
    committed.pop("targets", None)
    committed["phases"]["direct"]["rate"].pop("loop", None)
    without = targets_text(committed)
    floored = copy.deepcopy(committed)
    floored["phases"]["direct"]["rate"]["loop"] = {
        "seconds": 61, "max_lag_ms": 7.98, "over_1ms": 40, "over_5ms": 2, "over_10ms": 0,
        "per_second_max_lag_ms": [1.2] * 61, "gc": {},
    }  # fmt: skip
    text = targets_text(floored)
    assert "stall floor" not in without and "the machine's floor" not in without  # (the relay is "passthrough's floor")
    (direct_line,) = [line for line in text.splitlines() if line.startswith("  direct path:")]
    assert "stall floor" in direct_line and "longest 8.0 ms in 61 s, 0 over 10 ms" in direct_line
    stall_lines = [line for line in text.splitlines() if line.strip().startswith("loop stall")]
    assert stall_lines and all("the machine's floor 8.0 ms" in line for line in stall_lines)
    (direct_rate_row,) = [r for r in rows(floored) if r["path"] == "direct" and r["load"] != "closed loop"]
    assert direct_rate_row["longest loop stall ms"] == "8.0"


def test_rss_per_session_that_fell_reads_unreadable_not_met() -> None:
    """RSS that fell while sessions were added is the allocator returning memory, not a figure."""
    results = json.loads((Path(__file__).parent.parent / "benchmarks" / "results" / "results.json").read_text())
    phase = next(k for k, v in results["phases"].items() if "rss_per_session" in v)
    results["phases"][phase]["rss_per_session"] = -5000.0
    results["phases"][phase]["connect_many"] = {
        "sessions": 9000,
        "connected": 9000,
        "seconds": 1.0,
        "rss_per_session": 0.0,
    }
    results.pop("targets", None)
    text = report.targets_text(results)
    assert report.targets(results)[phase]["rss_kib_per_session"] is None
    assert "-4.9 KiB" not in text and "KiB at" in text  # the other phases still print their figure
    assert text.count("RSS per session unreadable") >= 2
    results["phases"][phase]["rss_per_session"] = 4096.0
    assert "4.0 KiB at" in report.targets_text(results)


def test_the_reference_line_gives_the_share_path_without_sockets_where_the_run_measured_it(tmp_path: Path) -> None:
    results = json.loads((Path(__file__).parent.parent / "benchmarks" / "results" / "results.json").read_text())
    refs = results["reference"]
    refs["sans_io_session_share_ns"], refs["sans_io_farm_share_ns"] = 25_040.0, 22_310.0
    report.write(results, tmp_path)
    text = (tmp_path / "results.md").read_text()
    assert "a passthrough session 25.0 µs, farm mode's hub 22.3 µs per share" in text
    del refs["sans_io_farm_share_ns"]  # a run from before the farm figure
    report.write(results, tmp_path)
    assert "a passthrough session 25.0 µs per share" in (tmp_path / "results.md").read_text()


def test_a_connect_phase_says_who_spent_its_time_and_a_window_its_calls_per_share() -> None:
    """9,000 at once is bounded by whichever core is full: the proxy's CPU per session beside the
    load side's (generators and pool); each window's read()/write() calls per share. Results from
    before these figures print neither."""
    results = json.loads((Path(__file__).parent.parent / "benchmarks" / "results" / "results.json").read_text())
    results.pop("targets", None)
    for phase in results["phases"].values():
        for window in ("closed", "rate"):
            if isinstance(phase, dict) and isinstance(phase.get(window), dict):
                phase[window].pop("proxy_syscalls_per_share", None)
        if isinstance(phase, dict) and "connect_many" in phase:
            phase["connect_many"].pop("cpu_seconds", None)
    results["phases"]["direct"].pop("connect_many_relay", None)  # a run from before the relay
    before = report.targets_text(results)
    assert "CPU per session" not in before and "calls per share" not in before
    proxied = next(k for k, v in results["phases"].items() if "connect_many" in v and k != "direct")
    results["phases"][proxied]["connect_many"].update(
        connected=9000, cpu_seconds={"proxy": 3.6, "pool": 1.8, "loadgen0": 0.9, "loadgen1": 0.9, "clickhouse": 0.5}
    )
    results["phases"][proxied]["closed"]["proxy_syscalls_per_share"] = {"read": 0.5, "write": 0.75}
    results["phases"][proxied]["rate"]["proxy_syscalls_per_share"] = {"read": 1.93, "write": 2.43}
    results["phases"]["direct"]["connect_many"].update(connected=9000, cpu_seconds={"pool": 1.8, "loadgen0": 0.9})
    entry = report.targets(results)[proxied]["connect_many"]
    assert entry["cpu_us_per_session"] == {"proxy": 400.0, "load": 400.0}  # the engine is neither side
    text = report.targets_text(results)
    assert "(CPU per session: proxy 400 µs, generators and pool 400 µs)" in text
    assert "connected straight to the pool in" in text and "(CPU per session: generators and pool 300 µs)" in text
    assert "bare byte relay" not in text  # a run from before the relay
    relay_cpu = {"relay": 1.8, "pool": 1.8, "loadgen0": 1.8}
    results["phases"]["direct"]["connect_many_relay"] = {
        "sessions": 9000, "connected": 9000, "seconds": 2.61, "cpu_seconds": relay_cpu,
    }  # fmt: skip
    text = report.targets_text(results)
    assert "in 2.61 s (CPU per session: relay 200 µs, generators and pool 400 µs)" in text
    assert "0.50 + 0.75 closed loop, 1.93 + 2.43 at 5,000/s" in text
