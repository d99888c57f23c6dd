"""Prometheus metrics of one proxy process.

Each proxy instance owns its own registry so that several proxies (tests, benchmarks) can live in
one process without clashing. Metric names are the operators' contract: change them with care.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Latency buckets in seconds: the proxy adds tens of microseconds, pools answer in milliseconds.
_LATENCY_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)


class ProxyMetrics:
    """All metrics the proxy exports, grouped by the part that updates them."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry

        # Connections and sessions.
        self.connections_total = Counter(
            "ih_connections", "ASIC connections accepted", registry=r
        )
        self.connections_refused = Counter(
            "ih_connections_refused", "ASIC connections refused by a limit", ["reason"], registry=r
        )
        self.sessions = Gauge(
            "ih_sessions", "ASIC sessions by state", ["state"], registry=r
        )
        self.sessions_closed = Counter(
            "ih_sessions_closed", "ASIC sessions closed, by reason", ["reason"], registry=r
        )
        self.authorize = Counter(
            "ih_authorize", "mining.authorize outcomes", ["outcome"], registry=r
        )

        # Shares.
        self.shares = Counter(
            "ih_shares", "Shares judged, by outcome and reason", ["outcome", "reason"], registry=r
        )
        self.accepted_difficulty = Counter(
            "ih_accepted_difficulty", "Sum of assigned difficulty of pool-accepted shares", registry=r
        )
        self.block_candidates = Counter(
            "ih_block_candidates", "Shares whose hash met the network target", registry=r
        )
        self.proxy_latency = Histogram(
            "ih_proxy_submit_latency_seconds",
            "Time the proxy adds per read that carried shares or verdicts: bytes in to bytes written "
            "(ASIC to pool and pool to ASIC are observed separately)",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_latency = Histogram(
            "ih_upstream_submit_latency_seconds",
            "Time from forwarding a submit to the pool's answer",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )

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
        self.ledger_spool_rows = Gauge(
            "ih_ledger_spool_rows", "Share rows in batches spooled to disk", registry=r
        )
        self.ledger_rows_written = Counter(
            "ih_ledger_rows_written", "Share rows written to ClickHouse", registry=r
        )
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
