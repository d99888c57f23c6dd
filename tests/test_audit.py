"""The audit re-hashes the real vector shares from a chdb ledger, and reports altered rows precisely.

Ledger rows are made as the proxy makes them (tests/ledger_vectors.py): the real mainnet share (01)
and the real testnet Bitaxe share (02), each with a few more shares mined here on the same real job,
plus a third session on the testnet job under another extranonce1.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import clickhouse_connect
import pytest

from ledger.audit import (
    ROLLUP_SAMPLE_MINUTES,
    AuditReport,
    audit,
    audit_clickhouse,
    choose_sample,
    credited_shares_from_clickhouse,
    facts_from_clickhouse,
    facts_of,
    rollup_from_clickhouse,
)
from ledger.jobs import job_key
from ledger.rows import JobRow, ShareRow
from ledger.schema import apply_migrations
from scorer import cli
from tests.ledger_vectors import (
    ALICE,
    BOB,
    CHARLIE,
    DATABASE,
    T0,
    TINY,
    Connection,
    chdb_ledger,
    insert,
    job_row_of,
    mine,
    share_row,
    vector01,
    vector02,
)

END = T0 + 3600
END_ISO = datetime.fromtimestamp(END, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@cache
def ledger() -> tuple[tuple[ShareRow, ...], tuple[JobRow, ...]]:
    """Three sessions: a-1 ALICE (mainnet job), a-2 BOB and a-3 CHARLIE (the testnet job, two extranonce1s)."""
    c1, s1 = vector01()
    c2, s2 = vector02()
    c3 = Connection(
        c2.notify, f"{int(c2.extranonce1, 16) + 1:08x}", c2.extranonce2_size, TINY, c2.version_mask, c2.upstream
    )
    rows = [share_row(c1, s1, ts=T0 + 10, hotkey=ALICE, session="a-1")]
    rows += [
        share_row(c1, s, ts=T0 + 11 + i, hotkey=ALICE, session="a-1", difficulty=TINY)
        for i, s in enumerate(mine(c1, 2))
    ]
    rows.append(share_row(c2, s2, ts=T0 + 20, hotkey=BOB, session="a-2"))
    rows += [
        share_row(c2, s, ts=T0 + 21 + i, hotkey=BOB, session="a-2", difficulty=TINY) for i, s in enumerate(mine(c2, 2))
    ]
    rows += [
        share_row(c3, s, ts=T0 + 30 + i, hotkey=CHARLIE, session="a-3", worker_id="w")
        for i, s in enumerate(mine(c3, 2))
    ]
    return tuple(rows), (job_row_of(c1, T0), job_row_of(c2, T0 + 5))


def shares() -> list[ShareRow]:
    return list(ledger()[0])


def jobs() -> dict[str, JobRow]:
    return {j.job_key: j for j in ledger()[1]}


def run_audit(rows: list[ShareRow], job_rows: dict[str, JobRow]) -> AuditReport:
    return audit(rows, job_rows, facts_of(rows))


def flagged(report: AuditReport) -> dict[str, tuple[str, ...]]:
    """hash → kinds of every mismatched share (all of them: examples hold up to 20)."""
    return {m.row.hash: m.kinds for m in report.examples}


def chdb_audit(tmp_path: Path, rows: list[ShareRow], job_rows: list[JobRow], **kw: Any) -> AuditReport:
    with chdb_ledger(tmp_path / "ch") as client:
        insert(client, rows, job_rows)
        return audit_clickhouse(client, DATABASE, T0, END, **kw)


def test_the_real_shares_verify_from_the_ledger_with_zero_mismatches(tmp_path: Path) -> None:
    rows, job_rows = ledger()
    report = chdb_audit(tmp_path, list(rows), list(job_rows))
    assert report.clean and report.checked == len(rows)
    for hotkey in (ALICE, BOB, CHARLIE):
        mine_ = [r for r in rows if r.hotkey == hotkey]
        h = report.hotkeys[hotkey]
        assert (h.checked, h.mismatched, h.unverified_difficulty) == (len(mine_), 0, 0.0)
        assert h.credited_difficulty == pytest.approx(sum(r.difficulty for r in mine_))
    # The vectors' own shares are in there, with the hashes the vector files print.
    assert {r.hash for r in rows} >= {vector_hash("01"), vector_hash("02")}
    assert report.shares_per_second is not None and report.shares_per_second > 0


def vector_hash(number: str) -> str:
    from tests.vectors import fields

    return fields(number)["hash (display)"]


def test_one_byte_of_the_nonce_changed_is_a_hash_mismatch() -> None:
    rows = shares()
    victim = rows[3]  # BOB's real testnet share
    rows[3] = victim._replace(nonce=victim.nonce ^ 0xFF)
    report = run_audit(rows, jobs())
    assert flagged(report) == {victim.hash: ("hash",)}
    bob = report.hotkeys[BOB]
    assert (bob.mismatched, bob.mismatches["hash"], bob.unverified_difficulty) == (1, 1, victim.difficulty)
    assert report.hotkeys[ALICE].mismatched == report.hotkeys[CHARLIE].mismatched == 0


def test_the_jobs_coinb2_changed_fails_every_share_of_that_job(tmp_path: Path) -> None:
    rows, job_rows = ledger()
    testnet = job_rows[1]
    altered = testnet._replace(coinb2=testnet.coinb2[:-2] + f"{int(testnet.coinb2[-2:], 16) ^ 1:02x}")
    report = chdb_audit(tmp_path, list(rows), [job_rows[0], altered])
    on_job = {r.hash for r in rows if r.job_key == testnet.job_key}
    assert flagged(report) == dict.fromkeys(on_job, ("job-altered", "hash"))
    assert report.hotkeys[ALICE].mismatched == 0
    assert report.hotkeys[BOB].mismatches["hash"] == sum(r.hotkey == BOB for r in rows)
    assert report.hotkeys[CHARLIE].unverified_difficulty == pytest.approx(
        sum(r.difficulty for r in rows if r.hotkey == CHARLIE)
    )


def test_a_share_moved_to_another_sessions_hotkey_is_a_session_mismatch() -> None:
    rows = shares()
    moved = rows[4]  # one of BOB's shares (session a-2) on the testnet job …
    rows[4] = moved._replace(hotkey=CHARLIE, worker=f"infinite.{CHARLIE}.w", session="a-3")  # … now CHARLIE's
    report = run_audit(rows, jobs())
    kinds = flagged(report)
    # The work is real, so it still re-hashes; what gives it away is its extranonce1: that connection's.
    assert kinds[moved.hash] == ("session",)
    # a-3 now has two extranonce1s for one job, and BOB's extranonce1 has two sessions on that job:
    # every share of both sessions on that job is in doubt (the audit cannot tell which side lies).
    testnet = {r.hash for r in rows if r.job_key == moved.job_key}
    assert set(kinds) == testnet
    assert report.hotkeys[ALICE].mismatched == 0
    assert report.hotkeys[CHARLIE].mismatches["session"] == sum(r.hotkey == CHARLIE for r in rows)


def test_a_share_moved_with_the_other_sessions_extranonce1_no_longer_hashes() -> None:
    rows = shares()
    moved = rows[4]
    a3 = next(r for r in rows if r.session == "a-3")
    rows[4] = moved._replace(hotkey=CHARLIE, worker=a3.worker, session="a-3", extranonce1=a3.extranonce1)
    report = run_audit(rows, jobs())
    assert flagged(report) == {moved.hash: ("hash",)}


def test_a_whole_session_relabelled_is_beyond_the_ledger_alone() -> None:
    """Which hotkey a connection belonged to is the proxy's word: relabel every row of a session and the
    ledger stays consistent. Only the pool's per-worker figures (scorer/luxor.py) can contradict it."""
    rows = [r._replace(hotkey=ALICE, worker=f"infinite.{ALICE}.rig9") if r.session == "a-2" else r for r in shares()]
    report = run_audit(rows, jobs())
    assert report.clean
    assert report.hotkeys[ALICE].checked == sum(r.hotkey == ALICE for r in rows) > 3


def test_a_credit_above_the_shares_own_difficulty() -> None:
    rows = shares()
    real = rows[0]  # the mainnet share, difficulty 683.5
    rows[0] = real._replace(difficulty=real.share_difficulty * 2)
    report = run_audit(rows, jobs())
    assert flagged(report) == {real.hash: ("low-difficulty",)}
    assert report.hotkeys[ALICE].unverified_difficulty == real.share_difficulty * 2


def test_a_share_credited_twice_unknown_jobs_and_rows_without_the_fields() -> None:
    rows = shares()
    copy = rows[0]._replace(hotkey=BOB, worker=f"infinite.{BOB}.x", session="b-9", proxy_id="proxy-b")
    old = rows[1]._replace(job_key="", extranonce1="", extranonce2="", ntime=0, nonce=0, version_bits=None)
    rows[1] = old
    rows.append(copy)
    job_rows = {k: j for k, j in jobs().items() if k != rows[3].job_key}  # the testnet job row is gone
    report = run_audit(rows, job_rows)
    kinds = flagged(report)
    assert kinds[copy.hash] == kinds[rows[0].hash] == ("duplicate", "session")
    assert kinds[old.hash] == ("missing-fields",)
    assert {kinds[r.hash] for r in rows if r.job_key == rows[3].job_key} == {("unknown-job",)}
    totals = report.totals()
    assert (totals["duplicate"], totals["missing-fields"]) == (2, 1)
    assert totals["unknown-job"] == sum(r.job_key == rows[3].job_key for r in rows)


def test_rejected_shares_are_not_audited() -> None:
    rows = [r._replace(accepted=0, reject_reason="pool: stale", nonce=r.nonce ^ 1) for r in shares()]
    assert run_audit(rows, jobs()).checked == 0


def test_clickhouse_and_python_agree_on_the_facts_and_the_sample(tmp_path: Path) -> None:
    rows = shares()
    rows[4] = rows[4]._replace(hotkey=CHARLIE, session="a-3")
    rows.append(rows[0]._replace(session="dup"))
    with chdb_ledger(tmp_path / "ch") as client:
        insert(client, rows, list(ledger()[1]))
        assert facts_from_clickhouse(client, DATABASE, T0, END) == facts_of(rows)
        samples = []
        for seed in range(6):
            ours = choose_sample(rows, 4, seed)
            assert credited_shares_from_clickhouse(client, DATABASE, T0, END, sample=4, seed=seed) == ours
            samples.append({r.hash for r in ours})
        assert len({frozenset(s) for s in samples}) > 1  # the seed chooses
        sampled = audit_clickhouse(client, DATABASE, T0, END, sample=3, seed=11)
        assert sampled.checked == 3


def forge_rollup(client: Any, row: ShareRow, difficulty: float) -> None:
    """What a view fed twice by a retried insert leaves: the rollup credits more than the shares hold."""
    client.command(
        f"INSERT INTO {DATABASE}.shares_per_minute "
        "(minute, hotkey, worker, accepted_difficulty, accepted_shares, rejected_shares) VALUES "
        f"(toStartOfMinute(toDateTime({int(row.ts)}, 'UTC')), '{row.hotkey}', '{row.worker}', {difficulty!r}, 1, 0)"
    )


def test_the_rollup_is_what_the_shares_add_up_to_and_a_forged_rollup_row_is_found(tmp_path: Path) -> None:
    rows, job_rows = ledger()
    with chdb_ledger(tmp_path / "ch") as client:
        insert(client, list(rows), list(job_rows))
        clean = audit_clickhouse(client, DATABASE, T0, END)
        assert clean.rollup is not None and clean.rollup.minutes == 60 and not clean.rollup.mismatches
        assert clean.clean
        forge_rollup(client, rows[0], 1e6)
        report = audit_clickhouse(client, DATABASE, T0, END)
        assert report.checked == len(rows) and report.mismatched == 0  # every share still re-hashes...
        assert report.rollup is not None and not report.clean  # ...but what is paid from is not them
        (found,) = report.rollup.mismatches
        alice = [r for r in rows if r.hotkey == ALICE and r.worker == rows[0].worker]
        assert (found.minute, found.hotkey, found.worker) == (int(T0) // 60 * 60, ALICE, rows[0].worker)
        assert found.raw[:2] == (pytest.approx(sum(r.difficulty for r in alice)), len(alice))
        assert found.rollup[:2] == (pytest.approx(found.raw[0] + 1e6), found.raw[1] + 1)
        # One hotkey's audit sees only its own rows; a sample compares its seed's minutes.
        assert not rollup_from_clickhouse(client, DATABASE, T0, END, hotkey=BOB).mismatches
        sampled = [
            rollup_from_clickhouse(client, DATABASE, T0, END, sample_minutes=3, seed=s, rechecks=()) for s in range(40)
        ]
        assert {c.minutes for c in sampled} == {ROLLUP_SAMPLE_MINUTES}
        assert 0 < sum(bool(c.mismatches) for c in sampled) < 40  # some seeds draw the forged minute


def test_the_rollup_is_not_compared_past_the_ttl_where_the_tables_expire_apart(tmp_path: Path) -> None:
    now = time.time()
    client = clickhouse_connect.get_client(interface="chdb", path=str(tmp_path / "ch"))
    try:
        apply_migrations(client, DATABASE, 1)  # a one-day TTL
        at_the_edge, inside = shares()[0]._replace(ts=now - 86_400 + 30), shares()[0]._replace(ts=now - 3_600)
        forge_rollup(client, at_the_edge, 1e6)
        forge_rollup(client, inside, 1e6)
        found = rollup_from_clickhouse(client, DATABASE, now - 2 * 86_400, now, rechecks=())
        assert [f.minute for f in found.mismatches] == [int(inside.ts) // 60 * 60]
        assert found.minutes < 24 * 60  # only the day the TTL keeps
    finally:
        client.close()


def test_job_row_keys_are_what_the_proxy_writes() -> None:
    for j in ledger()[1]:
        from ledger.jobs import notify_of

        assert job_key(notify_of(j)) == j.job_key


# --- the command, and the scoring pass's gate ------------------------------------------------------------


def write_ledger(path: Path, rows: list[ShareRow]) -> None:
    with chdb_ledger(path) as client:
        insert(client, rows, list(ledger()[1]))


def test_ih_scorer_audit_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_ledger(tmp_path / "clean", shares())
    common = ["--window", "1h", "--end", END_ISO, "--json"]
    assert cli.main(["audit", "--clickhouse-url", f"chdb://{tmp_path / 'clean'}", *common]) == 0
    doc = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (doc["checked"], doc["mismatched"], doc["clean"]) == (len(shares()), 0, True)
    assert doc["shares_per_second"] > 0
    assert doc["rollup"] == {"minutes": 60, "mismatches": []}  # the full audit compares every whole minute

    rows = shares()
    rows[3] = rows[3]._replace(nonce=rows[3].nonce ^ 0x01000000)
    write_ledger(tmp_path / "tampered", rows)
    assert cli.main(["audit", "--clickhouse-url", f"chdb://{tmp_path / 'tampered'}", *common]) == 4
    out = capsys.readouterr().out
    doc = json.loads(out.strip().splitlines()[-1])
    assert doc["mismatches"]["hash"] == 1 and doc["mismatched"] == 1
    (bob,) = [h for h in doc["hotkeys"] if h["hotkey"] == BOB]
    assert bob["unverified_difficulty"] == rows[3].difficulty
    assert doc["examples"][0]["row"]["hash"] == rows[3].hash
    assert f"hash: hotkey {BOB}" in out  # the table names the share

    assert cli.main(["audit", "--sample", "0", "--clickhouse-url", "chdb:///x"]) == 2
    assert cli.main(["audit", "--clickhouse-url", "chdb:///x", "--from-url", "http://127.0.0.1:1"]) == 2


def test_audit_sample_gate_refuses_to_score_a_ledger_that_does_not_rehash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    metagraph = tmp_path / "metagraph.json"
    metagraph.write_text(json.dumps({"0": ALICE, "1": BOB, "2": CHARLIE}))
    rows = shares()
    write_ledger(tmp_path / "clean", rows)
    common = [
        "--dry-run",
        "--json",
        "--metagraph-file",
        str(metagraph),
        "--window",
        "1h",
        "--end",
        END_ISO,
        "--min-coverage",
        "0",
    ]
    assert cli.main([*common, "--clickhouse-url", f"chdb://{tmp_path / 'clean'}", "--audit-sample", "5"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["weights"]

    rows[0] = rows[0]._replace(difficulty=1e6)  # an inflated credit
    write_ledger(tmp_path / "inflated", rows)
    ledger_url = f"chdb://{tmp_path / 'inflated'}"
    assert cli.main([*common, "--clickhouse-url", ledger_url]) == 0  # without the gate it scores
    capsys.readouterr()
    assert cli.main([*common, "--clickhouse-url", ledger_url, "--audit-sample", str(len(rows))]) == 1
    err = capsys.readouterr().err
    assert "refusing to set weights" in err and "low-difficulty 1" in err and ALICE in err
    assert "ih-scorer audit --sample" in err  # says how to reproduce it

    # Every share re-hashes, but the rollup the weights come from was fed twice: refused as well.
    with chdb_ledger(tmp_path / "forged") as client:
        insert(client, shares(), list(ledger()[1]))
        for minute in range(60):  # every minute, so whatever minutes the gate's seed draws
            forge_rollup(client, shares()[0]._replace(ts=T0 + 60 * minute), 1e6)
    forged = f"chdb://{tmp_path / 'forged'}"
    assert cli.main([*common, "--clickhouse-url", forged, "--audit-sample", "5"]) == 1
    err = capsys.readouterr().err
    assert "refusing to set weights: shares_per_minute" in err and "ih-scorer audit --end" in err
