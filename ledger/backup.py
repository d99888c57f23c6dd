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

A backup is verified (`verify`, and `backup(..., verify=True)`) by restoring it beside the ledger, in
the scratch database `<database>_ih_verify`, and reading every column of every part of every table:
ClickHouse checks each compressed block's checksum as it reads, so a backup with a damaged byte fails.
Right after a BACKUP, the restored copy is also compared with the live ledger, partition by
partition: where no part of a partition changed while the backup ran, the restored rows must be the
ledger's rows exactly (count and a content fingerprint). The scratch database is dropped after, and
before (a verification killed mid-way leaves it behind).
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

from ledger.audit import RollupCheck, rollup_from_clickhouse
from ledger.schema import applied_versions
from ledger.target import NO_EMBEDDED_ENGINE, LedgerTarget

BACKUP_PREFIX = "ledger-"
_NAME = re.compile(r"ledger-\d{8}T\d{6}(?:\.\d{6})?Z")
TEXTFILE_NAME = "ih_ledger_backup.prom"
VERIFIED_TEXTFILE_NAME = "ih_ledger_backup_verified.prom"
VERIFY_SUFFIX = "_ih_verify"  # the scratch database a verification restores into
LEDGER_TABLES = frozenset({"shares", "shares_per_minute", "schema_migrations"})  # in every ledger, since 1
_ROLLUP_SETTLED_S = 300  # a verification compares the rollup up to this long before the newest share
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
    verification: Verification | None = None  # with verify=True


def backup(
    target: LedgerTarget,
    destination: Destination,
    *,
    keep: int | None = None,
    rotate_dir: Path | None = None,
    textfile_dir: Path | None = None,
    verify: bool = False,
    now: dt.datetime | None = None,
) -> BackupResult:
    """BACKUP DATABASE to a new `ledger-<time>` backup, verify it against the ledger if asked, then
    rotate and write the metrics. A backup that fails its verification rotates nothing out and writes
    no metric (a BackupError says what differs; the backup stays for a look)."""
    if keep is not None and keep < 1:
        raise BackupError("--keep must be at least 1")
    if keep is not None:
        rotate_dir = _rotation_dir(target, destination, rotate_dir)
    name = backup_name(now or dt.datetime.now(dt.UTC))
    engine = destination.engine(name)
    shown = _scrub(engine, destination.secrets())
    client = open_client(target, destination, create=False)
    verification = None
    try:
        if not _database_exists(client, target.database):
            raise BackupError(f"no database {target.database} in {target}: nothing to back up")
        before = _parts(client, target.database) if verify else {}
        sql = f"BACKUP DATABASE {target.database} TO {engine}"
        status = _run(client, sql, f"BACKUP to {shown}", "BACKUP_CREATED", target, destination.secrets())
        finished = dt.datetime.now(dt.UTC)
        if verify:
            live = (before, _parts(client, target.database))
            verification = _verify(client, target, destination, name, live=live)
    finally:
        client.close()
    removed, unfinished = [], []
    if keep is not None and rotate_dir is not None:
        removed = rotate(rotate_dir, keep)
        unfinished = unfinished_backups(rotate_dir)
    if textfile_dir is not None:
        write_metric(textfile_dir, target.database, finished, int(status["compressed_size"]))
        if verification is not None:
            write_verified_metric(textfile_dir, target.database, verification)
    return BackupResult(name, shown, finished, int(status["compressed_size"]), removed, unfinished, verification)


def _choose(target: LedgerTarget, source: Destination, name: str | None, list_dir: Path | None) -> str:
    """The backup to read: `name` (checked), else the newest complete one in the directory."""
    directory = Path(source.location) if source.kind == "file" and target.kind == "chdb" else list_dir
    if name is None:
        if directory is None:
            raise BackupError("name the backup with --name (or give --list-dir, where its directory is mounted here)")
        names = list_backups(directory)
        if not names:
            unfinished = unfinished_backups(directory)
            left = f" (only unfinished ones: {', '.join(unfinished)})" if unfinished else ""
            raise BackupError(f"no {BACKUP_PREFIX}* backups in {directory}{left}")
        return names[-1]
    if not _NAME.fullmatch(name):
        raise BackupError(f"{name!r} is not a backup name ({BACKUP_PREFIX}<YYYYmmddTHHMMSS.ffffff>Z)")
    if directory is not None and name in unfinished_backups(directory):
        newest = list_backups(directory)[-1:]
        instead = f"; the newest complete one is {newest[0]}" if newest else ""
        raise BackupError(f"{name} never finished (it has no {COMPLETE_MARK} file): it cannot be restored{instead}")
    return name


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
    name = _choose(target, source, name, list_dir)
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


# (table, partition id) → rows and content fingerprint (restored or read), or rows and active part
# names (from system.parts: what changed, without reading a row).
Key = tuple[str, str]
Prints = dict[Key, tuple[int, int]]
Parts = dict[Key, tuple[int, frozenset[str]]]


@dataclass(frozen=True)
class Verification:
    name: str
    tables: dict[str, int]  # each MergeTree table's rows, every column of every part read
    schema_version: int
    shares_from: dt.datetime | None  # the restored shares' first and last ts
    shares_to: dt.datetime | None
    hotkeys: int  # distinct hotkeys with an accepted share
    credited: float  # the accepted shares' difficulty, summed
    compared: int  # partitions compared with the live ledger row for row (0: not compared)
    changed: list[str]  # partitions the ledger changed in while the backup ran: not compared
    rollup_minutes: int  # whole minutes where shares_per_minute was compared with the shares
    finished: dt.datetime


def verify(
    target: LedgerTarget,
    source: Destination,
    *,
    name: str | None = None,
    list_dir: Path | None = None,
    textfile_dir: Path | None = None,
) -> Verification:
    """Restore one backup (the newest complete one by default) into the scratch database beside
    `target`'s, read it in full, and drop it. Without a live comparison (that needs the moment of
    the backup: `backup(..., verify=True)`), it proves the backup restores and every byte reads; a
    BackupError says what does not."""
    name = _choose(target, source, name, list_dir)
    client = open_client(target, source, create=True)
    try:
        verification = _verify(client, target, source, name, live=None)
    finally:
        client.close()
    if textfile_dir is not None:
        write_verified_metric(textfile_dir, target.database, verification)
    return verification


def _verify(
    client: Client, target: LedgerTarget, source: Destination, name: str, *, live: tuple[Parts, Parts] | None
) -> Verification:
    """Restore `name` into the scratch database, read it, compare it with the ledger when `live` has
    the ledger's parts from just before and just after the BACKUP, and drop the copy; BackupError,
    naming every difference, unless all is well."""
    database = target.database
    scratch = f"{database}{VERIFY_SUFFIX}"
    shown = _scrub(source.engine(name), source.secrets())
    drop = f"DROP DATABASE IF EXISTS {scratch} SYNC"
    live_tables = _tables(client, database)
    if any(engine.startswith("Replicated") for engine in live_tables.values()):
        # Its Keeper paths are the live replicas': a copy restored beside them would join them.
        raise BackupError(
            f"{database} in {target} is replicated (a cluster): verify its backups on a server of their own"
        )
    client.command(drop)  # left by a verification killed mid-way: it is ours by its name
    try:
        sql = f"RESTORE DATABASE {database} AS {scratch} FROM {source.engine(name)}"
        _run(client, sql, f"RESTORE (to verify) from {shown}", "RESTORED", target, source.secrets())
        tables = _tables(client, scratch)
        try:
            restored = _prints(client, scratch, tables)
        except Exception as exc:  # a damaged block: its checksum fails as it is read
            raise BackupError(f"{name} restores but does not read back: {target.scrub(exc)}") from None
        mismatches = [f"no table {t}: not a ledger backup" for t in sorted(LEDGER_TABLES - set(tables))]
        compared, changed = 0, list[str]()
        if live is not None:
            before, after = live
            mismatches += [
                f"table {t} {'only in the ledger' if t in live_tables else 'only in the backup'}"
                for t in sorted(set(tables) ^ set(live_tables))
            ]
            read = _prints(client, database, live_tables)
            during = _parts(client, database)
            compared, changed, differs = compare(restored, before, after, read, during)
            mismatches += differs
        versions = applied_versions(client, scratch) if "schema_migrations" in tables else set()
        summary = (
            client.query(
                "SELECT toUnixTimestamp64Milli(min(ts)), toUnixTimestamp64Milli(max(ts)), "
                f"uniqExactIf(hotkey, accepted = 1), sumIf(difficulty, accepted = 1), count() FROM {scratch}.shares"
            ).result_rows[0]
            if "shares" in tables
            else (0, 0, 0, 0.0, 0)
        )
        rollup = RollupCheck(0, [])
        if summary[4] and "shares_per_minute" in tables:
            # Not the oldest minute (the TTL cuts the two tables apart there) nor the last minutes (BACKUP
            # copies one table after the other: an insert between lands in one copy only).
            first, last = summary[0] / 1000 + 60, summary[1] / 1000 - _ROLLUP_SETTLED_S
            rollup = rollup_from_clickhouse(client, scratch, first, last, rechecks=())
            mismatches += _rollup_differs(rollup)
    finally:
        client.command(drop)
    if mismatches:
        what = "does not match the ledger" if live is not None else "is not a good backup"
        raise BackupError(f"{name} {what}: {'; '.join(mismatches)}")
    rows = dict.fromkeys(sorted(t for t, engine in tables.items() if engine.endswith("MergeTree")), 0)
    for (table, _), (n, _) in restored.items():
        rows[table] += n
    any_shares = bool(summary[4])
    return Verification(
        name=name,
        tables=rows,
        schema_version=max(versions, default=0),
        shares_from=dt.datetime.fromtimestamp(summary[0] / 1000, dt.UTC) if any_shares else None,
        shares_to=dt.datetime.fromtimestamp(summary[1] / 1000, dt.UTC) if any_shares else None,
        hotkeys=int(summary[2]),
        credited=float(summary[3]),
        compared=compared,
        changed=changed,
        rollup_minutes=rollup.minutes,
        finished=dt.datetime.now(dt.UTC),
    )


def _rollup_differs(rollup: RollupCheck) -> list[str]:
    if not rollup.mismatches:
        return []
    f = rollup.mismatches[0]
    return [
        f"shares_per_minute is not what the shares add up to in {len(rollup.mismatches):,} minute rows "
        f"(first: {dt.datetime.fromtimestamp(f.minute, dt.UTC):%Y-%m-%d %H:%M} {f.worker}: "
        f"rollup {f.rollup[0]:g} difficulty in {f.rollup[1]} shares, shares {f.raw[0]:g} in {f.raw[1]})"
    ]


def compare(
    restored: Prints, before: Parts, after: Parts, live: Prints, during: Parts
) -> tuple[int, list[str], list[str]]:
    """The restored copy against the ledger, partition by partition: (partitions compared row for
    row, partitions that changed while the backup ran, mismatches). `before` and `after` are the
    ledger's parts around the BACKUP, `live` its rows read after it, `during` its parts after that
    read. A partition none of whose parts changed across all three must be restored exactly; one that
    changed (new shares, a merge, the TTL) is only listed; a partition the ledger held throughout but
    the backup lacks, or the backup holds but the ledger never did, is a mismatch."""
    compared, changed, mismatches = 0, list[str](), list[str]()
    for key in sorted(set(restored) | set(before) | set(after)):
        table, partition = key
        where = f"{table} partition {partition}"
        steady = key in before and before[key] == after.get(key) == during.get(key)
        if steady:
            compared += 1
            if restored.get(key) != live.get(key):
                got, want = restored.get(key, (0, 0)), live.get(key, (0, 0))
                mismatches.append(
                    f"{where}: {got[0]:,} rows restored, {want[0]:,} in the ledger"
                    + (" (same count, other content)" if got[0] == want[0] else "")
                )
        elif key not in restored and key in before and key in after:
            mismatches.append(f"{where}: in the ledger before and after the backup, not in the backup")
        elif key in restored and key not in before and key not in after:
            mismatches.append(f"{where}: in the backup, never in the ledger")
        else:
            changed.append(where)
    return compared, changed, mismatches


def _tables(client: Client, database: str) -> dict[str, str]:
    rows = client.query(
        "SELECT name, engine FROM system.tables WHERE database = {db:String}", parameters={"db": database}
    ).result_rows
    return {str(name): str(engine) for name, engine in rows}


def _parts(client: Client, database: str) -> Parts:
    rows = client.query(
        "SELECT table, partition_id, sum(rows), groupArray(name) FROM system.parts "
        "WHERE database = {db:String} AND active GROUP BY table, partition_id",
        parameters={"db": database},
    ).result_rows
    return {(str(t), str(p)): (int(n), frozenset(names)) for t, p, n, names in rows}


def _prints(client: Client, database: str, tables: dict[str, str]) -> Prints:
    """Every row of every MergeTree table of `tables` (name → engine) read, all columns: its count and
    fingerprint per partition."""
    out: Prints = {}
    for table, engine in sorted(tables.items()):
        if not engine.endswith("MergeTree"):
            continue  # a view holds no rows of its own; a Distributed table would read the cluster
        rows = client.query(
            f"SELECT _partition_id, count(), sum(cityHash64(tuple(*))) FROM {database}.{table} GROUP BY _partition_id"
        ).result_rows
        out.update({(table, str(p)): (int(n), int(h)) for p, n, h in rows})
    return out


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
    return _write_textfile(directory / TEXTFILE_NAME, text)


def write_verified_metric(directory: Path, database: str, verification: Verification) -> Path:
    """`ih_ledger_last_backup_verified_timestamp_seconds` and the verified backup's shares, beside the
    backup metrics (a file of its own: a backup and a verification each replace only theirs)."""
    text = (
        "# HELP ih_ledger_last_backup_verified_timestamp_seconds Unix time a ledger backup was last verified\n"
        "# TYPE ih_ledger_last_backup_verified_timestamp_seconds gauge\n"
        f'ih_ledger_last_backup_verified_timestamp_seconds{{database="{database}"}} '
        f"{verification.finished.timestamp()!r}\n"
        "# HELP ih_ledger_last_backup_verified_rows Rows of the last verified backup, by table\n"
        "# TYPE ih_ledger_last_backup_verified_rows gauge\n"
        + "".join(
            f'ih_ledger_last_backup_verified_rows{{database="{database}",table="{table}"}} {float(rows)!r}\n'
            for table, rows in verification.tables.items()
        )
    )
    return _write_textfile(directory / VERIFIED_TEXTFILE_NAME, text)


def _write_textfile(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
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
