"""A pool failover in farm mode, as the ASICs see it: how long until each one has new work, and
whether any of them had to reconnect.

`benchmarks/run.py` (`Bench.failover`) starts two pools (A, then B as the second `--upstream`), a
farm-mode proxy in front of them and N sessions mining at a fixed rate; it SIGKILLs pool A in the
middle of the window (the kernel closes A's sockets: the proxy reads EOF on every upstream
connection) and the load generators log every `mining.notify` each session receives
(`time.monotonic()`, one clock for every process of the machine). This module turns those logs
into the figures: per session, the time from A's death to the first notify after it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from benchmarks.common import hist_quantile, histogram

TARGET_NEW_WORK_S = 2.0  # issue 11: every ASIC has new work within 2 s of the failover, no reconnect


def new_work_delays(killed_at: float, notified: Sequence[Sequence[float]]) -> list[float | None]:
    """Per session, seconds from `killed_at` to its first notify after it; None when none came."""
    return [next((t - killed_at for t in times if t > killed_at), None) for times in notified]


def summarize(killed_at: float, answers: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The generators' watched windows (their `notified`, `closed_sessions`, `reconnect_requests`)
    against the moment pool A died."""
    delays = new_work_delays(killed_at, [times for a in answers for times in a["notified"]])
    got = [d for d in delays if d is not None]
    hist = histogram(got)
    closed = sum(int(a["closed_sessions"]) for a in answers)
    asked = sum(int(a["reconnect_requests"]) for a in answers)
    return {
        "sessions": len(delays),
        "with_new_work": len(got),
        "without_new_work": len(delays) - len(got),
        "p50_s": hist_quantile(hist, 0.50) if got else None,
        "p99_s": hist_quantile(hist, 0.99) if got else None,
        "max_s": max(got) if got else None,
        "within_target": sum(1 for d in got if d <= TARGET_NEW_WORK_S),
        "closed_sessions": closed,
        "reconnect_requests": asked,
        "reconnects": closed + asked,
    }


def met(summary: dict[str, Any]) -> bool:
    """Every session got new work within the target, and none lost or was told to drop its connection."""
    return bool(summary["sessions"] and summary["within_target"] == summary["sessions"] and summary["reconnects"] == 0)
