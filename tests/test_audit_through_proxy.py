"""The real shares of the test vectors go through the real proxy into the ledger, and re-hash from it.

For each vector a `SimulatedPool` on 127.0.0.1 is scripted from the vector itself (the extranonce1
and extranonce2 size it gave, the difficulty it set, the notify it sent, the version mask it
granted) and verifies the share with its own share math. A scripted miner replays the vector's
lines through `ProxyApp` (embedded chdb ledger), with `infinite.<hotkey>.rig1` for the vector's
worker name: the proxy forwards the name, the header hash does not depend on it.

- 01, mainnet (espminer on Slush): subscribe, authorize, the real submit; ALICE.
- 02, testnet (Bitaxe on public-pool): the recorded session line by line (configure with version
  rolling, suggest_difficulty, the real version-rolled submit); BOB. Then CHARLIE, a second miner on
  the same pool and job under the next extranonce1, suggests a tiny difficulty and submits two shares
  mined here, so the testnet job has two sessions (what makes a moved share detectable).

Then the ledger the proxy wrote is tampered with in place (ALTER TABLE in chdb, on a copy) and the
audit must name each change: one byte of a nonce, a job's coinb2, a share moved to another session.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import clickhouse_connect
import pytest
from clickhouse_connect.driver.client import Client

from ledger.audit import AuditReport, audit_clickhouse, credited_shares_from_clickhouse, jobs_from_clickhouse
from ledger.jobs import job_key
from ledger.rows import JobRow, ShareRow
from protocol.messages import parse_notify
from proxy.app import ProxyApp
from proxy.config import ProxyConfig
from simulation import SimulatedPool, run
from tests.ledger_vectors import (
    ALICE,
    BOB,
    CHARLIE,
    DATABASE,
    TINY,
    Connection,
    Submitted,
    insert,
    mine,
    share_row,
    vector01,
    vector02,
)
from tests.vectors import fields, json_lines

HOST = "127.0.0.1"
TIMEOUT = 60.0  # the whole replay
READ_TIMEOUT = 20.0  # one line from the proxy
MAX_LINES = 200  # lines a miner reads while waiting for one message
START, END = 0.0, 4_102_444_800.0  # the audit window: everything (rows carry the proxy's wall clock)
MINED = 2  # CHARLIE's shares


def worker(hotkey: str) -> str:
    return f"infinite.{hotkey}.rig1"


class ScriptedMiner:
    """Sends the lines it is given; keeps every message the proxy relays, and waits for one (bounded)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.received: list[dict[str, Any]] = []

    @classmethod
    async def connect(cls, port: int) -> ScriptedMiner:
        reader, writer = await asyncio.open_connection(HOST, port)
        return cls(reader, writer)

    def send(self, *messages: dict[str, Any]) -> None:
        self.writer.write(b"".join(json.dumps(m).encode() + b"\n" for m in messages))

    async def _until(self, found: Any) -> dict[str, Any]:
        for _ in range(MAX_LINES):
            for message in self.received:
                if found(message):
                    return message
            line = await asyncio.wait_for(self.reader.readline(), READ_TIMEOUT)
            if not line:
                raise AssertionError(f"the proxy closed the connection; received {self.received}")
            self.received.append(json.loads(line))
        raise AssertionError(f"gave up after {MAX_LINES} lines: {self.received}")

    async def reply(self, request_id: int) -> dict[str, Any]:
        return await self._until(lambda m: m.get("id") == request_id and "method" not in m)

    async def notification(self, method: str) -> list[Any]:
        message = await self._until(lambda m: m.get("method") == method)
        params: list[Any] = message["params"]
        return params

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


@dataclass
class Replay:
    """What one scripted miner saw, and what its pool saw and accepted."""

    received: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # miner → messages from the proxy
    pool_submits: list[Any] = field(default_factory=list)  # simulation.PoolSubmit
    pool_accepted: dict[str, float] = field(default_factory=dict)  # hotkey → difficulty


@dataclass
class Proxied:
    """The ledger directory the proxy wrote (closed), and both replays."""

    ledger: Path
    mainnet: Replay
    testnet: Replay


def proxy_config(pool: SimulatedPool, ledger: Path, data_dir: Path, proxy_id: str) -> ProxyConfig:
    return ProxyConfig(
        listen=f"{HOST}:0",
        upstream=(pool.url,),
        data_dir=data_dir,
        clickhouse_url=f"chdb://{ledger}",
        metrics=f"{HOST}:0",
        proxy_id=proxy_id,
        ledger_flush_interval=0.05,
    )


def our_worker(message: dict[str, Any], name: str) -> dict[str, Any]:
    """A vector line with its worker name swapped for ours (authorize and submit carry one)."""
    if message.get("method") in ("mining.authorize", "mining.submit"):
        return {**message, "params": [name, *message["params"][1:]]}
    return message


async def replay_mainnet(ledger: Path, data_dir: Path) -> Replay:
    """01: the pool gives the vector's extranonce1 and sends its job; the miner submits the real share."""
    c, s = vector01()
    out = Replay()
    async with SimulatedPool(
        first_extranonce1=c.extranonce1,
        extranonce2_size=c.extranonce2_size,
        difficulty=c.difficulty,
        job=c.notify,
        job_interval=0,
        seed=1,
    ) as pool:
        app = ProxyApp(proxy_config(pool, ledger, data_dir, "vectors-mainnet"))
        await app.start()
        try:
            miner = await ScriptedMiner.connect(app.port)
            name = worker(ALICE)
            miner.send(
                {"id": 1, "method": "mining.subscribe", "params": []},
                {"id": 2, "method": "mining.authorize", "params": [name, "x"]},
            )
            await miner.reply(2)
            job_id = (await miner.notification("mining.notify"))[0]
            miner.send({"id": 3, "method": "mining.submit", "params": [name, job_id, s.extranonce2, s.ntime, s.nonce]})
            await miner.reply(3)
            await miner.close()
            out.received["alice"] = miner.received
        finally:
            await app.stop()
        out.pool_submits = list(pool.submits_seen)
        out.pool_accepted = pool.accepted_by_hotkey()
    return out


def transcript02() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The recorded Bitaxe session: what the miner sent, what public-pool answered (in order)."""
    lines = json_lines("02")
    return [line.value for line in lines if line.from_client], [line.value for line in lines if not line.from_client]


async def replay_testnet(ledger: Path, data_dir: Path) -> Replay:
    """02: the whole recorded session through the proxy, then a second miner on the same job."""
    sent, answered = transcript02()
    subscribed = next(m for m in answered if m.get("id") == 1)["result"]
    granted = int(next(m for m in answered if m.get("id") == 2)["result"]["version-rolling.mask"], 16)
    (difficulty,) = [m["params"][0] for m in answered if m.get("method") == "mining.set_difficulty"]
    (notify,) = [parse_notify(m["params"]) for m in answered if m.get("method") == "mining.notify"]
    out = Replay()
    async with SimulatedPool(
        first_extranonce1=subscribed[1],
        extranonce2_size=subscribed[2],
        difficulty=difficulty,
        version_mask=granted,
        job=notify,
        job_interval=0,
        honour_suggested_difficulty=True,
        seed=2,
    ) as pool:
        app = ProxyApp(proxy_config(pool, ledger, data_dir, "vectors-testnet"))
        await app.start()
        try:
            # BOB is the Bitaxe: its lines as recorded, the submit once the job has come.
            bob = await ScriptedMiner.connect(app.port)
            handshake = [our_worker(m, worker(BOB)) for m in sent if m["method"] != "mining.submit"]
            submits = [our_worker(m, worker(BOB)) for m in sent if m["method"] == "mining.submit"]
            bob.send(*handshake)
            for m in handshake:
                await bob.reply(m["id"])
            await bob.notification("mining.notify")
            for m in submits:
                bob.send(m)
                await bob.reply(m["id"])
            await bob.close()
            out.received["bob"] = bob.received

            # CHARLIE: the same handshake, a tiny suggested difficulty before authorize, two mined shares.
            charlie = await ScriptedMiner.connect(app.port)
            configure = next(m for m in sent if m["method"] == "mining.configure")
            charlie.send(
                {"id": 1, "method": "mining.subscribe", "params": ["bitaxe v2.2"]},
                {**configure, "id": 2},
                {"id": 3, "method": "mining.suggest_difficulty", "params": [TINY]},
                {"id": 4, "method": "mining.authorize", "params": [worker(CHARLIE), "x"]},
            )
            extranonce1, extranonce2_size = (await charlie.reply(1))["result"][1:3]
            mask = int((await charlie.reply(2))["result"]["version-rolling.mask"], 16)
            await charlie.reply(4)
            job = parse_notify(await charlie.notification("mining.notify"))
            connection = Connection(job, extranonce1, extranonce2_size, TINY, mask, "")
            for i, s in enumerate(mine(connection, MINED), start=10):
                params = [worker(CHARLIE), job.job_id, s.extranonce2, s.ntime, s.nonce, s.version_bits]
                charlie.send({"id": i, "method": "mining.submit", "params": params})
                await charlie.reply(i)
            await charlie.close()
            out.received["charlie"] = charlie.received
        finally:
            await app.stop()
        out.pool_submits = list(pool.submits_seen)
        out.pool_accepted = pool.accepted_by_hotkey()
    return out


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory) -> Proxied:
    """Both vectors through the proxy into one ledger (two proxy runs, one pool each)."""
    root = tmp_path_factory.mktemp("through-proxy")
    ledger = root / "ledger"
    result: dict[str, Replay] = {}

    async def scenario() -> None:
        async def both() -> None:
            result["mainnet"] = await replay_mainnet(ledger, root / "mainnet")
            result["testnet"] = await replay_testnet(ledger, root / "testnet")

        await asyncio.wait_for(both(), TIMEOUT)

    run(scenario())
    return Proxied(ledger, result["mainnet"], result["testnet"])


@contextmanager
def opened(path: Path) -> Iterator[Client]:
    client = clickhouse_connect.get_client(interface="chdb", path=str(path))
    try:
        yield client
    finally:
        client.close()


@contextmanager
def tampered_copy(proxied: Proxied, tmp_path: Path) -> Iterator[Client]:
    """A copy of the proxy's ledger to alter (the original stays as the proxy wrote it)."""
    copy = tmp_path / "ledger"
    shutil.copytree(proxied.ledger, copy, symlinks=True)  # chdb links metadata into store/
    with opened(copy) as client:
        yield client


def credited(client: Client) -> list[ShareRow]:
    return credited_shares_from_clickhouse(client, DATABASE, START, END)


def audit_of(client: Client) -> AuditReport:
    return audit_clickhouse(client, DATABASE, START, END)


def flagged(report: AuditReport) -> dict[str, tuple[str, ...]]:
    """hash → kinds of every mismatched share (the report's examples hold up to 20)."""
    return {m.row.hash: m.kinds for m in report.examples}


def mutate(client: Client, sql: str, **parameters: Any) -> None:
    client.command(f"{sql} SETTINGS mutations_sync = 2", parameters=parameters)


def ledger_rows(proxied: Proxied) -> tuple[list[ShareRow], dict[str, JobRow]]:
    with opened(proxied.ledger) as client:
        rows = credited(client)
        return rows, jobs_from_clickhouse(client, DATABASE, (r.job_key for r in rows))


def vector_row(rows: list[ShareRow], number: str) -> ShareRow:
    (row,) = [r for r in rows if r.hash == fields(number)["hash (display)"]]
    return row


def as_built_directly(row: ShareRow, c: Connection, s: Submitted) -> ShareRow:
    """The row tests/ledger_vectors.py builds from the vector without a proxy, for this row's session."""
    c = dataclasses.replace(c, upstream=row.upstream)
    return share_row(c, s, ts=row.ts, hotkey=row.hotkey, session=row.session, proxy_id=row.proxy_id)


# --- the honest run ---------------------------------------------------------------------------------


def test_the_real_mainnet_share_is_forwarded_accepted_and_ledgered(proxied: Proxied) -> None:
    c, s = vector01()
    received = proxied.mainnet.received["alice"]
    subscribed = next(m for m in received if m.get("id") == 1)["result"]
    assert subscribed[1:3] == [c.extranonce1, c.extranonce2_size]  # the proxy relayed the pool's extranonce
    notify = next(m for m in received if m.get("method") == "mining.notify")["params"]
    assert parse_notify(notify) == c.notify  # the real job, relayed as the pool sent it
    verdict = next(m for m in received if m.get("id") == 3)
    assert verdict["result"] is True and verdict["error"] is None
    # The pool saw the share as the miner sent it (with our worker name), hashed it and accepted it.
    (seen,) = proxied.mainnet.pool_submits
    assert (seen.worker, seen.extranonce2, seen.ntime, seen.nonce, seen.version_bits) == (
        worker(ALICE),
        s.extranonce2,
        s.ntime,
        s.nonce,
        None,
    )
    assert seen.accepted and proxied.mainnet.pool_accepted == {ALICE: c.difficulty}

    rows, jobs = ledger_rows(proxied)
    row = vector_row(rows, "01")
    assert (row.hotkey, row.worker, row.accepted, row.difficulty) == (ALICE, worker(ALICE), 1, c.difficulty)
    assert round(row.share_difficulty, 2) == float(fields("01")["share difficulty"])
    assert (row.extranonce1, row.extranonce2, row.version_bits, row.version_mask) == (
        c.extranonce1,
        s.extranonce2,
        None,
        0,
    )
    assert (row.ntime, row.nonce) == (int(s.ntime, 16), int(s.nonce, 16))
    assert row.job_key == job_key(c.notify) and jobs[row.job_key].coinb2 == c.notify.coinb2
    assert row == as_built_directly(row, c, s)


def test_the_real_testnet_session_is_replayed_with_the_mask_it_negotiated(proxied: Proxied) -> None:
    sent, answered = transcript02()
    configure = next(m for m in sent if m["method"] == "mining.configure")
    asked = int(configure["params"][1]["version-rolling.mask"], 16)
    granted = next(m for m in answered if m.get("id") == 2)["result"]
    received = proxied.testnet.received["bob"]
    # Every reply the miner got says what public-pool said (the ids are the miner's own).
    for request in sent:
        (reply,) = [m for m in received if m.get("id") == request["id"] and "method" not in m]
        if request["method"] != "mining.suggest_difficulty":  # public-pool recorded no answer to it
            recorded = next(m for m in answered if m.get("id") == request["id"])
            result, expected = reply["result"], recorded["result"]
            if request["method"] == "mining.subscribe":  # the subscriptions list is the pool's own
                result, expected = result[1:], expected[1:]
            assert (result, reply["error"]) == (expected, recorded["error"]), request
    for method in ("mining.set_difficulty", "mining.notify"):
        assert [m["params"] for m in received if m.get("method") == method] == [
            m["params"] for m in answered if m.get("method") == method
        ]
    bob_at_pool = [p for p in proxied.testnet.pool_submits if p.worker == worker(BOB)]
    (submit,) = [m for m in sent if m["method"] == "mining.submit"]
    assert [p.params[1:] for p in bob_at_pool] == [submit["params"][1:]] and bob_at_pool[0].accepted

    rows, _ = ledger_rows(proxied)
    row = vector_row(rows, "02")
    mask = asked & int(granted["version-rolling.mask"], 16)
    assert (row.hotkey, row.worker, row.version_mask, row.version_bits) == (
        BOB,
        worker(BOB),
        mask,
        int(submit["params"][5], 16),
    )
    assert round(row.share_difficulty, 2) == float(fields("02")["share difficulty"])
    assert row.difficulty == proxied.testnet.pool_accepted[BOB]  # credited what the pool credits
    assert row == as_built_directly(row, *vector02())
    # CHARLIE is the same job under the next extranonce1, in another session.
    charlie = [r for r in rows if r.hotkey == CHARLIE]
    assert len(charlie) == MINED and {r.job_key for r in charlie} == {row.job_key}
    assert {r.extranonce1 for r in charlie} == {f"{int(row.extranonce1, 16) + 1:08x}"}
    assert {r.session for r in charlie}.isdisjoint({row.session}) and len({r.session for r in charlie}) == 1


def test_every_share_the_proxy_ledgered_rehashes_with_zero_mismatches(proxied: Proxied) -> None:
    pool_accepted = {**proxied.mainnet.pool_accepted, **proxied.testnet.pool_accepted}
    accepted = [p for p in [*proxied.mainnet.pool_submits, *proxied.testnet.pool_submits] if p.accepted]
    with opened(proxied.ledger) as client:
        report = audit_of(client)
    assert report.clean, report.examples
    assert report.checked == len(accepted) == 2 + MINED
    assert {h: a.credited_difficulty for h, a in report.hotkeys.items()} == pool_accepted
    assert all(a.unverified_difficulty == 0.0 for a in report.hotkeys.values())


# --- the same ledger, altered ------------------------------------------------------------------------


@pytest.mark.parametrize("number", ["01", "02"])
def test_one_byte_of_a_real_shares_nonce_changed_is_a_hash_mismatch(
    proxied: Proxied, tmp_path: Path, number: str
) -> None:
    with tampered_copy(proxied, tmp_path) as client:
        victim = vector_row(credited(client), number)
        mutate(
            client,
            f"ALTER TABLE {DATABASE}.shares UPDATE nonce = bitXor(nonce, 255) WHERE hash = {{h:String}}",
            h=victim.hash,
        )
        assert {r.nonce for r in credited(client) if r.hash == victim.hash} == {victim.nonce ^ 0xFF}
        report = audit_of(client)
    assert flagged(report) == {victim.hash: ("hash",)}
    assert report.hotkeys[victim.hotkey].unverified_difficulty == victim.difficulty
    assert all(a.mismatched == 0 for h, a in report.hotkeys.items() if h != victim.hotkey)


@pytest.mark.parametrize("number", ["01", "02"])
def test_the_real_jobs_coinb2_changed_fails_every_share_on_it(proxied: Proxied, tmp_path: Path, number: str) -> None:
    with tampered_copy(proxied, tmp_path) as client:
        rows = credited(client)
        key = vector_row(rows, number).job_key
        job = jobs_from_clickhouse(client, DATABASE, [key])[key]
        coinb2 = job.coinb2[:-2] + f"{int(job.coinb2[-2:], 16) ^ 1:02x}"  # one bit of the lock time
        mutate(
            client,
            f"ALTER TABLE {DATABASE}.jobs UPDATE coinb2 = {{c:String}} WHERE job_key = {{k:String}}",
            c=coinb2,
            k=key,
        )
        assert jobs_from_clickhouse(client, DATABASE, [key])[key].coinb2 == coinb2
        report = audit_of(client)
    on_job = [r for r in rows if r.job_key == key]
    assert flagged(report) == dict.fromkeys((r.hash for r in on_job), ("job-altered", "hash"))
    for hotkey, entry in report.hotkeys.items():
        mine_ = [r for r in on_job if r.hotkey == hotkey]
        assert (entry.mismatched, entry.unverified_difficulty) == (len(mine_), sum(r.difficulty for r in mine_))


def test_the_real_share_moved_to_another_sessions_hotkey_is_a_session_mismatch(
    proxied: Proxied, tmp_path: Path
) -> None:
    with tampered_copy(proxied, tmp_path) as client:
        rows = credited(client)
        real = vector_row(rows, "02")  # BOB's version-rolled testnet share …
        other = next(r for r in rows if r.hotkey == CHARLIE)
        moved = real._replace(hotkey=CHARLIE, worker=other.worker, session=other.session)  # … now CHARLIE's
        # hotkey is in the sort key, so the row cannot be UPDATEd: deleted and written again, altered.
        mutate(client, f"ALTER TABLE {DATABASE}.shares DELETE WHERE hash = {{h:String}}", h=real.hash)
        insert(client, [moved])
        assert [(r.hotkey, r.session) for r in credited(client) if r.hash == real.hash] == [(CHARLIE, other.session)]
        report = audit_of(client)
    kinds = flagged(report)
    # The work is real and still re-hashes; its extranonce1 gives it away: CHARLIE's session now has two
    # extranonce1s on one job, so every share of it on that job is in doubt (which one lies is unknowable).
    charlie = {r.hash for r in rows if r.hotkey == CHARLIE}
    assert kinds == dict.fromkeys(charlie | {moved.hash}, ("session",))
    assert report.hotkeys[CHARLIE].mismatches["session"] == len(charlie) + 1
    assert BOB not in report.hotkeys and report.hotkeys[ALICE].mismatched == 0
