"""Backups of the ledger with ClickHouse's own BACKUP / RESTORE, for a server and for an embedded chdb
directory alike (chdb is ClickHouse in-process: the same statements work once `backups.allowed_path`
is set, which `open_client` does for an embedded ledger).

Where a backup goes (`Destination.parse`):
  /abs/dir or rel/dir   File('<dir>/<name>'): for chdb a local directory; for a server a directory ON THE
                        SERVER that its `backups.allowed_path` allows
  disk:NAME[/sub/dir]   Disk('NAME', '<sub/dir>/<name>'): a server disk listed in `backups.allowed_disk`
  s3://bucket/prefix    S3('https://bucket.s3.amazonaws.com/prefix/<name>', key id, secret),
  or https://…/prefix   credentials from IH_S3_ACCESS_KEY_ID / IH_S3_SECRET_ACCESS_KEY

Each backup is named `ledger-<UTC time>`, so names sort by age. Rotation (`keep`) deletes the oldest
backup directories beyond the newest `keep` in a directory this program can see: the destination
itself for chdb, `rotate_dir` (where the server's directory or disk is mounted here) for a server.
S3 backups are not rotated here: give the bucket a lifecycle rule.

A backup is complete once ClickHouse has written its `.backup` file, the last thing BACKUP writes: a
backup killed mid-way (the program, the server, the machine) leaves a directory without it, which
RESTORE cannot read. Such an unfinished backup is never counted among the `keep`, never restored by
default, and is deleted by a rotation once it is older than every backup kept (until then it might
be one still running, started before the one that just finished).
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import clickhouse_connect
from clickhouse_connect.driver.client import Client

from ledger.target import NO_EMBEDDED_ENGINE, LedgerTarget

BACKUP_PREFIX = "ledger-"
_NAME = re.compile(r"ledger-\d{8}T\d{6}(?:\.\d{6})?Z")
TEXTFILE_NAME = "ih_ledger_backup.prom"
S3_KEY_ENV = "IH_S3_ACCESS_KEY_ID"
S3_SECRET_ENV = "IH_S3_SECRET_ACCESS_KEY"


class BackupError(RuntimeError):
    """A backup or restore that cannot go ahead; the message is meant for the operator, one line."""


@dataclass(frozen=True)
class Destination:
    kind: str  # "file" | "disk" | "s3"
    location: str  # the directory, the disk name, or the S3 URL prefix
    subdir: str = ""  # disk only

    @classmethod
    def parse(cls, text: str) -> Destination:
        if text.startswith("disk:"):
            disk, _, subdir = text[len("disk:") :].partition("/")
            if not disk:
                raise BackupError("disk destination needs a name: disk:NAME[/sub/dir]")
            return cls("disk", disk, subdir.strip("/"))
        if text.startswith("s3://"):
            bucket, _, prefix = text[len("s3://") :].partition("/")
            return cls("s3", f"https://{bucket}.s3.amazonaws.com/{prefix.strip('/')}".rstrip("/"))
        if text.startswith(("https://", "http://")):
            return cls("s3", text.rstrip("/"))
        if not text:
            raise BackupError("empty backup destination")
        return cls("file", str(Path(text).absolute()))

    def engine(self, name: str) -> str:
        """The `TO` / `FROM` clause of one backup, e.g. File('/backups/ledger-…')."""
        if self.kind == "file":
            return f"File({_quote(str(Path(self.location) / name))})"
        if self.kind == "disk":
            return f"Disk({_quote(self.location)}, {_quote(f'{self.subdir}/{name}' if self.subdir else name)})"
        key, secret = os.environ.get(S3_KEY_ENV), os.environ.get(S3_SECRET_ENV)
        if key and secret:
            return f"S3({_quote(f'{self.location}/{name}')}, {_quote(key)}, {_quote(secret)})"
        return f"S3({_quote(f'{self.location}/{name}')})"  # the server's own credentials (IAM role, config)

    def secrets(self) -> list[str]:
        return [s for s in (os.environ.get(S3_KEY_ENV), os.environ.get(S3_SECRET_ENV)) if s]


def _quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def backup_name(now: dt.datetime) -> str:
    return f"{BACKUP_PREFIX}{now.astimezone(dt.UTC).strftime('%Y%m%dT%H%M%S.%fZ')}"


COMPLETE_MARK = ".backup"  # ClickHouse's backup metadata, written when BACKUP finishes


def list_backups(directory: Path) -> list[str]:
    """The complete backups in a directory, oldest first."""
    return [name for name in _named(directory) if _complete(directory / name)]


def unfinished_backups(directory: Path) -> list[str]:
    """Backups in a directory that never finished (killed mid-way, or still running), oldest first."""
    return [name for name in _named(directory) if not _complete(directory / name)]


def _named(directory: Path) -> list[str]:
    if not directory.is_dir():
        return []
    return sorted(p.name for p in directory.iterdir() if _NAME.fullmatch(p.name))


def _complete(path: Path) -> bool:
    return (path / COMPLETE_MARK).is_file()


def open_client(target: LedgerTarget, destination: Destination | None, *, create: bool) -> Client:
    """A client for BACKUP / RESTORE. An embedded ledger is opened with `backups.allowed_path` set to
    the destination directory (chdb has no config file for it); its directory is made only when
    `create` (a restore), so a mistyped path to back up is an error, not a new empty ledger."""
    if target.kind != "chdb":
        return target.connect()
    if destination is None or destination.kind != "file":
        raise BackupError("an embedded (chdb://) ledger backs up to a local directory, not to a disk or S3")
    try:
        import chdb  # noqa: F401  (clickhouse-connect's chdb interface needs it)
    except ImportError:
        raise BackupError(NO_EMBEDDED_ENGINE) from None
    assert target.path is not None
    if not create and not target.path.is_dir():
        raise BackupError(f"no embedded ledger at {target.path}: nothing to back up")
    target.path.mkdir(parents=True, exist_ok=True)
    Path(destination.location).mkdir(parents=True, exist_ok=True)
    try:
        return clickhouse_connect.get_client(
            interface="chdb", path=f"{target.path}?backups.allowed_path={destination.location}"
        )
    except Exception as exc:
        raise BackupError(f"cannot open {target}: {target.scrub(exc)}") from None


@dataclass(frozen=True)
class BackupResult:
    name: str
    engine: str  # the destination clause, without credentials
    finished: dt.datetime
    bytes: int  # compressed size ClickHouse reports
    removed: list[str]  # complete backups beyond `keep`, and unfinished ones older than every one kept
    unfinished: list[str]  # unfinished backups left in place (newer than the oldest kept)


def backup(
    target: LedgerTarget,
    destination: Destination,
    *,
    keep: int | None = None,
    rotate_dir: Path | None = None,
    textfile_dir: Path | None = None,
    now: dt.datetime | None = None,
) -> BackupResult:
    """BACKUP DATABASE to a new `ledger-<time>` backup, then rotate and write the metric."""
    if keep is not None and keep < 1:
        raise BackupError("--keep must be at least 1")
    if keep is not None:
        rotate_dir = _rotation_dir(target, destination, rotate_dir)
    name = backup_name(now or dt.datetime.now(dt.UTC))
    engine = destination.engine(name)
    shown = _scrub(engine, destination.secrets())
    client = open_client(target, destination, create=False)
    try:
        if not _database_exists(client, target.database):
            raise BackupError(f"no database {target.database} in {target}: nothing to back up")
        sql = f"BACKUP DATABASE {target.database} TO {engine}"
        status = _run(client, sql, f"BACKUP to {shown}", "BACKUP_CREATED", target, destination.secrets())
    finally:
        client.close()
    finished = dt.datetime.now(dt.UTC)
    removed, unfinished = [], []
    if keep is not None and rotate_dir is not None:
        removed = rotate(rotate_dir, keep)
        unfinished = unfinished_backups(rotate_dir)
    if textfile_dir is not None:
        write_metric(textfile_dir, target.database, finished, int(status["compressed_size"]))
    return BackupResult(name, shown, finished, int(status["compressed_size"]), removed, unfinished)


def restore(
    target: LedgerTarget,
    source: Destination,
    *,
    name: str | None = None,
    as_database: str | None = None,
    list_dir: Path | None = None,
) -> str:
    """RESTORE DATABASE from one backup (the newest complete one in the directory when `name` is None)
    into a database that does not exist yet: a restore never mixes with rows already there."""
    directory = Path(source.location) if source.kind == "file" and target.kind == "chdb" else list_dir
    if name is None:
        if directory is None:
            raise BackupError("name the backup with --name (or give --list-dir, where its directory is mounted here)")
        names = list_backups(directory)
        if not names:
            unfinished = unfinished_backups(directory)
            left = f" (only unfinished ones: {', '.join(unfinished)})" if unfinished else ""
            raise BackupError(f"no {BACKUP_PREFIX}* backups in {directory}{left}")
        name = names[-1]
    elif not _NAME.fullmatch(name):
        raise BackupError(f"{name!r} is not a backup name ({BACKUP_PREFIX}<YYYYmmddTHHMMSS.ffffff>Z)")
    elif directory is not None and name in unfinished_backups(directory):
        newest = list_backups(directory)[-1:]
        instead = f"; the newest complete one is {newest[0]}" if newest else ""
        raise BackupError(f"{name} never finished (it has no {COMPLETE_MARK} file): it cannot be restored{instead}")
    database = as_database or target.database
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", database):
        raise BackupError(f"invalid database name {database!r}")
    engine = source.engine(name)
    shown = _scrub(engine, source.secrets())
    client = open_client(target, source, create=True)
    try:
        if _database_exists(client, database):
            raise BackupError(
                f"database {database} already exists in {target}: restore into a fresh ledger, drop it first, "
                f"or restore beside it with --as NEWNAME"
            )
        rename = f" AS {database}" if database != target.database else ""
        sql = f"RESTORE DATABASE {target.database}{rename} FROM {engine}"
        _run(client, sql, f"RESTORE from {shown}", "RESTORED", target, source.secrets())
    finally:
        client.close()
    return name


def _run(client: Client, sql: str, what: str, done: str, target: LedgerTarget, secrets: list[str]) -> dict[str, Any]:
    """Run a BACKUP or RESTORE statement and return its system.backups row; BackupError unless `done`."""
    try:
        rows = client.query(sql).result_rows
        status = _status(client, str(rows[0][0]))
    except Exception as exc:
        raise BackupError(f"{what} failed: {_scrub(target.scrub(exc), secrets)}") from None
    if status["status"] != done:
        raise BackupError(f"{what} ended {status['status']}: {status['error']}")
    return status


def rotate(directory: Path, keep: int) -> list[str]:
    """Delete the oldest complete backups in `directory` beyond the newest `keep`, and the unfinished
    ones older than every backup kept; returns the names removed, oldest first."""
    names = list_backups(directory)
    kept = names[-keep:]
    removed = names[: len(names) - len(kept)]
    if kept:
        removed += [name for name in unfinished_backups(directory) if name < kept[0]]
    removed.sort()
    for name in removed:
        path = directory / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    return removed


def write_metric(directory: Path, database: str, finished: dt.datetime, size: int) -> Path:
    """`ih_ledger_last_backup_timestamp_seconds` (and its size) for node_exporter's textfile collector,
    written atomically (a temporary file renamed into place)."""
    # The exposition format by hand: two gauges, and ledger/ stays free of the proxy's metrics library.
    # `database` is a plain identifier (LedgerTarget.parse checks it), so no label escaping is needed.
    text = (
        "# HELP ih_ledger_last_backup_timestamp_seconds Unix time the last ledger backup finished\n"
        "# TYPE ih_ledger_last_backup_timestamp_seconds gauge\n"
        f'ih_ledger_last_backup_timestamp_seconds{{database="{database}"}} {finished.timestamp()!r}\n'
        "# HELP ih_ledger_last_backup_size_bytes Compressed size of the last ledger backup\n"
        "# TYPE ih_ledger_last_backup_size_bytes gauge\n"
        f'ih_ledger_last_backup_size_bytes{{database="{database}"}} {float(size)!r}\n'
    )
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / TEXTFILE_NAME
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)  # node_exporter never reads half a file
    return path


def _rotation_dir(target: LedgerTarget, destination: Destination, rotate_dir: Path | None) -> Path:
    if rotate_dir is not None:
        return rotate_dir
    if destination.kind == "file" and target.kind == "chdb":
        return Path(destination.location)
    if destination.kind == "s3":
        raise BackupError("--keep does not rotate S3 backups: give the bucket a lifecycle rule instead")
    raise BackupError(
        "--keep on a server needs --rotate-dir: where the server's backup directory (or disk) is mounted here"
    )


def _database_exists(client: Client, database: str) -> bool:
    rows = client.query("SELECT count() FROM system.databases WHERE name = {db:String}", parameters={"db": database})
    return bool(rows.result_rows[0][0])


def _status(client: Client, backup_id: str) -> dict[str, Any]:
    rows = client.query(
        "SELECT status, error, compressed_size FROM system.backups WHERE id = {id:String}",
        parameters={"id": backup_id},
    ).result_rows
    if not rows:
        return {"status": "UNKNOWN", "error": f"backup {backup_id} is not in system.backups", "compressed_size": 0}
    status, error, size = rows[0]
    return {"status": str(status), "error": str(error), "compressed_size": int(size)}


def _scrub(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text
