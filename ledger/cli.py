"""`ih-ledger`: back up and restore the ledger (a ClickHouse server or an embedded chdb directory).

    ih-ledger backup  --clickhouse-url URL --to DEST [--keep N] [--rotate-dir DIR] [--textfile-dir DIR]
    ih-ledger restore --clickhouse-url URL --from DEST [--name ledger-…] [--as DATABASE] [--list-dir DIR]
    ih-ledger verify  --clickhouse-url URL --from DEST [--name ledger-…] [--list-dir DIR] [--textfile-dir DIR]

DEST: a directory (File(); on the server for a server, local for chdb), disk:NAME[/sub/dir], or
s3://bucket/prefix. See ledger/backup.py and docs/OPERATORS.md. Errors are one line: exit code 2 for
a bad URL or option, 1 when the backup, restore or verification could not be made or found a
difference.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from ledger.backup import BackupError, Destination, Verification, backup, restore, verify
from ledger.target import LedgerTarget, redact

EXIT_USAGE = 2
EXIT_FAILED = 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ih-ledger", description="Back up, restore and verify the share ledger.")
    commands = parser.add_subparsers(dest="command", required=True)

    def ledger_options(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--clickhouse-url",
            default=os.environ.get("IH_CLICKHOUSE_URL"),
            help="the ledger, as for ih-proxy: http(s)://user:pass@host:port/[db] or chdb://PATH "
            "(default $IH_CLICKHOUSE_URL, else chdb://<data-dir>/ledger)",
        )
        sub.add_argument(
            "--data-dir",
            type=Path,
            default=Path(os.environ.get("IH_DATA_DIR", "./data")),
            help="the proxy's data directory, for the default embedded ledger (default $IH_DATA_DIR or ./data)",
        )

    b = commands.add_parser("backup", help="BACKUP DATABASE to a new ledger-<UTC time> backup")
    ledger_options(b)
    b.add_argument("--to", required=True, metavar="DEST", help="a directory, disk:NAME[/sub/dir] or s3://bucket/prefix")
    b.add_argument("--keep", type=int, metavar="N", help="then delete all but the newest N backups")
    b.add_argument(
        "--rotate-dir",
        type=Path,
        metavar="DIR",
        help="for --keep on a server: the server's backup directory (or disk) as mounted here",
    )
    b.add_argument(
        "--textfile-dir",
        type=Path,
        metavar="DIR",
        help="write ih_ledger_last_backup_timestamp_seconds to DIR/ih_ledger_backup.prom "
        "(node_exporter --collector.textfile.directory)",
    )
    b.add_argument(
        "--verify",
        action="store_true",
        help="then restore it beside the ledger, read it in full and compare it with the ledger, partition by "
        "partition (needs room for one more copy); a difference fails the backup and rotates nothing",
    )

    def backup_options(sub: argparse.ArgumentParser) -> None:
        """Which backup a restore or a verification reads."""
        sub.add_argument("--from", dest="source", required=True, metavar="DEST", help="where the backups are (as --to)")
        sub.add_argument("--name", help="the backup (ledger-…); default the newest in the directory")
        sub.add_argument(
            "--list-dir", type=Path, metavar="DIR", help="for a server: its backup directory as mounted here"
        )

    r = commands.add_parser("restore", help="RESTORE DATABASE from a backup into a database that does not exist")
    ledger_options(r)
    backup_options(r)
    r.add_argument("--as", dest="as_database", metavar="DATABASE", help="restore under another database name")

    v = commands.add_parser(
        "verify", help="restore a backup beside the ledger (database <db>_ih_verify), read it in full, drop it"
    )
    ledger_options(v)
    backup_options(v)
    v.add_argument(
        "--textfile-dir",
        type=Path,
        metavar="DIR",
        help="write ih_ledger_last_backup_verified_timestamp_seconds to DIR/ih_ledger_backup_verified.prom",
    )
    return parser


def describe(verification: Verification) -> str:
    """One line: what the verified backup holds."""
    tables = ", ".join(f"{table} {rows:,}" for table, rows in verification.tables.items())
    held = f"rows read in full: {tables}; schema version {verification.schema_version}"
    if verification.rollup_minutes:
        held += f"; shares_per_minute equal to the shares in {verification.rollup_minutes:,} whole minutes"
    if verification.shares_from is not None and verification.shares_to is not None:
        held += (
            f"; shares from {verification.shares_from:%Y-%m-%d %H:%M:%S} to {verification.shares_to:%Y-%m-%d %H:%M:%S} "
            f"UTC, {verification.hotkeys:,} hotkeys credited {verification.credited:,.0f} difficulty"
        )
    if verification.compared or verification.changed:
        held += f"; {verification.compared:,} partitions equal to the ledger's"
        if verification.changed:
            held += f", {len(verification.changed):,} changed while it ran ({', '.join(verification.changed)})"
    return held


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        target = LedgerTarget.parse(args.clickhouse_url, data_dir=args.data_dir)
    except ValueError as exc:
        print(f"ih-ledger: clickhouse_url: {redact(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    try:
        if args.command == "backup":
            result = backup(
                target,
                Destination.parse(args.to),
                keep=args.keep,
                rotate_dir=args.rotate_dir,
                textfile_dir=args.textfile_dir,
                verify=args.verify,
            )
            removed = f"; removed {', '.join(result.removed)}" if result.removed else ""
            print(
                f"ih-ledger: backed up {target.database} from {target} to {result.engine} "
                f"({result.bytes} bytes){removed}"
            )
            if result.unfinished:  # killed mid-way, or still running: rotation removes them once old enough
                print(f"ih-ledger: unfinished backups left in place: {', '.join(result.unfinished)}")
            if result.verification is not None:
                print(f"ih-ledger: verified {result.name}: {describe(result.verification)}")
        elif args.command == "verify":
            checked = verify(
                target,
                Destination.parse(args.source),
                name=args.name,
                list_dir=args.list_dir,
                textfile_dir=args.textfile_dir,
            )
            print(f"ih-ledger: verified {checked.name}: {describe(checked)}")
        else:
            name = restore(
                target,
                Destination.parse(args.source),
                name=args.name,
                as_database=args.as_database,
                list_dir=args.list_dir,
            )
            print(f"ih-ledger: restored {args.as_database or target.database} in {target} from {name}")
    except (BackupError, ConnectionError) as exc:
        print(f"ih-ledger: {redact(str(exc))}", file=sys.stderr)
        return EXIT_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())
