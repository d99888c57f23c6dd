"""The passthrough session, sans-I/O: lines in, lines out, ledger rows. No sockets needed."""

from __future__ import annotations

import gc
import itertools
from typing import Any

import msgspec
import pytest
from bittensor_wallet import Keypair

from ledger.audit import audit_rows
from ledger.rows import JobRow, Row, ShareRow
from protocol.messages import Notify, encode_notification, encode_request
from protocol.work import Job
from proxy.config import Limits
from proxy.hotkeys import RegisteredHotkeys
from proxy.metrics import ProxyMetrics
from proxy.session import Instant, MinerSession, SessionRules
from proxy.verdicts import VerdictSink

HOTKEY = Keypair.create_from_uri("//Alice").ss58_address
OTHER = Keypair.create_from_uri("//Bob").ss58_address
WORKER = f"infinite.{HOTKEY}.rig1"
EN1 = "57a6f098"
TINY = 2.0**-30  # about one hash in four meets it


def notify(job_id: str = "j1", clean: bool = True, ntime: str = "64b3f3ec") -> Notify:
    return Notify(
        job_id=job_id,
        prevhash="171592f223740e92d223f6e68bff25279af7ac4f2246451e0000000200000000",
        coinb1="02000000010000000000000000000000000000000000000000000000000000000000000000ffffffff1903c943",
        coinb2="ffffffff0100f2052a010000001976a914000000000000000000000000000000000000000088ac00000000",
        merkle_branch=["175335649d5e8746982969ec88f52e85ac9917106fba5468e699c8879ab974a1"] * 3,
        version="20000000",
        nbits="192495f8",
        ntime=ntime,
        clean_jobs=clean,
    )


WALL = 1_700_000_000.0


class Harness:
    """A session driven by hand: instants given, a ledger list and a scripted pool; no socket, no clock."""

    def __init__(self, limits: Limits | None = None, registered: RegisteredHotkeys | None = None) -> None:
        self.rows: list[ShareRow] = []
        self.jobs: list[JobRow] = []
        self.metrics = ProxyMetrics()
        self.ctx = SessionRules(("infinite",), limits or Limits(), registered)
        self.sink = VerdictSink("test-proxy", self._record, self.metrics)
        self.now = 1000.0
        self.session = MinerSession(self.ctx, "s1", "pool:3333", self.at(self.now))
        self._miner_ids = itertools.count(1)
        self._to_miner: list[bytes] = []
        self._to_pool: list[bytes] = []

    @staticmethod
    def at(mono: float) -> Instant:
        return Instant(mono, WALL + mono)

    def _record(self, row: Row) -> None:
        if isinstance(row, ShareRow):
            self.rows.append(row)
        elif isinstance(row, JobRow):
            self.jobs.append(row)

    def _collect(self) -> None:
        outbox = self.session.outbox
        self.sink.take(outbox)
        self._to_miner += outbox.to_miner
        self._to_pool += outbox.to_pool
        outbox.to_miner.clear()
        outbox.to_pool.clear()

    def line(self, raw: bytes) -> None:
        """A raw line from the miner."""
        self.session.receive_miner(raw + b"\n", self.at(self.now))
        self._collect()

    def expire(self, mono: float) -> None:
        self.session.tick(self.at(mono))
        self._collect()

    def pool_lost(self, reason: str) -> None:
        self.session.pool_lost(f"pool connection lost: {reason}", self.at(self.now))
        self._collect()

    # miner side
    def miner(self, method: str, params: list[Any], request_id: Any = "auto") -> Any:
        rid = next(self._miner_ids) if request_id == "auto" else request_id
        self.line(encode_request(rid, method, params).rstrip(b"\n"))
        return rid

    def to_pool(self) -> list[dict[str, Any]]:
        out = [msgspec.json.decode(line) for line in self._to_pool]
        self._to_pool.clear()
        return out

    def to_miner(self) -> list[dict[str, Any]]:
        out = [msgspec.json.decode(line) for line in self._to_miner]
        self._to_miner.clear()
        return out

    # pool side
    def pool(self, obj: dict[str, Any]) -> None:
        self.session.receive_pool(msgspec.json.encode(obj) + b"\n", self.at(self.now))
        self._collect()

    def pool_notify(self, n: Notify) -> None:
        self.session.receive_pool(encode_notification("mining.notify", n.params()), self.at(self.now))
        self._collect()

    def handshake(self, difficulty: float = TINY, worker: str = WORKER) -> None:
        self.miner("mining.subscribe", ["bitaxe/BM1370"])
        sub = self.to_pool()[-1]
        self.pool({"id": sub["id"], "result": [[["mining.notify", "x"]], EN1, 4], "error": None})
        self.miner("mining.authorize", [worker, "x"])
        auth = self.to_pool()[-1]
        self.pool({"id": auth["id"], "result": True, "error": None})
        self.pool({"id": None, "method": "mining.set_difficulty", "params": [difficulty]})
        self.pool_notify(notify())
        self.to_miner()

    def mine(
        self, job_id: str = "j1", start: int = 0, want_difficulty: float = TINY, job: Notify | None = None
    ) -> tuple[str, str, str]:
        """Find a real share for the session's job: (extranonce2, ntime, nonce)."""
        work = Job(job or notify(job_id), EN1, 4, 0.0)
        for nonce in range(start, start + 10_000):
            share = work.hash_share("00000001", "64b3f3ec", f"{nonce:08x}", None, 0)
            if share.difficulty >= want_difficulty:
                return "00000001", "64b3f3ec", f"{nonce:08x}"
        raise AssertionError("no share found in 10,000 nonces")


def test_replies_are_readdressed_to_the_miners_id_and_relayed_unchanged() -> None:
    h = Harness()
    h.miner("mining.subscribe", ["bitaxe"], request_id="abc")
    (forwarded,) = h.to_pool()
    assert forwarded["method"] == "mining.subscribe" and forwarded["id"] != "abc"
    result = [[["mining.set_difficulty", "1"], ["mining.notify", "1"]], EN1, 4]
    h.pool({"id": forwarded["id"], "result": result, "error": None})
    assert h.to_miner() == [{"id": "abc", "result": result, "error": None}]
    assert h.session.extranonce1 == EN1 and h.session.extranonce2_size == 4


@pytest.mark.parametrize(
    "name, reason",
    [
        ("somebody.rig1", "not a valid SS58"),
        (f"infinite.{HOTKEY[:-1]}X.rig1", "not a valid SS58"),  # checksum broken
        (f"other.{HOTKEY}.rig1", "must start with 'infinite.'"),
        (f"infinite.{HOTKEY}.bad name", "workerID"),
        (f"infinite.{HOTKEY}", "needs a workerID"),
        ("", "worker name must be"),
    ],
)
def test_a_bad_worker_name_is_refused_with_24_and_never_reaches_the_pool(name: str, reason: str) -> None:
    h = Harness()
    h.miner("mining.authorize", [name, "x"], request_id=7)
    assert h.to_pool() == []
    (answer,) = h.to_miner()
    assert answer["id"] == 7 and answer["error"][0] == 24 and reason in answer["error"][1]


def test_a_bare_hotkey_name_is_forwarded_with_the_account_and_either_spelling_submits() -> None:
    h = Harness()
    h.handshake(worker=f"{HOTKEY}.rig1")
    en2, ntime, nonce = h.mine()
    h.miner("mining.submit", [f"{HOTKEY}.rig1", "j1", en2, ntime, nonce])
    (forwarded,) = h.to_pool()
    assert forwarded["params"][0] == WORKER


def test_a_valid_share_is_forwarded_and_the_pools_verdict_is_ledgered_with_the_jobs_difficulty() -> None:
    h = Harness()
    h.handshake()
    en2, ntime, nonce = h.mine()
    rid = h.miner("mining.submit", [WORKER, "j1", en2, ntime, nonce])
    (forwarded,) = h.to_pool()
    assert forwarded["params"] == [WORKER, "j1", en2, ntime, nonce]
    h.pool({"id": forwarded["id"], "result": True, "error": None})
    assert h.to_miner() == [{"id": rid, "result": True, "error": None}]
    (row,) = h.rows
    assert row.accepted == 1 and row.hotkey == HOTKEY and row.worker == WORKER
    assert row.difficulty == TINY and row.share_difficulty >= TINY and len(row.hash) == 64
    assert row.reject_reason == "" and row.upstream == "pool:3333" and row.session == "s1"


def test_bad_shares_are_answered_by_the_proxy_and_never_forwarded() -> None:
    h = Harness()
    h.handshake()
    en2, ntime, nonce = h.mine()
    h.miner("mining.submit", [WORKER, "j1", en2, ntime, nonce])
    h.to_pool()
    # duplicate, with the hex in upper case: the same header
    h.miner("mining.submit", [WORKER, "j1", en2.upper(), ntime.upper(), nonce.upper()], request_id=10)
    h.miner("mining.submit", [WORKER, "nope", en2, ntime, nonce], request_id=11)  # unknown job
    h.miner("mining.submit", [WORKER, "j1", "0001", ntime, nonce], request_id=12)  # wrong extranonce2 size
    h.miner("mining.submit", [WORKER, "j1", en2, "00000001", nonce], request_id=13)  # ntime out of window
    h.miner("mining.submit", [f"infinite.{OTHER}.rig", "j1", en2, ntime, nonce], request_id=14)  # not authorized
    h.miner("mining.submit", [WORKER, "j1", en2, ntime, nonce, "00002000"], request_id=15)  # no mask negotiated
    assert h.to_pool() == []
    errors = {a["id"]: a["error"][0] for a in h.to_miner()}
    assert errors == {10: 22, 11: 21, 12: 20, 13: 20, 14: 24, 15: 20}
    reasons = [r.reject_reason for r in h.rows]
    # The submit for a worker this session never authorized leaves no row (only authorized work is ledgered).
    assert reasons == ["duplicate", "stale", "malformed", "ntime", "version-mask"]
    assert all(r.accepted == 0 and r.hotkey == HOTKEY for r in h.rows)


def test_low_difficulty_is_refused_with_23() -> None:
    h = Harness()
    h.handshake(difficulty=1e12)
    h.miner("mining.submit", [WORKER, "j1", "00000001", "64b3f3ec", "00000000"], request_id=3)
    assert h.to_pool() == []
    assert h.to_miner()[0]["error"][0] == 23
    assert h.rows[0].reject_reason == "low-difficulty" and h.rows[0].share_difficulty > 0


def test_set_difficulty_applies_to_jobs_notified_after_it() -> None:
    h = Harness()
    h.handshake(difficulty=TINY)
    h.pool({"id": None, "method": "mining.set_difficulty", "params": [TINY * 2]})
    h.pool_notify(notify("j2", clean=False))
    assert h.session.jobs["j1"].job.difficulty == TINY
    assert h.session.jobs["j2"].job.difficulty == TINY * 2
    # clean_jobs makes earlier jobs stale
    h.pool_notify(notify("j3", clean=True))
    assert list(h.session.jobs) == ["j3"]


def test_cpuminer_style_repeated_ids_get_each_their_own_verdict() -> None:
    h = Harness()
    h.handshake()
    shares = [h.mine(start=0)]
    shares.append(h.mine(start=int(shares[0][2], 16) + 1))
    for en2, ntime, nonce in shares:
        h.miner("mining.submit", [WORKER, "j1", en2, ntime, nonce], request_id=4)
    first, second = h.to_pool()
    assert first["id"] != second["id"]
    # the pool answers out of order: rejection for the second, acceptance for the first
    h.pool({"id": second["id"], "result": None, "error": [23, "Low difficulty share", None]})
    h.pool({"id": first["id"], "result": True, "error": None})
    assert [a["id"] for a in h.to_miner()] == [4, 4]
    by_nonce = {r.hash: r for r in h.rows}
    assert sorted(r.accepted for r in by_nonce.values()) == [0, 1]
    assert {r.reject_reason for r in h.rows if not r.accepted} == {"pool: Low difficulty share"}


@pytest.mark.parametrize(
    "reply, reason",
    [
        ({"result": False, "error": None, "reject-reason": "Above target 2"}, "pool: Above target 2"),
        ({"result": False, "error": "Stale"}, "pool: Stale"),
        (
            {"jsonrpc": "2.0", "error": {"code": 22, "message": "duplicate share", "data": None}},
            "pool: duplicate share",
        ),
    ],
)
def test_every_pool_rejection_shape_is_relayed_unchanged_and_ledgered(reply: dict[str, Any], reason: str) -> None:
    h = Harness()
    h.handshake()
    en2, ntime, nonce = h.mine()
    h.miner("mining.submit", [WORKER, "j1", en2, ntime, nonce], request_id=9)
    (forwarded,) = h.to_pool()
    h.pool({"id": forwarded["id"], **reply})
    (answer,) = h.to_miner()
    assert answer["id"] == 9
    assert answer["result"] == reply.get("result") and answer["error"] == reply.get("error")
    assert answer.get("reject-reason") == reply.get("reject-reason")
    assert h.rows[-1].accepted == 0 and h.rows[-1].reject_reason == reason


def test_unanswered_submits_time_out_with_an_answer_and_a_ledger_row() -> None:
    h = Harness(Limits(submit_timeout=5.0, late_verdict_timeout=60.0))
    h.handshake()
    en2, ntime, nonce = h.mine()
    h.miner("mining.submit", [WORKER, "j1", en2, ntime, nonce], request_id=5)
    h.to_pool()
    h.expire(h.now + 4.0)
    assert h.to_miner() == [] and h.rows == []
    h.expire(h.now + 6.0)
    (answer,) = h.to_miner()
    assert answer["id"] == 5 and answer["error"][0] == 20
    assert h.rows == []  # a verdict may still come: the ledger waits for it
    h.expire(h.now + 61.0)
    assert h.to_miner() == []  # answered once
    assert h.rows[-1].reject_reason == "timeout" and h.rows[-1].accepted == 0


def test_a_late_verdict_still_reaches_the_ledger() -> None:
    h = Harness(Limits(submit_timeout=5.0, late_verdict_timeout=60.0))
    h.handshake()
    en2, ntime, nonce = h.mine()
    h.miner("mining.submit", [WORKER, "j1", en2, ntime, nonce], request_id=5)
    (forwarded,) = h.to_pool()
    h.expire(h.now + 6.0)
    assert [a["error"][0] for a in h.to_miner()] == [20]
    h.pool({"id": forwarded["id"], "result": True, "error": None})
    assert h.to_miner() == []  # the miner was already answered
    (row,) = h.rows
    assert row.accepted == 1 and row.difficulty == TINY


def test_losing_the_pool_answers_everything_in_flight_and_closes_the_session() -> None:
    h = Harness()
    h.handshake()
    en2, ntime, nonce = h.mine()
    h.miner("mining.submit", [WORKER, "j1", en2, ntime, nonce], request_id=5)
    h.pool_lost("reset")
    assert h.to_miner()[0]["id"] == 5
    assert h.rows[-1].reject_reason == "timeout"
    assert h.session.close_reason is not None and "pool connection lost" in h.session.close_reason


def test_version_rolling_uses_the_mask_both_sides_agreed_on() -> None:
    h = Harness()
    h.miner("mining.configure", [["version-rolling"], {"version-rolling.mask": "ffffffff"}])
    configure = h.to_pool()[-1]
    h.pool(
        {"id": configure["id"], "result": {"version-rolling": True, "version-rolling.mask": "1fffe000"}, "error": None}
    )
    h.handshake()
    assert h.session.version_mask == 0x1FFFE000
    h.miner("mining.submit", [WORKER, "j1", "00000001", "64b3f3ec", "00000000", "20000000"], request_id=8)
    assert h.to_miner()[0]["error"][0] == 20 and h.rows[-1].reject_reason == "version-mask"


def test_malformed_lines_cost_only_this_session_and_too_many_close_it() -> None:
    h = Harness(Limits(max_bad_lines=3))
    h.line(b'{"id":1,"method":"mining.submit","params":["user", "1", "ab", 0, 1.5]}')
    (answer,) = h.to_miner()
    assert answer["id"] == 1 and answer["error"][0] == 20
    assert h.rows == []  # never authorized: nothing of it reaches the ledger
    for junk in (
        b"not json",
        b"[1,2]",
        b'{"id":2,"method":"mining.configure","params":[["version-rolling"],{"version-rolling.min-bit-count":-1}]}',
    ):
        h.line(junk)
    assert h.session.close_reason is not None and "malformed" in h.session.close_reason
    assert h.to_pool() == []


def test_a_submit_flood_closes_the_session() -> None:
    h = Harness(Limits(cost_decay_per_second=10, cost_soft_limit=3, cost_hard_limit=5, request_cost=0, byte_cost=0))
    h.handshake()
    for i in range(6):
        h.miner("mining.submit", [WORKER, "j1", "00000001", "64b3f3ec", f"{i:08x}"])
    assert h.session.close_reason is not None and "cost" in h.session.close_reason


def test_a_request_flood_pauses_reading_until_the_cost_decays_and_a_bigger_one_closes() -> None:
    limits = Limits()
    h = Harness(limits)
    h.handshake()
    per_request = limits.request_cost
    flood = int(limits.cost_soft_limit / per_request) + 10
    for _ in range(flood):
        h.miner("mining.extranonce.subscribe", [])
    assert h.session.close_reason is None
    wait = h.session.throttle(h.now)
    assert wait > 0  # over the soft limit: the network layer stops reading this miner
    assert h.session.throttle(h.now + wait / 2) > 0
    assert h.session.throttle(h.now + wait + 0.001) == 0  # decayed: read on
    for _ in range(int(limits.cost_hard_limit / per_request)):
        h.miner("mining.extranonce.subscribe", [])
        if h.session.close_reason is not None:
            break
    assert h.session.close_reason is not None and "cost" in h.session.close_reason


def test_a_farm_session_sends_hundreds_of_submits_a_second_for_as_long_as_it_likes() -> None:
    h = Harness()
    h.handshake()
    per_second = 500
    for second in range(30):
        for i in range(per_second):
            h.now = 1000.0 + second + i / per_second
            # unknown job ids: judged here (stale), cheap, and they cost what any submit costs
            h.miner("mining.submit", [WORKER, f"old{i}", "00000001", "64b3f3ec", f"{i:08x}"])
        assert h.session.throttle(h.now) == 0
    assert h.session.close_reason is None
    assert len(h.rows) == 30 * per_second and {r.reject_reason for r in h.rows} == {"stale"}


def test_stray_malformed_lines_over_weeks_never_close_a_rig() -> None:
    h = Harness(Limits(max_bad_lines=20, bad_line_forgiven_after=60.0))
    h.handshake()
    for i in range(200):  # one stray line every ten minutes, for 33 hours
        h.now = 1000.0 + i * 600.0
        h.line(b"garbage")
    assert h.session.close_reason is None
    for _ in range(21):  # a burst does close it
        h.line(b"garbage")
    assert h.session.close_reason is not None and "malformed" in h.session.close_reason


def test_the_session_imports_no_io_library() -> None:
    import subprocess
    import sys

    code = (
        "import sys, proxy.session; "
        "bad = [m for m in ('clickhouse_connect', 'prometheus_client', 'bittensor', 'aiohttp', 'asyncio', "
        "'proxy.metrics', 'proxy.config') "
        "if m in sys.modules]; print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_outbox_carries_verdicts_not_rows() -> None:
    h = Harness()
    h.handshake()
    en2, ntime, nonce = h.mine()
    h.session.receive_miner(encode_request(3, "mining.submit", [WORKER, "j1", en2, ntime, nonce]), Instant(2000.0, 5.0))
    (line,) = h.session.outbox.to_pool
    h.session.outbox.to_pool.clear()
    upstream_id = msgspec.json.decode(line)["id"]
    h.session.receive_pool(b'{"id":%d,"result":true,"error":null}\n' % upstream_id, Instant(2000.25, 5.25))
    (verdict,) = h.session.outbox.verdicts
    assert verdict.reason == "" and verdict.worker is not None and verdict.worker.hotkey == HOTKEY
    assert verdict.received == 5.0 and verdict.latency == 0.25 and verdict.credit == TINY
    assert h.session.outbox.to_miner == [b'{"id":3,"result":true,"error":null}\n']


def test_a_notify_before_the_subscribe_reply_becomes_a_job_once_extranonce1_is_known() -> None:
    h = Harness()
    h.miner("mining.subscribe", [])
    (sub,) = h.to_pool()
    h.pool_notify(notify("early"))
    assert h.session.jobs == {}
    h.pool({"id": sub["id"], "result": [[["mining.notify", "x"]], EN1, 4], "error": None})
    assert list(h.session.jobs) == ["early"]


def test_pool_requests_are_answered_by_the_proxy_and_reconnect_is_never_relayed() -> None:
    h = Harness()
    h.miner("mining.subscribe", ["cgminer/4.10"])
    h.to_pool()
    h.pool({"id": 99, "method": "client.get_version", "params": []})
    (answer,) = h.to_pool()
    assert answer["id"] == 99 and "cgminer/4.10" in answer["result"]
    h.pool({"id": None, "method": "client.reconnect", "params": ["evil.example", 3333, 0]})
    assert h.to_miner() == [] and h.session.close_reason == "pool asked to reconnect"


class _FixedRegistry:
    async def registered_hotkeys(self) -> set[str]:
        return {HOTKEY}


def test_with_require_registered_only_metagraph_hotkeys_may_authorize() -> None:
    import asyncio

    registered = RegisteredHotkeys(_FixedRegistry())
    asyncio.run(registered.refresh())
    h = Harness(registered=registered)
    h.miner("mining.authorize", [f"infinite.{OTHER}.rig1", "x"], request_id=1)
    assert h.to_pool() == [] and "not registered" in h.to_miner()[0]["error"][1]
    h.miner("mining.authorize", [WORKER, "x"], request_id=2)
    assert h.to_pool()[0]["params"][0] == WORKER


def test_a_session_that_never_authorizes_is_closed_after_the_handshake_timeout() -> None:
    h = Harness(Limits(handshake_timeout=30.0))
    h.miner("mining.subscribe", [])
    h.expire(h.now + 29.0)
    assert h.session.close_reason is None
    h.expire(h.now + 31.0)
    assert h.session.close_reason is not None and "handshake" in h.session.close_reason


def test_a_silent_miner_is_closed_after_the_idle_timeout() -> None:
    h = Harness(Limits(idle_timeout=60.0))
    h.handshake()
    h.expire(h.now + 59.0)
    assert h.session.close_reason is None
    h.expire(h.now + 61.0)
    assert h.session.close_reason == "idle timeout"


def test_a_share_that_meets_the_network_target_is_a_block_candidate_counted_and_ledgered() -> None:
    h = Harness()
    h.handshake()
    regtest = msgspec.structs.replace(notify("blk"), nbits="207fffff")  # target ~2^255: every hash meets it
    h.pool_notify(regtest)
    en2, ntime, nonce = h.mine(job=regtest)
    h.miner("mining.submit", [WORKER, "blk", en2, ntime, nonce])
    (forwarded,) = h.to_pool()
    h.pool({"id": forwarded["id"], "result": True, "error": None})
    assert h.rows[-1].block == 1 and h.rows[-1].accepted == 1
    assert h.metrics.block_candidates == 1


class _FlakyRegistry:
    def __init__(self) -> None:
        self.calls = 0

    async def registered_hotkeys(self) -> set[str]:
        self.calls += 1
        if self.calls > 1:
            raise ConnectionError("chain unreachable")
        return {HOTKEY}


def test_a_chain_outage_keeps_the_last_good_set_of_registered_hotkeys() -> None:
    import asyncio

    registered = RegisteredHotkeys(_FlakyRegistry())
    assert not registered.loaded and HOTKEY not in registered
    assert asyncio.run(registered.refresh()) is True
    assert asyncio.run(registered.refresh()) is False  # the chain is down now
    assert HOTKEY in registered and OTHER not in registered


def same_work(job_id: str, clean: bool = False) -> Notify:
    """The content of `notify()` under another job id: the same header for the same submit."""
    return notify(job_id, clean=clean)


def test_the_same_work_is_credited_once_whatever_the_job_id() -> None:
    h = Harness()
    h.handshake()
    en2, ntime, nonce = h.mine()
    answers = []
    for job_id, renotify in (("j1", None), ("B", same_work("B")), ("j1", same_work("j1", clean=True))):
        if renotify is not None:
            h.pool_notify(renotify)
        h.miner("mining.submit", [WORKER, job_id, en2, ntime, nonce], request_id=7)
        for forwarded in h.to_pool():
            h.pool({"id": forwarded["id"], "result": True, "error": None})
        answers += [a for a in h.to_miner() if a.get("id") == 7]
    assert [a.get("error") for a in answers] == [None, [22, "Duplicate share", None], [22, "Duplicate share", None]]
    assert [r.accepted for r in h.rows] == [1, 0, 0]
    assert sum(r.difficulty for r in h.rows if r.accepted) == TINY


def test_duplicate_memory_is_bounded_by_blocks() -> None:
    h = Harness()
    h.handshake()
    for height in range(10):
        n = notify(f"b{height}", clean=True)
        h.pool_notify(msgspec.structs.replace(n, prevhash=f"{height:064x}"))
    assert len(h.session._forwarded.by_block) <= 2


def test_the_duplicate_memory_is_invisible_to_the_garbage_collector() -> None:
    # It holds every hash of a block (millions at a farm's rate): in a set, each full collection
    # walked them all (220 ms at 2M); a dict of bytes is never tracked.
    h = Harness()
    h.handshake()
    en2, ntime, nonce = h.mine()
    h.miner("mining.submit", [WORKER, "j1", en2, ntime, nonce])
    (forwarded,) = h.to_pool()
    h.pool({"id": forwarded["id"], "result": True, "error": None})
    gc.collect()
    (memory,) = h.session._forwarded.by_block.values()
    assert bytes.fromhex(h.rows[0].hash)[::-1] in memory
    assert not gc.is_tracked(memory)


def test_credit_is_the_lower_of_the_jobs_and_the_current_difficulty() -> None:
    h = Harness()
    h.handshake(difficulty=TINY * 16)
    en2, ntime, nonce = h.mine(want_difficulty=TINY)
    # The pool lowers the difficulty without a new job: a share meeting the lower one is forwarded,
    # and credited at the lower one (a pool that applies it to live jobs credits no more).
    h.pool({"id": None, "method": "mining.set_difficulty", "params": [TINY]})
    h.to_miner()
    h.miner("mining.submit", [WORKER, "j1", en2, ntime, nonce], request_id=3)
    (forwarded,) = h.to_pool()
    h.pool({"id": forwarded["id"], "result": True, "error": None})
    (row,) = h.rows
    assert row.accepted == 1 and row.difficulty == TINY


def test_rows_carry_what_a_rehash_needs_and_jobs_are_ledgered_once() -> None:
    h = Harness()
    h.handshake()
    h.pool_notify(same_work("B"))  # the same content again: no second job row
    en2, ntime, nonce = h.mine()
    h.miner("mining.submit", [WORKER, "j1", en2, ntime, nonce], request_id=3)
    (forwarded,) = h.to_pool()
    h.pool({"id": forwarded["id"], "result": True, "error": None})
    (job,) = h.jobs
    (row,) = h.rows
    assert row.job_key == job.job_key and row.extranonce1 == EN1 and row.extranonce2 == en2
    assert (row.ntime, row.nonce, row.version_bits, row.version_mask) == (int(ntime, 16), int(nonce, 16), None, 0)
    assert job.coinb1 == notify().coinb1 and job.merkle_branch == notify().merkle_branch


def test_health_checks_get_work_and_are_never_credited() -> None:
    h = Harness()
    h.ctx.health_checks = frozenset({"sn89auction.check"})
    h.handshake(worker="sn89auction.check")
    forwarded_names = [m["params"][0] for m in h.to_pool() if m.get("method") == "mining.authorize"]
    assert forwarded_names == []  # already answered in handshake; check the session state instead
    assert h.session.workers == {}
    h.miner("mining.submit", ["sn89auction.check", "j1", "00000001", "64b3f3ec", "00000000"], request_id=4)
    assert h.to_pool() == [] and h.to_miner()[0]["error"][0] == 24
    assert h.rows == []


def test_several_accounts_are_each_forwarded_as_sent() -> None:
    h = Harness()
    h.ctx.accounts = ("infinite", "sn89auction")
    name = f"sn89auction.{HOTKEY}.worker1"
    h.miner("mining.authorize", [name, "x"])
    (forwarded,) = h.to_pool()
    assert forwarded["params"][0] == name
    h.miner("mining.authorize", [f"other.{HOTKEY}.worker1", "x"], request_id=9)
    assert h.to_pool() == [] and h.to_miner()[0]["error"][0] == 24


def test_a_lost_pool_is_explained_to_the_miner_after_its_requests_are_answered() -> None:
    h = Harness()
    h.handshake()
    h.miner("mining.extranonce.subscribe", [], request_id=12)
    h.pool_lost("reset")
    answers = h.to_miner()
    assert answers[0]["id"] == 12 and answers[0]["error"][0] == 20
    assert answers[-1]["method"] == "client.show_message" and "pool connection lost: reset" in answers[-1]["params"][0]


def test_while_the_ledger_is_full_submits_are_refused_with_a_clear_error_and_never_forwarded() -> None:
    h = Harness()
    h.handshake()
    en2, ntime, nonce = h.mine()
    h.ctx.shares_refused = "the proxy cannot ledger shares right now"
    h.miner("mining.submit", [WORKER, "j1", en2, ntime, nonce], request_id=4)
    assert h.to_pool() == [] and h.rows == []
    assert h.to_miner() == [{"id": 4, "result": None, "error": [20, "the proxy cannot ledger shares right now", None]}]
    h.ctx.shares_refused = None  # the ledger recovered: the same share is taken
    h.miner("mining.submit", [WORKER, "j1", en2, ntime, nonce], request_id=5)
    (forwarded,) = h.to_pool()
    assert forwarded["method"] == "mining.submit"


def test_a_session_authorizes_at_most_max_workers_and_refuses_more_with_error_24() -> None:
    h = Harness(Limits(max_workers=2))
    h.handshake()  # the first worker
    second = f"infinite.{HOTKEY}.rig2"
    h.miner("mining.authorize", [second, "x"])
    (auth,) = h.to_pool()
    h.pool({"id": auth["id"], "result": False, "error": [24, "no", None]})  # the pool refuses it: no claim kept
    h.to_miner()
    h.miner("mining.authorize", [second, "x"])
    (auth,) = h.to_pool()
    h.pool({"id": auth["id"], "result": True, "error": None})
    assert h.to_miner()[-1]["result"] is True
    h.miner("mining.authorize", [f"infinite.{HOTKEY}.rig3", "x"], request_id=7)
    assert h.to_pool() == []  # never reaches the pool
    (refused,) = h.to_miner()
    assert refused["id"] == 7 and refused["error"][0] == 24 and "at most 2 workers" in refused["error"][1]
    h.miner("mining.authorize", [WORKER, "x"])  # one it has: authorized again, as before
    assert [m["method"] for m in h.to_pool()] == ["mining.authorize"]
    assert h.session.worker_names == sorted([WORKER, second])


def test_a_mask_change_before_the_verdict_leaves_the_row_with_the_mask_the_share_was_rolled_under() -> None:
    """The pool may send mining.set_version_mask while a share is in flight: the row keeps the mask
    the share was checked under, so it still re-hashes (found by tests/test_session_fuzz.py)."""
    h = Harness()
    h.miner("mining.configure", [["version-rolling"], {"version-rolling.mask": "ffffffff"}])
    (configure,) = h.to_pool()
    h.pool(
        {"id": configure["id"], "result": {"version-rolling": True, "version-rolling.mask": "1fffe000"}, "error": None}
    )
    h.handshake()
    assert h.session.version_mask == 0x1FFFE000
    work = Job(notify(), EN1, 4, TINY)
    nonce = next(
        n
        for n in range(10_000)
        if work.hash_share("00000001", "64b3f3ec", f"{n:08x}", "00002000", 0x1FFFE000).difficulty >= TINY
    )
    h.miner("mining.submit", [WORKER, "j1", "00000001", "64b3f3ec", f"{nonce:08x}", "00002000"])
    (forwarded,) = h.to_pool()
    h.pool({"id": None, "method": "mining.set_version_mask", "params": ["00ffe000"]})
    assert h.session.version_mask == 0x00FFE000
    h.pool({"id": forwarded["id"], "result": True, "error": None})
    (row,) = h.rows
    assert (row.accepted, row.version_bits, row.version_mask) == (1, 0x2000, 0x1FFFE000)
    report = audit_rows([row], {j.job_key: j for j in h.jobs})
    assert report.checked == 1 and report.clean, report.examples
