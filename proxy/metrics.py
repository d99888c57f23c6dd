"""Prometheus metrics of one proxy process.

Each proxy instance owns its own registry so that several proxies (tests, benchmarks) can live in
one process without clashing. Metric names are the operators' contract: change them with care.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

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


class ProxyMetrics:
    """All metrics the proxy exports, grouped by the part that updates them."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry

        # Connections and sessions.
        self.connections_total = Counter("ih_connections", "ASIC connections accepted", registry=r)
        self.connections_refused = Counter(
            "ih_connections_refused", "ASIC connections refused by a limit", ["reason"], registry=r
        )
        self.sessions = Gauge("ih_sessions", "ASIC sessions by state", ["state"], registry=r)
        self.sessions_closed = Counter("ih_sessions_closed", "ASIC sessions closed, by reason", ["reason"], registry=r)
        self.authorize = Counter("ih_authorize", "mining.authorize outcomes", ["outcome"], registry=r)

        # Shares: counted on the share path with plain Python numbers (prometheus_client's objects
        # take a lock per call, ~1 µs each) and exported by `_ShareCollector` when Prometheus scrapes.
        # Everything here is touched only from the event loop's thread.
        self.share_counts: dict[tuple[str, str], int] = {}  # (outcome, reason) → shares
        self.accepted_difficulty = 0.0  # Σ assigned difficulty of pool-accepted shares
        self.block_candidates = 0
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

    def count_share(self, outcome: str, reason: str) -> None:
        key = (outcome, reason)
        self.share_counts[key] = self.share_counts.get(key, 0) + 1


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
        yield m.proxy_latency.family()
        yield m.upstream_latency.family()
