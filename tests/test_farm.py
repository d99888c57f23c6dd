"""Farm mode's sans-I/O core (`proxy.farm`), without sockets: the ASICs and the pool are lines fed in.

What is checked: the share an ASIC mines hashes, translated, to the same header the pool checks,
and its ledger row re-hashes; the pool's verdict goes back to the right ASIC request; ASICs of one
hotkey share a slot up to the configured number; a failover re-issues clean work to the same ASIC
(or sends it client.reconnect when the next pool's extranonce2 cannot hold it); difficulty and
version bits follow the rules; prefixes never collide (property test).
"""

from __future__ import annotations

from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.audit import audit_rows
from ledger.rows import JobRow, Row, ShareRow
from protocol.messages import Notify, parse_notify
from protocol.work import Job
from proxy.config import Limits
from proxy.farm import FarmASIC, FarmContext, FarmHub, FarmUpstream, PrefixAllocator, prefix_bytes_for
from proxy.metrics import ProxyMetrics
from proxy.session import Forwarded, SessionRules
from proxy.verdicts import VerdictSink
from simulation.hotkeys import hotkeys

HOTKEYS = hotkeys(2, namespace="farm-unit")
EASY = 2.0**-33  # every hash meets it
NOTIFY_PARAMS: list[Any] = [
    "j1",
    "00" * 28 + "0000ffff",
    "01000000010000000000000000000000000000000000000000000000000000000000000000ffffffff20",
    "ffffffff0100f2052a010000001976a914000000000000000000000000000000000000000088ac00000000",
    ["11" * 32, "22" * 32],
    "20000000",
    "1705ae3a",
    "66000000",
    True,
]


class Harness:
    def __init__(self, per_upstream: int = 256, limits: Limits | None = None) -> None:
        self.rows: list[Row] = []
        self.ctx = FarmContext(
            SessionRules(accounts=("infinite",), limits=limits or Limits()),
            VerdictSink("unit", self.rows.append, ProxyMetrics()),
        )
        self.hub = FarmHub(self.ctx, per_upstream)

    def asic(self, worker: str, *, configure: str | None = None, suggest: float | None = None) -> FarmASIC:
        asic = self.hub.new_asic(f"s{len(self.hub.asics) + 1}", 0.0)
        lines = []
        if configure is not None:
            lines.append(
                {
                    "id": 1,
                    "method": "mining.configure",
                    "params": [["version-rolling"], {"version-rolling.mask": configure}],
                }
            )
        lines.append({"id": 2, "method": "mining.subscribe", "params": ["unit/1.0"]})
        if suggest is not None:
            lines.append({"id": 3, "method": "mining.suggest_difficulty", "params": [suggest]})
        lines.append({"id": 4, "method": "mining.authorize", "params": [worker, "x"]})
        self.miner(asic, *lines)
        return asic

    def miner(self, asic: FarmASIC, *messages: dict[str, Any]) -> None:
        self.hub.miner_data(asic, b"".join(msgspec.json.encode(m) + b"\n" for m in messages), 1.0)

    def connect(
        self,
        upstream: FarmUpstream,
        *,
        extranonce1: str = "a1b2c3d4",
        size: int = 8,
        difficulty: float = EASY,
        mask: str = "1fffe000",
        notify: list[Any] | None = None,
    ) -> None:
        """A pool connection for the slot, its handshake answered, a first job sent."""
        self.hub.pool_connected(upstream, f"pool-{extranonce1}:3333", 1.0)
        sent = [msgspec.json.decode(line) for line in upstream.to_pool]
        upstream.to_pool.clear()
        ids = {m["method"]: m["id"] for m in sent}
        self.pool(
            upstream,
            {
                "id": ids["mining.configure"],
                "result": {"version-rolling": True, "version-rolling.mask": mask},
                "error": None,
            },
            {"id": ids["mining.subscribe"], "result": [[["mining.notify", "x"]], extranonce1, size], "error": None},
            {"id": ids["mining.authorize"], "result": True, "error": None},
            {"id": None, "method": "mining.set_difficulty", "params": [difficulty]},
            {"id": None, "method": "mining.notify", "params": notify or NOTIFY_PARAMS},
        )

    def pool(self, upstream: FarmUpstream, *messages: dict[str, Any]) -> None:
        self.hub.pool_data(upstream, b"".join(msgspec.json.encode(m) + b"\n" for m in messages), 1.0)

    def wanted(self) -> FarmUpstream:
        upstream = self.hub.want_connection.pop(0)
        return upstream


def sent(asic: FarmASIC) -> list[dict[str, Any]]:
    out = [msgspec.json.decode(line) for line in asic.to_miner]
    asic.to_miner.clear()
    return out


def last_notify(messages: list[dict[str, Any]]) -> Notify:
    return parse_notify([m for m in messages if m.get("method") == "mining.notify"][-1]["params"])


def mine(
    asic: FarmASIC, notify: Notify, difficulty: float = EASY, en2: int = 0, below: float | None = None
) -> dict[str, Any]:
    """A submit the ASIC would send for the job (extranonce1 = its prefix, as it was told), of at
    least `difficulty`, or (with `below`) one that misses that difficulty."""
    assert asic.prefix is not None
    job = Job(notify, asic.prefix, asic.extranonce2_size, difficulty)
    en2_hex = en2.to_bytes(asic.extranonce2_size, "big").hex()
    for nonce in range(100_000):
        share = job.hash_share(en2_hex, notify.ntime, f"{nonce:08x}", None, 0)
        if (share.difficulty < below) if below is not None else (share.difficulty >= difficulty):
            return {
                "id": 40 + nonce % 7,
                "method": "mining.submit",
                "params": ["", notify.job_id, en2_hex, notify.ntime, f"{nonce:08x}"],
            }
    raise AssertionError("no share found")


def submit_as(worker: str, submit: dict[str, Any]) -> dict[str, Any]:
    return {**submit, "params": [worker, *submit["params"][1:]]}


def test_a_translated_share_is_the_pools_share_and_its_row_re_hashes() -> None:
    h = Harness()
    worker = f"infinite.{HOTKEYS[0]}.rig1"
    asic = h.asic(worker)
    upstream = h.wanted()
    assert upstream.worker_name == f"infinite.{HOTKEYS[0]}.farm1"
    h.connect(upstream)
    down = sent(asic)
    assert down[1] == {"id": 4, "result": True, "error": None}  # authorized once the pool took farm1
    notify = last_notify(down)
    pool_notify = parse_notify(NOTIFY_PARAMS)
    assert notify.coinb1 == pool_notify.coinb1 + "a1b2c3d4" and notify.clean_jobs
    assert asic.extranonce2_size == 4 and len(asic.prefix or "") == 4  # default 4; k = 2 for 10,000 sessions
    submit = submit_as(worker, mine(asic, notify))
    h.miner(asic, submit)
    (forwarded,) = [msgspec.json.decode(line) for line in upstream.to_pool]
    upstream.to_pool.clear()
    name, job_id, en2, ntime, nonce = forwarded["params"]
    assert (name, job_id) == (upstream.worker_name, "j1")
    assert en2 == (asic.prefix or "") + submit["params"][2] + "00" * 2  # prefix ‖ ASIC's ‖ filler
    # The pool's own check of the translated share gives the header hash the proxy computed.
    pool_share = Job(pool_notify, "a1b2c3d4", 8, EASY).check_share(en2, ntime, nonce, None, 0)
    h.pool(upstream, {"id": forwarded["id"], "result": True, "error": None})
    assert sent(asic) == [{"id": submit["id"], "result": True, "error": None}]  # routed to this request
    shares = [r for r in h.rows if isinstance(r, ShareRow)]
    jobs = {r.job_key: r for r in h.rows if isinstance(r, JobRow)}
    (row,) = shares
    assert (row.worker, row.session, row.accepted, row.difficulty) == (worker, asic.session_id, 1, EASY)
    assert row.hash == pool_share.hex_hash
    assert row.extranonce1 + row.extranonce2 == "a1b2c3d4" + en2  # the extranonce as the pool saw it
    report = audit_rows(shares, jobs)
    assert report.checked == 1 and report.clean, report.examples


def test_asics_of_one_hotkey_fill_a_slot_then_open_the_next_and_hotkeys_never_share() -> None:
    h = Harness(per_upstream=2)
    asics = [h.asic(f"infinite.{HOTKEYS[0]}.rig{i}") for i in range(3)] + [h.asic(f"infinite.{HOTKEYS[1]}.rig0")]
    slots = [u.worker_name for u in h.hub.want_connection]
    assert slots == [f"infinite.{HOTKEYS[0]}.farm1", f"infinite.{HOTKEYS[0]}.farm2", f"infinite.{HOTKEYS[1]}.farm1"]
    assert [a.upstream.worker_name if a.upstream else None for a in asics] == [slots[0], slots[0], slots[1], slots[2]]
    # A second hotkey on one ASIC connection is refused: its upstream speaks for one hotkey.
    h.miner(asics[0], {"id": 9, "method": "mining.authorize", "params": [f"infinite.{HOTKEYS[1]}.rig9", "x"]})
    assert sent(asics[0])[-1]["error"][0] == 24


def test_the_pools_verdict_goes_back_to_the_asic_that_sent_the_share() -> None:
    h = Harness()
    workers = [f"infinite.{HOTKEYS[0]}.rig{i}" for i in range(3)]
    asics = [h.asic(w) for w in workers]
    upstream = h.wanted()
    h.connect(upstream)
    submits = []
    for asic, worker in zip(asics, workers, strict=True):
        submit = submit_as(worker, {**mine(asic, last_notify(sent(asic))), "id": 7})  # the same id everywhere
        h.miner(asic, submit)
        submits.append(submit)
    forwarded = [msgspec.json.decode(line) for line in upstream.to_pool]
    assert len({f["id"] for f in forwarded}) == 3
    # The pool answers out of order: accept the second, reject the others.
    h.pool(
        upstream,
        {"id": forwarded[1]["id"], "result": True, "error": None},
        {"id": forwarded[2]["id"], "result": None, "error": [23, "Low difficulty share", None]},
        {"id": forwarded[0]["id"], "result": None, "error": [21, "Job not found", None]},
    )
    answers = [sent(a) for a in asics]
    assert [a[0]["error"] for a in answers] == [[21, "Job not found", None], None, [23, "Low difficulty share", None]]
    rows = {r.worker: r for r in h.rows if isinstance(r, ShareRow)}
    assert [rows[w].accepted for w in workers] == [0, 1, 0]
    assert rows[workers[0]].reject_reason == "pool: Job not found"


def test_only_shares_that_meet_the_pools_difficulty_are_forwarded_and_a_hash_only_once() -> None:
    h = Harness()
    worker = f"infinite.{HOTKEYS[0]}.rig0"
    asic = h.asic(worker)
    upstream = h.wanted()
    h.connect(upstream, difficulty=2.0**-26)
    notify = last_notify(sent(asic))
    low = submit_as(worker, mine(asic, notify, EASY, below=2.0**-26))
    h.miner(asic, low)
    assert not upstream.to_pool and sent(asic)[0]["error"][0] == 23
    assert [r.reject_reason for r in h.rows if isinstance(r, ShareRow)] == ["low-difficulty"]
    good = submit_as(worker, mine(asic, notify, 2.0**-26, en2=1))
    h.miner(asic, good)
    h.miner(asic, {**good, "id": 99})  # the same share again
    assert len(upstream.to_pool) == 1
    assert sent(asic)[-1] == {"id": 99, "result": None, "error": [22, "Duplicate share", None]}
    # An unauthorized worker's share: answered, never a row.
    rows_before = len(h.rows)
    h.miner(asic, submit_as("infinite.someone.else", good))
    assert sent(asic)[-1]["error"][0] == 24 and len(h.rows) == rows_before


def test_a_lost_pool_hands_the_same_asic_a_clean_job_from_the_next_pool() -> None:
    h = Harness()
    worker = f"infinite.{HOTKEYS[0]}.rig0"
    asic = h.asic(worker, configure="ffffffff")
    prefix = asic.prefix
    upstream = h.wanted()
    h.connect(upstream, extranonce1="00000001")
    old = last_notify(sent(asic))
    in_flight = submit_as(worker, mine(asic, old))
    h.miner(asic, in_flight)
    h.hub.pool_lost(upstream, "connection reset")
    # The share in flight is answered and ledgered as unanswered; the ASIC stays, its work is dead.
    assert sent(asic) == [
        {"id": in_flight["id"], "result": None, "error": [20, "pool connection lost: connection reset", None]}
    ]
    assert [r.reject_reason for r in h.rows if isinstance(r, ShareRow)] == ["timeout"]
    assert asic.close_reason is None and h.wanted() is upstream
    h.connect(upstream, extranonce1="00000002", notify=[*NOTIFY_PARAMS[:8], False])
    down = sent(asic)
    new = last_notify(down)
    assert new.clean_jobs and new.job_id != old.job_id  # clean even though the pool's first job was not
    assert new.coinb1.endswith("00000002") and asic.prefix == prefix
    h.miner(asic, {**in_flight, "id": 50})  # the old job is gone
    assert sent(asic)[-1]["error"][0] == 21
    h.miner(asic, submit_as(worker, mine(asic, new)))
    assert len(upstream.to_pool) == 1


def test_a_next_pool_too_small_for_the_asics_extranonce_sends_it_client_reconnect() -> None:
    h = Harness()
    asic = h.asic(f"infinite.{HOTKEYS[0]}.rig0")
    upstream = h.wanted()
    h.connect(upstream, size=8)
    sent(asic)
    h.hub.pool_lost(upstream, "gone")
    h.wanted()
    h.connect(upstream, size=4)  # 2 prefix bytes + the ASIC's 4 do not fit in 4
    down = sent(asic)
    assert down[-1]["method"] == "client.reconnect" and asic.close_reason is not None
    # Whoever connects next is given what fits this pool.
    assert h.hub.asic_extranonce2_size() == 2


def test_difficulty_is_at_least_the_pools_and_suggestions_count_only_upward() -> None:
    h = Harness()
    low = h.asic(f"infinite.{HOTKEYS[0]}.rig0", suggest=2.0**-40)
    high = h.asic(f"infinite.{HOTKEYS[0]}.rig1", suggest=2.0**-20)
    upstream = h.wanted()
    h.connect(upstream, difficulty=2.0**-30)

    def difficulty(messages: list[dict[str, Any]]) -> float:
        return float([m for m in messages if m.get("method") == "mining.set_difficulty"][-1]["params"][0])

    assert difficulty(sent(low)) == 2.0**-30 and difficulty(sent(high)) == 2.0**-20
    h.pool(
        upstream,
        {"id": None, "method": "mining.set_difficulty", "params": [2.0**-10]},
        {"id": None, "method": "mining.notify", "params": [*NOTIFY_PARAMS[:8], False]},
    )
    assert difficulty(sent(low)) == 2.0**-10 and difficulty(sent(high)) == 2.0**-10


def test_version_bits_are_what_the_asic_asked_for_and_the_pool_granted() -> None:
    h = Harness()
    asic = h.asic(f"infinite.{HOTKEYS[0]}.rig0", configure="ffffffff")
    assert sent(asic)[0]["result"] == {"version-rolling": True, "version-rolling.mask": "1fffe000"}
    upstream = h.wanted()
    h.connect(upstream, mask="00ffe000")  # the pool grants less than assumed: the ASIC is told
    assert {"id": None, "method": "mining.set_version_mask", "params": ["00ffe000"]} in sent(asic)
    assert asic.version_mask == 0x00FFE000


def rolling_asic(h: Harness, worker: str) -> tuple[FarmASIC, FarmUpstream, Notify]:
    """An ASIC rolling version bits (mask 1fffe000) on a connected pool, and the job it was sent."""
    asic = h.asic(worker, configure="1fffe000")
    upstream = h.wanted()
    h.connect(upstream)
    return asic, upstream, last_notify(sent(asic))


def test_share_rows_carry_the_submitted_numbers_whether_the_share_hashed_or_not() -> None:
    """ntime, nonce and version bits as numbers: read off the hashed share, or (a stale share, never
    hashed) off what was submitted; an upper-case extranonce2 is ledgered in lower case."""
    h = Harness()
    worker = f"infinite.{HOTKEYS[0]}.rig0"
    asic, upstream, notify = rolling_asic(h, worker)
    share = submit_as(worker, mine(asic, notify, en2=0xAB))
    params = share["params"]
    params[2] = params[2].upper()
    h.miner(asic, {**share, "params": [*params, "00002000"]})
    h.miner(asic, {"id": 9, "method": "mining.submit", "params": [worker, "gone", "00" * 4, "6600000a", "0000beef"]})
    (forwarded,) = [msgspec.json.decode(line) for line in upstream.to_pool]
    h.pool(upstream, {"id": forwarded["id"], "result": True, "error": None})
    stale, accepted = sorted((r for r in h.rows if isinstance(r, ShareRow)), key=lambda r: r.accepted)
    assert (stale.reject_reason, stale.hash, stale.ntime, stale.nonce, stale.version_bits) == (
        "stale",
        "",
        0x6600000A,
        0xBEEF,
        None,
    )
    assert accepted.accepted == 1 and accepted.hash and accepted.extranonce2.startswith(params[2].lower())
    assert (accepted.ntime, accepted.nonce, accepted.version_bits) == (int(params[3], 16), int(params[4], 16), 0x2000)
    report = audit_rows([accepted], {r.job_key: r for r in h.rows if isinstance(r, JobRow)})
    assert report.checked == 1 and report.clean, report.examples  # and the row re-hashes


def test_a_share_that_never_hashed_is_ledgered_with_only_what_is_8_hex_digits() -> None:
    """The hex rule of a share that hashes, for one that did not: a stale share's "-1", "0x1f",
    " 1f" or short field is ledgered as 0, never as a wrapped or padded number."""
    h = Harness()
    worker = f"infinite.{HOTKEYS[0]}.rig0"
    asic = h.asic(worker, configure="1fffe000")
    h.connect(h.wanted())
    fields = [("-1", "0x1f", "1f"), (" 1f", "0000001f ", "-0000001"), ("6600000a", "0000BEEF", "0x002000")]
    for n, (ntime, nonce, bits) in enumerate(fields):
        params = [worker, "gone", "00" * 4, ntime, nonce, bits]
        h.miner(asic, {"id": 10 + n, "method": "mining.submit", "params": params})
    stale = [r for r in h.rows if isinstance(r, ShareRow)]
    assert [r.reject_reason for r in stale] == ["stale"] * 3
    assert [(r.ntime, r.nonce, r.version_bits) for r in stale] == [(0, 0, 0), (0, 0, 0), (0x6600000A, 0xBEEF, 0)]


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 10_000)), min_size=1, max_size=300), st.integers(1, 2))
def test_prefixes_never_collide(operations: list[tuple[bool, int]], size: int) -> None:
    allocator = PrefixAllocator(size)
    live: list[str] = []
    for allocate, pick in operations:
        if allocate or not live:
            prefix = allocator.allocate()
            if prefix is None:
                assert len(live) == allocator.capacity
                continue
            assert prefix not in live and len(prefix) == 2 * size
            live.append(prefix)
        else:
            allocator.release(live.pop(pick % len(live)))
        assert len(allocator) == len(live)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 1000)), min_size=1, max_size=60))
def test_asics_on_one_upstream_mine_disjoint_extranonce_spaces(operations: list[tuple[bool, int]]) -> None:
    h = Harness(per_upstream=4)
    live: list[FarmASIC] = []
    for n, (join, pick) in enumerate(operations):
        if join or not live:
            live.append(h.asic(f"infinite.{HOTKEYS[n % 2]}.rig{n}"))
        else:
            h.hub.asic_gone(live.pop(pick % len(live)))
        for upstream in h.hub.upstreams():
            prefixes = [a.prefix for a in upstream.asics]
            assert len(prefixes) == len(set(prefixes)) and len(upstream.asics) <= 4
        assert len({a.prefix for a in live}) == len(live)


def test_prefix_size_leaves_room_for_twice_the_sessions() -> None:
    assert [prefix_bytes_for(n) for n in (1, 128, 129, 10_000, 40_000)] == [1, 1, 2, 2, 3]


def test_the_mode_and_the_slot_size_are_options() -> None:
    from proxy.config import ConfigError, load_config

    config = load_config(["--mode", "aggregate", "--farm-asics-per-upstream", "8"], {})
    assert (config.mode, config.farm_asics_per_upstream) == ("aggregate", 8)
    assert load_config([], {"IH_MODE": "aggregate"}).mode == "aggregate"
    assert load_config([], {}).mode == "passthrough"
    for bad in (["--mode", "farm"], ["--farm-asics-per-upstream", "0"]):
        try:
            load_config(bad, {})
        except ConfigError:
            continue
        raise AssertionError(f"{bad} was accepted")


def test_a_job_resent_on_a_block_the_farm_moved_on_from_is_never_relayed_and_never_credited_again() -> None:
    """The pool sends block A's job, two newer blocks, then A's job again: the share credited on A
    cannot be credited a second time (its forwarded-hash memory went with the block)."""
    h = Harness()
    worker = f"infinite.{HOTKEYS[0]}.rig0"
    asic = h.asic(worker)
    upstream = h.wanted()
    h.connect(upstream)
    first = last_notify(sent(asic))
    share = submit_as(worker, mine(asic, first))
    h.miner(asic, share)
    (forwarded,) = [msgspec.json.decode(line) for line in upstream.to_pool]
    upstream.to_pool.clear()
    h.pool(upstream, {"id": forwarded["id"], "result": True, "error": None})
    assert sent(asic)[-1] == {"id": share["id"], "result": True, "error": None}
    for block in ("bb", "cc"):
        h.pool(upstream, {"id": None, "method": "mining.notify", "params": [block, block * 32, *NOTIFY_PARAMS[2:]]})
    sent(asic)
    h.pool(upstream, {"id": None, "method": "mining.notify", "params": NOTIFY_PARAMS})  # block A again
    assert not [m for m in sent(asic) if m.get("method") == "mining.notify"]  # the ASIC keeps block cc's work
    h.miner(asic, {**share, "id": 77})  # the old share under the old job id: stale, never forwarded
    assert sent(asic)[-1]["error"][0] == 21 and not upstream.to_pool
    credited = [r for r in h.rows if isinstance(r, ShareRow) and r.accepted]
    assert len(credited) == 1


def test_forwarded_memory_keeps_two_blocks_and_refuses_the_retired_ones_within_bounds() -> None:
    forwarded = Forwarded()
    assert forwarded.take_block("a") == (True, None)
    assert forwarded.take_block("b") == (True, None)
    assert forwarded.take_block("a") == (True, None)  # live: taken again
    assert forwarded.take_block("c") == (True, "a")
    assert forwarded.take_block("a") == (False, None)  # retired: refused
    assert forwarded.by_block.get("a") is None and forwarded.by_block.get("c") == {}
    for height in range(Forwarded.retired + 5):
        forwarded.take_block(f"h{height}")
    assert len(forwarded.by_block) == Forwarded.keep
    assert len(forwarded._retired) == Forwarded.retired  # bounded: the oldest names are forgotten
    assert forwarded.take_block("a")[0]  # forgotten after `retired` blocks: a new block again


def test_an_asic_authorizes_at_most_max_workers_and_is_refused_more_with_error_24() -> None:
    h = Harness(limits=Limits(max_workers=2))
    asic = h.asic(f"infinite.{HOTKEYS[0]}.rig0")
    h.connect(h.wanted())
    h.miner(asic, {"id": 5, "method": "mining.authorize", "params": [f"infinite.{HOTKEYS[0]}.rig1", "x"]})
    h.miner(asic, {"id": 6, "method": "mining.authorize", "params": [f"infinite.{HOTKEYS[0]}.rig2", "x"]})
    h.miner(asic, {"id": 7, "method": "mining.authorize", "params": [f"infinite.{HOTKEYS[0]}.rig0", "x"]})
    answers = {m["id"]: m for m in sent(asic) if m.get("id") in (5, 6, 7)}
    assert answers[5]["result"] is True and answers[7]["result"] is True  # a worker it has: as before
    assert answers[6]["error"][0] == 24 and "at most 2 workers" in answers[6]["error"][1]
    assert {w.worker_id for w in asic.workers.values() if w is not None} == {"rig0", "rig1"}


def test_a_loop_of_requests_costs_as_in_passthrough_and_closes_the_asic_for_abuse() -> None:
    h = Harness()
    asic = h.asic(f"infinite.{HOTKEYS[0]}.rig0")
    h.connect(h.wanted())
    sent(asic)
    limits = h.ctx.limits
    flood = [{"id": 100 + i, "method": "mining.suggest_difficulty", "params": [1.0]} for i in range(1_000)]
    h.miner(asic, *flood)  # one read, all at once (at the same instant: nothing refills)
    answered = [m for m in sent(asic) if (m.get("id") or 0) >= 100]
    budget = int(limits.cost_soft_limit // limits.request_cost)  # 400 requests' worth, the handshake included
    assert budget - 10 <= len(answered) < budget
    assert answered[-1]["error"][1] == "rate limit exceeded"
    assert asic.close_reason == "request rate limit exceeded" and asic.misbehaved


def test_a_pool_mask_change_before_the_verdict_leaves_the_row_with_the_mask_the_share_was_rolled_under() -> None:
    """The ASIC's mask follows its pool's (mining.set_version_mask, a new pool) while a share is in
    flight: the row keeps the mask the share was checked under, so it still re-hashes."""
    h = Harness()
    worker = f"infinite.{HOTKEYS[0]}.rig0"
    asic, upstream, notify = rolling_asic(h, worker)
    share = submit_as(worker, mine(asic, notify, en2=0x11))
    h.miner(asic, {**share, "params": [*share["params"], "00002000"]})
    (forwarded,) = [msgspec.json.decode(line) for line in upstream.to_pool]
    h.pool(upstream, {"id": None, "method": "mining.set_version_mask", "params": ["00ffe000"]})
    assert asic.version_mask == 0x00FFE000
    h.pool(upstream, {"id": forwarded["id"], "result": True, "error": None})
    (row,) = [r for r in h.rows if isinstance(r, ShareRow)]
    assert (row.accepted, row.version_bits, row.version_mask) == (1, 0x2000, 0x1FFFE000)
    report = audit_rows([row], {r.job_key: r for r in h.rows if isinstance(r, JobRow)})
    assert report.checked == 1 and report.clean, report.examples
