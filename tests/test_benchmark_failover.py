"""The farm failover figures of the benchmark (benchmarks/failover.py): per session, pool A's death →
the first mining.notify after it; a session without one, or one that closed or was told to
reconnect, fails the target."""

from __future__ import annotations

from typing import Any

from benchmarks.failover import TARGET_NEW_WORK_S, met, new_work_delays, summarize

KILLED_AT = 1000.0


def answer(notified: list[list[float]], closed: int = 0, asked: int = 0) -> dict[str, Any]:
    return {"notified": notified, "closed_sessions": closed, "reconnect_requests": asked}


def test_the_delay_is_to_the_first_notify_after_the_death_and_none_without_one() -> None:
    notified = [[KILLED_AT - 2.0, KILLED_AT + 0.25, KILLED_AT + 0.5], [KILLED_AT - 1.0], []]
    assert new_work_delays(KILLED_AT, notified) == [0.25, None, None]


def test_every_session_with_new_work_in_time_and_no_reconnect_meets_the_target() -> None:
    answers = [answer([[KILLED_AT + 0.1 * (i + 1)] for i in range(5)]), answer([[KILLED_AT + 0.05]])]
    summary = summarize(KILLED_AT, answers)
    assert summary["sessions"] == 6 and summary["with_new_work"] == 6 and summary["reconnects"] == 0
    assert summary["max_s"] == 0.5
    assert summary["p50_s"] is not None and 0.05 <= summary["p50_s"] <= 0.5
    assert met(summary)


def test_a_late_session_a_session_without_work_or_a_reconnect_misses_it() -> None:
    late = summarize(KILLED_AT, [answer([[KILLED_AT + TARGET_NEW_WORK_S + 0.1], [KILLED_AT + 0.1]])])
    assert late["within_target"] == 1 and not met(late)
    starved = summarize(KILLED_AT, [answer([[KILLED_AT - 0.1], [KILLED_AT + 0.1]])])
    assert starved["without_new_work"] == 1 and not met(starved)
    reconnected = summarize(KILLED_AT, [answer([[KILLED_AT + 0.1]], asked=1)])
    assert reconnected["reconnects"] == 1 and not met(reconnected)
    closed = summarize(KILLED_AT, [answer([[KILLED_AT + 0.1]], closed=1)])
    assert closed["reconnects"] == 1 and not met(closed)
    assert not met(summarize(KILLED_AT, []))
