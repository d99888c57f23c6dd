"""The proxy as one object with a small start/stop story (in the spirit of uvicorn's Server).

    app = ProxyApp(config)
    await app.start()   # ledger (migrations, spool replay), registry, Stratum listener, HTTP
    ...
    await app.stop()    # stop accepting, wait for in-flight verdicts, flush the ledger

`run(config)` does both around SIGTERM/SIGINT for the command line.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable
from typing import Any

from ledger.target import LedgerTarget
from ledger.workers import health_check_names
from proxy.collector import CollectorPolicy
from proxy.config import ProxyConfig, parse_host_port
from proxy.coverage import CoverageRecorder
from proxy.farm import FarmContext
from proxy.farm_net import FarmProxy
from proxy.hotkeys import BittensorRegistry, HotkeyRegistry, RegisteredHotkeys
from proxy.http import Answers, Check, HTTPServer, build_app
from proxy.ledger import LedgerWriter
from proxy.metrics import ProxyMetrics
from proxy.priority import BackgroundPriority
from proxy.server import Server
from proxy.session import SessionRules
from proxy.verdicts import VerdictSink

log = logging.getLogger("proxy")
# What a miner reads (error 20) for a share the proxy cannot ledger: it is never forwarded.
REFUSED_WHILE_LEDGER_FULL = "the proxy cannot ledger shares right now; try again shortly"
_PARENT_POLL = 1.0  # seconds between a worker's checks that its supervisor lives


class ProxyApp:
    def __init__(
        self,
        config: ProxyConfig,
        *,
        registry: HotkeyRegistry | None = None,
        metrics: ProxyMetrics | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics or ProxyMetrics()
        target = LedgerTarget.parse(config.clickhouse_url, data_dir=config.data_dir)
        self.ledger_target = target
        self.ledger = LedgerWriter(
            target.connect,
            spool_dir=config.ledger_spool_dir,
            database=target.database,
            ttl_days=config.ttl_days,
            budget=config.ledger_budget,
            metrics=self.metrics,
        )
        self._ledger_full: str | None = None
        self.registered: RegisteredHotkeys | None = None
        if config.require_registered:
            source = registry or BittensorRegistry(config.netuid, config.network)
            self.registered = RegisteredHotkeys(source, config.metagraph_refresh)
        self.rules = SessionRules(
            accounts=config.account,
            limits=config.limits,
            registered=self.registered,
            health_checks=health_check_names(config.account, config.health_check),
        )
        self.sink = VerdictSink(
            config.proxy_id,
            self.ledger.record,
            self.metrics,
            jobs_remembered=config.limits.jobs_remembered,
            commit=self.ledger.commit,
        )
        self.stratum: Server | FarmProxy
        if config.mode == "aggregate":  # farm mode: the ASICs of one hotkey share pool connections
            self.stratum = FarmProxy(config, FarmContext(self.rules, self.sink), self.metrics)
        else:
            self.stratum = Server(config, self.rules, self.sink, self.metrics, ledger_refusal=self.ledger_refusal)
        self.coverage = CoverageRecorder(
            config.proxy_id,
            sessions=self._mining_sessions,
            shares=lambda: sum(self.metrics.share_counts.values()),
            upstream_up=self._pool_reachable,
            record=self.ledger.record,
        )
        host, port = parse_host_port(config.metrics, "metrics")
        app = build_app(
            self.metrics,
            self.ledger.query,
            target.database,
            api_token=config.api_token,
            readiness=self.readiness,
            answers=Answers(config.api_cache_seconds),
        )
        self.http = HTTPServer(
            app,
            host,
            port,
            max_connections=config.limits.max_http_connections,
            max_per_ip=config.limits.max_http_connections_per_ip,
            idle_timeout=config.limits.http_idle_timeout,
            metrics=self.metrics,
        )
        self.priority = BackgroundPriority(config.background_nice, config.gil_switch_interval, config.cpu_slice)

    def ledger_refusal(self) -> str | None:
        """Why miners' shares are refused right now: the ledger cannot persist what they would earn.
        Checked once a second by the server's sweep; one log line per change."""
        full = self.ledger.backpressure
        if (full is None) != (self._ledger_full is None):
            if full is not None:
                log.error("ledger full: %s; refusing new shares until ClickHouse takes rows again", full)
            else:
                log.warning("ledger takes rows again; accepting shares")
            self.metrics.ledger_backpressure.set(0 if full is None else 1)
        self._ledger_full = full
        return None if full is None else REFUSED_WHILE_LEDGER_FULL

    def _mining_sessions(self) -> int:
        # Authorized sessions, as the session sweep last counted them for ih_sessions{state="mining"}.
        return int(self.metrics.registry.get_sample_value("ih_sessions", {"state": "mining"}) or 0)

    def _pool_reachable(self) -> bool:
        upstreams = self.stratum.upstreams
        return any(upstreams.is_healthy(url) for url in upstreams.urls)

    def readiness(self) -> dict[str, Check]:
        """What /readyz reports: a pool, the ledger (writing or spooling), the registry if required."""
        upstreams = self.stratum.upstreams
        healthy = [url.label for url in upstreams.urls if upstreams.is_healthy(url)]
        checks = {
            "pool": Check(bool(healthy), f"reachable: {', '.join(healthy)}" if healthy else "every pool is in backoff")
        }
        # Rows pile up in memory only when ClickHouse refuses them AND the spool cannot take them.
        held = self.ledger.queue_rows
        full = self.ledger.backpressure
        if full is not None:
            checks["ledger"] = Check(False, f"full, shares refused: {full}")
        elif held > 4 * self.config.ledger_batch_rows:
            checks["ledger"] = Check(False, f"cannot write nor spool: {held} rows held in memory")
        elif self.ledger.spooled_batches:
            checks["ledger"] = Check(True, f"spooling: {self.ledger.spooled_rows} rows wait for ClickHouse")
        elif not self.ledger.connected:
            checks["ledger"] = Check(True, "ClickHouse not connected; new rows will be spooled")
        else:
            checks["ledger"] = Check(True, "writing")
        if self.registered is not None:
            loaded = self.registered.loaded
            checks["registry"] = Check(loaded, "loaded" if loaded else "the subnet's hotkeys are not loaded yet")
        return checks

    @property
    def port(self) -> int:
        return self.stratum.port

    @property
    def http_port(self) -> int:
        return self.http.port

    async def start(self) -> None:
        log.info("ledger: %s", self.ledger_target)
        await self.ledger.start()
        if self.registered is not None:
            await self.registered.start()
        await self.http.start()
        await self.stratum.start()
        await self.coverage.start()
        self.priority.start()  # after the ledger's start: its engine's threads exist by now

    async def stop(self) -> None:
        log.info("stopping: no new sessions; waiting up to %.0fs for in-flight shares", self.config.shutdown_grace)
        await self.stratum.stop(self.config.shutdown_grace)
        await self.coverage.stop()
        self.priority.stop()
        if self.registered is not None:
            await self.registered.stop()
        await self.ledger.stop()
        await self.http.stop()
        log.info("stopped; ledger flushed (%d rows written)", self.ledger.rows_written)

    async def __aenter__(self) -> ProxyApp:
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()


async def serve(
    config: ProxyConfig,
    *,
    started: Callable[[ProxyApp], None] | None = None,
    parent_pid: int | None = None,
) -> None:
    """Run until SIGTERM or SIGINT, then shut down cleanly.

    `started` is called once the proxy listens (a worker tells its supervisor so). With
    `parent_pid`, the proxy also shuts down when that process is gone: a worker never outlives its
    supervisor (proxy/supervisor.py), holding the port and its spool."""
    app = ProxyApp(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await app.start()
    # What start-up built lives as long as the process, the sessions nearly so: frozen, the
    # collector's full passes never walk them again (issue 11: GC pauses on the loop).
    collector = CollectorPolicy(config.gc_freeze_interval, population=lambda: app.stratum.sessions)
    collector.start()
    watch = None if parent_pid is None else asyncio.create_task(_parent_gone(parent_pid, stop), name="parent-watch")
    try:
        if started is not None:
            started(app)
        await stop.wait()
    finally:
        if watch is not None:
            watch.cancel()
        collector.stop()
        await app.stop()


async def _parent_gone(parent_pid: int, stop: asyncio.Event) -> None:
    # Polled: an orphan is re-parented (getppid changes); a pipe or PR_SET_PDEATHSIG would need more
    # plumbing for the same second.
    while os.getppid() == parent_pid:
        await asyncio.sleep(_PARENT_POLL)
    log.warning("the supervisor (pid %d) is gone; shutting down", parent_pid)
    stop.set()


def run(
    config: ProxyConfig,
    *,
    started: Callable[[ProxyApp], None] | None = None,
    parent_pid: int | None = None,
) -> None:
    main = serve(config, started=started, parent_pid=parent_pid)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on every platform we ship
        asyncio.run(main)
    else:
        uvloop.run(main)
