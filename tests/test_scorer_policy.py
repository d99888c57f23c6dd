"""The weight policy (scorer.policy): tables of cases, plus properties that hold for any input."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scorer.policy import Policy, PolicyError, compute_weights, credited_hashrate

T = 1e12  # 1 TH/s
MG = {0: "owner", 1: "A", 2: "B", 3: "C"}
P1 = Policy()
P2 = Policy(phase=2, min_hashrate=100 * T)

# (id, hashrates, policy, burn uid, expected non-zero weights, expected burn_uid, expected unregistered)
CASES: list[tuple[str, dict[str, float], Policy, int | None, dict[int, float], int | None, list[str]]] = [
    ("p1 empty ledger → all to burn", {}, P1, 0, {0: 1.0}, 0, []),
    ("p1 empty ledger, no burn uid → all zero", {}, P1, None, {}, None, []),
    ("p1 one miner takes all", {"A": 100 * T}, P1, 0, {1: 1.0}, None, []),
    ("p1 proportional", {"A": 100 * T, "B": 300 * T}, P1, 0, {1: 0.25, 2: 0.75}, None, []),
    (
        "p1 hashrate_share 0.8 → 0.2 burns",
        {"A": 100 * T, "B": 300 * T},
        Policy(hashrate_share=0.8),
        0,
        {0: 0.2, 1: 0.2, 2: 0.6},
        0,
        [],
    ),
    (
        "p1 hashrate_share 0.8, no burn uid → rescaled to 1",
        {"A": 100 * T, "B": 300 * T},
        Policy(hashrate_share=0.8),
        None,
        {1: 0.25, 2: 0.75},
        None,
        [],
    ),
    ("p1 unregistered earns nothing", {"A": 100 * T, "X": 900 * T}, P1, 0, {1: 1.0}, None, ["X"]),
    ("p1 only unregistered → all to burn", {"X": 900 * T, "Y": 1.0}, P1, 0, {0: 1.0}, 0, ["X", "Y"]),
    ("p1 zero hashrate earns nothing", {"A": 0.0, "B": 10 * T}, P1, 0, {2: 1.0}, None, []),
    ("p1 hashrate_share 0 → all to burn", {"A": 10 * T}, Policy(hashrate_share=0.0), 0, {0: 1.0}, 0, []),
    (
        "p1 configured burn uid is a miner too",
        {"A": 100 * T, "B": 100 * T},
        Policy(hashrate_share=0.5),
        1,
        {1: 0.75, 2: 0.25},
        1,
        [],
    ),
    (
        "p2 below minimum earns nothing, eligible split equally (ceiling = minimum)",
        {"A": 50 * T, "B": 100 * T, "C": 500 * T},
        P2,
        0,
        {2: 0.5, 3: 0.5},
        None,
        [],
    ),
    ("p2 exactly the minimum is eligible", {"A": 100 * T}, P2, 0, {1: 1.0}, None, []),
    ("p2 nobody eligible → all to burn", {"A": 50 * T, "B": 99.99 * T}, P2, 0, {0: 1.0}, 0, []),
    ("p2 nobody eligible, no burn uid → all zero", {"A": 50 * T}, P2, None, {}, None, []),
    (
        "p2 ceiling above minimum: credited min(h, ceiling)",
        {"A": 150 * T, "B": 1000 * T, "C": 10 * T},
        Policy(phase=2, min_hashrate=100 * T, max_hashrate=200 * T),
        0,
        {1: 150 / 350, 2: 200 / 350},
        None,
        [],
    ),
    (
        "p2 hashrate_share 0.5",
        {"A": 50 * T, "B": 100 * T, "C": 500 * T},
        Policy(phase=2, min_hashrate=100 * T, hashrate_share=0.5),
        0,
        {0: 0.5, 2: 0.25, 3: 0.25},
        0,
        [],
    ),
    (
        "p2 minimum 0 with a ceiling",
        {"A": 50 * T, "B": 500 * T},
        Policy(phase=2, min_hashrate=0.0, max_hashrate=100 * T),
        0,
        {1: 50 / 150, 2: 100 / 150},
        None,
        [],
    ),
    (
        "p2 unregistered above the minimum earns nothing",
        {"X": 500 * T, "A": 100 * T},
        P2,
        0,
        {1: 1.0},
        None,
        ["X"],
    ),
]


@pytest.mark.parametrize(
    ("hashrates", "policy", "burn_uid", "expected", "expected_burn", "unregistered"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_weight_table(
    hashrates: dict[str, float],
    policy: Policy,
    burn_uid: int | None,
    expected: dict[int, float],
    expected_burn: int | None,
    unregistered: list[str],
) -> None:
    result = compute_weights(hashrates, MG, policy, burn_uid)
    assert set(result.weights) == set(MG), "every uid appears, zeros included"
    for uid in MG:
        assert result.weights[uid] == pytest.approx(expected.get(uid, 0.0), abs=1e-12), uid
    assert result.burn_uid == expected_burn
    assert result.unregistered == unregistered
    total = sum(result.weights.values())
    assert total == pytest.approx(1.0 if expected else 0.0, abs=1e-12)
    for hotkey in unregistered:
        assert result.hotkey_weights[hotkey] == 0.0
    # a hotkey's weight is the weight of its uid, minus what the uid got as the burn uid
    for hotkey, weight in result.hotkey_weights.items():
        hotkey_uid = next((u for u, hk in MG.items() if hk == hotkey), None)
        if hotkey_uid is not None:
            burned = result.burned if hotkey_uid == result.burn_uid else 0.0
            assert weight == pytest.approx(result.weights[hotkey_uid] - burned, abs=1e-12)


@pytest.mark.parametrize(
    ("hashrate", "policy", "credited"),
    [
        (5 * T, P1, 5 * T),
        (0.0, P1, 0.0),
        (-1.0, P1, 0.0),
        (math.nan, P1, 0.0),
        (math.inf, P1, 0.0),
        (99 * T, P2, 0.0),
        (100 * T, P2, 100 * T),
        (1000 * T, P2, 100 * T),
        (1000 * T, Policy(phase=2, min_hashrate=100 * T, max_hashrate=300 * T), 300 * T),
        (200 * T, Policy(phase=2, min_hashrate=100 * T, max_hashrate=300 * T), 200 * T),
    ],
)
def test_credited_hashrate(hashrate: float, policy: Policy, credited: float) -> None:
    assert credited_hashrate(hashrate, policy) == credited


@pytest.mark.parametrize(
    ("policy", "burn_uid", "metagraph", "message"),
    [
        (Policy(phase=2), 0, MG, "minimum"),
        (Policy(phase=3), 0, MG, "phase"),
        (Policy(phase=2, min_hashrate=100 * T, max_hashrate=50 * T), 0, MG, "must not be below"),
        (Policy(hashrate_share=1.5), 0, MG, "hashrate_share"),
        (Policy(hashrate_share=-0.1), 0, MG, "hashrate_share"),
        (Policy(phase=2, min_hashrate=-1.0), 0, MG, "min_hashrate"),
        (P1, 9, MG, "burn uid 9"),
        (P1, 0, {0: "owner", 1: "A", 2: "A"}, "appears at uids 1 and 2"),
    ],
)
def test_policy_errors(policy: Policy, burn_uid: int, metagraph: dict[int, str], message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        compute_weights({"A": T}, metagraph, policy, burn_uid)


def test_over_committing_earns_nothing_extra_in_phase_2() -> None:
    low = compute_weights({"A": 100 * T, "B": 100 * T}, MG, P2, 0)
    high = compute_weights({"A": 100 * T, "B": 10_000 * T}, MG, P2, 0)
    assert low.weights == high.weights


hotkeys = st.sampled_from(["owner", "A", "B", "C", "X", "Y"])
rates = st.one_of(st.just(0.0), st.floats(min_value=1.0, max_value=1e18, allow_nan=False))
policies = st.one_of(
    st.builds(Policy, hashrate_share=st.floats(0.0, 1.0)),
    st.builds(
        lambda m, extra, s: Policy(phase=2, min_hashrate=m, max_hashrate=m + extra, hashrate_share=s),
        st.floats(0.0, 1e16),
        st.floats(1.0, 1e16),
        st.floats(0.0, 1.0),
    ),
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(hotkeys, rates, max_size=6), policies, st.sampled_from([None, 0, 1, 3]))
def test_weights_always_form_a_distribution(hashrates: dict[str, float], policy: Policy, burn: int | None) -> None:
    result = compute_weights(hashrates, MG, policy, burn)
    assert set(result.weights) == set(MG)
    assert all(w >= 0 for w in result.weights.values())
    total = sum(result.weights.values())
    if burn is None and result.earned == 0:
        assert total == 0
    else:
        assert total == pytest.approx(1.0, abs=1e-9)
    assert all(result.hotkey_weights[hk] == 0 for hk in ("X", "Y") if hk in hashrates)
