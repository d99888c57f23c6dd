"""`ih-ledger backup` / `restore` on the real embedded engine: rows written by the proxy's own
LedgerWriter come back identical, row for row in every table, in a FRESH chdb directory.

chdb opens one engine path per process, so each step (write, back up, restore, read) is its own
process, as an operator would run them.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from ledger.backup import (
    COMPLETE_MARK,
    TEXTFILE_NAME,
    VERIFIED_TEXTFILE_NAME,
    Destination,
    compare,
    list_backups,
    unfinished_backups,
)
from tests.test_ledger import BASE_TS

REPO = Path(__file__).resolve().parent.parent
TIMEOUT = 120

_WRITE = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from ledger.target import LedgerTarget
    from proxy.config import LedgerBudget
    from proxy.ledger import LedgerWriter
    from tests.test_ledger import make_rows

    async def main() -> None:
        target = LedgerTarget.parse("chdb://" + sys.argv[1], data_dir=Path(sys.argv[1]))
        writer = LedgerWriter(
            target.connect, spool_dir=Path(sys.argv[2]), budget=LedgerBudget(batch_rows=100, flush_interval=0.01)
        )
        await writer.start()
        for step in range(int(sys.argv[3])):
            for row in make_rows(100, first=step * 100, base=float(sys.argv[4])):
                writer.record(row)
            await writer.flush()
        await writer.stop()

    asyncio.run(main())
    """
)

_DUMP = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from ledger.target import LedgerTarget

    target = LedgerTarget.parse("chdb://" + sys.argv[1], data_dir=Path(sys.argv[1]))
    client = target.connect()
    database = sys.argv[2]
    tables = client.query(
        "SELECT name, engine, create_table_query FROM system.tables WHERE database = {db:String} ORDER BY name",
        parameters={"db": database},
    ).result_rows
    out = {}
    for name, engine, create in tables:
        rows = [] if engine == "MaterializedView" else client.query(f"SELECT * FROM {database}.{name}").result_rows
        out[name] = {
            "engine": engine,
            "create": create.replace(f"{database}.", "DB."),
            "rows": sorted(repr(tuple(r)) for r in rows),
        }
    out["per_minute"] = sorted(
        repr(tuple(r))
        for r in client.query(
            f"SELECT minute, hotkey, worker, sum(accepted_difficulty), sum(accepted_shares), sum(rejected_shares) "
            f"FROM {database}.shares_per_minute GROUP BY minute, hotkey, worker"
        ).result_rows
    )
    print(json.dumps(out))
    """
)


# Rows enough that a BACKUP takes a while to copy (~150 MB, hardly compressible): a kill lands mid-way.
_FILL = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from ledger.target import LedgerTarget

    client = LedgerTarget.parse("chdb://" + sys.argv[1], data_dir=Path(sys.argv[1])).connect()
    client.command("CREATE TABLE infinitehash.filler (n UInt64, s String) ENGINE = MergeTree ORDER BY n")
    client.command("INSERT INTO infinitehash.filler SELECT number, randomPrintableASCII(100) FROM numbers(1500000)")
    """
)


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT, check=False
    )


def ih_ledger(*args: str) -> subprocess.CompletedProcess[str]:
    return run("-m", "ledger.cli", *args)


def write_rows(ledger: Path, spool: Path, batches: int) -> None:
    done = run("-c", _WRITE, str(ledger), str(spool), str(batches), repr(BASE_TS))
    assert done.returncode == 0, done.stderr


def dump(ledger: Path, database: str = "infinitehash") -> dict[str, Any]:
    done = run("-c", _DUMP, str(ledger), database)
    assert done.returncode == 0, done.stderr
    tables: dict[str, Any] = json.loads(done.stdout)
    return tables


def test_a_backup_restores_into_a_fresh_engine_with_every_row_identical(tmp_path: Path) -> None:
    ledger, fresh, backups, textfiles = (tmp_path / n for n in ("ledger", "fresh", "backups", "textfile"))
    write_rows(ledger, tmp_path / "spool", batches=12)
    before = dump(ledger)
    assert before["shares"]["rows"] and len(before["shares"]["rows"]) == 1200
    assert before["shares_per_minute"]["rows"] and before["schema_migrations"]["rows"]

    made = ih_ledger(
        "backup", "--clickhouse-url", f"chdb://{ledger}", "--to", str(backups), "--textfile-dir", str(textfiles)
    )
    assert made.returncode == 0, made.stderr
    names = list_backups(backups)
    assert len(names) == 1 and names[0] in made.stdout

    restored = ih_ledger("restore", "--clickhouse-url", f"chdb://{fresh}", "--from", str(backups))
    assert restored.returncode == 0, restored.stderr
    assert names[0] in restored.stdout
    after = dump(fresh)
    assert after["per_minute"] == before["per_minute"]
    del before["per_minute"], after["per_minute"]
    assert set(after) == set(before) >= {"shares", "shares_per_minute", "shares_per_minute_mv", "schema_migrations"}
    for table in before:
        assert after[table] == before[table], table  # same engine, same DDL, same rows

    # The last-backup metric for node_exporter's textfile collector.
    families = {f.name: f for f in text_string_to_metric_families((textfiles / TEXTFILE_NAME).read_text())}
    (sample,) = families["ih_ledger_last_backup_timestamp_seconds"].samples
    assert sample.labels == {"database": "infinitehash"} and sample.value > BASE_TS
    (size,) = families["ih_ledger_last_backup_size_bytes"].samples
    assert size.value > 0


def test_a_restored_ledger_keeps_counting_new_shares_once(tmp_path: Path) -> None:
    """The view is restored with its tables: new shares land in shares_per_minute exactly once."""
    ledger, fresh, backups = tmp_path / "ledger", tmp_path / "fresh", tmp_path / "backups"
    write_rows(ledger, tmp_path / "spool", batches=2)
    assert ih_ledger("backup", "--clickhouse-url", f"chdb://{ledger}", "--to", str(backups)).returncode == 0
    assert ih_ledger("restore", "--clickhouse-url", f"chdb://{fresh}", "--from", str(backups)).returncode == 0
    # The same new rows into both: the restored ledger must end up exactly where the original does.
    write_rows(fresh, tmp_path / "spool2", batches=4)
    write_rows(ledger, tmp_path / "spool3", batches=4)
    restored, original = dump(fresh), dump(ledger)
    assert restored["shares"]["rows"] == original["shares"]["rows"]
    assert restored["per_minute"] == original["per_minute"]
    accepted = sum(1 for row in restored["shares"]["rows"] if ", 1, '', '127.0.0.1:3333', " in row)
    assert sum(int(row.rsplit(", ", 2)[1]) for row in restored["per_minute"]) == accepted > 0


def test_rotation_keeps_the_newest_backups(tmp_path: Path) -> None:
    ledger, backups = tmp_path / "ledger", tmp_path / "backups"
    write_rows(ledger, tmp_path / "spool", batches=1)
    made: list[str] = []
    for _ in range(3):
        done = ih_ledger("backup", "--clickhouse-url", f"chdb://{ledger}", "--to", str(backups), "--keep", "2")
        assert done.returncode == 0, done.stderr
        made.append(done.stdout.split(f"File('{backups}/")[1].split("'")[0])
    assert list_backups(backups) == made[1:]
    assert f"removed {made[0]}" in done.stdout


def kill_ih_ledger_when(ready: Callable[[], object], *args: str) -> None:
    """Start `ih-ledger ARGS` and SIGKILL it once `ready()` (or once it exits; bounded: 30 s)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "ledger.cli", *args], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        for _ in range(3000):
            if ready() or proc.poll() is not None:
                break
            time.sleep(0.01)
        proc.kill()
    finally:
        proc.wait(timeout=30)


def begun(backups: Path, known: set[str]) -> list[Path]:
    """Backups not in `known` whose data ClickHouse has begun writing."""
    return [p for p in backups.glob("ledger-*") if p.name not in known and (p / "data").is_dir()]


def kill_mid_backup(ledger: Path, backups: Path) -> str:
    """SIGKILL `ih-ledger backup` once ClickHouse has begun writing the backup's data; returns the
    backup left behind (bounded: three tries)."""
    for _ in range(3):
        known = set(list_backups(backups) + unfinished_backups(backups))
        ready = functools.partial(begun, backups, known)
        kill_ih_ledger_when(ready, "backup", "--clickhouse-url", f"chdb://{ledger}", "--to", str(backups))
        left = begun(backups, known)
        if left and not (left[0] / COMPLETE_MARK).exists():
            return left[0].name
        # it finished before the kill landed: that backup is complete, try again
    raise AssertionError("no backup was killed mid-way in three tries")


def test_a_backup_killed_mid_way_is_never_restored_nor_kept_and_rotation_clears_it(tmp_path: Path) -> None:
    ledger, fresh, backups = tmp_path / "ledger", tmp_path / "fresh", tmp_path / "backups"
    write_rows(ledger, tmp_path / "spool", batches=2)
    before = dump(ledger)
    assert ih_ledger("backup", "--clickhouse-url", f"chdb://{ledger}", "--to", str(backups)).returncode == 0
    (complete,) = list_backups(backups)
    done = run("-c", _FILL, str(ledger))
    assert done.returncode == 0, done.stderr
    killed = kill_mid_backup(ledger, backups)
    assert unfinished_backups(backups) == [killed] and killed > complete
    assert list_backups(backups) == [complete]

    # The default restore is the newest complete backup, not the newer one that never finished.
    restored = ih_ledger("restore", "--clickhouse-url", f"chdb://{fresh}", "--from", str(backups))
    assert restored.returncode == 0, restored.stderr
    assert complete in restored.stdout and killed not in restored.stdout
    assert dump(fresh) == before
    named = ih_ledger(
        "restore", "--clickhouse-url", f"chdb://{tmp_path / 'other'}", "--from", str(backups), "--name", killed
    )
    assert named.returncode == 1 and named.stderr.count("\n") == 1
    assert "never finished" in named.stderr and complete in named.stderr

    # Not counted among the kept: with --keep 2 both complete ones stay, and the unfinished one,
    # newer than the oldest kept, stays too (it might still be running) and is named.
    kept = ih_ledger("backup", "--clickhouse-url", f"chdb://{ledger}", "--to", str(backups), "--keep", "2")
    assert kept.returncode == 0, kept.stderr
    second = list_backups(backups)[-1]
    assert list_backups(backups) == [complete, second] and unfinished_backups(backups) == [killed]
    assert "removed" not in kept.stdout and f"unfinished backups left in place: {killed}" in kept.stdout
    # Once older than every backup kept, it goes with the complete ones beyond --keep.
    last = ih_ledger("backup", "--clickhouse-url", f"chdb://{ledger}", "--to", str(backups), "--keep", "1")
    assert last.returncode == 0, last.stderr
    assert len(list_backups(backups)) == 1 and not unfinished_backups(backups)
    assert f"removed {', '.join(sorted([complete, killed, second]))}" in last.stdout
    assert sorted(p.name for p in backups.iterdir()) == list_backups(backups)


def test_restore_never_mixes_into_an_existing_ledger(tmp_path: Path) -> None:
    ledger, backups = tmp_path / "ledger", tmp_path / "backups"
    write_rows(ledger, tmp_path / "spool", batches=1)
    assert ih_ledger("backup", "--clickhouse-url", f"chdb://{ledger}", "--to", str(backups)).returncode == 0
    refused = ih_ledger("restore", "--clickhouse-url", f"chdb://{ledger}", "--from", str(backups))
    assert refused.returncode == 1
    assert refused.stderr.count("\n") == 1 and "already exists" in refused.stderr and "--as" in refused.stderr
    beside = ih_ledger("restore", "--clickhouse-url", f"chdb://{ledger}", "--from", str(backups), "--as", "copy")
    assert beside.returncode == 0, beside.stderr
    assert dump(ledger, "copy")["shares"]["rows"] == dump(ledger)["shares"]["rows"]


def test_backup_mistakes_are_one_line(tmp_path: Path) -> None:
    missing = ih_ledger("backup", "--clickhouse-url", f"chdb://{tmp_path / 'none'}", "--to", str(tmp_path / "b"))
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1 and "nothing to back up" in missing.stderr
    assert not (tmp_path / "none").exists()  # a mistyped path is not made into an empty ledger
    (tmp_path / "empty").mkdir()
    empty = ih_ledger("backup", "--clickhouse-url", f"chdb://{tmp_path / 'empty'}", "--to", str(tmp_path / "b"))
    assert empty.returncode == 1 and empty.stderr.count("\n") == 1 and "no database infinitehash" in empty.stderr
    s3 = ih_ledger("backup", "--clickhouse-url", f"chdb://{tmp_path / 'none'}", "--to", "s3://bucket/ledger")
    assert s3.returncode == 1 and s3.stderr.count("\n") == 1 and "local directory" in s3.stderr
    nothing = ih_ledger("restore", "--clickhouse-url", f"chdb://{tmp_path / 'x'}", "--from", str(tmp_path / "b"))
    assert nothing.returncode == 1 and "no ledger-* backups" in nothing.stderr


def test_without_chdb_an_embedded_url_is_one_clear_line(tmp_path: Path) -> None:
    """The image leaves chdb out (the `embedded` extra): chdb:// must say so, not print a traceback."""
    block = "import sys; sys.modules['chdb'] = None; "
    for module, args in (
        ("proxy.cli", ["--data-dir", str(tmp_path)]),
        ("ledger.cli", ["backup", "--clickhouse-url", f"chdb://{tmp_path}/l", "--to", str(tmp_path / "b")]),
    ):
        done = run("-c", f"{block}from {module} import main; sys.exit(main({args!r}))")
        assert done.returncode == 2, (module, done.stderr)
        assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
        assert "embedded" in done.stderr and "chdb" in done.stderr


def test_destinations_become_clickhouse_backup_engines(monkeypatch: Any) -> None:
    monkeypatch.delenv("IH_S3_ACCESS_KEY_ID", raising=False)
    assert Destination.parse("/backups").engine("ledger-1") == "File('/backups/ledger-1')"
    assert Destination.parse("disk:backups").engine("n") == "Disk('backups', 'n')"
    assert Destination.parse("disk:backups/ih/").engine("n") == "Disk('backups', 'ih/n')"
    assert Destination.parse("s3://b/p/").engine("n") == "S3('https://b.s3.amazonaws.com/p/n')"
    monkeypatch.setenv("IH_S3_ACCESS_KEY_ID", "KEY")
    monkeypatch.setenv("IH_S3_SECRET_ACCESS_KEY", "it's")
    assert Destination.parse("https://minio:9000/b").engine("n") == "S3('https://minio:9000/b/n', 'KEY', 'it\\'s')"


_DATABASES = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from ledger.target import LedgerTarget

    client = LedgerTarget.parse("chdb://" + sys.argv[1], data_dir=Path(sys.argv[1])).connect(create=False)
    print(json.dumps(sorted(str(r[0]) for r in client.query("SELECT name FROM system.databases").result_rows)))
    """
)


def databases(ledger: Path) -> list[str]:
    done = run("-c", _DATABASES, str(ledger))
    assert done.returncode == 0, done.stderr
    names: list[str] = json.loads(done.stdout)
    return names


def test_a_verified_backup_is_the_ledger_row_for_row_and_leaves_nothing_behind(tmp_path: Path) -> None:
    ledger, fresh, backups, textfiles = (tmp_path / n for n in ("ledger", "fresh", "backups", "textfile"))
    write_rows(ledger, tmp_path / "spool", batches=6)
    before = dump(ledger)
    made = ih_ledger(
        "backup",
        "--clickhouse-url",
        f"chdb://{ledger}",
        "--to",
        str(backups),
        "--verify",
        "--textfile-dir",
        str(textfiles),
    )
    assert made.returncode == 0, made.stderr
    (name,) = list_backups(backups)
    assert f"verified {name}: rows read in full: " in made.stdout and "shares 600" in made.stdout
    assert "partitions equal to the ledger's" in made.stdout and "changed while it ran" not in made.stdout
    assert "infinitehash_ih_verify" not in databases(ledger) and dump(ledger) == before
    families = {f.name: f for f in text_string_to_metric_families((textfiles / VERIFIED_TEXTFILE_NAME).read_text())}
    (stamp,) = families["ih_ledger_last_backup_verified_timestamp_seconds"].samples
    assert stamp.labels == {"database": "infinitehash"} and stamp.value > BASE_TS
    rows = {s.labels["table"]: s.value for s in families["ih_ledger_last_backup_verified_rows"].samples}
    assert rows["shares"] == 600 and rows["schema_migrations"] == len(before["schema_migrations"]["rows"])
    assert (textfiles / TEXTFILE_NAME).is_file()  # the backup's own metric file is still there

    # On its own, in a fresh engine (as a disaster restore would be): the same rows read back.
    alone = ih_ledger("verify", "--clickhouse-url", f"chdb://{fresh}", "--from", str(backups))
    assert alone.returncode == 0, alone.stderr
    assert f"verified {name}" in alone.stdout and "shares 600" in alone.stdout
    assert "partitions equal" not in alone.stdout  # nothing live to compare with here
    assert "infinitehash_ih_verify" not in databases(fresh)


def test_a_damaged_backup_fails_its_verification_in_one_line(tmp_path: Path) -> None:
    ledger, backups = tmp_path / "ledger", tmp_path / "backups"
    write_rows(ledger, tmp_path / "spool", batches=6)
    assert ih_ledger("backup", "--clickhouse-url", f"chdb://{ledger}", "--to", str(backups)).returncode == 0
    (name,) = list_backups(backups)
    # One byte changed in the middle of the shares' largest data file, as a bad disk sector would.
    data = max((backups / name / "data" / "infinitehash" / "shares").rglob("*.bin"), key=lambda p: p.stat().st_size)
    damaged = bytearray(data.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    data.write_bytes(bytes(damaged))
    checked = ih_ledger("verify", "--clickhouse-url", f"chdb://{ledger}", "--from", str(backups))
    assert checked.returncode == 1 and checked.stderr.count("\n") == 1 and "Traceback" not in checked.stderr
    assert name in checked.stderr
    assert "infinitehash_ih_verify" not in databases(ledger)


def test_a_verification_killed_mid_way_leaves_the_ledger_whole_and_the_next_one_clears_its_copy(
    tmp_path: Path,
) -> None:
    ledger, backups = tmp_path / "ledger", tmp_path / "backups"
    write_rows(ledger, tmp_path / "spool", batches=2)
    done = run("-c", _FILL, str(ledger))  # enough rows that a restore and its read take a while
    assert done.returncode == 0, done.stderr
    assert ih_ledger("backup", "--clickhouse-url", f"chdb://{ledger}", "--to", str(backups)).returncode == 0
    before = dump(ledger)
    copy = ledger / "metadata" / "infinitehash_ih_verify.sql"
    for _ in range(3):  # bounded: the kill must land while the copy exists
        kill_ih_ledger_when(copy.exists, "verify", "--clickhouse-url", f"chdb://{ledger}", "--from", str(backups))
        if "infinitehash_ih_verify" in databases(ledger):
            break
    else:
        raise AssertionError("no verification was killed while its copy existed in three tries")
    assert dump(ledger) == before  # the copy is beside the ledger, never in it
    again = ih_ledger("verify", "--clickhouse-url", f"chdb://{ledger}", "--from", str(backups))
    assert again.returncode == 0, again.stderr
    assert "filler 1,500,000" in again.stdout and "shares 200" in again.stdout
    assert "infinitehash_ih_verify" not in databases(ledger) and dump(ledger) == before


def test_the_live_comparison_tells_a_changed_partition_from_a_wrong_one() -> None:
    parts = frozenset({"all_1_1_0"})
    steady = {("shares", "20250101"): (10, parts), ("jobs", "202501"): (2, parts)}
    live = {("shares", "20250101"): (10, 111), ("jobs", "202501"): (2, 222)}
    assert compare(dict(live), steady, steady, live, steady) == (2, [], [])
    # Same count, other content: a mismatch; a missing row: a mismatch.
    _, _, wrong = compare({**live, ("shares", "20250101"): (10, 999)}, steady, steady, live, steady)
    assert wrong == ["shares partition 20250101: 10 rows restored, 10 in the ledger (same count, other content)"]
    _, _, short = compare({**live, ("jobs", "202501"): (1, 5)}, steady, steady, live, steady)
    assert short == ["jobs partition 202501: 1 rows restored, 2 in the ledger"]
    # Today's partition took new shares while the backup ran: listed, not compared.
    grown = {**steady, ("shares", "20250101"): (12, frozenset({"all_1_1_0", "all_2_2_0"}))}
    compared, changed, none = compare(dict(live), steady, grown, {**live, ("shares", "20250101"): (12, 333)}, grown)
    assert (compared, changed, none) == (1, ["shares partition 20250101"], [])
    # A partition the ledger held throughout but the backup lacks; one the ledger never held.
    assert compare({("jobs", "202501"): (2, 222)}, steady, grown, live, grown)[2] == [
        "shares partition 20250101: in the ledger before and after the backup, not in the backup"
    ]
    assert compare({**live, ("coverage", "202412"): (1, 7)}, steady, steady, live, steady)[2] == [
        "coverage partition 202412: in the backup, never in the ledger"
    ]


def test_a_backup_that_fails_its_verification_rotates_nothing_out(tmp_path: Path) -> None:
    """A difference found (injected here: a comparison that finds one) fails the backup with exit 1
    and keeps every older backup: a bad backup never pushes a good one out."""
    ledger, backups, textfiles = tmp_path / "ledger", tmp_path / "backups", tmp_path / "textfile"
    write_rows(ledger, tmp_path / "spool", batches=1)
    assert ih_ledger("backup", "--clickhouse-url", f"chdb://{ledger}", "--to", str(backups)).returncode == 0
    (good,) = list_backups(backups)
    differing = textwrap.dedent(
        """
        import sys
        import ledger.backup
        from ledger.cli import main
        ledger.backup.compare = lambda *args: (1, [], ["shares partition 20250101: 9 rows restored, 10 in the ledger"])
        sys.exit(main(sys.argv[1:]))
        """
    )
    failed = run(
        "-c",
        differing,
        "backup",
        "--clickhouse-url",
        f"chdb://{ledger}",
        "--to",
        str(backups),
        "--keep",
        "1",
        "--verify",
        "--textfile-dir",
        str(textfiles),
    )
    assert failed.returncode == 1 and failed.stderr.count("\n") == 1
    assert "does not match the ledger: shares partition 20250101: 9 rows restored" in failed.stderr
    assert good in list_backups(backups) and len(list_backups(backups)) == 2  # nothing rotated out
    assert not (textfiles / VERIFIED_TEXTFILE_NAME).exists() and not (textfiles / TEXTFILE_NAME).exists()
    assert "infinitehash_ih_verify" not in databases(ledger)


_FORGE_ROLLUP = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from ledger.target import LedgerTarget

    client = LedgerTarget.parse("chdb://" + sys.argv[1], data_dir=Path(sys.argv[1])).connect(create=False)
    minute = f"toStartOfMinute(toDateTime({int(float(sys.argv[2]))}, 'UTC'))"
    client.command(
        "INSERT INTO infinitehash.shares_per_minute "
        "(minute, hotkey, worker, accepted_difficulty, accepted_shares, rejected_shares) VALUES "
        f"({minute}, '5Hotkey0', 'infinite.5Hotkey0.w0', 1e6, 1, 0)"
    )
    """
)


def test_a_backup_whose_rollup_is_not_its_shares_fails_its_verification(tmp_path: Path) -> None:
    """shares_per_minute is what the workers API and the scorer pay from: a backup in which it credits
    more than its shares hold (as a view fed twice would) does not verify, though every row reads."""
    ledger, backups = tmp_path / "ledger", tmp_path / "backups"
    for minute in range(12):  # shares in twelve minutes: the verification compares the middle ones
        done = run("-c", _WRITE, str(ledger), str(tmp_path / f"spool{minute}"), "1", repr(BASE_TS + 60 * minute))
        assert done.returncode == 0, done.stderr
    good = ih_ledger("backup", "--clickhouse-url", f"chdb://{ledger}", "--to", str(backups), "--verify")
    assert good.returncode == 0, good.stderr
    assert "shares_per_minute equal to the shares in " in good.stdout
    forged = run("-c", _FORGE_ROLLUP, str(ledger), repr(BASE_TS + 150))
    assert forged.returncode == 0, forged.stderr
    bad = ih_ledger("backup", "--clickhouse-url", f"chdb://{ledger}", "--to", str(backups), "--verify")
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1
    assert "shares_per_minute is not what the shares add up to in 1 minute rows" in bad.stderr
    assert "infinite.5Hotkey0.w0: rollup " in bad.stderr
    alone = ih_ledger("verify", "--clickhouse-url", f"chdb://{tmp_path / 'fresh'}", "--from", str(backups))
    assert alone.returncode == 1 and "shares_per_minute is not what the shares add up to" in alone.stderr
