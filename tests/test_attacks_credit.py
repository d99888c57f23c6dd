"""Attacks on the credit rules (issue 9, docs/LEDGER.md "What a share is credited"), performed on
real loopback sockets against the real proxy, with the ledger in the embedded ClickHouse engine.
Each is checked from three sides: the ledger's rows, the pool's own counters (simulation/pool.py,
which misbehaves on purpose: it re-sends work, retargets live jobs, holds its verdicts) and what an
honest miner in the same run was told and credited.

tests/test_session.py proves the same rules on the pure session; these prove them end to end.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
from pathlib import Path
from typing import Any

import msgspec
import pytest
from bittensor_wallet import Keypair
from bittensor_wallet.utils import get_ss58_format, is_valid_ss58_address

from ledger.audit import audit_clickhouse
from protocol.errors import ErrorCode
from protocol.messages import encode_request, parse_notify, subscribe_result
from protocol.work import Job
from proxy.app import ProxyApp
from simulation import ShareParams, SimulatedASIC, SimulatedPool
from simulation.hotkeys import BASE58_ALPHABET, hotkeys, keypair, worker_name
from tests.test_attacks import config, sample
from tests.test_proxy_e2e import HOST, go, ledger_by_hotkey, read_ledger, until
from tests.test_simulation import share_between

HOTKEYS = hotkeys(4, namespace="attacks-credit")
DIFFICULTY = 2.0**-26  # a power of two: sums of credit compare with ==
ALL_TIME = (0.0, 4_102_444_800.0)


def share_rows(client: Any, where: str = "1", **parameters: Any) -> list[tuple[Any, ...]]:
    """(worker, job_id, hash, accepted, reject_reason, difficulty) of the shares rows, in arrival order."""
    result = client.query(
        "SELECT worker, job_id, hash, accepted, reject_reason, difficulty FROM infinitehash.shares"
        f" WHERE {where} ORDER BY ts, accepted DESC",
        parameters=parameters,
    )
    return [tuple(row) for row in result.result_rows]


def share_hash(job: Job, share: ShareParams, version_mask: int) -> str:
    """The header hash of a share as the ledger spells it."""
    return job.hash_share(share.extranonce2, share.ntime, share.nonce, share.version_bits, version_mask).hex_hash


class RawMiner:
    """A miner on a plain socket that keeps every line the proxy sends it, in order (so a test sees
    every answer, including one that should never come)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.lines: list[dict[str, Any]] = []
        self.closed = False
        self.subscribed: Any = None  # the subscribe reply's result
        self._ids = 10
        self._reading = asyncio.ensure_future(self._read())

    @classmethod
    async def connect(cls, port: int) -> RawMiner:
        reader, writer = await asyncio.open_connection(HOST, port)
        return cls(reader, writer)

    async def _read(self) -> None:
        with contextlib.suppress(ConnectionError):
            for _ in range(100_000):
                line = await self.reader.readline()
                if not line:
                    break
                self.lines.append(msgspec.json.decode(line))
        self.closed = True

    def send(self, method: str, params: list[Any]) -> int:
        self._ids += 1
        self.writer.write(encode_request(self._ids, method, params))
        return self._ids

    def replies(self, request_id: int) -> list[dict[str, Any]]:
        return [m for m in self.lines if m.get("id") == request_id and "method" not in m]

    async def reply(self, request_id: int) -> dict[str, Any]:
        await until(lambda: bool(self.replies(request_id)), f"the reply to request {request_id}")
        return self.replies(request_id)[0]

    async def request(self, method: str, params: list[Any]) -> dict[str, Any]:
        return await self.reply(self.send(method, params))

    async def handshake(self, worker: str) -> dict[str, Any]:
        """subscribe, then authorize `worker`; the authorize reply."""
        self.subscribed = (await self.request("mining.subscribe", ["raw-miner/1.0"]))["result"]
        assert subscribe_result(self.subscribed) is not None
        return await self.request("mining.authorize", [worker, "x"])

    def notified(self, method: str) -> list[dict[str, Any]]:
        return [m for m in self.lines if m.get("method") == method]

    def job(self) -> Job:
        """The newest job, as this miner must hash it (the proxy relays the pool's subscribe reply)."""
        subscribed = subscribe_result(self.subscribed)
        assert subscribed is not None
        notify = parse_notify(self.notified("mining.notify")[-1]["params"])
        difficulty = self.notified("mining.set_difficulty")[-1]["params"][0]
        return Job(notify, subscribed.extranonce1, subscribed.extranonce2_size, difficulty)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()
        await asyncio.wait_for(self._reading, 10)


def error_code(reply: dict[str, Any]) -> int | None:
    error = reply.get("error")
    return int(error[0]) if error else None


# --- 1. the same work is credited once --------------------------------------------------------------------


def test_one_share_under_a_job_its_twin_and_its_renotifies_is_credited_once(tmp_path: Path) -> None:
    """The pool sends job A, the same content under a new id B (clean_jobs false), then A again, then A
    again with clean_jobs true. A hostile miner submits one valid share under A, B, A, A. The pool alone
    would accept it four times (its duplicate check is per job: tests/test_simulation.py); the proxy
    forwards it once."""
    result: dict[str, Any] = {}

    async def scenario() -> None:
        async with SimulatedPool(difficulty=DIFFICULTY, seed=31, job_interval=0) as pool:
            app = ProxyApp(config(pool, tmp_path))
            await app.start()
            hostile = SimulatedASIC(HOST, app.port, worker_name(HOTKEYS[0], "replayer"), seed=1)
            honest = SimulatedASIC(HOST, app.port, worker_name(HOTKEYS[1], "honest"), seed=2)
            await hostile.connect(timeout=10)
            await honest.connect(timeout=10)
            job = hostile.job
            assert job is not None
            job_a = job.job_id
            share = hostile.find_share(job_id=job_a)
            result["hash"] = share_hash(job, share, hostile.version_mask)
            honest_records = []

            async def honest_mines() -> None:
                for _ in range(3):
                    honest_records.append(await honest.submit_share(honest.find_share()))

            async def pool_sends(job_id: str, *, as_id: str | None = None, clean: bool = False) -> str:
                seen = (hostile.notifies, honest.notifies)
                sent = pool.resend_job(job_id, as_id=as_id, clean=clean)
                await until(lambda: hostile.notifies > seen[0] and honest.notifies > seen[1], "the job at both miners")
                return sent

            attempts = [await hostile.submit_share(share)]
            await honest_mines()
            job_b = await pool_sends(job_a, as_id="b0000001")
            attempts.append(await hostile.submit_share(share._replace(job_id=job_b)))
            attempts.append(await hostile.submit_share(share))  # A is still live: the same job id again
            await honest_mines()
            await pool_sends(job_a)  # the re-notify: A's id, A's content
            attempts.append(await hostile.submit_share(share))
            await honest_mines()
            await pool_sends(job_a, clean=True)  # and once more, ending every other job
            attempts.append(await hostile.submit_share(share))
            attempts.append(await hostile.submit_share(share._replace(job_id=job_b)))  # B ended
            await honest_mines()
            await hostile.stop()
            await honest.stop()
            await app.stop()
            result["codes"] = [a.error_code for a in attempts]
            result["honest"] = [(r.accepted, r.error_code) for r in honest_records]
            result["reached_pool"] = sum(pool.count_submits(j, *share[1:]) for j in (job_a, job_b))
            result["pool"] = pool.accepted_by_hotkey()
            result["pool_accepted"] = pool.accepted_count
            result["ids"] = (job_a, job_b)

    go(scenario)
    job_a, job_b = result["ids"]
    duplicate, stale = int(ErrorCode.DUPLICATE), int(ErrorCode.JOB_NOT_FOUND)
    # The miner: accepted once, then told "duplicate" under every other id (and "stale" for an ended job).
    assert result["codes"] == [None, duplicate, duplicate, duplicate, duplicate, stale]
    # The pool saw the share once, and accepted it once.
    assert result["reached_pool"] == 1
    assert result["pool_accepted"] == 1 + 12
    assert result["pool"][HOTKEYS[0]] == DIFFICULTY
    # The ledger: one credited row for that header hash; each refused copy has a row that credits nothing.
    rows = read_ledger(tmp_path, lambda c: share_rows(c, "hash = {h:String}", h=result["hash"]))
    hostile_worker = worker_name(HOTKEYS[0], "replayer")
    assert [(r[1], r[3], r[4]) for r in rows] == [
        (job_a, 1, ""),
        (job_b, 0, "duplicate"),
        (job_a, 0, "duplicate"),
        (job_a, 0, "duplicate"),
        (job_a, 0, "duplicate"),
    ]
    assert {r[0] for r in rows} == {hostile_worker}
    stale_rows = read_ledger(tmp_path, lambda c: share_rows(c, "reject_reason = 'stale'"))
    assert [(r[1], r[2], r[3]) for r in stale_rows] == [(job_b, "", 0)]  # never hashed, never credited
    by_hotkey = read_ledger(tmp_path, ledger_by_hotkey)
    assert by_hotkey == result["pool"] == {HOTKEYS[0]: DIFFICULTY, HOTKEYS[1]: 12 * DIFFICULTY}
    # The honest miner: every one of its 12 shares accepted and credited.
    assert result["honest"] == [(True, None)] * 12
    # The audit re-hashes every credited share and finds no header credited twice.
    report = read_ledger(tmp_path, lambda c: audit_clickhouse(c, "infinitehash", *ALL_TIME))
    assert report.checked == 13 and report.clean, report.examples


def test_a_job_resent_on_a_block_the_proxy_moved_on_from_is_never_credited_again(tmp_path: Path) -> None:
    """The proxy remembers forwarded header hashes for the last two blocks only. A pool that re-sends a
    job of an older block (A, after two new blocks) must not make A's shares new again: the share
    credited on A is refused as stale when it comes under A again. (This attack succeeded
    before the proxy remembered the blocks it moved on from: the share was credited twice.)"""
    result: dict[str, Any] = {}
    hostile_worker = worker_name(HOTKEYS[0], "oldblock")

    async def scenario() -> None:
        async with SimulatedPool(difficulty=DIFFICULTY, seed=36, job_interval=0) as pool:
            app = ProxyApp(config(pool, tmp_path))
            await app.start()
            hostile = SimulatedASIC(HOST, app.port, hostile_worker, seed=6)
            honest = SimulatedASIC(HOST, app.port, worker_name(HOTKEYS[1], "honest"), seed=7)
            await hostile.connect(timeout=10)
            await honest.connect(timeout=10)
            miners = (hostile, honest)
            job = hostile.job
            assert job is not None
            share = hostile.find_share()
            result["hash"] = share_hash(job, share, hostile.version_mask)
            first_pool_job = pool.sessions[min(pool.sessions)].job_ids[-1]
            attempts = [await hostile.submit_share(share)]
            honest_records = [await honest.submit_share(honest.find_share())]

            async def pool_sends(send: Any) -> None:
                seen = [m.notifies for m in miners]
                send()
                await until(lambda: all(m.notifies > n for m, n in zip(miners, seen, strict=True)), "the job")

            for _ in range(2):  # two new blocks: A's block is now older than the proxy remembers
                await pool_sends(lambda: pool.new_job(clean=True))
                honest_records.append(await honest.submit_share(honest.find_share()))
            pool.resend_job(first_pool_job)  # A again, as it was
            await pool_sends(lambda: pool.new_job(clean=False))  # and a job of the current block after it
            assert first_pool_job in hostile.jobs  # relayed: the proxy does not hide the pool's jobs
            attempts.append(await hostile.submit_share(share))  # A's share under A, once more
            honest_records.append(await honest.submit_share(honest.find_share()))
            await hostile.stop()
            await honest.stop()
            await app.stop()
            result["codes"] = [a.error_code for a in attempts]
            result["honest"] = [(r.accepted, r.error_code) for r in honest_records]
            result["pool"] = pool.accepted_by_hotkey()

    go(scenario)
    assert result["codes"] == [None, int(ErrorCode.JOB_NOT_FOUND)]  # stale: the block A was on is over
    rows = read_ledger(tmp_path, lambda c: share_rows(c, "hash = {h:String}", h=result["hash"]))
    assert [r[3] for r in rows] == [1] + [0] * (len(rows) - 1)  # credited once
    assert result["pool"][HOTKEYS[0]] == DIFFICULTY  # and accepted once by the pool
    assert result["honest"] == [(True, None)] * 4
    assert read_ledger(tmp_path, ledger_by_hotkey) == result["pool"]
    report = read_ledger(tmp_path, lambda c: audit_clickhouse(c, "infinitehash", *ALL_TIME))
    assert report.clean, report.examples


# --- 2. a difficulty change on live jobs --------------------------------------------------------------------

HIGH = 2.0**-22
LOW = 2.0**-26


def credit_rule(share: float, notified: float, in_force: float, live_jobs: bool) -> tuple[bool, float, float]:
    """(reaches the pool, ledger credit, pool credit) for one share, by the two rules: the proxy credits
    min(notify difficulty, difficulty in force) and forwards only shares that meet it; the pool judges
    at the difficulty in force (live_jobs) or at the notify's."""
    credit = min(notified, in_force)
    forwarded = share >= credit
    at_pool = in_force if live_jobs else notified
    accepted = forwarded and share >= at_pool
    return forwarded, credit if accepted else 0.0, at_pool if accepted else 0.0


@pytest.mark.parametrize("live_jobs", [True, False], ids=["pool-retargets-live-jobs", "pool-keeps-notify-difficulty"])
def test_a_difficulty_change_on_live_jobs_credits_the_lower_one_and_never_more_than_the_pool(
    tmp_path: Path, live_jobs: bool
) -> None:
    """Job 1 notified at HIGH, then set_difficulty LOW without a new job; job 2 notified at LOW, then
    set_difficulty HIGH without a new job. A hostile miner submits, on both jobs after each change, a
    share in [LOW, HIGH), one above HIGH and one below LOW. The pool either applies each change to its
    live jobs or keeps the notify's difficulty; the proxy must never credit more than it does."""
    result: dict[str, Any] = {}
    hostile_worker = worker_name(HOTKEYS[0], "retarget")
    honest_worker = worker_name(HOTKEYS[1], "honest")

    async def scenario() -> None:
        async with SimulatedPool(difficulty=HIGH, seed=32, job_interval=0) as pool:
            app = ProxyApp(config(pool, tmp_path))
            await app.start()
            hostile = SimulatedASIC(HOST, app.port, hostile_worker, seed=3)
            honest = SimulatedASIC(HOST, app.port, honest_worker, seed=4)
            await hostile.connect(timeout=10)
            await honest.connect(timeout=10)
            miners = (hostile, honest)
            first = hostile.job
            assert first is not None and first.difficulty == HIGH
            notified = {first.job_id: HIGH}
            extranonce2 = iter(range(1, 1000))
            attacks: list[dict[str, Any]] = []
            honest_records = []

            async def retarget(difficulty: float) -> None:
                assert pool.retarget(difficulty, live_jobs=live_jobs) == 2
                await until(lambda: all(m.difficulty == difficulty for m in miners), "set_difficulty at both")

            async def new_job() -> str:
                seen = [m.notifies for m in miners]
                job_id = pool.new_job(clean=False)
                await until(lambda: all(m.notifies > n for m, n in zip(miners, seen, strict=True)), "the job")
                notified[job_id] = pool.difficulty
                return job_id

            async def attack(job_id: str) -> None:
                job = hostile.jobs[job_id]
                for low, high in ((LOW, HIGH), (HIGH, math.inf), (0.0, LOW)):
                    share, difficulty = share_between(job, low, high, next(extranonce2))
                    record = await hostile.submit_share(share)
                    in_force = hostile.difficulty
                    attacks.append(
                        {
                            "hash": share_hash(job, share, hostile.version_mask),
                            "share": share,
                            "expected": credit_rule(difficulty, notified[job_id], in_force, live_jobs),
                            "notified": notified[job_id],
                            "in_force": in_force,
                            "code": record.error_code,
                        }
                    )

            async def honest_mines(job_id: str, shares: int = 2) -> None:
                for _ in range(shares):  # at the difficulty the job came with, as an ASIC does
                    honest_records.append(await honest.submit_share(honest.find_share(job_id=job_id)))

            await honest_mines(first.job_id)
            await retarget(LOW)  # the pool lowers the difficulty of the job already out
            await attack(first.job_id)
            await honest_mines(first.job_id)
            second = await new_job()  # notified at LOW
            await honest_mines(second)
            await retarget(HIGH)  # the pool raises it again, still without a new job
            await attack(second)
            await attack(first.job_id)
            third = await new_job()  # notified at HIGH
            await honest_mines(third)
            await hostile.stop()
            await honest.stop()
            await app.stop()
            result["attacks"] = attacks
            result["honest"] = [(r.accepted, r.error_code) for r in honest_records]
            result["pool"] = pool.accepted_by_hotkey()
            result["reached_pool"] = [pool.count_submits(*a["share"]) for a in attacks]

    go(scenario)
    attacks = result["attacks"]
    rows = read_ledger(tmp_path, lambda c: share_rows(c, "worker = {w:String}", w=hostile_worker))
    by_hash = {row[2]: row for row in rows}
    assert len(rows) == len(attacks) == 9 and len(by_hash) == 9
    for attack, reached in zip(attacks, result["reached_pool"], strict=True):
        forwarded, ledger_credit, _ = attack["expected"]
        row = by_hash[attack["hash"]]
        assert reached == (1 if forwarded else 0), attack  # a share below the credit never reaches the pool
        assert (row[3] == 1) == (ledger_credit > 0), (attack, row)
        if ledger_credit:
            assert row[5] == ledger_credit and attack["code"] is None
        elif not forwarded:
            assert row[4] == "low-difficulty" and attack["code"] == ErrorCode.LOW_DIFFICULTY
        else:  # the pool refused it: its verdict is the row
            assert row[4].startswith("pool: ") and attack["code"] == ErrorCode.LOW_DIFFICULTY
    # Exactly what the rule credits, and never more than the pool did, share by share or in total.
    expected_ledger = sum(a["expected"][1] for a in attacks)
    expected_pool = sum(a["expected"][2] for a in attacks)
    ledger = read_ledger(tmp_path, ledger_by_hotkey)
    assert ledger[HOTKEYS[0]] == expected_ledger <= result["pool"][HOTKEYS[0]] == expected_pool
    # Under either pool rule, no row credits more than that rule would have paid for its share.
    for attack in attacks:
        row = by_hash[attack["hash"]]
        credited = row[5] if row[3] == 1 else 0.0
        assert credited <= attack["notified"] and credited <= attack["in_force"], (attack, row)
    # The honest miner: every share accepted; credited at the lower difficulty while it was in force.
    assert result["honest"] == [(True, None)] * 8
    honest_credit = 2 * HIGH + 2 * LOW + 2 * LOW + 2 * HIGH
    assert ledger[HOTKEYS[1]] == honest_credit <= result["pool"][HOTKEYS[1]]
    assert result["pool"][HOTKEYS[1]] == (honest_credit if live_jobs else 4 * HIGH + 2 * LOW + 2 * HIGH)


# --- 3. a verdict after the submit timeout ------------------------------------------------------------------


async def raw_mining(port: int, worker: str) -> RawMiner:
    miner = await RawMiner.connect(port)
    assert (await miner.handshake(worker))["result"] is True
    await until(lambda: bool(miner.notified("mining.notify")), "the first job")
    return miner


def submit(miner: RawMiner, worker: str, job: Job, extranonce2: int) -> int:
    """Grind a share that meets the job's difficulty and submit it; the request id."""
    share, _ = share_between(job, job.difficulty, math.inf, extranonce2)
    return miner.send("mining.submit", [worker, *share[:4]])


@pytest.mark.parametrize("within", [True, False], ids=["within-late-verdict-timeout", "after-late-verdict-timeout"])
def test_a_verdict_after_the_submit_timeout_is_ledgered_once_until_the_late_verdict_timeout(
    tmp_path: Path, within: bool
) -> None:
    """The pool holds its verdict past `submit_timeout`: the miner is told error 20 at once, and the
    pool's late "accepted" is what the one row records, unless it comes after `late_verdict_timeout`:
    then the row says `timeout` and credits nothing, and the late verdict is dropped."""
    result: dict[str, Any] = {}
    worker = worker_name(HOTKEYS[2], "late")

    async def scenario() -> None:
        async with SimulatedPool(difficulty=DIFFICULTY, seed=33, job_interval=0) as pool:
            late_verdict_timeout = 60.0 if within else 0.5
            app = ProxyApp(config(pool, tmp_path, submit_timeout=0.2, late_verdict_timeout=late_verdict_timeout))
            await app.start()
            miner = await raw_mining(app.port, worker)
            job = miner.job()
            pool.hold_verdicts()
            late = submit(miner, worker, job, 1)
            result["told"] = await miner.reply(late)
            result["pool_before"] = (pool.submits_received, pool.accepted_count)
            unanswered = "ih_shares_total"
            if not within:  # the proxy gave up on the verdict: its row is written now
                await until(lambda: sample(app, unanswered, outcome="unanswered", reason="timeout") == 1, "give up")
            result["accepted_before"] = sample(app, unanswered, outcome="accepted", reason="")
            assert pool.release_verdicts() == 1
            # A second share on the same connection is answered after the late verdict (in order):
            # once the miner has its answer, the proxy has handled the late one.
            second = submit(miner, worker, job, 2)
            result["second"] = await miner.reply(second)
            result["late_replies"] = miner.replies(late)
            await miner.close()
            await app.stop()
            result["pool"] = pool.accepted_by_hotkey()
            result["pool_accepted"] = pool.accepted_count
            result["hash"] = share_hash(job, share_between(job, job.difficulty, math.inf, 1)[0], 0)

    go(scenario)
    # The miner: told at the submit timeout, and never told again when the pool's verdict came.
    assert error_code(result["told"]) == ErrorCode.OTHER and "did not answer in time" in result["told"]["error"][1]
    assert result["late_replies"] == [result["told"]]
    assert result["second"]["result"] is True
    # The pool had the share, and accepted it late.
    assert result["pool_before"] == (1, 0) and result["accepted_before"] == 0
    assert result["pool_accepted"] == 2 and result["pool"] == {HOTKEYS[2]: 2 * DIFFICULTY}
    # The ledger: one row for the late share, never two.
    rows = read_ledger(tmp_path, lambda c: share_rows(c, "hash = {h:String}", h=result["hash"]))
    if within:
        assert [(r[3], r[4], r[5]) for r in rows] == [(1, "", DIFFICULTY)]  # the pool's verdict and its credit
    else:
        assert [(r[3], r[4]) for r in rows] == [(0, "timeout")]  # no credit, the late verdict dropped
    credited = read_ledger(tmp_path, ledger_by_hotkey)
    assert credited == {HOTKEYS[2]: (2 if within else 1) * DIFFICULTY}
    assert credited[HOTKEYS[2]] <= result["pool"][HOTKEYS[2]]


@pytest.mark.parametrize("told_first", [False, True], ids=["before-submit-timeout", "after-submit-timeout"])
def test_a_pool_that_disconnects_before_its_verdict_leaves_one_timeout_row(tmp_path: Path, told_first: bool) -> None:
    """The pool holds a verdict and then drops the connection (before or after the proxy told the
    miner the pool was late): one `timeout` row, no credit, the miner answered once and told why."""
    result: dict[str, Any] = {}
    worker = worker_name(HOTKEYS[2], "dropped")

    async def scenario() -> None:
        async with SimulatedPool(difficulty=DIFFICULTY, seed=34, job_interval=0) as pool:
            app = ProxyApp(config(pool, tmp_path, submit_timeout=0.2 if told_first else 20.0))
            await app.start()
            miner = await raw_mining(app.port, worker)
            job = miner.job()
            pool.hold_verdicts()
            request = submit(miner, worker, job, 1)
            await until(lambda: pool.submits_received == 1, "the share at the pool")
            if told_first:
                await miner.reply(request)
            pool.disconnect_all()
            await until(lambda: miner.closed, "the miner's connection closed")
            result["replies"] = miner.replies(request)
            result["shown"] = [m["params"][0] for m in miner.notified("client.show_message")]
            await miner.close()
            await app.stop()
            result["pool"] = (pool.accepted_count, pool.undelivered)
            result["hash"] = share_hash(job, share_between(job, job.difficulty, math.inf, 1)[0], 0)

    go(scenario)
    replies = result["replies"]
    assert len(replies) == 1 and error_code(replies[0]) == ErrorCode.OTHER
    expected = "did not answer in time" if told_first else "pool connection lost"
    assert expected in replies[0]["error"][1]
    assert len(result["shown"]) == 1 and "pool connection lost" in result["shown"][0]
    # The pool never delivered its verdict, so it credited nothing; the ledger credits nothing either.
    assert result["pool"] == (0, {worker: DIFFICULTY})
    rows = read_ledger(tmp_path, lambda c: share_rows(c))
    assert [(r[2], r[3], r[4]) for r in rows] == [(result["hash"], 0, "timeout")]
    assert read_ledger(tmp_path, ledger_by_hotkey) == {}


# --- 4. one key, one identity -------------------------------------------------------------------------------


def ss58(public_key: bytes, prefix: int) -> str:
    """SS58 (simple prefixes 0-63): base58(prefix ‖ key ‖ blake2b-512("SS58PRE" ‖ prefix ‖ key)[:2])."""
    body = bytes([prefix]) + public_key
    data = body + hashlib.blake2b(b"SS58PRE" + body, digest_size=64).digest()[:2]
    number = int.from_bytes(data, "big")
    digits = ""
    while number:
        number, digit = divmod(number, 58)
        digits = BASE58_ALPHABET[digit] + digits
    zeros = len(data) - len(data.lstrip(b"\0"))
    return "1" * zeros + digits


def test_one_key_under_other_ss58_prefixes_is_refused_at_authorize_and_never_reaches_pool_or_ledger(
    tmp_path: Path,
) -> None:
    """One 32-byte public key, SS58-encoded for networks 0 (Polkadot), 2 (Kusama), 7 and 42
    (Bittensor): only the prefix-42 name mines; the others are refused with error 24 and the reason,
    their submits too, and the pool and the ledger never hear of them."""
    key = keypair(0, "attacks-credit").public_key
    assert key is not None and len(key) == 32
    names = {prefix: ss58(key, prefix) for prefix in (0, 2, 7, 42)}
    # The encoder agrees with bittensor-wallet: prefix 42 is the wallet's own address, the rest are valid
    # SS58 of the same key for their networks.
    assert names[42] == HOTKEYS[0]
    for prefix, address in names.items():
        assert is_valid_ss58_address(address) and get_ss58_format(address) == prefix
        assert Keypair(ss58_address=address).public_key == key
    assert len(set(names.values())) == 4
    others = {prefix: worker_name(address, "rig") for prefix, address in names.items() if prefix != 42}
    result: dict[str, Any] = {}

    async def scenario() -> None:
        async with SimulatedPool(difficulty=DIFFICULTY, seed=35, job_interval=0) as pool:
            app = ProxyApp(config(pool, tmp_path))
            await app.start()
            refused: dict[int, tuple[dict[str, Any], dict[str, Any]]] = {}
            pool_view: list[list[str]] = []
            for prefix, worker in others.items():
                miner = await RawMiner.connect(app.port)
                authorize = await miner.handshake(worker)
                job_id = pool.current_job.job_id if pool.current_job else "0"
                # and it submits anyway, under the refused name
                submitted = await miner.request("mining.submit", [worker, job_id, "00000001", "00000000", "00000000"])
                refused[prefix] = (authorize, submitted)
                # The pool's view while it is connected: its pool connection subscribed, nothing more.
                pool_view.extend(s.methods for s in pool.sessions.values())
                await miner.close()
            honest = SimulatedASIC(HOST, app.port, worker_name(names[42], "rig"), max_shares=5, seed=5)
            await honest.run(timeout=30)
            await app.stop()
            result["refused"] = refused
            result["pool_view"] = pool_view
            result["honest"] = (honest.accepted, honest.rejected, honest.lost)
            result["pool_workers"] = {s.worker for s in pool.submits_seen}
            result["pool"] = pool.accepted_by_hotkey()
            result["authorize_metric"] = sample(app, "ih_authorize_total", outcome="refused")

    go(scenario)
    for prefix, (authorize, submitted) in result["refused"].items():
        assert error_code(authorize) == ErrorCode.UNAUTHORIZED, authorize
        assert f"network prefix {prefix}" in authorize["error"][1] and "prefix 42" in authorize["error"][1]
        assert error_code(submitted) == ErrorCode.UNAUTHORIZED and submitted["error"][1] == "Unauthorized worker"
    assert result["authorize_metric"] == 3
    assert any("mining.subscribe" in methods for methods in result["pool_view"])
    assert not any("mining.authorize" in methods for methods in result["pool_view"])
    # The prefix-42 miner mined, the pool saw only its shares, the ledger credits only its key.
    assert result["honest"] == (5, 0, 0)
    assert result["pool_workers"] == {worker_name(names[42], "rig")}
    rows = read_ledger(tmp_path, lambda c: share_rows(c))
    assert len(rows) == 5 and {r[0] for r in rows} == {worker_name(names[42], "rig")}
    assert read_ledger(tmp_path, ledger_by_hotkey) == result["pool"] == {names[42]: 5 * DIFFICULTY}
