"""The ledger's rows for validators without ClickHouse access: NDJSON, one ledger row per line.

  GET /api/v1/shares?start_time=&end_time=[&hotkey=][&limit=&offset=]
  GET /api/v1/jobs?start_time=&end_time=[&limit=&offset=]     jobs first seen in the window
  GET /api/v1/jobs?keys=k1,k2,...                              the jobs of a page of shares

Times are ISO 8601 (UTC when no offset); the window is [start_time, end_time). Columns and their
JSON form: ledger/rows.py and ledger/export.py. Pages are ordered totally, so walking a window that
has ended with limit/offset neither skips nor repeats a row. The response is written as the ledger
answers, a chunk of rows at a time, so a large page never sits in memory whole.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any, Final

import msgspec
from aiohttp import web

from ledger.export import as_json, jobs_sql, shares_sql, to_ms
from ledger.rows import JOBS, SHARES, Column

log = logging.getLogger("proxy.export")

Query = Callable[[str, dict[str, Any]], Awaitable[list[tuple[Any, ...]]]]

DEFAULT_LIMIT: Final = 100_000
MAX_LIMIT: Final = 1_000_000
CHUNK_ROWS: Final = 10_000  # rows per ledger query while a page streams
MAX_KEYS: Final = 1000
_JOB_KEY = re.compile(r"[0-9a-f]{32}")
_encode = msgspec.json.Encoder().encode


def _time(request: web.Request, name: str) -> dt.datetime:
    text = request.query.get(name)
    if not text:
        raise web.HTTPBadRequest(text=f"{name} is required (ISO 8601)")
    try:
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise web.HTTPBadRequest(text=f"{name} must be ISO 8601, got {text[:64]!r}") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value


def _count(request: web.Request, name: str, default: int, most: int) -> int:
    text = request.query.get(name)
    if text is None:
        return default
    if not text.isdigit() or int(text) > most:
        raise web.HTTPBadRequest(text=f"{name} must be an integer from 0 to {most}")
    return int(text)


def _window(request: web.Request) -> dict[str, Any]:
    start, end = _time(request, "start_time"), _time(request, "end_time")
    if end <= start:
        raise web.HTTPBadRequest(text="end_time must be after start_time")
    return {"start_ms": to_ms(start.timestamp()), "end_ms": to_ms(end.timestamp())}


def add_export_routes(app: web.Application, query: Query, database: str) -> None:
    async def stream(
        request: web.Request, sql: str, params: dict[str, Any], columns: tuple[Column, ...], limit: int | None
    ) -> web.StreamResponse:
        response: web.StreamResponse | None = None
        offset = int(params.get("offset", 0))
        left = limit
        # Bounded: each round reads a full chunk or ends the page.
        for _ in range(MAX_LIMIT // CHUNK_ROWS + 1):
            size = CHUNK_ROWS if left is None else min(CHUNK_ROWS, left)
            chunk = params if limit is None else params | {"limit": size, "offset": offset}
            try:
                rows = await query(sql, chunk)
            except Exception as exc:
                log.warning("export query failed: %s", type(exc).__name__)
                if response is None:
                    raise web.HTTPServiceUnavailable(text="the ledger is not reachable right now") from None
                # Headers are gone: cut the body short; the client sees a truncated page and retries.
                raise
            if response is None:
                response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
                await response.prepare(request)
            if rows:
                await response.write(b"".join(_encode(as_json(columns, row)) + b"\n" for row in rows))
            if limit is None or left is None:
                break
            offset += len(rows)
            left -= len(rows)
            if len(rows) < size or left <= 0:
                break
        assert response is not None
        await response.write_eof()
        return response

    async def get_shares(request: web.Request) -> web.StreamResponse:
        params = _window(request)
        hotkey = request.query.get("hotkey")
        if hotkey is not None:
            params["hotkey"] = hotkey
        limit = _count(request, "limit", DEFAULT_LIMIT, MAX_LIMIT)
        params["offset"] = _count(request, "offset", 0, 2**62)
        sql = shares_sql(database, hotkey=hotkey is not None)
        return await stream(request, sql, params, SHARES, limit)

    async def get_jobs(request: web.Request) -> web.StreamResponse:
        keys_text = request.query.get("keys")
        if keys_text is not None:
            keys = sorted({k for k in keys_text.lower().split(",") if k})
            if len(keys) > MAX_KEYS or not all(_JOB_KEY.fullmatch(k) for k in keys):
                raise web.HTTPBadRequest(
                    text=f"keys must be up to {MAX_KEYS} job keys (32 hex digits), comma-separated"
                )
            return await stream(request, jobs_sql(database, by_keys=True), {"keys": keys}, JOBS, None)
        params = _window(request)
        limit = _count(request, "limit", DEFAULT_LIMIT, MAX_LIMIT)
        params["offset"] = _count(request, "offset", 0, 2**62)
        return await stream(request, jobs_sql(database, by_keys=False), params, JOBS, limit)

    app.router.add_get("/api/v1/shares", get_shares)
    app.router.add_get("/api/v1/jobs", get_jobs)
