"""The weight policy: hashrate per hotkey in, one weight per uid out. Pure functions only.

Inputs: the hashrate (H/s) each hotkey delivered over the window, the metagraph (uid → hotkey), a
:class:`Policy` and the burn uid. Output: a weight for every uid of the metagraph, summing to 1.

Hotkeys
    A hotkey that delivered shares but is not in the metagraph is *unregistered*: it is reported and
    earns nothing. Only registered hotkeys take part in the rules below.

Budget
    ``hashrate_share`` (``s``, 0..1, default 1) is the part of the total weight that hashrate earns.
    The rest, ``1 - s``, always goes to the burn uid.

Phase 1 (default): proportional
    Every registered hotkey with hashrate ``h_i > 0`` gets ``s · h_i / Σ h``. If no registered hotkey
    delivered anything, nothing is earned and the whole weight (``s`` included) goes to the burn uid.

Phase 2: minimum and ceiling
    ``min_hashrate`` (``m``) is the entry ticket for the base reward; ``max_hashrate`` (``c``, default
    ``m``, must be ``>= m``) is the most hashrate a hotkey is credited with.

    * a hotkey is *eligible* when ``h_i >= m`` (and ``h_i > 0``); below that it earns nothing;
    * an eligible hotkey is credited with ``k_i = min(h_i, c)``;
    * the budget ``s`` is split among eligible hotkeys in proportion to what they are credited with:
      ``w_i = s · k_i / Σ k``.

    With the default ceiling (``c = m``) every eligible hotkey is credited the same ``m``, so each of
    the ``N`` eligible hotkeys gets the same base reward ``s / N`` and committing more than the minimum
    earns nothing extra. With ``c > m``, hashrate between ``m`` and ``c`` earns proportionally more and
    hashrate above ``c`` earns nothing.

    "Whatever no eligible miner earns": the budget ``s`` belongs to the eligible miners as a group —
    what a hotkey below the minimum would have earned is not burned but shared among the eligible
    ones (it is the same split as phase 1, just restricted to eligible hotkeys and capped). Only when
    *no* hotkey is eligible is ``s`` unearned, and then it goes to the burn uid with the rest.

Burn uid
    The uid that receives ``1 - s`` plus any unearned budget: given in config, else the subnet
    owner's uid on the chain. If there is none (no owner uid known, and none configured), the earned
    weights are scaled up to sum to 1 on their own (nothing can be burned); when nothing at all was
    earned either, every weight is zero.

Every uid of the metagraph appears in the result, zeros included; the weights sum to 1 except in that
last all-zero case.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field


class PolicyError(ValueError):
    """A policy that cannot be applied (bad configuration or a burn uid outside the metagraph)."""


@dataclass(frozen=True)
class Policy:
    """How hashrate turns into weight. ``min_hashrate``/``max_hashrate`` are H/s, used in phase 2."""

    phase: int = 1
    min_hashrate: float | None = None
    max_hashrate: float | None = None
    hashrate_share: float = 1.0

    def validate(self) -> None:
        if self.phase not in (1, 2):
            raise PolicyError(f"phase must be 1 or 2, not {self.phase}")
        if not (math.isfinite(self.hashrate_share) and 0.0 <= self.hashrate_share <= 1.0):
            raise PolicyError(f"hashrate_share must be between 0 and 1, not {self.hashrate_share}")
        if self.phase == 2:
            if self.min_hashrate is None:
                raise PolicyError("phase 2 needs a minimum hashrate (min_hashrate)")
            if not (math.isfinite(self.min_hashrate) and self.min_hashrate >= 0):
                raise PolicyError(f"min_hashrate must be a finite number >= 0, not {self.min_hashrate}")
            cap = self.ceiling
            if not (math.isfinite(cap) and cap > 0):
                raise PolicyError(f"max_hashrate must be a finite number > 0, not {cap}")
            if cap < self.min_hashrate:
                raise PolicyError(
                    f"max_hashrate ({cap:g} H/s) must not be below min_hashrate ({self.min_hashrate:g} H/s)"
                )

    @property
    def ceiling(self) -> float:
        """Phase 2: the most hashrate a hotkey is credited with (default: the minimum itself)."""
        if self.max_hashrate is not None:
            return self.max_hashrate
        return self.min_hashrate if self.min_hashrate is not None else math.inf


@dataclass(frozen=True)
class Weights:
    """The outcome of the policy for one window."""

    weights: dict[int, float]
    """Every uid of the metagraph → its weight (zeros included)."""
    hotkey_weights: dict[str, float]
    """Every hotkey that had hashrate → the weight it earned (0 for unregistered or ineligible)."""
    credited: dict[str, float]
    """Registered hotkey → hashrate credited by the policy (after minimum and ceiling)."""
    unregistered: list[str]
    """Hotkeys with hashrate that are not in the metagraph, sorted."""
    burn_uid: int | None
    """The uid that received the unearned part, or None when nothing went to a burn uid."""
    burned: float
    """The weight the burn uid received (0 when ``burn_uid`` is None)."""
    earned: float = field(default=0.0)
    """The part of the weight that miners earned before any rescaling (0..hashrate_share)."""


def credited_hashrate(hashrate: float, policy: Policy) -> float:
    """The hashrate the policy credits a registered hotkey with (0 when it earns nothing)."""
    if not (math.isfinite(hashrate) and hashrate > 0):
        return 0.0
    if policy.phase == 1:
        return hashrate
    minimum = policy.min_hashrate if policy.min_hashrate is not None else 0.0
    if hashrate < minimum:
        return 0.0
    return min(hashrate, policy.ceiling)


def miner_fractions(hashrates: Mapping[str, float], policy: Policy) -> dict[str, float]:
    """Each registered hotkey's fraction of the hashrate budget (sums to 1, or empty when nobody earns)."""
    credited = {hotkey: credited_hashrate(h, policy) for hotkey, h in hashrates.items()}
    total = math.fsum(credited.values())
    if total <= 0:
        return {}
    return {hotkey: k / total for hotkey, k in credited.items() if k > 0}


def invert_metagraph(metagraph: Mapping[int, str]) -> dict[str, int]:
    """hotkey → uid; a hotkey at two uids is a broken metagraph."""
    by_hotkey: dict[str, int] = {}
    for uid, hotkey in sorted(metagraph.items()):
        if hotkey in by_hotkey:
            raise PolicyError(f"hotkey {hotkey} appears at uids {by_hotkey[hotkey]} and {uid}")
        by_hotkey[hotkey] = uid
    return by_hotkey


def compute_weights(
    hashrates: Mapping[str, float],
    metagraph: Mapping[int, str],
    policy: Policy,
    burn_uid: int | None,
) -> Weights:
    """Apply the policy (see the module docstring for the exact rule)."""
    policy.validate()
    if burn_uid is not None and burn_uid not in metagraph:
        raise PolicyError(f"burn uid {burn_uid} is not in the metagraph")
    uid_of = invert_metagraph(metagraph)

    unregistered = sorted(hk for hk, h in hashrates.items() if hk not in uid_of and h > 0)
    registered = {hk: h for hk, h in hashrates.items() if hk in uid_of}
    credited = {hk: credited_hashrate(h, policy) for hk, h in registered.items()}
    fractions = miner_fractions(registered, policy)

    share = policy.hashrate_share
    # With no burn uid the earned part is scaled up to the whole weight: the fractions themselves
    # (share · fraction / share, without the product, which underflows to 0 for a tiny share).
    scale = share if burn_uid is not None or share == 0.0 else 1.0
    weights = {uid: 0.0 for uid in metagraph}
    hotkey_weights = {hk: 0.0 for hk in hashrates}
    for hotkey, fraction in fractions.items():
        hotkey_weights[hotkey] = scale * fraction
        weights[uid_of[hotkey]] += scale * fraction
    earned = share if fractions else 0.0  # the fractions sum to 1: no rounding dust
    unearned = 1.0 - earned
    if burn_uid is not None and unearned > 0:
        weights[burn_uid] += unearned
        return Weights(weights, hotkey_weights, credited, unregistered, burn_uid, unearned, earned)
    return Weights(weights, hotkey_weights, credited, unregistered, None, 0.0, earned)
