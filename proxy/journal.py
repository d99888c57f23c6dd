"""The ledger's crash journal: every recorded row is on disk before the next loop iteration.

Why: the writer batches rows in memory for a quarter of a second; a SIGKILL would lose the shares
the pool had already answered. Each row is appended here (group commit: one `os.write` per event
loop iteration, or sooner when the proxy is about to answer a miner), and the file is fsynced when
its rows are cut into batches. A killed process leaves its rows in the kernel's page cache, so they
survive; a power cut loses at most the rows since the last fsync (one flush interval).

One file per generation: `<generation>-<run>.journal` holds exactly the rows cut together into one
set of batches, so a batch's dedup token can be derived from the file alone (`batch_token`) and a
replay after a crash re-inserts the same batches under the same tokens: exactly once even when the
first insert committed and the crash came before its file was deleted. A file is deleted once its
batches are written to ClickHouse or spooled (the spool then owns them).

Format (`<generation>-<run>-<rows per batch>-crc.journal`): records of a 4-byte length, the CRC-32
of the payload and msgpack `[[table, row], ...]` (the rows of one commit). A torn tail is dropped: a
record cut short, or one whose bytes are not what was written, as when a power cut leaves the file's
new size with zeros or stale blocks where its data never landed, which msgpack alone would often
read as a row with other values. Files of earlier versions (no `-crc` in the name) hold records of a
length and msgpack, one `[table, row]` or the rows of a commit each, and still replay.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import struct
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec

from ledger.rows import TABLE_OF, Row

log = logging.getLogger(__name__)

# <generation>-<run>-<rows per batch>, and "-crc" since records carry a checksum
_NAME = re.compile(r"^(\d{12})-([0-9a-f]+)-(\d+)(-crc)?\.journal$")
_encode = msgspec.msgpack.Encoder().encode
_HEADER = struct.Struct("<II")  # each record: its length and CRC-32, then msgpack [[table, row], ...]
_LENGTH = struct.Struct("<I")  # the records of files without "-crc": no checksum


def batch_token(run: str, generation: int, table: str, chunk: int) -> str:
    """The dedup token of one batch: the same at first insert and at any replay of its file."""
    return f"{run}-{generation}-{table}-{chunk}"


class Journal:
    """Appends rows to the current generation's file; `rotate()` starts the next generation."""

    def __init__(
        self, directory: Path, run: str, batch_rows: int, schedule: Callable[[Callable[[], None]], Any]
    ) -> None:
        self.directory = directory
        self.run = run
        # In the file name: a replay must cut the rows into the same batches, under the same tokens,
        # whatever batch size the restarted proxy is configured with (a different cut under a token
        # ClickHouse has seen would be dropped as a duplicate: rows lost).
        self.batch_rows = batch_rows
        self._schedule = schedule  # loop.call_soon: the group commit at the end of this iteration
        self._rows: list[tuple[str, Row]] = []  # appended since the last commit
        self._scheduled = False
        self._fd: int | None = None
        self._spare: tuple[int, int] | None = None  # (generation, fd): the next file, opened off the loop
        self.generation = 0
        self.bytes_written = 0
        self.broken = False

    def open(self, generation: int) -> None:
        """Start `generation`'s file. A disk that refuses leaves the journal off until the next one:
        the ledger goes on (only a SIGKILL would then lose the rows of that batch)."""
        self.generation = generation
        spare, self._spare = self._spare, None
        if spare is not None and spare[0] == generation:
            self._fd = spare[1]  # opened by prepare(): nothing created on the loop
        else:
            if spare is not None:
                os.close(spare[1])
            try:
                self._fd = self._create(generation)
            except OSError as exc:
                self._fd = None
                self._broken(exc)
                return
        if self.broken:
            self.broken = False
            log.info("ledger journal: writing again in %s", self.directory)

    def _create(self, generation: int) -> int:
        self.directory.mkdir(parents=True, exist_ok=True)
        return os.open(self._path(generation), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    # The file system's namespace work, off the event loop. Creating or removing a file waits for
    # the file system's own journal, which an fsync elsewhere on the disk can hold for hundreds of
    # milliseconds (ext4 mounted with discard, ClickHouse writing its parts): in the benchmark, every
    # loop stall over 250 ms (3 of 3, 230-510 ms) was this unlink on the loop. The writer calls
    # prepare() in a worker thread with what spare_wanted() names, then take_spare() on the loop;
    # rotate() then only swaps descriptors (it creates the file itself only if none is ready).

    def spare_wanted(self) -> int | None:
        """The generation the next rotate() opens, when no file is ready for it."""
        if self._fd is None or self._spare is not None:
            return None  # a journal that is off retries by itself at the next rotate()
        return self.generation + 1

    def prepare(self, settled: Sequence[int], spare: int | None) -> int | None:
        """Blocking (a worker thread): remove the files of `settled` generations, open `spare`'s
        file and return its descriptor (None: none asked for, or the disk refused)."""
        for generation in settled:
            self.discard(generation)
        if spare is None:
            return None
        try:
            return self._create(spare)
        except OSError:
            return None  # rotate() tries again on the loop, and logs what the disk says

    def take_spare(self, generation: int | None, fd: int | None) -> None:
        """Keep prepare()'s file for the next rotate(); one that came too late is closed (its file is
        the one rotate() already created, and is in use)."""
        if fd is None:
            return
        if generation == self.generation + 1 and self._spare is None:
            self._spare = (generation, fd)
        else:
            os.close(fd)

    def _broken(self, exc: OSError) -> None:
        if not self.broken:  # one line per state change, not per row
            self.broken = True
            log.error(
                "ledger journal: cannot write in %s (%s); rows are not crash-proof until it can", self.directory, exc
            )

    def _path(self, generation: int) -> Path:
        return self.directory / f"{generation:012d}-{self.run}-{self.batch_rows}-crc.journal"

    def append(self, row: Row) -> None:
        self._rows.append((TABLE_OF[type(row)], row))
        if not self._scheduled:
            self._scheduled = True
            self._schedule(self.commit)

    def commit(self) -> None:
        """Write what was appended: one record and one syscall for every row since the last commit
        (encoding them in one call costs a fraction of encoding each)."""
        self._scheduled = False
        if not self._rows or self._fd is None:
            self._rows.clear()
            return
        rows, self._rows = self._rows, []
        try:
            record = _encode(rows)
        except UnicodeEncodeError:  # a lone surrogate: stored replaced, as the batch stores it
            record = _encode([(table, [_utf8(v) for v in row]) for table, row in rows])
        data = _HEADER.pack(len(record), zlib.crc32(record)) + record
        view = memoryview(data)
        try:
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
        except OSError as exc:
            self._broken(exc)
            return
        self.bytes_written += len(data)

    def rotate(self) -> tuple[int, int | None]:
        """Close this generation's file (after the group commit) and open the next one.

        Returns (the generation closed, its fd for `sync_and_close` in a worker thread)."""
        self.commit()
        closed, fd = self.generation, self._fd
        self.open(self.generation + 1)
        return closed, fd

    @staticmethod
    def sync_and_close(fd: int | None) -> None:
        if fd is not None:
            try:
                os.fsync(fd)
            except OSError as exc:
                log.warning("ledger journal: fsync failed: %s", exc)
            os.close(fd)

    def discard(self, generation: int) -> None:
        """Its rows are written or spooled: the file is no longer needed (blocking: see prepare)."""
        with contextlib.suppress(OSError):
            self._path(generation).unlink(missing_ok=True)

    def close(self) -> None:
        self.commit()
        fd, self._fd = self._fd, None
        self.sync_and_close(fd)
        spare, self._spare = self._spare, None
        if spare is not None:  # never written to
            os.close(spare[1])
            self.discard(spare[0])
        path = self._path(self.generation)
        with contextlib.suppress(OSError):
            if path.stat().st_size == 0:
                path.unlink()


def _utf8(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, list):
        return [_utf8(v) for v in value]
    return value


class Leftover(msgspec.Struct):
    """A journal file an earlier run left behind: its rows per table, in recorded order."""

    path: Path
    run: str
    generation: int
    batch_rows: int
    rows: dict[str, list[list[Any]]] = msgspec.field(default_factory=dict)


def leftovers(directory: Path) -> list[Leftover]:
    """Journal files of earlier runs, oldest first (blocking: call it in a worker thread)."""
    if not directory.exists():
        return []
    decode = msgspec.msgpack.Decoder(list[Any]).decode
    found = []
    for path in sorted(directory.iterdir()):
        match = _NAME.match(path.name)
        if match is None:
            continue
        data = path.read_bytes()
        header = _HEADER if match[4] else _LENGTH
        rows: dict[str, list[list[Any]]] = {}
        offset = 0
        while offset < len(data):
            end = offset + header.size
            try:
                if end > len(data):
                    raise ValueError("cut short")
                size, *checksum = header.unpack_from(data, offset)
                payload = data[end : end + size]
                if len(payload) < size or (checksum and zlib.crc32(payload) != checksum[0]):
                    raise ValueError("cut short, or not what was written")
                record = decode(payload)
                pairs = [record] if record and isinstance(record[0], str) else record  # one row: older files
                whole = [(str(table), list(row)) for table, row in pairs]
            except (ValueError, TypeError, msgspec.MsgspecError):
                # Only a power cut mid-write leaves this: the rows before it are whole.
                log.warning("ledger journal %s: dropping a torn tail of %d bytes", path.name, len(data) - offset)
                break
            for table, row in whole:
                rows.setdefault(table, []).append(row)
            offset = end + size
        found.append(Leftover(path, match[2], int(match[1]), int(match[3]), rows))
    return found
