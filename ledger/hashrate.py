"""Share difficulty → hashrate: the one formula both programs use.

A share of difficulty 1 takes 2^32 hashes on average, so the accepted difficulty of a window is the
work done in it: `H/s = Σ accepted difficulty · 2^32 / window seconds`.
"""

from __future__ import annotations

HASHES_PER_DIFFICULTY = 2**32


def hashrate(accepted_difficulty: float, seconds: float) -> float:
    """Hashes per second that `accepted_difficulty` of work over `seconds` stands for."""
    if seconds <= 0:
        raise ValueError("the window must be longer than 0 seconds")
    return accepted_difficulty * HASHES_PER_DIFFICULTY / seconds
