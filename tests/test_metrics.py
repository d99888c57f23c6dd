"""The proxy's Prometheus output: per-hotkey series with bounded cardinality, and the build info."""

from __future__ import annotations

import platform

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from proxy.metrics import OTHER_HOTKEYS, ProxyMetrics
from simulation.hotkeys import hotkeys


def scrape(metrics: ProxyMetrics) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """name → {sorted labels: value} from the real text exposition."""
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(generate_latest(metrics.registry).decode()):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def test_per_hotkey_series_keep_the_top_hotkeys_and_sum_the_rest_as_other() -> None:
    keys = hotkeys(6)
    metrics = ProxyMetrics(top_hotkeys=3)
    # hotkey i gets (i + 1) shares of difficulty 100 × (i + 1): a distinct total for each.
    for i, key in enumerate(keys):
        for _ in range(i + 1):
            metrics.count_hotkey(key, 100.0 * (i + 1))
    series = scrape(metrics)
    difficulty = {dict(k)["hotkey"]: v for k, v in series["ih_hotkey_accepted_difficulty_total"].items()}
    shares = {dict(k)["hotkey"]: v for k, v in series["ih_hotkey_accepted_shares_total"].items()}
    expected = {key: 100.0 * (i + 1) ** 2 for i, key in enumerate(keys)}
    top = sorted(keys, key=lambda k: expected[k], reverse=True)[:3]
    assert set(difficulty) == {*top, OTHER_HOTKEYS} == set(shares)
    for key in top:
        assert difficulty[key] == expected[key]
        assert shares[key] == keys.index(key) + 1
    rest = [k for k in keys if k not in top]
    assert difficulty[OTHER_HOTKEYS] == sum(expected[k] for k in rest)
    assert shares[OTHER_HOTKEYS] == sum(keys.index(k) + 1 for k in rest)
    # Nothing is lost to the bound: the totals equal every share counted.
    assert sum(difficulty.values()) == sum(expected.values())


def test_a_hotkey_overtaking_another_moves_it_into_other() -> None:
    a, b = hotkeys(2)
    metrics = ProxyMetrics(top_hotkeys=1)
    metrics.count_hotkey(a, 10.0)
    metrics.count_hotkey(b, 5.0)
    assert [h for h, _, _ in metrics.hotkey_series()] == [a, OTHER_HOTKEYS]
    metrics.count_hotkey(b, 10.0)
    assert metrics.hotkey_series() == [(b, 15.0, 2.0), (OTHER_HOTKEYS, 10.0, 1.0)]


def test_no_other_series_while_every_hotkey_fits() -> None:
    metrics = ProxyMetrics(top_hotkeys=5)
    assert "ih_hotkey_accepted_difficulty_total" not in scrape(metrics)
    for key in hotkeys(2):
        metrics.count_hotkey(key, 1.0)
    assert OTHER_HOTKEYS not in {h for h, _, _ in metrics.hotkey_series()}


def test_build_info_names_the_version_and_python() -> None:
    labels = dict(next(iter(scrape(ProxyMetrics())["ih_build_info"])))
    assert labels["python"] == platform.python_version()
    assert labels["version"] and labels["version"] != "unknown"
