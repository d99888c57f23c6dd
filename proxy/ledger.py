"""The share ledger writer: batches share rows into ClickHouse, never on the share path.

Life of a row:
  record()        appends to an in-memory list (the only thing the share path does)
  background task cuts batches by size or every flush_interval; each batch gets a dedup token
  insert          one at a time, in a worker thread, with the batch's token
  failure         the batch goes to the spool directory (one file per batch) and is replayed, in
                  order and with the SAME token, when ClickHouse is back

Exactly once: ClickHouse drops an insert whose token it has seen (both tables have a dedup
window), so a batch retried after "committed but the answer was lost", or replayed after a crash
between insert and spool-file delete, is not counted twice. A spool file is deleted only after
its insert succeeded. While anything is spooled, newer batches are spooled behind it, so rows
reach ClickHouse in the order they were recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import operator
import os
import random
import re
import struct
import time
import uuid
import zlib
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.insert import InsertContext

from ledger.rows import COLUMNS_OF_TABLE, SHARES, TABLE_OF, Kind, Row
from ledger.schema import DEFAULT_TTL_DAYS, apply_migrations, write_tables
from ledger.target import redact
from proxy.collector import untrack_fresh
from proxy.config import LedgerBudget
from proxy.journal import Journal, batch_token, leftovers
from proxy.metrics import ProxyMetrics

log = logging.getLogger(__name__)

ONE_BLOCK_ROWS = 65_536  # a batch up to this many rows goes to ClickHouse as one block (insert_context)
_RETRY_MIN = 0.25  # seconds before the first retry after a failure; doubles up to max_retry_delay
_SPOOL_NAME = re.compile(r"^(\d+)-(\d+)\.batch$")  # <seq>-<rows>.batch: sorts by seq, rows without reading


# A batch spooled by an older release has the columns it knew: a prefix (migrations only append).
_V1_SHARE_COLUMNS = sum(1 for c in SHARES if c.since == 1)

# A batch in column form, as inserted and as spooled (one sequence per column, in column order).
# Converted, each column is a tuple: a tuple of strings and numbers is untracked by the collector at
# its first pass, where a list is walked, element by element, by every pass of its generation until
# it dies. In a proxy at 5,000 shares/s whose middle-generation passes took 10-20 ms, two or three
# batches' columns were most of what those passes walked (~160,000 values beside ~4,000 objects);
# alone, with a warm cache, three batches of 3,000 rows cost a middle pass 0.87 ms as lists, nothing
# as tuples (and converting them is no slower: 3.13 ms against 3.32).
_Columns = list[Sequence[Any]]


class _SpoolFile(msgspec.Struct, array_like=True):
    token: str
    columns: _Columns
    table: str = "shares"  # files spooled before the jobs and coverage tables are shares batches


_encode = msgspec.msgpack.Encoder().encode
_decode_body = msgspec.msgpack.Decoder(_SpoolFile).decode
# A spool file: this mark, the CRC-32 of the msgpack body, the body. The mark is never how a file
# of earlier versions (the body alone, a msgpack array) begins. The checksum is what tells a temp
# file that a power cut left full-sized but with zeros or stale blocks from a whole one: it decodes.
_SPOOL_MARK = b"IHS\x01"
_SPOOL_CRC = struct.Struct("<I")


def _spool_bytes(spooled: _SpoolFile) -> bytes:
    body = _encode(spooled)
    return _SPOOL_MARK + _SPOOL_CRC.pack(zlib.crc32(body)) + body


def _decode(data: bytes) -> _SpoolFile:
    """A spool file's batch; ValueError when its bytes are not what was written."""
    if not data.startswith(_SPOOL_MARK):
        return _decode_body(data)  # spooled by an earlier version: no checksum
    start = len(_SPOOL_MARK) + _SPOOL_CRC.size
    body = data[start:]
    if len(data) < start or zlib.crc32(body) != _SPOOL_CRC.unpack_from(data, len(_SPOOL_MARK))[0]:
        raise ValueError("checksum mismatch: not the bytes that were spooled")
    return _decode_body(body)


def _texts(column: Sequence[str]) -> tuple[str, ...]:
    # A lone surrogate cannot be encoded as UTF-8: it would make its batch fail forever, so replace
    # it. The whole-column ASCII check keeps the common case cheap.
    if "".join(column).isascii():
        return tuple(column)  # the column zip(*rows) made: no copy
    return tuple([s.encode("utf-8", "replace").decode("utf-8") for s in column])


def _convert(kind: Kind, column: Sequence[Any]) -> tuple[Any, ...]:
    """One column of a batch as clickhouse-connect inserts it (see `ledger.rows.Kind`).

    Each conversion is one call of C code where it can be (map, not a list comprehension): the loop
    cannot take the GIL in the middle and walk a half-built list of the column's values."""
    if kind == "text":
        return _texts(column)
    if kind == "ms":
        return tuple(map(round, map(_times_1000, column)))  # DateTime64(3) ticks
    if kind == "float":
        return tuple(map(float, column))  # an int (or numpy float) must not break the batch
    if kind == "flag":
        return tuple(map(int, map(bool, column)))  # UInt8: any truthy value is 1, never out of range
    if kind in ("uint", "minute"):
        return tuple(map(int, column))
    if kind == "opt":
        return tuple([None if v is None else int(v) for v in column])
    return tuple([_texts(v) for v in column])  # texts: Array(String)


_times_1000 = functools.partial(operator.mul, 1000)


# Per table, what an insert asks of ClickHouse beyond its deduplication token. `shares`: the
# per-minute view's block is already grouped by its table's key, so the SummingMergeTree need not
# sort and sum it again on insert (its merges and every reader sum anyway). Embedded, 2,500 rows on
# one core, 20 alternated inserts: 27.7 → 24.2 ms median.
_INSERT_SETTINGS: dict[str, dict[str, Any]] = {"shares": {"optimize_on_insert": 0}}


def to_columns(table: str, rows: Sequence[Sequence[Any]]) -> _Columns:
    """A batch's rows as its columns: tuples the collector does not track (`proxy.collector.untrack_fresh`;
    made in the insert thread, each would otherwise be walked, item by item, by the loop's next young
    collection). The transposition is one call, so zip's iterator per row (thousands of tracked
    objects) is gone before the loop can take the GIL back."""
    raw = list(zip(*rows, strict=True))
    for values in raw:
        untrack_fresh(values)
    return [untrack_fresh(_convert(c.kind, values)) for c, values in zip(COLUMNS_OF_TABLE[table], raw, strict=True)]


def insert_context(client: Client, into: str, table: str, token: str, columns: _Columns) -> InsertContext:
    """The insert of one batch of `table` (its `columns`, under its deduplication `token`) into the
    table `into`, sent as one Native block up to ONE_BLOCK_ROWS rows.

    clickhouse-connect would cut blocks of ~2 MiB (8,192 of our share rows) by slicing every column:
    new tuples of thousands of values, tracked by the collector, which the loop's young collections
    then walked (the longest, 6-12 ms, in a proxy at 11,000 shares/s). The server squashes blocks
    anyway (its max_insert_block_size is a million rows)."""
    names = COLUMNS_OF_TABLE[table][: len(columns)]  # an older spool file: a prefix
    context = client.create_insert_context(
        into,
        column_names=[c.name for c in names],
        column_type_names=[c.type for c in names],  # spares a DESCRIBE round trip per insert
        column_oriented=True,
        settings={"insert_deduplication_token": token, **_INSERT_SETTINGS.get(table, {})},
        data=columns,
    )
    if context.row_count <= ONE_BLOCK_ROWS:
        context.block_row_count = max(context.block_row_count, context.row_count)
    return context


def insert_batch(client: Client, into: str, table: str, token: str, columns: _Columns) -> tuple[int, int] | None:
    """Inserts one batch (see insert_context); once it is written, empties `columns`. For shares,
    returns the ts (ms) of its oldest and newest row.

    The columns are let go here, in the insert thread, one at a time, and not by a collection on the
    loop: the insert context refers to itself (clickhouse-connect keeps a bound method of it), so only
    the collector frees it, with whatever it holds. It holds a list of ours, emptied before it is
    dropped. Measured: full passes of 14-21 ms on the loop over 3,000-5,000 objects, nearly all of it
    freeing a batch's 200,000 values."""
    lent = list(columns)
    try:
        client.insert(context=insert_context(client, into, table, token, lent))
    finally:
        lent.clear()
    ticks = columns[0] if table == "shares" else ()
    span = (int(min(ticks)), int(max(ticks))) if ticks else None
    del ticks
    while columns:
        columns.pop()  # a column freed per step: the loop can take the GIL back between two
    return span


@dataclass
class _Batch:
    seq: int
    token: str  # fixed when the batch is cut; kept through every retry and the spool
    size: int
    rows: Sequence[Sequence[Any]] | None = None
    cols: _Columns | None = None
    table: str = "shares"
    generation: int | None = None  # the journal file that holds its rows until it is written or spooled

    def columns(self) -> _Columns:
        # Converted once, in a worker thread, the first time the batch is inserted or spooled.
        if self.cols is None:
            assert self.rows is not None
            self.cols, self.rows = to_columns(self.table, self.rows), None
        return self.cols


@dataclass(frozen=True)
class _Spooled:
    seq: int
    size: int
    path: Path
    nbytes: int = 0


class LedgerWriter:
    """Writes ShareRows to `{database}.shares`. Create, `await start()`, `record()`, `await stop()`.

    `record()` must be called from the event loop's thread. `connect` is blocking (it is called in
    a worker thread) and must raise when ClickHouse is unreachable.
    """

    def __init__(
        self,
        connect: Callable[[], Client],
        *,
        spool_dir: Path,
        database: str = "infinitehash",
        ttl_days: int = DEFAULT_TTL_DAYS,
        budget: LedgerBudget | None = None,
        metrics: ProxyMetrics | None = None,
    ) -> None:
        budget = budget or LedgerBudget()
        self._connect = connect
        self._spool_dir = spool_dir
        self._database = database
        self._ttl_days = ttl_days
        self._batch_rows = budget.batch_rows
        self._flush_interval = budget.flush_interval
        self._metrics = metrics
        self._max_retry_delay = budget.max_retry_delay
        # Bounds under a long ClickHouse outage: past them nothing is dropped; `backpressure` says so
        # and the proxy stops taking shares until ClickHouse takes rows again.
        self._max_memory_rows = budget.max_memory_rows
        self._max_spool_rows = budget.max_spool_rows
        self._max_spool_bytes = budget.max_spool_bytes
        self._spool_bytes = 0

        self._queues: dict[str, list[tuple[Any, ...]]] = {table: [] for table in COLUMNS_OF_TABLE}  # not yet cut
        self._queue = self._queues["shares"]
        self._pending: deque[_Batch] = deque()  # cut, not yet written nor spooled (newer than the spool)
        self._spool: deque[_Spooled] = deque()  # on disk, oldest first
        self._spool_rows = 0
        self._rows_written = 0

        self._run_id = uuid.uuid4().hex  # tokens derive from it (journal.batch_token): unique across runs
        self._journal: Journal | None = None  # opened by start(): needs the running loop
        self._settled_generations: list[int] = []  # journal files whose rows are all written or spooled
        self._tending: asyncio.Future[None] | None = None  # the journal's file-system work in flight
        self._journal_dir = spool_dir / "journal"
        self._open_batches: dict[int, int] = {}  # journal generation → its batches not yet written nor spooled
        self._unsynced: list[int | None] = []  # closed journal files to fsync before their batches go out
        self._next_seq = 0
        self._client: Client | None = None
        self._tables: dict[str, str] = {}  # ledger table → the table inserts go to (<table>_local on a cluster)
        self._down = False  # ClickHouse refused the last connect or insert: logged once, until it is back
        self._retry_delay = self._min_retry_delay = min(_RETRY_MIN, budget.max_retry_delay)
        self._retry_at = 0.0  # time.monotonic() before which the background task does not retry
        self._lock = asyncio.Lock()  # one drain (hence one insert) at a time
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._reader: Client | None = None  # query()'s own client: reads never wait behind inserts
        self._read_lock = asyncio.Lock()

        if metrics is not None:
            # Computed when Prometheus scrapes, so the share path pays nothing for them.
            metrics.ledger_queue.set_function(lambda: self.queue_rows)
            metrics.ledger_spool_batches.set_function(lambda: self.spooled_batches)
            metrics.ledger_spool_rows.set_function(lambda: self.spooled_rows)
            self._lag_oldest = metrics.ledger_ingest_lag.labels("oldest")
            self._lag_newest = metrics.ledger_ingest_lag.labels("newest")

    # -- read-only state ------------------------------------------------------------------------

    @property
    def queue_rows(self) -> int:
        """Rows held in memory: recorded but neither written nor spooled."""
        return sum(len(q) for q in self._queues.values()) + sum(b.size for b in self._pending)

    @property
    def connected(self) -> bool:
        """A ClickHouse client is open (new batches are inserted, not spooled)."""
        return self._client is not None

    @property
    def spooled_batches(self) -> int:
        return len(self._spool)

    @property
    def spooled_rows(self) -> int:
        return self._spool_rows

    @property
    def spooled_bytes(self) -> int:
        return self._spool_bytes

    def _spool_full(self) -> bool:
        return self._spool_rows >= self._max_spool_rows or self._spool_bytes >= self._max_spool_bytes

    @property
    def backpressure(self) -> str | None:
        """Why the ledger cannot take more rows right now (None: it can): the rows held in memory or
        the spool on disk reached their limit. Rows already recorded are kept either way."""
        held = self.queue_rows
        if held >= self._max_memory_rows:
            return f"{held} rows wait in memory for ClickHouse (limit {self._max_memory_rows})"
        if self._spool_full():
            return (
                f"the spool holds {self._spool_rows} rows, {self._spool_bytes} bytes "
                f"(limits {self._max_spool_rows} rows, {self._max_spool_bytes} bytes)"
            )
        return None

    @property
    def rows_written(self) -> int:
        """Rows inserted into ClickHouse by this writer (replayed spool included)."""
        return self._rows_written

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect and migrate, then start the background task, which replays the spool first.

        A ClickHouse that is down does not stop the proxy: the task keeps retrying with backoff
        and spools batches meanwhile.
        """
        if self._task is not None:
            raise RuntimeError("LedgerWriter already started")
        await asyncio.to_thread(self._load_spool)
        try:
            await asyncio.to_thread(self._recover_journal)
        except OSError as exc:
            log.error("ledger: cannot read the crash journal in %s: %s", self._journal_dir, exc)
        # Opening never raises: a disk that refuses leaves the journal off (logged) until it can.
        self._journal = Journal(self._journal_dir, self._run_id, self._batch_rows, asyncio.get_running_loop().call_soon)
        self._journal.open(0)
        await self._tended()  # the first cut's file, ready before it
        if self._spool:
            log.info(
                "ledger: %d batches (%d rows) spooled in %s by an earlier run; replaying them first",
                len(self._spool),
                self._spool_rows,
                self._spool_dir,
            )
        async with self._lock:
            if await self._ensure_client():
                log.info("ledger: connected; schema up to date in database %s", self._database)
            else:
                log.warning(
                    "ledger: ClickHouse is not reachable at start; the proxy runs on, shares are spooled "
                    "to %s and written when it is back",
                    self._spool_dir,
                )
        self._task = asyncio.create_task(self._run(), name="ledger-writer")

    def record(self, row: Row) -> None:
        """Queue one row (a share, a job or a coverage minute) and append it to the journal.

        The share path's only ledger cost: an append, a msgpack encode and a length check."""
        queue = self._queues[TABLE_OF[type(row)]]
        # An exact tuple: the collector stops tracking a tuple of plain values at its first pass, but
        # never a NamedTuple; a row waiting here half a second would otherwise be walked by every
        # collection meanwhile (at 4,000 rows/s the middle generation's longest pass: 64 → 8 ms).
        queue.append(tuple(row))
        if self._journal is not None:
            self._journal.append(row)
        if len(queue) >= self._batch_rows:
            self._wake.set()

    def commit(self) -> None:
        """Make every row recorded so far survive a SIGKILL (the server calls it before it answers
        miners; otherwise it happens once per loop iteration)."""
        if self._journal is not None:
            self._journal.commit()

    async def flush(self) -> None:
        """Write everything recorded so far, spool first, retrying now even during a backoff.

        What ClickHouse does not take is spooled to disk.
        """
        await self._spare_ready()
        self._cut()
        async with self._lock:
            await self._drain(force=True)
            await self._tended()  # and the journal's files settled: nothing left running on the disk

    async def query(self, sql: str, parameters: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        """Run a read query on the ledger (the proxy's HTTP API) in a worker thread.

        Raises when ClickHouse is unreachable; the next call reconnects. With an embedded chdb
        directory this is the only way for the proxy process to read it (one engine per process).
        """
        async with self._read_lock:
            if self._reader is None:
                self._reader = await asyncio.to_thread(self._connect)
            reader = self._reader
            try:
                result = await asyncio.to_thread(reader.query, sql, parameters=parameters)
            except Exception:
                self._reader = None
                await asyncio.to_thread(_close_quietly, reader)
                raise
            return [tuple(row) for row in result.result_rows]

    async def stop(self) -> None:
        """Final flush of the rows in memory; the spool stays on disk for the next start."""
        if self._task is not None:
            self._stopping = True
            self._wake.set()
            await self._task
            self._task = None
        await self._spare_ready()
        self._cut()
        async with self._lock:
            # Replaying a long spool could outlast the shutdown grace period: leave it for next start.
            await self._drain(force=True, replay=False)
            if self._pending:
                log.error(
                    "ledger: %d rows could neither be written nor spooled to %s; %s",
                    self.queue_rows,
                    self._spool_dir,
                    "the journal keeps them for the next start" if self._journal is not None else "they are lost",
                )
            await self._drop_client()
            await self._tended()  # every settled file removed (no spare: stopping)
            if self._journal is not None and not self._pending:
                self._journal.close()
        async with self._read_lock:
            reader, self._reader = self._reader, None
            if reader is not None:
                await asyncio.to_thread(_close_quietly, reader)

    # -- background task ------------------------------------------------------------------------

    async def _run(self) -> None:
        while not self._stopping:
            try:
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that
                # races with the event being set, and the task would then never end.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._flush_interval):
                        await self._wake.wait()
                self._wake.clear()
                if self._stopping:
                    break
                await self._spare_ready()
                self._cut()
                async with self._lock:
                    await self._drain(force=False)
            except Exception:
                # The task must survive anything, or rows would pile up in memory unseen.
                log.exception("ledger: writer cycle failed")
                await asyncio.sleep(self._flush_interval)

    def _cut(self) -> None:
        """Cut everything queued into batches; their rows' journal file is closed with them."""
        if not any(self._queues.values()):
            return
        generation: int | None = None
        if self._journal is not None:
            generation, fd = self._journal.rotate()
            self._unsynced.append(fd)
        batches = _chunks(self._queues, self._batch_rows)
        for table in self._queues:
            self._queues[table] = []
        self._queue = self._queues["shares"]
        for table, chunk_number, chunk in batches:
            seq, self._next_seq = self._next_seq, self._next_seq + 1
            token = batch_token(self._run_id, generation or 0, table, chunk_number)
            self._pending.append(_Batch(seq, token, len(chunk), rows=chunk, table=table, generation=generation))
        if generation is not None:
            self._open_batches[generation] = len(batches)

    def _settled(self, batch: _Batch) -> None:
        """The batch is written or spooled: its journal file goes once all its batches are."""
        generation = batch.generation
        if generation is None or self._journal is None:
            return
        left = self._open_batches.get(generation, 1) - 1
        if left > 0:
            self._open_batches[generation] = left
            return
        self._open_batches.pop(generation, None)
        self._settled_generations.append(generation)  # its file goes in _tend_journal, off the loop

    def _tend_journal(self) -> asyncio.Future[None] | None:
        """Start the journal's file-system work in a worker thread (Journal.prepare): remove the
        files of settled generations, open the one the next cut writes to. The writer's cycle does
        not wait for it (in a closed loop it took 24 ms, 71 at p90, the disk busy with the engine's
        parts): the next cut waits only if it is still running (_spare_ready). Returns the work in
        flight, if any."""
        journal = self._journal
        if journal is None or (self._tending is not None and not self._tending.done()):
            return self._tending
        settled, self._settled_generations = self._settled_generations, []
        spare = None if self._stopping else journal.spare_wanted()
        if not settled and spare is None:
            return None

        async def tend() -> None:
            journal.take_spare(spare, await asyncio.to_thread(journal.prepare, settled, spare))

        self._tending = asyncio.ensure_future(tend())
        return self._tending

    async def _spare_ready(self) -> None:
        """Before a cut: the journal work in flight done, so rotate() finds its file open (it waits
        only when cuts come faster than the disk: flush() after flush())."""
        if self._tending is not None and not self._tending.done():
            await self._tending

    async def _tended(self) -> None:
        """The work in flight, then one round of what is left (a disk that refuses the spare's file
        is not retried here: rotate() tries on its own)."""
        for _ in range(2):
            tending = self._tend_journal()
            if tending is not None:
                await tending

    def _recover_journal(self) -> None:
        """Journal files of a run that died: spool their batches under the tokens they had.

        A batch that was inserted before the crash is inserted again with the same token, which
        ClickHouse drops: each row is counted once."""
        for leftover in leftovers(self._journal_dir):
            batches = _chunks(leftover.rows, leftover.batch_rows)  # the cut the dead run used
            for table, chunk_number, chunk in batches:
                seq, self._next_seq = self._next_seq, self._next_seq + 1
                token = batch_token(leftover.run, leftover.generation, table, chunk_number)
                entry = self._write_spool_sync(_Batch(seq, token, len(chunk), rows=chunk, table=table))
                self._spool.append(entry)
                self._spool_rows += entry.size
                self._spool_bytes += entry.nbytes
            if batches:
                log.warning(
                    "ledger: recovered %d rows from the journal of a run that did not stop cleanly (%s)",
                    sum(len(c) for _, _, c in batches),
                    leftover.path.name,
                )
            leftover.path.unlink()

    async def _drain(self, *, force: bool, replay: bool = True) -> None:
        """Spooled batches first, then pending ones; whatever is not written goes to the spool."""
        if self._unsynced:
            # Durable before it leaves: a power cut after the insert must not lose the journal's copy.
            fds, self._unsynced = self._unsynced, []
            await asyncio.to_thread(_sync_all, fds)
        if (force or time.monotonic() >= self._retry_at) and await self._ensure_client():
            if replay:
                await self._replay(force)
            while self._pending and not self._spool:
                if not await self._insert(self._pending[0]):
                    break
                self._settled(self._pending.popleft())
        while self._pending:
            if self._spool_full():
                break  # bounded on disk: the rows stay in memory (and the journal) until ClickHouse is back
            if not await self._write_spool(self._pending[0]):
                break  # disk trouble: keep it (and everything after it) in memory, retry next cycle
            self._settled(self._pending.popleft())
        self._tend_journal()

    async def _replay(self, force: bool) -> None:
        while self._spool:
            if not force and len(self._queue) >= self._batch_rows:
                return  # let the task cut the new rows (to the spool) so memory stays bounded
            entry = self._spool[0]
            batch = await asyncio.to_thread(self._read_spool, entry)
            if batch is not None:
                if not await self._insert(batch):
                    return
                # If we die before this unlink the batch is replayed again: its token makes that a no-op.
                await asyncio.to_thread(entry.path.unlink, missing_ok=True)
            self._spool.popleft()
            self._spool_rows -= entry.size
            self._spool_bytes -= entry.nbytes

    # -- ClickHouse -----------------------------------------------------------------------------

    async def _ensure_client(self) -> bool:
        if self._client is not None:
            return True
        try:
            self._client = await asyncio.to_thread(self._open)
        except Exception as exc:
            self._failed("cannot connect to ClickHouse or apply the schema", exc)
            return False
        self._back()
        return True

    def _open(self) -> Client:
        client = self._connect()
        try:
            apply_migrations(client, self._database, self._ttl_days)
            self._tables = write_tables(client, self._database)
        except BaseException:
            client.close()
            raise
        return client

    async def _insert(self, batch: _Batch) -> bool:
        client = self._client
        assert client is not None
        started = time.perf_counter()
        try:
            span = await asyncio.to_thread(self._insert_sync, client, batch)
        except Exception as exc:
            self._failed(f"insert of {batch.size} rows failed; spooling", exc)
            await self._drop_client()  # reconnect (and re-check the schema) before the next try
            return False
        if self._metrics is not None:
            self._metrics.ledger_flush_seconds.observe(time.perf_counter() - started)
            self._metrics.ledger_rows_written.inc(batch.size)
            if span is not None:
                now_ms = time.time() * 1000.0
                self._lag_oldest.observe((now_ms - span[0]) / 1000.0)
                self._lag_newest.observe((now_ms - span[1]) / 1000.0)
        self._rows_written += batch.size
        self._back()
        self._retry_delay = self._min_retry_delay
        return True

    def _insert_sync(self, client: Client, batch: _Batch) -> tuple[int, int] | None:
        into = f"{self._database}.{self._tables.get(batch.table, batch.table)}"
        span = insert_batch(client, into, batch.table, batch.token, batch.columns())
        batch.cols = None  # written, and emptied by insert_batch: nothing reads its columns again
        return span

    async def _drop_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await asyncio.to_thread(_close_quietly, client)

    def _failed(self, what: str, exc: BaseException) -> None:
        """Count and log a failed connect or insert, and schedule the next try (backoff + jitter)."""
        if self._metrics is not None:
            self._metrics.ledger_flush_errors.inc()
        delay = self._retry_delay * random.uniform(0.5, 1.0)  # jitter: proxies do not retry in lockstep
        self._retry_at = time.monotonic() + delay
        self._retry_delay = min(self._retry_delay * 2, self._max_retry_delay)
        # One WARNING when ClickHouse goes down, one INFO when it is back (_back); retries are DEBUG.
        first, self._down = not self._down, True
        log.log(
            logging.WARNING if first else logging.DEBUG,
            "ledger: %s%s: %s (retry in %.2fs; %d batches spooled in %s)",
            "ClickHouse down: " if first else "still down: ",
            what,
            _describe(exc),
            delay,
            len(self._spool),
            self._spool_dir,
        )

    def _back(self) -> None:
        if self._down:
            self._down = False
            log.info(
                "ledger: ClickHouse back; %d batches (%d rows) left in the spool", len(self._spool), self._spool_rows
            )

    # -- spool ----------------------------------------------------------------------------------

    def _load_spool(self) -> None:
        """Index the spool directory left by earlier runs (names only; files are read on replay)."""
        self._spool_dir.mkdir(parents=True, exist_ok=True)
        for tmp in self._spool_dir.glob("*.batch.tmp"):
            # A crash between fsync and rename leaves a complete temp file: keep it if it decodes
            # and its checksum holds (a power cut before the fsync can leave it full of zeros).
            try:
                _decode(tmp.read_bytes())
                tmp.replace(tmp.with_suffix(""))
            except (OSError, ValueError, msgspec.MsgspecError):
                # Torn write: the process died mid-spool, and with it the rows of that batch.
                log.warning("ledger: deleting incomplete spool file %s left by a crash", tmp)
                tmp.unlink(missing_ok=True)
        entries: list[_Spooled] = []
        max_seq = -1
        for path in self._spool_dir.iterdir():
            seq_text = path.name.split("-", 1)[0]
            if seq_text.isdigit():
                max_seq = max(max_seq, int(seq_text))  # .bad files too: never reuse a name
            match = _SPOOL_NAME.match(path.name)
            if match:
                try:
                    nbytes = path.stat().st_size
                except OSError:
                    nbytes = 0
                entries.append(_Spooled(int(match[1]), int(match[2]), path, nbytes))
        entries.sort(key=lambda e: e.seq)
        self._spool = deque(entries)
        self._spool_rows = sum(e.size for e in entries)
        self._spool_bytes = sum(e.nbytes for e in entries)
        self._next_seq = max(self._next_seq, max_seq + 1)

    async def _write_spool(self, batch: _Batch) -> bool:
        try:
            entry = await asyncio.to_thread(self._write_spool_sync, batch)
        except Exception as exc:
            log.error("ledger: cannot spool %d rows to %s: %s", batch.size, self._spool_dir, _describe(exc))
            return False
        self._spool.append(entry)
        self._spool_rows += entry.size
        self._spool_bytes += entry.nbytes
        return True

    def _write_spool_sync(self, batch: _Batch) -> _Spooled:
        # Atomic: temp file, fsync, rename, fsync the directory. A reader never sees half a batch.
        data = _spool_bytes(_SpoolFile(batch.token, batch.columns(), batch.table))
        path = self._spool_dir / f"{batch.seq:012d}-{batch.size}.batch"
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(self._spool_dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return _Spooled(batch.seq, batch.size, path, len(data))

    def _read_spool(self, entry: _Spooled) -> _Batch | None:
        """The spooled batch, or None when the file is unreadable (then it is moved aside as .bad)."""
        try:
            spooled = _decode(entry.path.read_bytes())
            sizes = {len(column) for column in spooled.columns}
            if sizes != {entry.size}:
                raise ValueError(f"column lengths {sorted(sizes)} != {entry.size} rows in the file name")
            known = COLUMNS_OF_TABLE.get(spooled.table)
            if known is None or not _V1_SHARE_COLUMNS <= len(spooled.columns) <= len(known):
                raise ValueError(f"{len(spooled.columns)} columns, not a {spooled.table} batch")
        except (OSError, ValueError, msgspec.MsgspecError) as exc:
            bad = entry.path.with_name(entry.path.name + ".bad")
            log.error("ledger: corrupt spool file %s (%s); moved to %s", entry.path, exc, bad.name)
            with contextlib.suppress(OSError):  # already gone: nothing to set aside
                entry.path.replace(bad)
            return None
        return _Batch(entry.seq, spooled.token, entry.size, cols=spooled.columns, table=spooled.table)


def _chunks(queues: Mapping[str, Sequence[Sequence[Any]]], size: int) -> list[tuple[str, int, Sequence[Sequence[Any]]]]:
    """(table, chunk number, rows) for every `size` rows of each table, tables in a fixed order:
    the same rows always give the same batches, at first and at a replay of their journal."""
    out = []
    for table in COLUMNS_OF_TABLE:
        rows = queues.get(table) or []
        for number, start in enumerate(range(0, len(rows), size)):
            out.append((table, number, rows[start : start + size]))
    return out


def _sync_all(fds: list[int | None]) -> None:
    for fd in fds:
        Journal.sync_and_close(fd)


def _close_quietly(client: Client) -> None:
    try:
        client.close()
    except Exception as exc:  # a client that is already broken: nothing left to release
        log.debug("ledger: closing a ClickHouse client failed: %s", _describe(exc))


def _describe(exc: BaseException) -> str:
    # Error text may embed a URL with credentials; truncate huge server messages too.
    return redact(f"{type(exc).__name__}: {exc}")[:500]
