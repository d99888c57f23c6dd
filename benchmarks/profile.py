"""Where the proxy's time goes, from a py-spy raw (folded) profile.

    python -m benchmarks.profile benchmarks/results/profile-bench-embedded.txt

py-spy is not a project dependency: install it outside the project (`pip install --target /tmp/pyspy
py-spy`) and pass `--py-spy /tmp/pyspy/bin/py-spy` to `python -m benchmarks`, which records the proxy
during every closed-loop window. Each folded line is `frame;frame;...;leaf COUNT`. A sample is put in
the FIRST category (in the order below) any of its frames matches, so "share check" wins over
"session" for a sample inside `Job.hash_share` called from the session.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

# (category, substrings of a frame "function (file:line)"), first match wins, leaf to root.
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "ledger thread (insert: chdb / clickhouse-connect)",
        ("chdb/", "clickhouse_connect", "futures/thread.py"),
    ),
    ("hashing (sha256d, merkle fold)", ("hash_share", "check_share", "sha256", "merkle")),
    ("journal encode + write", ("journal.py",)),
    ("ledger row build / record", ("ledger.py", "rows.py", "_record")),
    ("metrics (prometheus_client)", ("prometheus_client", "metrics.py")),
    ("decode / encode (msgspec, protocol.messages)", ("messages.py", "decode", "encode")),
    ("framing (protocol.framing)", ("framing.py",)),
    (
        "socket writes (transport.write in the flushes)",
        (
            "flush (proxy/server.py",
            "write_pool (proxy/server.py",
            "write_miner (proxy/server.py",
            ".write (",
            "writelines",
        ),
    ),
    ("session logic (proxy/session.py)", ("session.py",)),
    ("farm mode logic (proxy/farm.py, farm_net.py)", ("farm.py", "farm_net.py")),
    ("server glue (proxy/server.py)", ("server.py",)),
    ("lag probe (benchmark only)", ("benchmarks/probe.py:6", "benchmarks/probe.py:7", "_tick", "_flush")),
)


def summarize(path: Path) -> dict[str, float]:
    """Share of samples per category (0..1), plus "samples"."""
    counts: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        samples = int(n)
        total += samples
        frames = stack.split(";")
        counts[_category(frames)] += samples
    out: dict[str, float] = {name: counts[name] / total for name, _ in CATEGORIES if counts[name]} if total else {}
    if total:
        out["other (event loop, asyncio, GC, idle threads)"] = counts["other"] / total
        if counts[IDLE]:
            out[IDLE] = counts[IDLE] / total
    out["samples"] = float(total)
    return out


# A leaf that only waits: a worker thread blocked on its queue (the ledger's insert thread between
# batches), a lock or an Event (the probe's stall watchdog between two looks). py-spy samples it as
# a live thread, but it burns no CPU. py-spy names methods with their class ("Condition.wait").
IDLE = "idle worker threads (waiting for work: no CPU)"
_IDLE_LEAVES = ("_worker (concurrent/futures/thread.py:81)", "wait (threading.py:", "Condition.wait (threading.py:")


def _category(frames: list[str]) -> str:
    if frames and frames[-1].startswith(_IDLE_LEAVES):
        return IDLE
    for frame in reversed(frames):  # leaf first: the innermost named work
        for name, needles in CATEGORIES:
            if any(needle in frame for needle in needles):
                return name
    return "other"


def top_functions(path: Path, n: int = 15) -> list[tuple[str, float]]:
    """Self time per leaf frame, as a share of samples."""
    leaves: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        total += int(count)
        leaves[stack.split(";")[-1]] += int(count)
    return [(leaf, c / total) for leaf, c in leaves.most_common(n)] if total else []


def main() -> int:
    for arg in sys.argv[1:]:
        path = Path(arg)
        summary = summarize(path)
        idle = summary.pop(IDLE, 0.0)
        print(f"{path}: {summary.pop('samples'):.0f} samples, {idle * 100:.1f} % of them idle worker threads (no CPU);")
        print("  shares of the busy samples:")
        for name, share in sorted(summary.items(), key=lambda kv: -kv[1]):
            print(f"  {share / max(1e-9, 1.0 - idle) * 100:5.1f} %  {name}")
        print("  top leaf frames (self time):")
        for leaf, share in top_functions(path):
            print(f"  {share * 100:5.1f} %  {leaf}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
