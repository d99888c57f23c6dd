"""The proxy's HTTP port: Prometheus `/metrics`, `/healthz`, `/readyz`, and the validators' API
(`/api/v1/workers`, `/api/v1/coverage`; guide: docs/VALIDATORS.md).

Validators ask at the same moments (each epoch) for the same windows and pages, and one page costs
the ledger tens of milliseconds of CPU, on the proxy's own box when the ledger is embedded: the
answers of `/api/v1/workers` and `/api/v1/coverage` are shared (`Answers`). Identical requests in
flight wait for one query, and for `--api-cache-seconds` after it answered they get its bytes.

With a token (`--api-token`) the API wants `Authorization: Bearer <token>`, or HTTP Basic with the
token as the password (InfiniteHash's client sends `https://user:<token>@host` as Basic). `/metrics`,
`/healthz` and `/readyz` stay open: Prometheus, load balancers and container health checks probe
them without credentials, and they tell nothing about any miner.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import datetime as dt
import hmac
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn, cast

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ledger.queries import (
    DEFAULT_PAGE,
    MAX_PAGE,
    coverage_from_rows,
    coverage_json,
    coverage_query,
    split_window,
    workers_from_rows,
    workers_query,
)
from proxy.admission import address_key
from proxy.export import add_export_routes
from proxy.metrics import ProxyMetrics

log = logging.getLogger("proxy.http")

Query = Callable[[str, dict[str, Any]], Awaitable[list[tuple[Any, ...]]]]


@dataclass(frozen=True)
class Check:
    ok: bool
    reason: str


# What /readyz reports: check name → its state. Built by the app from its parts (pools, ledger,
# registry); cheap and synchronous, it reads state the parts already keep.
Readiness = Callable[[], Mapping[str, Check]]

# A "+hh:mm" offset sent unencoded arrives as " hh:mm" (a URL query's + is a space).
_SPACED_OFFSET = re.compile(r" (\d{2}(:?\d{2})?)$")


def _error(status: type[web.HTTPException], message: str) -> NoReturn:
    raise status(text=json.dumps({"error": message}), content_type="application/json")


def _parse_time(query: Mapping[str, str], name: str) -> dt.datetime:
    text = query.get(name)
    if not text:
        _error(web.HTTPBadRequest, f"{name} is required: ISO 8601 with Z or an offset, e.g. 2025-01-01T00:00:00Z")
    text = _SPACED_OFFSET.sub(r"+\1", text.strip())
    try:
        value = dt.datetime.fromisoformat(text.replace("z", "Z").replace("Z", "+00:00"))
    except ValueError:
        _error(web.HTTPBadRequest, f"{name} must be ISO 8601, got {text[:64]!r}")
    if value.tzinfo is None:
        _error(web.HTTPBadRequest, f"{name} needs a time zone: Z or an offset like +00:00, got {text[:64]!r}")
    if value.microsecond % 1000:
        _error(web.HTTPBadRequest, f"{name} is at most millisecond-precise, got {text[:64]!r}")
    return value.astimezone(dt.UTC)


def _parse_window(query: Mapping[str, str]) -> tuple[dt.datetime, dt.datetime]:
    start = _parse_time(query, "start_time")
    end = _parse_time(query, "end_time")
    if end <= start:
        _error(web.HTTPBadRequest, "end_time must be after start_time")
    return start, end


def _parse_int(query: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    text = query.get(name)
    if text is None or text == "":
        return default
    if not text.isdigit() or not low <= int(text) <= high:
        _error(web.HTTPBadRequest, f"{name} must be an integer from {low} to {high}, got {text[:32]!r}")
    return int(text)


def _token_matches(header: str, token: bytes) -> bool:
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer":
        given = value.encode()
    elif scheme.lower() == "basic":
        try:
            _, _, password = base64.b64decode(value, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        given = password.encode()
    else:
        return False
    return hmac.compare_digest(given, token)  # constant time: the token cannot be guessed byte by byte


class Answers:
    """Response bodies shared by identical requests: one computation answers every request that asks
    while it runs, and its bytes answer the same request for `ttl` seconds after (0: only the ones in
    flight). At most `max_bytes` are kept, the least recently used going first; failures are never
    kept. The computation runs as its own task, so a client that hangs up cancels nobody's answer."""

    def __init__(self, ttl: float, max_bytes: int = 32 << 20, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.max_bytes = max_bytes
        self._clock = clock
        self._kept: collections.OrderedDict[Hashable, tuple[float, bytes]] = collections.OrderedDict()
        self._kept_bytes = 0
        self._running: dict[Hashable, asyncio.Task[bytes]] = {}

    async def get(self, key: Hashable, compute: Callable[[], Awaitable[bytes]]) -> bytes:
        kept = self._kept.get(key)
        if kept is not None:
            if kept[0] > self._clock():
                self._kept.move_to_end(key)
                return kept[1]
            self._forget(key)
        task = self._running.get(key)
        if task is None:
            task = asyncio.ensure_future(compute())
            self._running[key] = task
            task.add_done_callback(lambda done: self._settle(key, done))
        return await asyncio.shield(task)

    def _settle(self, key: Hashable, task: asyncio.Task[bytes]) -> None:
        del self._running[key]
        if task.cancelled() or task.exception() is not None or self.ttl <= 0:
            return  # exception() marks it retrieved: waiters, if any, got it
        body = task.result()
        if len(body) > self.max_bytes:
            return
        self._kept[key] = (self._clock() + self.ttl, body)
        self._kept_bytes += len(body)
        while self._kept_bytes > self.max_bytes:
            self._forget(next(iter(self._kept)))

    def _forget(self, key: Hashable) -> None:
        _, body = self._kept.pop(key)
        self._kept_bytes -= len(body)


def build_app(
    metrics: ProxyMetrics,
    query: Query,
    database: str,
    *,
    api_token: str | None = None,
    readiness: Readiness | None = None,
    answers: Answers | None = None,
) -> web.Application:
    token = api_token.encode() if api_token else None
    shared = answers if answers is not None else Answers(ttl=0.0)

    @web.middleware
    async def require_token(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        open_path = not request.path.startswith("/api/")
        if token is not None and not open_path and not _token_matches(request.headers.get("Authorization", ""), token):
            return web.json_response(
                {"error": "this API needs a token: Authorization: Bearer <token>"},
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="ih-proxy"'},
            )
        return await handler(request)

    async def run(sql: str, parameters: dict[str, Any], what: str) -> list[tuple[Any, ...]]:
        try:
            return await query(sql, parameters)
        except Exception as exc:
            log.warning("%s query failed: %s", what, type(exc).__name__)
            _error(web.HTTPServiceUnavailable, "the ledger is not reachable right now; try again later")

    async def get_metrics(request: web.Request) -> web.Response:
        body = generate_latest(metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def get_workers(request: web.Request) -> web.Response:
        q = request.query
        pattern = q.get("pattern", "*") or "*"
        if len(pattern) > 256:
            _error(web.HTTPBadRequest, "pattern is 256 characters at most")
        start, end = _parse_window(q)
        limit = _parse_int(q, "limit", DEFAULT_PAGE, 1, MAX_PAGE)
        offset = _parse_int(q, "offset", 0, 0, 10**12)
        window = split_window(start, end)
        sql, parameters = workers_query(database, window, pattern, limit, offset)

        async def answer() -> bytes:
            rows = await run(sql, parameters, "workers")
            workers = [{"worker_id": w.worker, "hashrate": w.hashrate} for w in workers_from_rows(rows, window)]
            return json.dumps({"workers": workers}).encode()

        return _json(await shared.get(("workers", sql, _key(parameters)), answer))

    async def get_coverage(request: web.Request) -> web.Response:
        start, end = _parse_window(request.query)
        sql, parameters = coverage_query(database, start, end)

        async def answer() -> bytes:
            rows = await run(sql, parameters, "coverage")
            return json.dumps(coverage_json(coverage_from_rows(rows, start, end))).encode()

        return _json(await shared.get(("coverage", sql, _key(parameters)), answer))

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def readyz(request: web.Request) -> web.Response:
        checks = dict(readiness()) if readiness is not None else {}
        ready = all(c.ok for c in checks.values())
        body = {
            "status": "ready" if ready else "not ready",
            "checks": {name: {"ok": c.ok, "reason": c.reason} for name, c in checks.items()},
        }
        return web.json_response(body, status=200 if ready else 503)

    app = web.Application(middlewares=[require_token])
    app.router.add_get("/metrics", get_metrics)
    app.router.add_get("/api/v1/workers", get_workers)
    app.router.add_get("/api/v1/coverage", get_coverage)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    add_export_routes(app, query, database)
    return app


def _key(parameters: Mapping[str, Any]) -> Hashable:
    return tuple(sorted((name, repr(value)) for name, value in parameters.items()))


def _json(body: bytes) -> web.Response:
    return web.Response(body=body, content_type="application/json")


class _Counted(asyncio.Protocol):
    """One HTTP connection as the server counts it: admitted (or aborted, before a byte is read) when
    it is made, released when it is lost; everything between goes to aiohttp's handler, made only
    for an admitted connection (a flood of refused ones costs no handler each)."""

    __slots__ = ("_handler", "_key", "_make_handler", "_server")

    def __init__(self, server: HTTPServer, make_handler: Callable[[], asyncio.Protocol]) -> None:
        self._server = server
        self._make_handler = make_handler
        self._handler: asyncio.Protocol | None = None
        self._key: str | None = None  # its address's key once admitted

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        key = address_key(str(peer[0])) if isinstance(peer, tuple) and peer else "?"
        if not self._server.admit(key):
            cast(asyncio.Transport, transport).abort()
            return
        self._key = key
        self._handler = self._make_handler()
        self._handler.connection_made(transport)

    # After an admitted connection_made only (an aborted transport calls nothing but connection_lost).

    def data_received(self, data: bytes) -> None:
        cast(asyncio.Protocol, self._handler).data_received(data)

    def eof_received(self) -> bool | None:
        return cast(asyncio.Protocol, self._handler).eof_received()

    def pause_writing(self) -> None:
        cast(asyncio.Protocol, self._handler).pause_writing()

    def resume_writing(self) -> None:
        cast(asyncio.Protocol, self._handler).resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._key is None or self._handler is None:
            return  # refused: aiohttp never saw it
        self._server.release(self._key)
        self._key = None
        self._handler.connection_lost(exc)


class HTTPServer:
    """The HTTP port, with at most `max_connections` open, at most `max_per_ip` of them from one
    address (an IPv6 /64; 0: no such limit) and idle keep-alive connections closed after
    `idle_timeout`: clients that open connections and keep them cannot take the process's file
    descriptors, which the ASICs' sessions need, and one address cannot keep the validators out
    (aiohttp itself keeps an idle connection an hour, and counts none). The count is exact: taken
    when a connection is made, given back when it is lost, so connections opened at once cannot
    overshoot it. A refused connection is closed before a byte is read."""

    def __init__(
        self,
        app: web.Application,
        host: str,
        port: int,
        *,
        max_connections: int,
        max_per_ip: int,
        idle_timeout: float,
        metrics: ProxyMetrics,
    ) -> None:
        self._runner = web.AppRunner(app, access_log=None, keepalive_timeout=idle_timeout)
        self._host = host
        self._port = port
        self.port = port
        self.max_connections = max_connections
        self.max_per_ip = max_per_ip
        self.metrics = metrics
        self.open = 0
        self._per_ip: collections.Counter[str] = collections.Counter()
        self._full = False
        self._at_limit: set[str] = set()  # addresses refused since they last had no connection: logged once
        self._listener: asyncio.AbstractServer | None = None

    def admit(self, key: str) -> bool:
        """Whether a new connection from the address `key` may open (counted if so)."""
        full = self.open >= self.max_connections
        if full != self._full:  # one line per change, not per connection
            self._full = full
            if full:
                log.warning("HTTP: %d connections open, the limit; closing new ones", self.max_connections)
            else:
                log.info("HTTP: under %d connections again; accepting", self.max_connections)
        if full:
            self.metrics.http_connections_refused.labels("all").inc()
            return False
        if self.max_per_ip and self._per_ip[key] >= self.max_per_ip:
            if key not in self._at_limit:
                self._at_limit.add(key)
                log.warning("HTTP: %s holds %d connections, its limit; closing its new ones", key, self.max_per_ip)
            self.metrics.http_connections_refused.labels("address").inc()
            return False
        self.open += 1
        self._per_ip[key] += 1
        self.metrics.http_connections.set(self.open)
        return True

    def release(self, key: str) -> None:
        """A connection admitted from `key` is gone."""
        self.open -= 1
        self._per_ip[key] -= 1
        if self._per_ip[key] <= 0:
            del self._per_ip[key]
            self._at_limit.discard(key)
        self.metrics.http_connections.set(self.open)

    async def start(self) -> None:
        await self._runner.setup()
        server = self._runner.server
        assert server is not None

        def connection() -> asyncio.BaseProtocol:
            return _Counted(self, cast(Callable[[], asyncio.Protocol], server))

        loop = asyncio.get_running_loop()
        self._listener = await loop.create_server(connection, self._host, self._port, reuse_address=True)
        self.port = int(self._listener.sockets[0].getsockname()[1])  # the real port when 0 was asked for
        log.info("HTTP (metrics, API) on %s:%d", self._host, self.port)

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        await self._runner.cleanup()
