"""Hostile miners and odd pools against the passthrough session and the farm hub, sans-I/O: any
sequence of lines, well-formed or not, on either side, must never raise and never earn credit the
pool did not give. Hypothesis writes the sequences; the invariants are the ledger's:

- a share row names a worker the pool authorized (passthrough) or that passed the worker-name rule
  (farm), under that worker's hotkey;
- accepted rows are never more than the pool's `true` answers to submits, never share a header hash,
  and each re-hashes (ledger.audit) to a difficulty at least its credit.
"""

from __future__ import annotations

import collections
from typing import Any

import msgspec
from hypothesis import HealthCheck, event, given, settings, target
from hypothesis import strategies as st

from ledger.audit import audit_rows
from ledger.rows import JobRow, Row, ShareRow
from ledger.workers import WorkerName
from proxy.config import Limits
from proxy.farm import FarmASIC, FarmContext, FarmHub, FarmUpstream
from proxy.metrics import ProxyMetrics
from proxy.session import Instant, MinerSession, SessionRules
from proxy.verdicts import VerdictSink
from simulation.hotkeys import hotkeys

HOTKEY, OTHER = hotkeys(2, namespace="session-fuzz")
WORKERS = [
    f"infinite.{HOTKEY}.rig1",
    f"{HOTKEY}.rig2",
    f"sn89auction.{OTHER}.farm",
    "sn89auction.check",
    f"infinite.{HOTKEY[:-1]}X.rig1",
    f"other.{HOTKEY}.rig1",
    f"infinite.{HOTKEY}.bad name",
    "",
    "é" * 300,
]
EN1 = "57a6f098"
TINY = 2.0**-30  # about one hash in four meets it
WALL = 1_700_000_000.0
JOB_IDS = ["j1", "j2", "gone", ""]


def notify_params(job_id: str, clean: bool, ntime: str = "64b3f3ec") -> list[Any]:
    return [
        job_id,
        "171592f223740e92d223f6e68bff25279af7ac4f2246451e0000000200000000",
        "02000000010000000000000000000000000000000000000000000000000000000000000000ffffffff1903c943",
        "ffffffff0100f2052a010000001976a914000000000000000000000000000000000000000088ac00000000",
        ["175335649d5e8746982969ec88f52e85ac9917106fba5468e699c8879ab974a1"] * 2,
        "27ffe000",  # bits inside every mask used: a row under the wrong mask would not re-hash
        "192495f8",
        ntime,
        clean,
    ]


# --- what a hostile or broken peer sends ---------------------------------------------------------

json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.sampled_from(["00000000", "ffffffff", "1fffe000", "0x1f", "-1", " 1f", "zz", EN1]),
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
request_id = st.one_of(
    st.integers(-5, 2**64),
    st.text(max_size=6),
    st.none(),
    st.floats(allow_nan=False),
    st.lists(st.integers(), max_size=2),
)
hex_field = st.one_of(
    st.integers(0, 2**32 - 1).map(lambda n: f"{n:08x}"),
    st.sampled_from(["", "-1", "0x1f", " 1f", "1f", "0000001f ", "ZZZZZZZZ", "000000001"]),
)
extranonce2 = st.one_of(
    st.integers(0, 2**32 - 1).map(lambda n: f"{n:08x}"), st.sampled_from(["", "00", "0" * 9, "gg" * 4])
)
ntime = st.sampled_from(["64b3f3ec", "64b3f3ed", "64b3f3eb", "ffffffff", "64B3F3EC"])
version_bits = st.one_of(st.none(), st.sampled_from(["00002000", "1fffe000", "e0000000", "0x002000", ""]))

wild_submit = st.builds(
    lambda worker, job, en2, nt, nonce, bits: submit_message(worker, job, en2, nt, nonce, bits),
    st.sampled_from(WORKERS),
    st.sampled_from(JOB_IDS),
    extranonce2,
    ntime,
    hex_field,
    version_bits,
)
honest_submit = st.builds(
    lambda worker, en2, nonce, bits: submit_message(worker, "j1", f"{en2:08x}", "64b3f3ec", f"{nonce:08x}", bits),
    st.sampled_from([WORKERS[0]] * 3 + [WORKERS[1]]),
    st.integers(0, 3),  # a few extranonce2 values, so duplicates happen
    st.integers(0, 63),
    st.sampled_from([None, "00002000"]),
)


def submit_message(
    worker: str, job: str, en2: str, nt: str, nonce: str, bits: str | None
) -> tuple[str, dict[str, Any]]:
    params = [worker, job, en2, nt, nonce] + ([] if bits is None else [bits])
    return ("miner", {"method": "mining.submit", "params": params})


miner_request = st.builds(
    lambda method, params: ("miner", {"method": method, "params": params}),
    st.sampled_from(
        [
            "mining.subscribe",
            "mining.authorize",
            "mining.configure",
            "mining.submit",
            "mining.extranonce.subscribe",
            "mining.suggest_difficulty",
            "mining.get_transactions",
            "",
        ]
    ),
    st.one_of(st.lists(json_value, max_size=6), json_value),
)
authorize = st.builds(
    lambda worker: ("miner", {"method": "mining.authorize", "params": [worker, "x"]}), st.sampled_from(WORKERS)
)
configure = st.builds(
    lambda mask: (
        "miner",
        {"method": "mining.configure", "params": [["version-rolling"], {"version-rolling.mask": mask}]},
    ),
    st.sampled_from(["ffffffff", "1fffe000", "00000000", "zz", 5]),
)
miner_raw = st.tuples(
    st.just("miner-raw"),
    st.one_of(
        st.binary(max_size=60),
        st.sampled_from([b"{", b"[]", b"null", b'{"id":1}', b"\xff\xfe", b'{"method":"mining.submit","params":null}']),
    ),
)

answer_shapes: list[Any] = [
    {"result": True, "error": None},
    {"result": False, "error": [23, "Low difficulty share", None]},
    {"result": None, "error": {"code": 21, "message": "Job not found"}},
    {"result": None, "error": "Stale"},
    {"result": True, "error": [21, "Stale", None]},
    {"result": "true"},
    {"result": 1, "error": None},
    {"result": [[["mining.notify", "x"]], EN1, 4], "error": None},
    {"result": [[["mining.notify", "x"]], "zz", 4], "error": None},
    {"result": [[], EN1, 99], "error": None},
    {"result": {"version-rolling": True, "version-rolling.mask": "1fffe000"}, "error": None},
    {"result": {"version-rolling": True, "version-rolling.mask": "ffffffff"}, "error": None},
]
pool_answer = st.tuples(st.just("answer"), st.integers(0, 3), st.sampled_from([answer_shapes[0]] * 6 + answer_shapes))
pool_notify = st.builds(
    lambda job, clean, nt: ("pool", {"id": None, "method": "mining.notify", "params": notify_params(job, clean, nt)}),
    st.sampled_from(JOB_IDS),
    st.booleans(),
    ntime,
)
pool_difficulty = st.builds(
    lambda d: ("pool", {"id": None, "method": "mining.set_difficulty", "params": [d]}),
    st.sampled_from([TINY, 2.0**-20, 0, -1, 1e300, "1", None, 2**70]),
)
pool_other = st.builds(
    lambda method, params: ("pool", {"id": None, "method": method, "params": params}),
    st.sampled_from(
        [
            "mining.set_extranonce",
            "mining.set_version_mask",
            "client.reconnect",
            "client.show_message",
            "mining.notify",
            "x",
        ]
    ),
    st.lists(json_value, max_size=4),
)
pool_mask = st.builds(  # a pool changing its grant, often with shares in flight
    lambda mask: ("pool", {"id": None, "method": "mining.set_version_mask", "params": [mask]}),
    st.sampled_from(["1fffe000", "00ffe000", "ffffffff", "00000000"]),
)
pool_raw = st.tuples(st.just("pool-raw"), st.binary(max_size=40))
tick = st.tuples(st.just("tick"), st.floats(0.0, 120.0))
pool_lost = st.just(("pool-lost",))


def expand(actions: list[Any]) -> list[Any]:
    """The actions, with each ("seq", steps) drawn as one spelled out in order."""
    return [step for action in actions for step in (action[1] if action[0] == "seq" else [action])]


def weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """One of the strategies, each drawn `weight` times as often as one of weight 1."""
    return st.sampled_from([s for weight, s in choices for _ in range(weight)]).flatmap(lambda s: s)


TRUE: dict[str, Any] = {"result": True, "error": None}
# A share, the pool's mask changing, then its verdict (a yes to the newest request): the row must keep
# the mask the share was rolled under.
mask_race = st.tuples(st.just("seq"), st.tuples(honest_submit, pool_mask, st.just(("answer", 99, TRUE))))

# Mostly honest work, so that sequences reach accepted shares, with every kind of odd line among it.
action = weighted(
    (12, honest_submit),
    (10, pool_answer),
    *((1, s) for s in (wild_submit, authorize, configure, miner_request, miner_raw, pool_notify)),
    (3, pool_mask),
    (2, mask_race),
    *((1, s) for s in (pool_difficulty, pool_other, pool_raw, tick, pool_lost)),
)


def handshake(authorize_answer: dict[str, Any] = TRUE) -> list[Any]:
    """A miner's opening, the pool answering each request in turn; its authorize answer as given."""
    return [
        (
            "miner",
            {"method": "mining.configure", "params": [["version-rolling"], {"version-rolling.mask": "ffffffff"}]},
        ),
        ("answer", 0, {"result": {"version-rolling": True, "version-rolling.mask": "1fffe000"}, "error": None}),
        ("miner", {"method": "mining.subscribe", "params": ["fuzz/1.0"]}),
        ("answer", 0, {"result": [[["mining.notify", "x"]], EN1, 4], "error": None}),
        ("miner", {"method": "mining.authorize", "params": [WORKERS[0], "x"]}),
        ("answer", 0, authorize_answer),
        ("pool", {"id": None, "method": "mining.set_difficulty", "params": [TINY]}),
        ("pool", {"id": None, "method": "mining.notify", "params": notify_params("j1", True)}),
    ]


class Ledger:
    """What the invariants need: the rows, and what the pool said yes to."""

    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.submits_true = 0
        self.authorized: set[str] = set()
        self.pool_difficulty = 1.0  # the highest the pool set (Stratum's default before any)

    def pool_sends(self, message: Any) -> bytes:
        if isinstance(message, dict) and message.get("method") == "mining.set_difficulty":
            value = (message.get("params") or [None])[0]
            if type(value) in (int, float) and value > 0:
                self.pool_difficulty = max(self.pool_difficulty, float(value))
        return msgspec.json.encode(message) + b"\n"

    def shares(self) -> list[ShareRow]:
        return [r for r in self.rows if isinstance(r, ShareRow)]

    def check(self, worker_allowed: set[str]) -> None:
        shares = self.shares()
        for row in shares:
            assert row.worker in worker_allowed, row
            assert row.hotkey in (HOTKEY, OTHER) and row.worker.split(".")[1] == row.hotkey, row
        accepted = [r for r in shares if r.accepted]
        assert len(accepted) <= self.submits_true
        assert len({r.hash for r in accepted}) == len(accepted)
        jobs = {r.job_key: r for r in self.rows if isinstance(r, JobRow)}
        report = audit_rows(accepted, jobs)
        assert report.checked == len(accepted) and report.clean, report.examples
        assert all(r.share_difficulty >= r.difficulty > 0 for r in accepted)
        assert all(r.difficulty <= self.pool_difficulty for r in accepted)  # never above the pool's


class Replies:
    """Every answer a miner gets is to a request it made, at most once per request: a repeated id
    (cpuminer-style) is as many requests, and no id is invented or answered twice."""

    def __init__(self) -> None:
        self.asked: collections.Counter[bytes] = collections.Counter()
        self.answered: collections.Counter[bytes] = collections.Counter()

    def request(self, line: bytes) -> None:
        """What the miner sent; each line that is a JSON object with an id may be answered by it."""
        for part in line.splitlines():
            try:
                message = msgspec.json.decode(part)
            except msgspec.DecodeError:
                continue
            if isinstance(message, dict):
                self.asked[msgspec.json.encode(message.get("id"))] += 1

    def to_miner(self, lines: list[bytes]) -> None:
        for line in lines:
            message = msgspec.json.decode(line)
            assert isinstance(message, dict), message
            if "method" in message or message.get("id") is None:
                continue  # a notification, or the answer to a line with no usable id
            key = msgspec.json.encode(message["id"])
            self.answered[key] += 1
            assert self.answered[key] <= self.asked[key], (message, self.asked)


def coverage(shares: list[ShareRow]) -> str:
    """How deep a sequence went, for --hypothesis-show-statistics."""
    accepted = sum(r.accepted for r in shares)
    rows = f"{len(shares)}" if len(shares) < 5 else "5+"
    return f"share rows: {rows}, accepted: {accepted if accepted < 3 else '3+'}"


def with_ids(message: dict[str, Any], next_id: int) -> bytes:
    return msgspec.json.encode({"id": next_id, **message}) + b"\n"


def pool_reply(pending: list[dict[str, Any]], index: int, shape: dict[str, Any], ledger: Ledger) -> bytes | None:
    """The pool's answer to one of the requests it has not answered yet, in the shape given."""
    if not pending:
        return None
    request = pending.pop(min(index, len(pending) - 1))
    if shape.get("result") is True:
        if request.get("method") == "mining.submit":
            ledger.submits_true += 1
        elif request.get("method") == "mining.authorize" and request.get("params"):
            ledger.authorized.add(request["params"][0])
    return msgspec.json.encode({"id": request.get("id"), **shape}) + b"\n"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from([True, True, True, False]),
    st.sampled_from([answer_shapes[0]] * 4 + answer_shapes[1:7]),
    st.lists(action, min_size=10, max_size=60),
    st.lists(request_id, min_size=1, max_size=4),
)
def test_no_passthrough_sequence_raises_or_credits_what_the_pool_did_not(
    with_handshake: bool, authorize_answer: dict[str, Any], actions: list[Any], ids: list[Any]
) -> None:
    """The handshake, when there is one, is a miner's; the pool's answer to its authorize is drawn
    (a refusal, in any of the shapes pools use, leaves the worker unable to ledger a share)."""
    ledger = Ledger()
    sink = VerdictSink("fuzz", ledger.rows.append, ProxyMetrics())
    rules = SessionRules(("infinite", "sn89auction"), Limits())
    mono = 1000.0
    session = MinerSession(rules, "s1", "pool:3333", Instant(mono, WALL + mono))
    pending: list[dict[str, Any]] = []
    replies = Replies()
    opening = handshake(authorize_answer) if with_handshake else []
    steps = opening + expand(actions)
    for n, step in enumerate(steps):
        handshake_done = n >= len(opening)
        now = Instant(mono, WALL + mono)
        kind = step[0]
        if kind == "miner":
            message = step[1]
            rid = ids[n % len(ids)] if handshake_done and n % 3 == 0 else n + 1  # cpuminer-style repeated ids, odd ones
            request = with_ids(message, rid)
            replies.request(request)
            session.receive_miner(request, now)
        elif kind == "miner-raw":
            replies.request(step[1])
            session.receive_miner(step[1] + b"\n", now)
        elif kind == "answer":
            answer = pool_reply(pending, step[1], step[2], ledger)
            if answer is not None:
                session.receive_pool(answer, now)
        elif kind == "pool":
            session.receive_pool(ledger.pool_sends(step[1]), now)
        elif kind == "pool-raw":
            session.receive_pool(step[1] + b"\n", now)
        elif kind == "tick":
            mono += step[1]
            session.tick(Instant(mono, WALL + mono))
        elif kind == "pool-lost":
            session.pool_lost("pool connection lost: fuzz", now)
        outbox = session.outbox
        sink.take(outbox)
        for line in outbox.to_pool:
            sent = msgspec.json.decode(line)
            assert isinstance(sent, dict) and "id" in sent and "method" in sent, sent
            pending.append(sent)
        outbox.to_pool.clear()
        replies.to_miner(outbox.to_miner)
        outbox.to_miner.clear()
        if session.close_reason is not None:
            break
    shares = ledger.shares()
    event(coverage(shares))
    target(float(sum(r.accepted for r in shares)))
    ledger.check(ledger.authorized)


# --- farm mode: two ASICs, the hub's upstream slots, a pool per slot -----------------------------

EASY = 2.0**-33  # every hash meets it

asic_submit = st.builds(
    lambda asic, worker, job, en2, nonce, bits: ("asic-submit", asic, worker, job, en2, nonce, bits),
    st.integers(0, 1),
    st.sampled_from([-1, -1, -1, -1, 0, 1, 2, 4]),  # an index into WORKERS; -1: the one it authorized
    st.sampled_from(["latest"] * 6 + ["first", "gone"]),
    st.integers(0, 1),
    st.integers(0, 7),  # few nonces, so the same share comes twice
    st.sampled_from([None] * 6 + ["00002000", "e0000000", "0x002000"]),
)
asic_line = st.builds(
    lambda asic, step: ("asic", asic, step[1]),
    st.integers(0, 1),
    st.one_of(wild_submit, authorize, configure, miner_request),
)
asic_raw = st.builds(lambda asic, raw: ("asic-raw", asic, raw), st.integers(0, 1), miner_raw.map(lambda step: step[1]))
farm_answer = st.builds(
    lambda slot, index, shape: ("farm-answer", slot, index, shape),
    st.integers(0, 2),
    st.integers(0, 3),
    pool_answer.map(lambda step: step[2]),
)
farm_pool = st.builds(
    lambda slot, step: ("farm-pool", slot, step[1]),
    st.integers(0, 2),
    st.one_of(pool_mask, pool_notify, pool_difficulty, pool_other, pool_raw.map(lambda step: ("raw", step[1]))),
)
farm_mask_race = st.tuples(  # as mask_race, on the first upstream slot
    st.just("seq"),
    st.tuples(
        asic_submit,
        pool_mask.map(lambda step: ("farm-pool", 0, step[1])),
        st.just(("farm-answer", 0, 99, TRUE)),
    ),
)
farm_action = weighted(
    (12, asic_submit),
    (10, farm_answer),
    (3, farm_pool),
    (2, farm_mask_race),
    *((1, s) for s in (asic_line, asic_raw, st.just(("connect",)), tick)),
    (1, st.builds(lambda slot: ("farm-lost", slot), st.integers(0, 2))),
    (1, st.builds(lambda asic: ("asic-gone", asic), st.integers(0, 1))),
)


class FarmDriver:
    """What proxy/farm_net.py does around the hub, minus sockets: drains what it produced, connects
    the slots it asks for, and plays their pool."""

    def __init__(self, ledger: Ledger, per_upstream: int) -> None:
        self.ledger = ledger
        context = FarmContext(
            SessionRules(("infinite", "sn89auction"), Limits()), VerdictSink("fuzz", ledger.rows.append, ProxyMetrics())
        )
        self.hub = FarmHub(context, per_upstream)
        self.now = 1.0
        self.asics = [self.hub.new_asic(f"s{n}", self.now) for n in range(2)]
        self.jobs: dict[FarmASIC, list[tuple[str, str]]] = {asic: [] for asic in self.asics}  # (job id, ntime) sent
        self.replies = {asic: Replies() for asic in self.asics}
        self.difficulty: dict[FarmASIC, float] = {}  # the last set_difficulty each ASIC was sent
        self.wanted: list[FarmUpstream] = []
        self.slots: list[FarmUpstream] = []  # slots with a live pool connection
        self.pending: dict[FarmUpstream, list[dict[str, Any]]] = {}

    def drain(self) -> None:
        hub = self.hub
        dirty, hub.dirty_asics = hub.dirty_asics, set()
        for asic in dirty:
            self.replies[asic].to_miner(asic.to_miner)
            for line in asic.to_miner:
                message = msgspec.json.decode(line)
                method = message.get("method") if isinstance(message, dict) else None
                if method == "mining.set_difficulty":
                    self.difficulty[asic] = message["params"][0]
                elif method == "mining.notify":
                    self.jobs[asic].append((message["params"][0], message["params"][7]))
                    # A job is mined at the difficulty last set: never below the pool's (farm rule).
                    upstream = asic.upstream
                    assert upstream is not None and self.difficulty.get(asic, 1.0) >= upstream.difficulty, (
                        self.difficulty.get(asic),
                        upstream and upstream.difficulty,
                    )
            asic.to_miner.clear()
            if asic.close_reason is not None and not asic.gone:
                hub.asic_gone(asic)  # as farm_net does when it closes the link (sets asic.gone)
        upstreams, hub.dirty_upstreams = hub.dirty_upstreams, set()
        for upstream in upstreams:
            for line in upstream.to_pool:
                sent = msgspec.json.decode(line)
                assert isinstance(sent, dict) and "id" in sent and "method" in sent, sent
                self.pending.setdefault(upstream, []).append(sent)
            upstream.to_pool.clear()
        hub.pool_faults.clear()
        retired, hub.closed_upstreams = hub.closed_upstreams, []
        for upstream in retired:
            if upstream in self.slots:
                self.slots.remove(upstream)
        self.wanted += hub.want_connection
        hub.want_connection.clear()

    def asic_live(self, index: int) -> FarmASIC | None:
        asic = self.asics[index]
        return None if asic.gone else asic

    def step(self, step: Any) -> None:
        kind, hub, now = step[0], self.hub, self.now
        if kind == "asic":
            self.miner(step[1], step[2])
        elif kind == "asic-raw":
            asic = self.asic_live(step[1])
            if asic is not None:
                self.send(asic, step[2] + b"\n")
        elif kind == "asic-submit":
            self.submit(*step[1:])
        elif kind == "connect" and self.wanted:
            upstream = self.wanted.pop(0)
            self.pending[upstream] = []
            hub.pool_connected(upstream, f"pool-{upstream.index}:3333", now)
            if upstream not in self.slots:
                self.slots.append(upstream)
        elif kind == "farm-answer":
            self.answer(step[1], step[2], step[3])
        elif kind == "farm-pool" and self.slots:
            upstream, message = self.slots[step[1] % len(self.slots)], step[2]
            line = message[1] + b"\n" if isinstance(message, tuple) else self.ledger.pool_sends(message)
            hub.pool_data(upstream, line, now)
        elif kind == "farm-lost" and self.slots:
            upstream = self.slots.pop(step[1] % len(self.slots))
            hub.pool_lost(upstream, "fuzz")
        elif kind == "tick":
            self.now += step[1]
            hub.expire_upstreams(self.now)
            hub.expire_asics(list(hub.asics), self.now)
        elif kind == "asic-gone":
            asic = self.asic_live(step[1])
            if asic is not None:
                hub.asic_gone(asic)
        self.drain()

    def miner(self, index: int, message: dict[str, Any]) -> None:
        asic = self.asic_live(index)
        if asic is not None:
            self.send(asic, with_ids(message, 7))

    def send(self, asic: FarmASIC, line: bytes) -> None:
        self.replies[asic].request(line)
        self.hub.miner_data(asic, line, self.now)

    def submit(self, index: int, worker: int, job: str, en2: int, nonce: int, bits: str | None) -> None:
        asic = self.asic_live(index)
        if asic is None:
            return
        sent = self.jobs[asic]
        job_id, ntime = (sent[-1] if job == "latest" else sent[0]) if sent and job != "gone" else ("gone", "66000000")
        size = max(asic.extranonce2_size, 1)
        en2_hex = (en2 % 256**size).to_bytes(size, "big").hex()
        name = WORKERS[worker] if worker >= 0 else FARM_WORKERS[index]
        self.send(asic, with_ids(submit_message(name, job_id, en2_hex, ntime, f"{nonce:08x}", bits)[1], 9))

    def answer(self, slot: int, index: int, shape: dict[str, Any]) -> None:
        if not self.slots:
            return
        upstream = self.slots[slot % len(self.slots)]
        line = pool_reply(self.pending.get(upstream, []), index, shape, self.ledger)
        if line is not None:
            self.hub.pool_data(upstream, line, self.now)


FARM_WORKERS = (WORKERS[0], WORKERS[2])  # what the two ASICs authorize in the handshake
FARM_HANDSHAKE: list[Any] = [
    ("asic", 0, {"method": "mining.configure", "params": [["version-rolling"], {"version-rolling.mask": "1fffe000"}]}),
    ("asic", 0, {"method": "mining.subscribe", "params": ["fuzz/1.0"]}),
    ("asic", 0, {"method": "mining.authorize", "params": [FARM_WORKERS[0], "x"]}),
    ("asic", 1, {"method": "mining.subscribe", "params": ["fuzz/1.0"]}),
    ("asic", 1, {"method": "mining.authorize", "params": [FARM_WORKERS[1], "x"]}),
    ("connect",),
    ("connect",),
    *[("farm-answer", 0, 0, {"result": {"version-rolling": True, "version-rolling.mask": "1fffe000"}, "error": None})],
    ("farm-answer", 0, 0, {"result": [[["mining.notify", "x"]], "a1b2c3d4", 8], "error": None}),
    ("farm-answer", 0, 0, {"result": True, "error": None}),
    ("farm-pool", 0, {"id": None, "method": "mining.set_difficulty", "params": [EASY]}),
    ("farm-pool", 0, {"id": None, "method": "mining.notify", "params": notify_params("j1", True, "66000000")}),
    ("farm-answer", 1, 0, {"result": {"version-rolling": True, "version-rolling.mask": "1fffe000"}, "error": None}),
    ("farm-answer", 1, 0, {"result": [[["mining.notify", "x"]], "b1b2c3d4", 8], "error": None}),
    ("farm-answer", 1, 0, {"result": True, "error": None}),
    ("farm-pool", 1, {"id": None, "method": "mining.set_difficulty", "params": [TINY]}),
    ("farm-pool", 1, {"id": None, "method": "mining.notify", "params": notify_params("j1", True, "66000000")}),
]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from([True, True, True, False]),
    st.lists(farm_action, min_size=10, max_size=60),
    st.sampled_from([1, 2, 256]),
)
def test_no_farm_sequence_raises_or_credits_what_the_pool_did_not(
    with_handshake: bool, actions: list[Any], per_upstream: int
) -> None:
    """Also: every answer an ASIC gets is to a request it made, at most once per request."""
    ledger = Ledger()
    driver = FarmDriver(ledger, per_upstream)
    steps = ([*FARM_HANDSHAKE] if with_handshake else []) + expand(actions)
    for step in steps:
        driver.step(step)
    shares = ledger.shares()
    event(coverage(shares))
    target(float(sum(r.accepted for r in shares)))
    named = set()
    for row in shares:
        name = WorkerName.parse(row.worker, ("infinite", "sn89auction"))  # raises for a name the rule refuses
        named.add(row.worker)
        assert name.hotkey == row.hotkey
    ledger.check(named)
