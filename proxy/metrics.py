"""Prometheus metrics of one proxy process.

Each proxy instance owns its own registry so that several proxies (tests, benchmarks) can live in
one process without clashing. Metric names are the operators' contract: change them with care.
"""

from __future__ import annotations

import platform
from bisect import bisect_left
from collections.abc import Iterator, Mapping
from heapq import nlargest
from importlib.metadata import PackageNotFoundError, version

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from proxy.upstream import PoolURL

# Latency buckets in seconds: the proxy adds tens of microseconds, pools answer in milliseconds.
_LATENCY_BUCKETS = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)


# Per-hotkey series: the hotkeys with the most accepted difficulty get their own label value, the rest
# are summed under OTHER_HOTKEYS, so a flood of hotkeys cannot grow the scrape without bound.
TOP_HOTKEYS = 50
OTHER_HOTKEYS = "other"


def _package_version() -> str:
    try:
        return version("infinitehash-proxy")
    except PackageNotFoundError:
        return "unknown"


class ProxyMetrics:
    """All metrics the proxy exports, grouped by the part that updates them."""

    def __init__(self, registry: CollectorRegistry | None = None, *, top_hotkeys: int = TOP_HOTKEYS) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry

        Info("ih_build", "The proxy's version and Python", registry=r).info(
            {"version": _package_version(), "python": platform.python_version()}
        )

        # Connections and sessions.
        self.connections_total = Counter("ih_connections", "ASIC connections accepted", registry=r)
        self.connections_refused = Counter(
            "ih_connections_refused", "ASIC connections refused by a limit", ["reason"], registry=r
        )
        self.sessions = Gauge("ih_sessions", "ASIC sessions by state", ["state"], registry=r)
        self.address_strikes = Counter(
            "ih_address_strikes", "Sessions closed for abuse, each a strike against its source address", registry=r
        )
        self.addresses_refused = Gauge(
            "ih_addresses_refused", "Source addresses refused new connections for their strikes", registry=r
        )
        self.http_connections = Gauge(
            "ih_http_connections", "Connections open to the HTTP port (metrics, API)", registry=r
        )
        self.http_connections_refused = Counter(
            "ih_http_connections_refused",
            "Connections to the HTTP port closed at accept, by limit: all (max_http_connections) or address "
            "(max_http_connections_per_ip)",
            ["limit"],
            registry=r,
        )
        for limit in ("all", "address"):  # exported at 0 from the start: an alert's increase() sees the first
            self.http_connections_refused.labels(limit)
        self.sessions_closed = Counter("ih_sessions_closed", "ASIC sessions closed, by reason", ["reason"], registry=r)
        self.authorize = Counter("ih_authorize", "mining.authorize outcomes", ["outcome"], registry=r)

        # Shares: counted on the share path with plain Python numbers (prometheus_client's objects
        # take a lock per call, ~1 µs each) and exported by `_ShareCollector` when Prometheus scrapes.
        # Everything here is touched only from the event loop's thread.
        self.share_counts: dict[tuple[str, str], int] = {}  # (outcome, reason) → shares
        self.accepted_difficulty = 0.0  # Σ assigned difficulty of pool-accepted shares
        self.block_candidates = 0
        # hotkey → [accepted difficulty, accepted shares]; the top `top_hotkeys` are exported by name.
        self.hotkey_counts: dict[str, list[float]] = {}
        self.top_hotkeys = top_hotkeys
        self.proxy_latency = LocalHistogram(
            "ih_proxy_submit_latency_seconds",
            "Time the proxy adds per read that carried shares or verdicts: bytes in to bytes written "
            "(ASIC to pool and pool to ASIC are observed separately)",
        )
        self.upstream_latency = LocalHistogram(
            "ih_upstream_submit_latency_seconds", "Time from forwarding a submit to the pool's answer"
        )
        r.register(_ShareCollector(self))

        # Upstream pools.
        self.upstream_up = Gauge(
            "ih_upstream_up", "1 when the pool URL is considered healthy", ["upstream"], registry=r
        )
        self.upstream_connects = Counter(
            "ih_upstream_connects", "Upstream connection attempts, by result", ["upstream", "result"], registry=r
        )

        # Ledger.
        self.ledger_queue = Gauge(
            "ih_ledger_queue_rows", "Share rows waiting in memory for the next ledger batch", registry=r
        )
        self.ledger_spool_batches = Gauge(
            "ih_ledger_spool_batches", "Batches spooled to disk waiting for ClickHouse", registry=r
        )
        self.ledger_spool_rows = Gauge("ih_ledger_spool_rows", "Share rows in batches spooled to disk", registry=r)
        self.ledger_backpressure = Gauge(
            "ih_ledger_backpressure",
            "1 while the ledger cannot take more rows and miners' shares are refused",
            registry=r,
        )
        self.ledger_rows_written = Counter("ih_ledger_rows_written", "Share rows written to ClickHouse", registry=r)
        self.ledger_flush_seconds = Histogram(
            "ih_ledger_flush_seconds",
            "Time to write one batch to ClickHouse",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=r,
        )
        # Share received → its batch committed in ClickHouse. Observed twice per written batch, not
        # per row (too costly at 20k shares/s): row="oldest" is the batch's oldest row, the worst lag
        # of any row in it; row="newest" its newest row, the best.
        self.ledger_ingest_lag = Histogram(
            "ih_ledger_ingest_lag_seconds",
            "Share received → its batch committed in ClickHouse, for each written batch's oldest and newest row",
            ["row"],
            buckets=(0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0),
            registry=r,
        )
        self.ledger_flush_errors = Counter(
            "ih_ledger_flush_errors", "Batches that ClickHouse did not take (then spooled)", registry=r
        )

    def count_sessions(self, states: Mapping[str, int]) -> None:
        """`ih_sessions` from one sweep's count of sessions by state (both modes' sweeps)."""
        for state in ("handshake", "subscribed", "mining"):
            self.sessions.labels(state).set(states.get(state, 0))

    def pool_health(self, url: PoolURL, healthy: bool) -> None:
        """`Upstreams.on_health`: `ih_upstream_up` follows each URL's health."""
        self.upstream_up.labels(url.label).set(1 if healthy else 0)

    def count_share(self, outcome: str, reason: str) -> None:
        key = (outcome, reason)
        self.share_counts[key] = self.share_counts.get(key, 0) + 1

    def count_hotkey(self, hotkey: str, difficulty: float) -> None:
        """One pool-accepted share of `hotkey` at `difficulty`: a dict lookup and two adds."""
        counts = self.hotkey_counts.get(hotkey)
        if counts is None:
            self.hotkey_counts[hotkey] = [difficulty, 1.0]
        else:
            counts[0] += difficulty
            counts[1] += 1.0

    def hotkey_series(self) -> list[tuple[str, float, float]]:
        """(hotkey, accepted difficulty, accepted shares): the top hotkeys by difficulty, then `other`.

        A hotkey moves between its own series and `other` as the ranking changes; `sum by ()` over
        both stays a true counter.
        """
        top = nlargest(self.top_hotkeys, self.hotkey_counts.items(), key=lambda item: item[1][0])
        out = [(hotkey, counts[0], counts[1]) for hotkey, counts in top]
        named = {hotkey for hotkey, _, _ in out}
        rest = [counts for hotkey, counts in self.hotkey_counts.items() if hotkey not in named]
        if rest:
            out.append((OTHER_HOTKEYS, sum(c[0] for c in rest), sum(c[1] for c in rest)))
        return out


def reason_label(reason: str) -> str:
    """A bounded label for metrics: the reason up to its first detail."""
    return reason.split("(")[0].split(":")[0].strip()[:48] or "unknown"


class LocalHistogram:
    """A histogram for the event loop's thread only: an observation is a bisect and two adds."""

    __slots__ = ("buckets", "counts", "help", "name", "sum")

    def __init__(self, name: str, help: str, buckets: tuple[float, ...] = _LATENCY_BUCKETS) -> None:
        self.name = name
        self.help = help
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.buckets, value)] += 1  # first bucket with value <= its bound
        self.sum += value

    def family(self) -> HistogramMetricFamily:
        cumulative, running = [], 0
        for bound, count in zip((*self.buckets, float("inf")), self.counts, strict=True):
            running += count
            cumulative.append(("+Inf" if bound == float("inf") else repr(bound), running))
        return HistogramMetricFamily(self.name, self.help, buckets=cumulative, sum_value=self.sum)


class _ShareCollector(Collector):
    def __init__(self, metrics: ProxyMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self._metrics
        shares = CounterMetricFamily("ih_shares", "Shares judged, by outcome and reason", labels=["outcome", "reason"])
        for (outcome, reason), count in sorted(m.share_counts.items()):
            shares.add_metric([outcome, reason], count)
        yield shares
        yield CounterMetricFamily(
            "ih_accepted_difficulty", "Sum of assigned difficulty of pool-accepted shares", value=m.accepted_difficulty
        )
        yield CounterMetricFamily(
            "ih_block_candidates", "Shares whose hash met the network target", value=m.block_candidates
        )
        difficulty = CounterMetricFamily(
            "ih_hotkey_accepted_difficulty",
            f"Sum of assigned difficulty of pool-accepted shares, by hotkey (top {m.top_hotkeys}, the rest as other)",
            labels=["hotkey"],
        )
        shares_by_hotkey = CounterMetricFamily(
            "ih_hotkey_accepted_shares",
            f"Pool-accepted shares, by hotkey (top {m.top_hotkeys}, the rest as other)",
            labels=["hotkey"],
        )
        for hotkey, accepted_difficulty, accepted_shares in m.hotkey_series():
            difficulty.add_metric([hotkey], accepted_difficulty)
            shares_by_hotkey.add_metric([hotkey], accepted_shares)
        yield difficulty
        yield shares_by_hotkey
        yield m.proxy_latency.family()
        yield m.upstream_latency.family()
