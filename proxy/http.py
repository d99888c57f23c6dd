"""The proxy's HTTP port: Prometheus `/metrics` and the validators' `/api/v1/workers`."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from proxy.export import add_export_routes
from proxy.metrics import ProxyMetrics

log = logging.getLogger("proxy.http")

Query = Callable[[str, dict[str, Any]], Awaitable[list[tuple[Any, ...]]]]

# The per-minute aggregate is what this reads: windows are aligned to whole minutes.
WORKERS_SQL = """
SELECT worker, sum(accepted_difficulty) AS difficulty
FROM {database}.shares_per_minute
WHERE minute >= toStartOfMinute({{start:DateTime64(3, 'UTC')}}) AND minute < {{end:DateTime64(3, 'UTC')}}
  AND worker LIKE {{pattern:String}}
GROUP BY worker
HAVING difficulty > 0
ORDER BY worker
"""


def glob_to_like(pattern: str) -> str:
    """A shell glob (`*`, `?`) as a SQL LIKE pattern, with LIKE's own wildcards taken literally."""
    out = []
    for char in pattern:
        if char in "\\%_":
            out.append("\\" + char)
        elif char == "*":
            out.append("%")
        elif char == "?":
            out.append("_")
        else:
            out.append(char)
    return "".join(out)


def _parse_time(text: str | None, name: str) -> dt.datetime:
    if not text:
        raise web.HTTPBadRequest(text=f"{name} is required (ISO 8601)")
    try:
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise web.HTTPBadRequest(text=f"{name} must be ISO 8601, got {text[:64]!r}") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)


def build_app(metrics: ProxyMetrics, query: Query, database: str) -> web.Application:
    async def get_metrics(request: web.Request) -> web.Response:
        body = generate_latest(metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def get_workers(request: web.Request) -> web.Response:
        pattern = request.query.get("pattern", "*")
        start = _parse_time(request.query.get("start_time"), "start_time")
        end = _parse_time(request.query.get("end_time"), "end_time")
        if end <= start:
            raise web.HTTPBadRequest(text="end_time must be after start_time")
        try:
            rows = await query(
                WORKERS_SQL.format(database=database),
                {"start": start, "end": end, "pattern": glob_to_like(pattern)},
            )
        except Exception as exc:
            log.warning("workers query failed: %s", type(exc).__name__)
            raise web.HTTPServiceUnavailable(text="the ledger is not reachable right now") from None
        seconds = (end - start).total_seconds()
        workers = [{"worker_id": worker, "hashrate": difficulty * 2**32 / seconds} for worker, difficulty in rows]
        return web.json_response({"workers": workers})

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    app = web.Application()
    app.router.add_get("/metrics", get_metrics)
    app.router.add_get("/api/v1/workers", get_workers)
    app.router.add_get("/healthz", health)
    add_export_routes(app, query, database)
    return app


class HTTPServer:
    def __init__(self, app: web.Application, host: str, port: int) -> None:
        self._runner = web.AppRunner(app, access_log=None)
        self._host = host
        self._port = port
        self.port = port

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port, reuse_address=True)
        await site.start()
        self.port = int(self._runner.addresses[0][1])  # the real port when 0 was asked for
        log.info("HTTP (metrics, API) on %s:%d", self._host, self.port)

    async def stop(self) -> None:
        await self._runner.cleanup()
