"""The simulated pool and ASIC fleet, directly against each other over 127.0.0.1 (no proxy).

Every test is bounded: share counts are fixed, and waits are polling loops with a ceiling (a ceiling
that is only hit when something is broken; nothing asserts how fast anything ran).
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections.abc import Callable, Coroutine
from typing import Any

import msgspec
import pytest

from protocol.errors import ErrorCode
from protocol.messages import Reply, subscribe_result
from protocol.work import Job
from simulation import (
    BAD_KINDS,
    EXPECTED_CODE,
    PROFILES,
    Fleet,
    HandshakeError,
    ShareParams,
    SimulatedASIC,
    SimulatedPool,
    hotkey_of,
    run,
    worker_names,
)
from simulation.hotkeys import bad_checksum, dev_hotkey, hotkey, hotkeys, is_valid_hotkey, worker_name
from tests.vectors import vector_file

HOST = "127.0.0.1"
HOTKEYS = hotkeys(3)
TEST_TIMEOUT = 30.0


def go(scenario: Callable[[], Coroutine[Any, Any, None]], *, use_uvloop: bool = True) -> None:
    async def bounded() -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        await asyncio.wait_for(scenario(), TEST_TIMEOUT)
        # A scenario that swallowed wait_for's cancellation would "pass" at the deadline: fail it.
        assert loop.time() - start < TEST_TIMEOUT, "the scenario ran into the test timeout"

    run(bounded(), use_uvloop=use_uvloop)


async def until(predicate: Callable[[], bool], what: str, *, steps: int = 1000) -> None:
    """Poll (at most `steps` times, 5 ms apart) until the predicate holds."""
    for _ in range(steps):
        if predicate():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"gave up waiting for {what}")


def worker(index: int = 0, name: str = "worker0") -> str:
    return worker_name(HOTKEYS[index], name)


def share_between(
    job: Job, low: float, high: float, extranonce2: int, *, max_hashes: int = 1_000_000
) -> tuple[ShareParams, float]:
    """A share on `job` (no version bits) whose difficulty d is in [low, high), and d. Each
    `extranonce2` gives other shares: pass a new one per share wanted."""
    en2 = extranonce2.to_bytes(job.extranonce2_size, "big").hex()
    ntime = f"{job.ntime:08x}"
    for nonce in range(max_hashes):
        difficulty = job.hash_share(en2, ntime, f"{nonce:08x}", None, 0).difficulty
        if low <= difficulty < high:
            return ShareParams(job.job_id, en2, ntime, f"{nonce:08x}", None), difficulty
    raise RuntimeError(f"no share of difficulty in [{low:g}, {high:g}) in {max_hashes} hashes")


# --- hotkeys --------------------------------------------------------------------------------------------


def test_hotkeys_are_valid_deterministic_and_distinct() -> None:
    keys = hotkeys(5)
    assert keys == hotkeys(5)
    assert keys[2] == hotkey(2)
    assert len(set(keys)) == 5
    assert all(is_valid_hotkey(k) and k.startswith("5") and len(k) == 48 for k in keys)
    assert hotkeys(2, "other") != hotkeys(2)
    assert dev_hotkey("Alice") == "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY"


def test_bad_checksum_variant_is_invalid() -> None:
    for key in [*hotkeys(10), dev_hotkey("Bob")]:
        bad = bad_checksum(key)
        assert bad != key and len(bad) == len(key) and bad[:-1] == key[:-1]
        assert not is_valid_hotkey(bad)
    with pytest.raises(ValueError):
        bad_checksum(bad_checksum(HOTKEYS[0]))


def test_worker_names() -> None:
    names = worker_names(HOTKEYS, 5)
    assert names[0] == f"infinite.{HOTKEYS[0]}.worker0"
    assert names[4] == f"infinite.{HOTKEYS[1]}.worker1"
    assert hotkey_of(names[4]) == HOTKEYS[1]
    assert hotkey_of("bare") == "bare"


# --- fleet against the pool -----------------------------------------------------------------------------


@pytest.mark.parametrize("use_uvloop", [True, False], ids=["uvloop", "asyncio"])
def test_fleet_accounting_matches_pool(use_uvloop: bool) -> None:
    async def scenario() -> None:
        async with SimulatedPool(seed=1) as pool:
            fleet = Fleet.for_hotkeys(
                HOST, pool.port, HOTKEYS, 6, max_shares=15, profiles=("bitaxe", "antminer", "cpuminer")
            )
            await fleet.run(timeout=20)
            assert fleet.submitted == 6 * 15
            assert fleet.accepted == 6 * 15 and fleet.rejected == 0 and fleet.lost == 0
            assert pool.accepted_count == 6 * 15 and pool.rejected_count == 0
            # The ground truth and the miners' view agree exactly, per worker and per hotkey.
            assert pool.accepted == fleet.accepted_by_worker()
            assert set(pool.accepted) == set(worker_names(HOTKEYS, 6))
            assert pool.accepted_by_hotkey() == fleet.accepted_by_hotkey()
            assert set(pool.accepted_by_hotkey()) == set(HOTKEYS)
            assert pool.accepted_by_hotkey()[HOTKEYS[0]] == pytest.approx(2 * 15 * pool.difficulty)
            assert len(pool.submits_seen) == 6 * 15
            assert all(s.accepted and s.difficulty == pool.difficulty for s in pool.submits_seen)
            assert len(fleet.latencies()) == 6 * 15
            summary = fleet.summary()
            assert summary["accepted"] == 90 and summary["latency_p99"] >= summary["latency_p50"] > 0

    go(scenario, use_uvloop=use_uvloop)


@pytest.mark.parametrize(
    ("profile", "methods", "mask", "params"),
    [
        (
            "bitaxe",
            ["mining.subscribe", "mining.configure", "mining.suggest_difficulty", "mining.authorize"],
            0x1FFFE000,
            6,
        ),
        (
            "antminer",
            ["mining.configure", "mining.subscribe", "mining.authorize", "mining.extranonce.subscribe"],
            0x1FFFE000,
            6,
        ),
        ("cpuminer", ["mining.subscribe", "mining.authorize"], 0, 5),
    ],
)
def test_profiles_handshake_and_mine(profile: str, methods: list[str], mask: int, params: int) -> None:
    async def scenario() -> None:
        async with SimulatedPool() as pool:
            asic = SimulatedASIC(HOST, pool.port, worker(), profile=profile, max_shares=12)  # type: ignore[arg-type]
            await asic.start()
            (session,) = pool.sessions.values()
            assert session.methods == methods
            assert session.user_agent == asic.profile.user_agent
            assert session.version_mask == asic.version_mask == mask
            assert asic.extranonce1 == session.extranonce1 and asic.extranonce2_size == 4
            await asic.wait(20)
            await asic.stop()
            assert asic.accepted == 12 and pool.accepted_count == 12
            assert all(len(s.params) == params for s in pool.submits_seen)
            rolled = {int(s.version_bits, 16) for s in pool.submits_seen if s.version_bits is not None}
            assert all(bits & ~mask == 0 for bits in rolled)
            if mask:
                assert len(rolled) > 1  # the version bits really roll
            assert pool.accepted == {worker(): pytest.approx(12 * pool.difficulty)}

    go(scenario)


def test_cpuminer_same_id_submits_are_all_answered_in_order() -> None:
    async def scenario() -> None:
        async with SimulatedPool() as pool:
            asic = SimulatedASIC(
                HOST,
                pool.port,
                worker(),
                profile="cpuminer",
                pipeline=4,
                max_shares=40,
                bad_every=3,
                bad_kinds=("duplicate", "low-difficulty", "stale"),
            )
            await asic.run(timeout=20)
            assert {r.request_id for r in asic.records} == {4}
            assert len(asic.records) == 40 and all(r.replied for r in asic.records)
            # Replies to one id are matched first-in first-out: every verdict lands on its own share.
            for record in asic.records:
                assert record.error_code == record.expected_code, record
            assert asic.rejected == 13 and asic.accepted == 27
            assert pool.accepted == asic.accepted_by_worker

    go(scenario)


def test_bad_shares_mixed_into_a_fleet_get_their_codes() -> None:
    async def scenario() -> None:
        async with SimulatedPool() as pool:
            fleet = Fleet.for_hotkeys(
                HOST,
                pool.port,
                HOTKEYS,
                3,
                max_shares=2 * len(BAD_KINDS) + 2,
                bad_every=2,
                profiles=("bitaxe", "antminer", "cpuminer"),
            )
            await fleet.run(timeout=20)
            kinds = {r.kind for r in fleet.records()}
            assert kinds >= set(BAD_KINDS)
            for record in fleet.records():
                assert record.replied
                assert record.error_code == record.expected_code, record
            assert pool.accepted == fleet.accepted_by_worker()
            assert pool.rejected_count == fleet.rejected == sum(1 for r in fleet.records() if r.kind != "valid")
            assert fleet.rejected_by_code() == pool.rejected_by_code

    go(scenario)


# --- crafted shares -------------------------------------------------------------------------------------


def test_crafted_shares_get_the_right_codes() -> None:
    async def scenario() -> None:
        async with SimulatedPool() as pool, SimulatedASIC(HOST, pool.port, worker(), profile="bitaxe") as asic:
            share = asic.find_share()
            assert (await asic.submit_share(share)).accepted
            duplicate = await asic.submit_share(share)
            assert duplicate.error_code == ErrorCode.DUPLICATE
            # The same share in upper case is the same header: still a duplicate.
            upper = share._replace(extranonce2=share.extranonce2.upper(), nonce=share.nonce.upper())
            assert (await asic.submit_share(upper)).error_code == ErrorCode.DUPLICATE
            low = asic.find_share(low_difficulty=True)
            assert (await asic.submit_share(low)).error_code == ErrorCode.LOW_DIFFICULTY
            fresh = asic.find_share()
            assert (await asic.submit_share(fresh._replace(job_id="no-such-job"))).error_code == ErrorCode.JOB_NOT_FOUND
            short = fresh._replace(extranonce2=fresh.extranonce2[:-2])
            assert (await asic.submit_share(short)).error_code == ErrorCode.OTHER
            outside = fresh._replace(version_bits="40000000")
            assert (await asic.submit_share(outside)).error_code == ErrorCode.OTHER
            stranger = await asic.submit_share(fresh, worker=worker(1))
            assert stranger.error_code == ErrorCode.UNAUTHORIZED
            assert (await asic.submit_share(fresh)).accepted  # none of the above burnt it

            # A malformed line (numbers where hex belongs) is answered with its id; junk with id null.
            bad = b'{"id": 77, "method": "mining.submit", "params": ["w", "1", "ab", 0, 1.5]}'
            reply = await asic.send_raw(bad)
            assert isinstance(reply, Reply) and reply.id == 77
            failure = reply.failure()
            assert failure is not None and failure.code == ErrorCode.OTHER
            junk = await asic.send_raw("this is not json")
            assert junk is not None and junk.id is None and junk.failure() is not None
            unknown = await asic.request("mining.frobnicate", [])
            failure = unknown.failure()
            assert failure is not None and failure.code == ErrorCode.OTHER and failure.message == "unknown method"

            assert pool.accepted_count == 2
            assert pool.accepted == {worker(): pytest.approx(2 * pool.difficulty)}
            codes = [s.error for s in pool.submits_seen]
            assert codes == [None, 22, 22, 23, 21, 20, 20, 24, None, 20]
            assert pool.submits_seen[-1].raw == bad
            assert pool.count_submits(*share) == 3 and pool.count_submits(*low) == 1
            assert pool.count_submits(*asic.find_share()) == 0
            assert pool.rejected_by_code == {22: 2, 23: 1, 21: 1, 20: 3, 24: 1}

    go(scenario)


def test_clean_jobs_end_old_jobs_and_other_jobs_stay_valid() -> None:
    async def scenario() -> None:
        async with SimulatedPool(keep_jobs=3) as pool, SimulatedASIC(HOST, pool.port, worker()) as asic:
            first = asic.job
            assert first is not None
            second_id = pool.new_job(clean=False)
            await until(lambda: second_id in asic.jobs, "the second job")
            # A job notified without clean_jobs leaves the old one valid.
            assert (await asic.submit_share(asic.find_share(job_id=first.job_id))).accepted
            assert (await asic.submit_share(asic.find_share(job_id=second_id))).accepted
            old_share = asic.find_share(job_id=second_id)
            third_id = pool.new_job(clean=True)
            await until(lambda: third_id in asic.jobs, "the clean job")
            assert list(asic.jobs) == [third_id]
            assert (await asic.submit_share(old_share)).error_code == ErrorCode.JOB_NOT_FOUND
            # Only the last keep_jobs jobs stay valid.
            ids = [pool.new_job(clean=False) for _ in range(3)]
            await until(lambda: ids[-1] in asic.jobs, "three more jobs")
            assert pool.sessions[0].job_ids == ids

    go(scenario)


def test_set_difficulty_applies_to_jobs_notified_after_it() -> None:
    async def scenario() -> None:
        low, high = 2.0**-24, 2.0**-21
        async with SimulatedPool(difficulty=low) as pool, SimulatedASIC(HOST, pool.port, worker()) as asic:
            old = asic.job
            assert old is not None and old.difficulty == low
            new_id = pool.set_difficulty(high)
            await until(lambda: new_id in asic.jobs, "the job after set_difficulty")
            new = asic.jobs[new_id]
            assert new.difficulty == high and asic.difficulty == high
            assert (await asic.submit_share(asic.find_share(job_id=old.job_id))).accepted  # at its old difficulty
            assert (await asic.submit_share(asic.find_share(job_id=new_id))).accepted
            assert pool.accepted == {worker(): low + high}
            assert asic.accepted_difficulty == low + high
            assert [s.difficulty for s in pool.submits_seen] == [low, high]

    go(scenario)


@pytest.mark.parametrize("live_jobs", [False, True])
def test_retarget_sends_set_difficulty_without_a_job_and_live_jobs_take_it_only_when_asked(live_jobs: bool) -> None:
    async def scenario() -> None:
        high, low = 2.0**-21, 2.0**-25
        async with SimulatedPool(difficulty=high) as pool, SimulatedASIC(HOST, pool.port, worker()) as asic:
            job = asic.job
            assert job is not None and job.difficulty == high
            jobs_before = pool.jobs_sent
            assert pool.retarget(low, live_jobs=live_jobs) == 1
            await until(lambda: asic.difficulty == low, "the set_difficulty")
            assert pool.jobs_sent == jobs_before and list(asic.jobs) == [job.job_id]  # no new job
            # A share that meets the low difficulty but not the high one, on the job notified at high.
            between, _ = share_between(job, low, high, 1)
            record = await asic.submit_share(between)
            assert record.accepted == live_jobs
            assert record.error_code == (None if live_jobs else ErrorCode.LOW_DIFFICULTY)
            assert pool.accepted == ({worker(): low} if live_jobs else {})
            strong, _ = share_between(job, high, math.inf, 2)  # meets the high one: accepted either way
            assert (await asic.submit_share(strong)).accepted
            assert pool.submits_seen[-1].difficulty == (low if live_jobs else high)
            # Jobs notified later take the new difficulty either way.
            later = pool.new_job(clean=False)
            await until(lambda: later in asic.jobs, "the next job")
            assert asic.jobs[later].difficulty == low

    go(scenario)


def test_resend_job_notifies_a_job_again_verbatim_or_under_a_new_id() -> None:
    """The pool alone accepts one share under a job, under the same work resent with a new id and
    under the job re-notified: that is the attack the proxy must stop (tests/test_attacks_credit.py)."""

    async def scenario() -> None:
        async with SimulatedPool() as pool, SimulatedASIC(HOST, pool.port, worker()) as asic:
            first = pool.sessions[0].job_ids[0]
            share = asic.find_share(job_id=first)
            assert (await asic.submit_share(share)).accepted
            assert (await asic.submit_share(share)).error_code == ErrorCode.DUPLICATE  # per job, it knows
            twin = pool.resend_job(first, as_id="twin0001")
            await until(lambda: twin in asic.jobs, "the same work under a new id")
            assert pool.sessions[0].job_ids == [first, twin]
            original, copy = pool.recent_jobs[first], pool.recent_jobs[twin]
            assert msgspec.structs.replace(copy, job_id=first, clean_jobs=original.clean_jobs) == original
            assert not copy.clean_jobs
            assert (await asic.submit_share(share._replace(job_id=twin))).accepted
            assert pool.resend_job(first) == first  # a re-notify: same id, same content
            await until(lambda: asic.notifies == 3, "the re-notify")
            assert (await asic.submit_share(share)).accepted
            assert pool.resend_job(first, clean=True) == first
            await until(lambda: asic.notifies == 4, "the clean re-notify")
            assert pool.sessions[0].job_ids == [first]
            assert (await asic.submit_share(share)).accepted
            assert (await asic.submit_share(share._replace(job_id=twin))).error_code == ErrorCode.JOB_NOT_FOUND
            assert pool.accepted_count == 4 and pool.accepted == {worker(): 4 * pool.difficulty}
            with pytest.raises(KeyError):
                pool.resend_job("never-sent")

    go(scenario)


def test_held_verdicts_are_answered_in_order_on_release_or_lost_with_the_connection() -> None:
    async def scenario() -> None:
        async with SimulatedPool() as pool, SimulatedASIC(HOST, pool.port, worker()) as asic:
            pool.hold_verdicts()
            pending = [asyncio.ensure_future(asic.submit_share(asic.find_share())) for _ in range(3)]
            await until(lambda: pool.submits_received == 3, "the submits to reach the pool")
            for _ in range(20):  # held: nothing answers, however long the loop runs
                await asyncio.sleep(0.01)
            assert not any(p.done() for p in pending) and pool.accepted_count == 0
            assert pool.release_verdicts() == 3
            records = await asyncio.gather(*pending)
            assert all(r.accepted for r in records)
            replied = [r.replied_at for r in records]
            assert None not in replied and replied == sorted(t or 0.0 for t in replied)  # in order
            assert pool.accepted_count == 3 and pool.release_verdicts() == 0
            # Held again, then the connection closes: the verdict is undelivered, not accepted.
            pool.hold_verdicts()
            lost = asyncio.ensure_future(asic.submit_share(asic.find_share()))
            await until(lambda: pool.submits_received == 4, "the fourth submit")
            pool.disconnect_all()
            with pytest.raises(ConnectionResetError):
                await lost
            assert pool.accepted_count == 3 and pool.undelivered == {worker(): pool.difficulty}

    go(scenario)


def test_pool_answers_handshake_requests_like_a_pool() -> None:
    async def scenario() -> None:
        async with SimulatedPool(extranonce2_size=8) as pool:
            one = SimulatedASIC(HOST, pool.port, worker(0), profile="cpuminer")
            two = SimulatedASIC(HOST, pool.port, worker(1), profile="cpuminer")
            await one.connect()
            await two.connect()
            assert one.extranonce1 != two.extranonce1 and len(one.extranonce1 or "") == 8
            assert one.extranonce2_size == 8

            reply = await one.request("mining.subscribe", ["test/1.0"])
            result = reply.value()
            assert result[0] == [["mining.set_difficulty", result[1]], ["mining.notify", result[1]]]
            assert subscribe_result(result) is not None
            configure = await one.request(
                "mining.configure",
                [
                    ["version-rolling", "minimum-difficulty", "info"],
                    {"version-rolling.mask": "e0c0e000", "minimum-difficulty.value": 2048},
                ],
            )
            assert configure.value() == {
                "version-rolling": True,
                "version-rolling.mask": "00c0e000",
                "minimum-difficulty": True,
                "info": False,
            }
            assert (await one.request("mining.extranonce.subscribe", [])).value() is True
            assert (await one.request("mining.suggest_difficulty", [0.00015])).value() is True
            bad_configure = await one.request(
                "mining.configure", [["version-rolling"], {"version-rolling.min-bit-count": -1}]
            )
            assert bad_configure.failure() is not None
            await one.stop()
            await two.stop()

    go(scenario)


def test_refused_authorization() -> None:
    async def scenario() -> None:
        valid = hotkey_of(worker())
        async with SimulatedPool(authorize=lambda name, password: valid in name) as pool:
            refused = SimulatedASIC(HOST, pool.port, worker_name(bad_checksum(valid)))
            with pytest.raises(HandshakeError) as caught:
                await refused.connect()
            assert caught.value.error is not None and caught.value.error.code == ErrorCode.UNAUTHORIZED
            await refused.stop()
            fleet = Fleet(HOST, pool.port, [worker(), worker_name(bad_checksum(valid))], max_shares=3)
            await fleet.start(require_all=False)
            assert len(fleet.failed) == 1
            await fleet.wait(20)
            await fleet.stop()
            assert pool.accepted == {worker(): pytest.approx(3 * pool.difficulty)}

    go(scenario)


# --- pool options ----------------------------------------------------------------------------------------


def test_reject_every() -> None:
    async def scenario() -> None:
        async with SimulatedPool(reject_every=3) as pool:
            asic = SimulatedASIC(HOST, pool.port, worker(), max_shares=12)
            await asic.run(timeout=20)
            assert asic.accepted == 8 and asic.rejected == 4
            assert [r.error_code for r in asic.records] == [None, None, 20] * 4
            errors = [r.error for r in asic.records if r.error is not None]
            assert all(e.message == "simulated rejection" for e in errors)
            assert pool.accepted == asic.accepted_by_worker
            assert pool.rejected_by_code == {20: 4}

    go(scenario)


@pytest.mark.parametrize(("shape", "code"), [("list", 21), ("string", 20), ("jsonrpc2", 21), ("reject-reason", 20)])
def test_error_shapes(shape: str, code: int) -> None:
    """The codes a miner can read: bare strings and ckpool's reject-reason carry none (→ 20)."""

    async def scenario() -> None:
        async with SimulatedPool(error_shape=shape) as pool, SimulatedASIC(HOST, pool.port, worker()) as asic:  # type: ignore[arg-type]
            share = asic.find_share()._replace(job_id="gone")
            record = await asic.submit_share(share)
            assert record.error is not None
            assert record.error.code == code and record.error.message == "Job not found"
            line = msgspec.json.encode({"id": 9, "method": "mining.submit", "params": [worker(), *share]})
            reply = await asic.send_raw(line)
            assert reply is not None and reply.failure() == record.error
            assert (reply.reject_reason == "Job not found") == (shape == "reject-reason")
            assert (msgspec.json.decode(reply.result) is False) == (shape in ("string", "reject-reason"))
            accepted = await asic.submit_share(asic.find_share())
            assert accepted.accepted  # successes look the same in every shape

    go(scenario)


def test_verify_modes() -> None:
    async def scenario() -> None:
        async with SimulatedPool(verify="none") as pool, SimulatedASIC(HOST, pool.port, worker()) as asic:
            assert (await asic.submit_share(asic.find_share(low_difficulty=True))).accepted
            assert (await asic.submit_share(asic.find_share()._replace(job_id="gone"))).error_code == 21
        async with (
            SimulatedPool(verify="sample", sample_every=2) as pool,
            SimulatedASIC(HOST, pool.port, worker()) as asic,
        ):
            verdicts = [(await asic.submit_share(asic.find_share(low_difficulty=True))).error_code for _ in range(4)]
            assert verdicts == [None, 23, None, 23]

    go(scenario)


def test_late_reply_lost_when_the_pool_disconnects() -> None:
    async def scenario() -> None:
        async with SimulatedPool(reply_delay=30.0) as pool, SimulatedASIC(HOST, pool.port, worker()) as asic:
            pending = asyncio.ensure_future(asic.submit_share(asic.find_share()))
            await until(lambda: pool.submits_received == 1, "the submit to reach the pool")
            assert pool.accepted_count == 0  # judged, but not answered yet
            assert pool.disconnect_all() == 1
            with pytest.raises(ConnectionResetError):
                await pending
            assert asic.lost == 1 and asic.accepted == 0
            assert pool.accepted == {} and pool.undelivered == {worker(): pool.difficulty}

    go(scenario)


def test_reply_delay_keeps_replies_in_order() -> None:
    async def scenario() -> None:
        async with SimulatedPool(reply_delay=0.02) as pool:
            asic = SimulatedASIC(HOST, pool.port, worker(), profile="cpuminer", pipeline=5, max_shares=10)
            await asic.run(timeout=20)
            assert asic.accepted == 10 and all(r.replied for r in asic.records)
            assert pool.accepted == asic.accepted_by_worker

    go(scenario)


def test_stop_waits_for_the_replies_owed() -> None:
    async def scenario() -> None:
        async with SimulatedPool(reply_delay=0.05) as pool:
            asic = SimulatedASIC(HOST, pool.port, worker(), pipeline=3, max_shares=10_000)
            await asic.start()
            await until(lambda: asic.accepted >= 6, "some answered shares")
            assert asic.in_flight > 0
            await asic.stop()
            assert asic.lost == 0 and asic.accepted == asic.submitted
            assert pool.accepted == asic.accepted_by_worker and pool.undelivered == {}

    go(scenario)


def test_upstream_dies_and_asics_reconnect() -> None:
    async def scenario() -> None:
        async with SimulatedPool() as pool:
            fleet = Fleet.for_hotkeys(HOST, pool.port, HOTKEYS, 3, max_shares=60, reconnect_delay=0.01)
            await fleet.start()
            await until(lambda: fleet.accepted >= 30, "some shares before the outage")
            assert pool.disconnect_all() == 3
            await fleet.wait(20)
            await fleet.stop()
            assert all(a.reconnects == 1 for a in fleet.asics)
            assert pool.connections_total == 6
            assert fleet.submitted == 180
            assert fleet.accepted + fleet.lost == 180
            # Whatever was in flight at the outage was lost on both sides alike.
            assert pool.accepted == fleet.accepted_by_worker()

    go(scenario)


def test_client_reconnect_and_job_timer() -> None:
    async def scenario() -> None:
        async with SimulatedPool(job_interval=0.02) as pool:
            asic = SimulatedASIC(HOST, pool.port, worker(), max_shares=10_000, reconnect_delay=0.01)
            await asic.start()
            await until(lambda: asic.notifies >= 3, "jobs from the timer")
            assert pool.send_reconnect() == 1
            await until(lambda: asic.reconnect_requests == 1 and asic.ready, "the reconnect")
            await until(lambda: pool.connections_total == 2 and asic.accepted > 5, "mining after the reconnect")
            await asic.stop()
            assert pool.jobs_sent >= 3 and pool.rejected_count == 0  # timer jobs do not end old ones
            assert pool.accepted == asic.accepted_by_worker

    go(scenario)


def test_rate_mode_and_duration_bound() -> None:
    async def scenario() -> None:
        async with SimulatedPool() as pool:
            fleet = Fleet.for_hotkeys(HOST, pool.port, HOTKEYS, 3, mode="rate", rate=200.0, max_shares=10)
            await fleet.run(timeout=20)
            assert fleet.accepted == 30 and pool.accepted == fleet.accepted_by_worker()
            timed = SimulatedASIC(HOST, pool.port, worker(), duration=0.05)
            await timed.run(timeout=20)
            assert timed.done and not timed.mining and timed.accepted == timed.submitted

    go(scenario)


def test_pool_restarts_on_the_same_port() -> None:
    async def scenario() -> None:
        pool = SimulatedPool()
        await pool.start()
        port = pool.port
        await pool.stop()
        assert not pool.listening
        await pool.start()
        assert pool.port == port
        async with SimulatedASIC(HOST, port, worker()) as asic:
            assert (await asic.submit_share(asic.find_share())).accepted
        await pool.stop()

    go(scenario)


def test_shares_are_real_work() -> None:
    """What the pool accepted re-hashes to at least its job's difficulty with protocol.work alone."""

    async def scenario() -> None:
        async with SimulatedPool() as pool:
            asic = SimulatedASIC(HOST, pool.port, worker(), max_shares=5)
            await asic.start()
            jobs = dict(asic.jobs)
            await asic.wait(20)
            await asic.stop()
            for submit in pool.submits_seen:
                notify = pool.current_job
                assert notify is not None and submit.job_id == notify.job_id
                job = Job(notify, submit.extranonce1, 4, submit.difficulty)
                share = job.hash_share(submit.extranonce2, submit.ntime, submit.nonce, submit.version_bits, 0x1FFFE000)
                assert share.difficulty >= submit.difficulty
                assert jobs[submit.job_id].difficulty == submit.difficulty

    go(scenario)


def test_expected_codes_cover_every_kind() -> None:
    assert set(EXPECTED_CODE) == set(BAD_KINDS)
    with pytest.raises(ValueError):
        SimulatedASIC(HOST, 1, "w", bad_kinds=("nonsense",))


# --- against scripted servers: how real pools order their lines ----------------------------------------


async def scripted_server(
    script: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Coroutine[Any, Any, None]],
) -> tuple[asyncio.Server, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await script(reader, writer)
            await reader.read()  # hold the connection until the miner closes it
        finally:
            writer.close()

    server = await asyncio.start_server(handle, HOST, 0)
    return server, server.sockets[0].getsockname()[1]


async def read_requests(reader: asyncio.StreamReader, count: int) -> list[dict[str, Any]]:
    return [msgspec.json.decode(await reader.readline()) for _ in range(count)]


def test_notifications_before_replies_are_tolerated() -> None:
    """A pool may send set_difficulty and a job before it answers subscribe (OCEAN, transcript B)."""
    notify = (
        b'{"id":null,"method":"mining.notify","params":["j1","' + b"00" * 32 + b'","01000000","ffffffff",[],'
        b'"20000000","1705ae3a","6500000a",true]}\n'
    )

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b'{"id":null,"method":"mining.set_difficulty","params":[0.0000001]}\n' + notify)
        requests = await read_requests(reader, 4)  # bitaxe pipelines all four without waiting
        assert [r["method"] for r in requests] == [
            "mining.subscribe",
            "mining.configure",
            "mining.suggest_difficulty",
            "mining.authorize",
        ]
        for request in reversed(requests):  # and the replies come back in any order
            result: Any = True
            if request["method"] == "mining.subscribe":
                result = [[["mining.notify", "ab"]], "abcdef01", 8]
            elif request["method"] == "mining.configure":
                result = {"version-rolling": True, "version-rolling.mask": "1fffe000"}
            writer.write(msgspec.json.encode({"id": request["id"], "result": result, "error": None}) + b"\n")

    async def scenario() -> None:
        server, port = await scripted_server(script)
        async with server, SimulatedASIC(HOST, port, worker(), profile="bitaxe") as asic:
            job = asic.job
            assert job is not None and job.job_id == "j1" and job.difficulty == 0.0000001
            assert asic.extranonce1 == "abcdef01" and asic.extranonce2_size == 8
            assert asic.version_mask == 0x1FFFE000
            share = asic.find_share()
            assert len(share.extranonce2) == 16 and share.ntime == "6500000a"

    go(scenario)


def test_replays_a_recorded_public_pool_session() -> None:
    """The server lines of vector 02 (public-pool answering a Bitaxe), byte for byte."""
    text = vector_file("02").read_text()
    server_part = text.split("# --- server -> client")[1].split("#\n")[0]
    lines = [line.encode() + b"\n" for line in server_part.splitlines() if line.startswith("{")]
    assert len(lines) == 6

    # ESP-Miner v2.2 as recorded: authorize (id 3) before suggest_difficulty (id 4).
    profile = dataclasses.replace(
        PROFILES["bitaxe"],
        user_agent="bitaxe v2.2",
        handshake=("mining.subscribe", "mining.configure", "mining.authorize", "mining.suggest_difficulty"),
        suggest_difficulty=512,
    )
    client_part = text.split("# --- client -> server")[1].split("#\n")[0]
    recorded = [line.encode() for line in client_part.splitlines() if line.startswith("{")][:4]

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        requests = await read_requests(reader, 4)
        assert requests == [msgspec.json.decode(line) for line in recorded]  # the device, request for request
        writer.write(b"".join(lines[:5]))  # subscribe, configure, authorize replies, difficulty, job

    async def scenario() -> None:
        server, port = await scripted_server(script)
        recorded_worker = "tb1qumezefzdeqqwn5zfvgdrhxjzc5ylr39uhuxcz4.bitaxe3"
        async with server, SimulatedASIC(HOST, port, recorded_worker, profile=profile) as asic:
            assert asic.extranonce1 == "57a6f098" and asic.version_mask == 0x1FFFE000
            job = asic.job
            assert job is not None and job.job_id == "1" and job.difficulty == 512
            assert len(job.branches) == 3
            # The recorded share itself hashes to 669.87 on the job as this ASIC built it.
            share = job.hash_share("c7080000", "64b3f3ec", "ed460d91", "00002000", asic.version_mask)
            assert int(share.difficulty) == 669
            low = asic.find_share(low_difficulty=True)
            assert low.job_id == "1" and low.version_bits is not None

    go(scenario)
