"""Where the hashrate comes from: the ClickHouse ledger, or the proxy's HTTP API.

ClickHouse (``--clickhouse-url``), the same forms as the proxy:

* ``http://user:pass@host:port/db`` or ``https://…`` — a ClickHouse server (db default
  ``infinitehash``; port default 8123, or 8443 for https);
* ``chdb:///abs/path`` or ``chdb://rel/path`` — an embedded chdb directory (database
  ``infinitehash``), opened in this process (a relative path is relative to the working directory).
  The default, ``chdb://./data/ledger``, is where the proxy keeps its embedded ledger when it runs
  with its default data dir from the same working directory. ClickHouse's embedded engine serves one
  process per directory: while the proxy has that directory open, score through the proxy instead
  (``--proxy-api``), or point both at a ClickHouse server.

The ledger query reads ``shares_per_minute`` (a SummingMergeTree, so it always aggregates with
``sum() … GROUP BY``) over the minute-aligned window ``minute >= start AND minute < end``.

Proxy API (``--proxy-api URL``): ``GET /api/v1/workers?pattern=&limit=500&start_time=&end_time=&offset=``,
paged the way the InfiniteHash validators' client pages it (``offset`` advances by ``limit`` until a
page is shorter than ``limit``), gives each worker's H/s over the window; the hotkey is the middle
part of ``<account>.<hotkey>.<workerID>``. That API does not report share counts, so ``shares`` is
None (``null`` in JSON) for this source.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote, unquote, urlsplit

import aiohttp

from ledger.target import LedgerTarget
from ledger.workers import hotkey_of

from .hashrate import HotkeyStat, Window, WorkerStat, by_hotkey, hashrate

DEFAULT_CLICKHOUSE_URL = "chdb://./data/ledger"
_READ_TIMEOUT = 120.0


class SourceError(RuntimeError):
    """The hashrate source could not be read (the message never carries a secret)."""


class HashrateSource(Protocol):
    def describe(self) -> str:
        """Where the figures come from, safe to print (no password)."""
        ...

    async def fetch(self, window: Window) -> list[HotkeyStat]:
        """Per-hotkey (and per-worker) hashrate over the window."""
        ...


def parse_clickhouse_url(url: str) -> LedgerTarget:
    """``--clickhouse-url`` by the one parser (ledger/target.py); errors never repeat the password."""
    return LedgerTarget.parse(url.strip(), data_dir=Path("."))


LEDGER_QUERY = """
SELECT hotkey, worker,
       sum(accepted_difficulty) AS difficulty,
       sum(accepted_shares) AS accepted,
       sum(rejected_shares) AS rejected
FROM `{database}`.shares_per_minute
WHERE minute >= toDateTime({{start:UInt32}}, 'UTC') AND minute < toDateTime({{end:UInt32}}, 'UTC')
  AND hotkey != ''
GROUP BY hotkey, worker
ORDER BY hotkey, worker
"""


def ledger_workers(client: Any, database: str, window: Window) -> list[WorkerStat]:
    """Run the window query on an open clickhouse-connect client (chdb or server)."""
    result = client.query(
        LEDGER_QUERY.format(database=database),  # a plain identifier: LedgerTarget.parse checks it
        parameters={"start": int(window.start.timestamp()), "end": int(window.end.timestamp())},
    )
    seconds = window.seconds
    return [
        WorkerStat(
            worker=str(worker),
            hotkey=str(hotkey),
            hashrate=hashrate(float(difficulty), seconds),
            shares=int(accepted),
            rejected=int(rejected),
            accepted_difficulty=float(difficulty),
        )
        for hotkey, worker, difficulty, accepted, rejected in result.result_rows
    ]


class ClickHouseSource:
    """Reads the ledger. Opens a client per pass (and closes it), so a loop never pins the engine."""

    def __init__(self, url: LedgerTarget) -> None:
        self.url = url

    def describe(self) -> str:
        return f"ledger {self.url.redacted()}"

    def _connect(self) -> Any:
        # Long reads: a 6 h window over a busy ledger may take a while on a server.
        return self.url.connect(create=False, send_receive_timeout=_READ_TIMEOUT)

    async def fetch(self, window: Window) -> list[HotkeyStat]:
        try:
            client = self._connect()
        except Exception as exc:
            hint = ""
            if self.url.kind == "chdb":
                hint = (
                    " (an embedded ledger directory can be open in one process at a time: while the proxy"
                    " runs on it, use --proxy-api, or a ClickHouse server for both)"
                )
            raise SourceError(f"cannot open {self.describe()}: {_scrub(exc, self.url.secrets())}{hint}") from None
        try:
            return by_hotkey(ledger_workers(client, self.url.database, window))
        except Exception as exc:
            raise SourceError(f"ledger query failed on {self.describe()}: {_scrub(exc, self.url.secrets())}") from None
        finally:
            client.close()


def _scrub(exc: BaseException, secrets: list[str]) -> str:
    text = f"{type(exc).__name__}: {exc}"
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***").replace(quote(secret, safe=""), "***")
    return text[:500]


# As the InfiniteHash validators' client (validator/worker_windows.py): pages of 500, ISO times.
PAGE_SIZE = 500
MAX_PAGES = 1000
"""A bound on pages (500,000 workers): a server that never sends a short page cannot loop us forever."""

log = logging.getLogger("scorer.sources")


async def get_json(
    session: aiohttp.ClientSession, url: str, params: Mapping[str, str | int], shown: str, secrets: list[str]
) -> Any:
    """One GET of a proxy API answering JSON; any failure is a SourceError that names `shown`, no secret."""
    try:
        async with session.get(url, params=dict(params)) as response:
            if response.status != 200:
                raise SourceError(f"{shown} answered HTTP {response.status}")
            return await response.json(content_type=None)
    except SourceError:
        raise
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise SourceError(f"cannot read {shown}: {_scrub(exc, secrets)}") from None


def hotkey_of_worker(worker_id: str) -> str | None:
    """The hotkey of ``<account>.<hotkey>.<workerID>`` by the one worker-name rule (None: not creditable)."""
    return hotkey_of(worker_id)


def _hashrate_value(worker_id: str, rate: Any) -> float:
    """H/s: integers in the current API, floats in older proxies; null or missing is 0, as theirs reads it."""
    if rate is None:
        return 0.0
    if isinstance(rate, bool) or not isinstance(rate, (int, float, str)):
        raise SourceError(f"proxy API: bad hashrate for {worker_id!r}")
    try:
        value = float(rate)
    except ValueError:
        raise SourceError(f"proxy API: bad hashrate for {worker_id!r}") from None
    if not math.isfinite(value) or value < 0:
        raise SourceError(f"proxy API: bad hashrate for {worker_id!r}")
    return value


def workers_list(body: Any) -> list[dict[str, Any]]:
    """The ``workers`` list of one answer, every entry an object with a string ``worker_id``."""
    if not isinstance(body, dict) or not isinstance(body.get("workers"), list):
        raise SourceError('proxy API answered without a "workers" list')
    for item in body["workers"]:
        if not isinstance(item, dict) or not isinstance(item.get("worker_id"), str):
            raise SourceError("proxy API: a workers entry is not an object with a worker_id")
    return list(body["workers"])


def parse_workers(records: list[dict[str, Any]]) -> list[WorkerStat]:
    """Worker entries → worker figures (shares unknown); names without a hotkey are dropped."""
    out: list[WorkerStat] = []
    for item in records:
        worker_id = str(item["worker_id"])
        value = _hashrate_value(worker_id, item.get("hashrate"))
        hotkey = hotkey_of_worker(worker_id)
        if hotkey is None:
            continue  # not a name with a hotkey: it cannot be credited to anyone
        out.append(WorkerStat(worker=worker_id, hotkey=hotkey, hashrate=value, shares=None))
    return out


def parse_workers_response(body: Any) -> list[WorkerStat]:
    """``{"workers": [{"worker_id": …, "hashrate": …}]}`` → worker figures (shares unknown)."""
    return parse_workers(workers_list(body))


def api_time(moment: datetime) -> str:
    """``2025-01-01T06:00:00+00:00``: what the validators' client sends (``isoformat(timespec="seconds")``)."""
    return moment.astimezone(UTC).isoformat(timespec="seconds")


class ProxyApiSource:
    """Reads ``GET /api/v1/workers`` from a running proxy, page by page."""

    def __init__(
        self,
        base_url: str,
        pattern: str = "*",
        timeout: float = 30.0,
        page_size: int = PAGE_SIZE,
        max_pages: int = MAX_PAGES,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("--proxy-api must be an http(s):// URL")
        if page_size < 1 or max_pages < 1:
            raise ValueError("page_size and max_pages must be at least 1")
        path = parts.path.rstrip("/")
        if not path.endswith("/api/v1/workers"):
            path += "/api/v1/workers"
        self.url = f"{parts.scheme}://{parts.netloc}{path}"
        self.shown = f"{parts.scheme}://{parts.hostname}{':' + str(parts.port) if parts.port else ''}{path}"
        self.secrets = [unquote(parts.password)] if parts.password else []
        self.pattern = pattern
        self.timeout = timeout
        self.page_size = page_size
        self.max_pages = max_pages
        self.pages_read = 0
        """Pages the last :meth:`fetch` asked for."""

    def describe(self) -> str:
        return f"proxy API {self.shown}"

    async def _page(self, session: aiohttp.ClientSession, params: dict[str, str | int]) -> list[dict[str, Any]]:
        where = f"{self.describe()} at offset {params['offset']}"
        return workers_list(await get_json(session, self.url, params, where, self.secrets))

    async def fetch_records(self, window: Window) -> list[dict[str, Any]]:
        """Every worker entry of the window, each once: pages until one is shorter than the page size.

        A server that ignores ``limit`` and answers everything at offset 0 is taken at its word
        (that page holds the whole list; a warning says so) and not asked again; a server whose
        pages repeat workers (``offset`` ignored) or never end is an error, never a double count.
        """
        base: dict[str, str | int] = {
            "pattern": self.pattern,
            "limit": self.page_size,
            "start_time": api_time(window.start),
            "end_time": api_time(window.end),
        }
        records: list[dict[str, Any]] = []
        seen: set[str] = set()
        self.pages_read = 0
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout)) as session:
            for page in range(self.max_pages):
                offset = page * self.page_size
                rows = await self._page(session, {**base, "offset": offset})
                self.pages_read += 1
                if len(rows) > self.page_size and offset > 0:
                    raise SourceError(
                        f"{self.describe()} answered {len(rows)} workers at offset {offset} with limit "
                        f"{self.page_size}: it does not page"
                    )
                for row in rows:
                    worker_id = str(row["worker_id"])
                    if worker_id in seen:
                        raise SourceError(
                            f"{self.describe()} listed worker {worker_id!r} twice (again at offset {offset}): "
                            "it does not page by offset; refusing to count anyone twice"
                        )
                    seen.add(worker_id)
                records.extend(rows)
                if len(rows) > self.page_size:
                    log.warning(
                        "%s ignored limit=%d and answered all %d workers at once: not asking for more pages",
                        self.describe(),
                        self.page_size,
                        len(rows),
                    )
                    return records
                if len(rows) < self.page_size:
                    return records
        raise SourceError(
            f"{self.describe()} still had full pages after {self.max_pages} pages of {self.page_size} workers: "
            "giving up (a server that never ends?)"
        )

    async def fetch(self, window: Window) -> list[HotkeyStat]:
        return by_hotkey(parse_workers(await self.fetch_records(window)))
