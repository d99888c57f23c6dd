"""The chain side: weight submission (commit-reveal on/off, failures, retries), the ``--loop`` mode, and the
real ``BittensorChain`` driving the bittensor 11 SDK.

The Bittensor chain cannot exist here. Two stand-ins, each behind an interface the real code uses:

* ``FakeChain`` implements ``scorer.chain.Chain`` (what the scorer needs from a chain);
* ``FakeSubstrate`` implements the SDK's own chain-access seam (``bittensor.Substrate``: storage reads,
  runtime calls, compose, submit), so ``BittensorChain`` runs through the real SDK code — metagraph
  decoding, SetWeights/CommitWeights preflight, u16 quantisation, timelock encryption, signing
  with a real wallet hotkey — and only the RPC socket is fake.

Time never passes for real: sleeps are recorded and advance the fake chain's block.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import pytest
from aiohttp import web

from scorer.chain import (
    BittensorChain,
    ChainUnavailable,
    MetagraphView,
    Retry,
    SubmitResult,
    submit_weights,
    with_retries,
)
from scorer.cli import Scorer
from scorer.config import load_settings
from scorer.sources import ProxyApiSource

if TYPE_CHECKING:
    import bittensor

ALICE = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY"
BOB = "5FHneW46xGXgs5mUiveU4sbTyGBzmstUspZC92UhjJM694ty"
OWNER = "5DAAnrj7VHTznn2AWBemMuyBwZWs6FNFjdyVXUeYum3PTXFy"
CAROL = "5FLSigC9HGRKVhB9FiEo4Y3koPsNmBmLJbpXg2mp1hXcS59Y"
COLDKEY = "5C4hrfjw9DjXZTzV3MwzrrAr9P1MJhSrvWGWqi1eSuyUpnhM"
BLOCK_SECONDS = 12.0


@dataclass
class Sent:
    """One weight submission the fake chain received."""

    mode: str
    mechid: int
    uids: list[int]
    weights: list[float]
    block: int


@dataclass
class FakeChain:
    """``scorer.chain.Chain`` in memory. ``outcomes`` scripts the next weight submissions.

    Like subtensor it keeps, per mechanism, the block our hotkey last set weights (``last_update``)
    and refuses a set inside the rate limit; such refusals are recorded in ``too_early``.
    """

    uids: dict[int, str]
    owner: str | None = None
    commit_reveal: bool = False
    tempo_blocks: int = 10
    block: int = 100
    mechanisms: int = 1
    rate_limit: int = 0
    last_update: dict[int, int] = field(default_factory=dict)
    outcomes: list[SubmitResult | Exception] = field(default_factory=list)
    metagraph_errors: int = 0
    submitted: list[Sent] = field(default_factory=list)
    too_early: list[Sent] = field(default_factory=list)
    closed: bool = False

    async def metagraph(self, netuid: int) -> MetagraphView:
        if self.metagraph_errors:
            self.metagraph_errors -= 1
            raise ConnectionError("endpoint went away")
        return MetagraphView(dict(self.uids), self.owner, self.block)

    async def current_block(self) -> int:
        return self.block

    async def tempo(self, netuid: int) -> int:
        return self.tempo_blocks

    async def mechanism_count(self, netuid: int) -> int:
        return self.mechanisms

    async def weights_rate_limit(self, netuid: int) -> int:
        return self.rate_limit

    async def last_weights_block(self, netuid: int, mechid: int) -> int | None:
        return self.last_update.get(mechid)

    async def set_weights(self, netuid: int, mechid: int, uids: list[int], weights: list[float]) -> SubmitResult:
        assert 0 <= mechid < self.mechanisms, "MechanismDoesNotExist"
        sent = Sent("commit" if self.commit_reveal else "set", mechid, uids, weights, self.block)
        self.submitted.append(sent)
        last = self.last_update.get(mechid)
        if self.rate_limit and last is not None and self.block - last < self.rate_limit:
            self.too_early.append(sent)
            return SubmitResult(False, "SettingWeightsTooFast")
        outcome = self.outcomes.pop(0) if self.outcomes else SubmitResult(True, "in block")
        if isinstance(outcome, Exception):
            raise outcome
        if outcome.ok:
            self.last_update[mechid] = self.block
            outcome = SubmitResult(outcome.ok, outcome.message, outcome.data, self.commit_reveal)
        return outcome

    async def close(self) -> None:
        self.closed = True


class FakeTime:
    """Records sleeps; each one moves the fake chain forward by whole blocks."""

    def __init__(self, chain: FakeChain | None = None) -> None:
        self.chain = chain
        self.sleeps: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        if self.chain is not None:
            self.chain.block += int(seconds // BLOCK_SECONDS)


RETRY = Retry(attempts=3, base_delay=2.0)
WEIGHTS = {0: 0.0, 1: 0.25, 2: 0.75}


@pytest.mark.parametrize(("commit_reveal", "mode", "mechid"), [(False, "set", 0), (True, "commit", 1)])
def test_submit_reports_the_path_the_sdk_took(commit_reveal: bool, mode: str, mechid: int) -> None:
    chain = FakeChain({0: OWNER, 1: ALICE, 2: BOB}, commit_reveal=commit_reveal, mechanisms=2)
    clock = FakeTime()
    result = asyncio.run(submit_weights(chain, 89, WEIGHTS, RETRY, clock.sleep, mechid=mechid))
    assert (result.ok, result.mode, result.attempts, result.mechid) == (True, mode, 1, mechid)
    assert chain.submitted == [Sent(mode, mechid, [1, 2], [0.25, 0.75], 100)], "zeros are not sent"
    assert clock.sleeps == []


@pytest.mark.parametrize(
    ("outcomes", "ok", "attempts", "sleeps", "message"),
    [
        (
            [SubmitResult(False, "SettingWeightsTooFast"), SubmitResult(True, "in block 7")],
            True,
            2,
            [2.0],
            "in block 7",
        ),
        ([ConnectionError("reset"), TimeoutError("slow"), SubmitResult(True, "ok")], True, 3, [2.0, 4.0], "ok"),
        ([SubmitResult(False, "NotEnoughStakeToSetWeights")] * 3, False, 3, [2.0, 4.0], "NotEnoughStakeToSetWeights"),
        ([ConnectionError("reset")] * 3, False, 3, [2.0, 4.0], "ConnectionError: reset"),
        ([SubmitResult(False, "")] * 3, False, 3, [2.0, 4.0], "without a reason"),
    ],
)
def test_submit_retries_with_backoff_and_reports_the_reason(
    outcomes: list[SubmitResult | Exception], ok: bool, attempts: int, sleeps: list[float], message: str
) -> None:
    for commit_reveal in (False, True):
        chain = FakeChain({0: OWNER, 1: ALICE, 2: BOB}, commit_reveal=commit_reveal, outcomes=list(outcomes))
        clock = FakeTime()
        result = asyncio.run(submit_weights(chain, 89, WEIGHTS, RETRY, clock.sleep))
        assert (result.ok, result.attempts, clock.sleeps) == (ok, attempts, sleeps)
        assert message in result.message
        assert len(chain.submitted) == attempts


def test_submit_nothing_when_every_weight_is_zero() -> None:
    chain = FakeChain({0: OWNER})
    result = asyncio.run(submit_weights(chain, 89, {0: 0.0, 1: 0.0}, RETRY, FakeTime().sleep))
    assert not result.ok and result.attempts == 0 and chain.submitted == []


def test_submit_redacts_secrets_in_the_reason() -> None:
    chain = FakeChain({0: OWNER}, outcomes=[RuntimeError("bad key sekrit-1")] * 3)
    result = asyncio.run(
        submit_weights(chain, 89, {0: 1.0}, RETRY, FakeTime().sleep, lambda s: s.replace("sekrit-1", "***"))
    )
    assert "sekrit-1" not in result.message and "***" in result.message


def test_with_retries_gives_up_with_the_last_error() -> None:
    calls = 0

    async def flaky() -> int:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionError(f"try {calls}")
        return 42

    clock = FakeTime()
    assert asyncio.run(with_retries("x", flaky, RETRY, clock.sleep, str)) == 42
    assert clock.sleeps == [2.0, 4.0]

    async def down() -> int:
        raise ConnectionError("still down")

    with pytest.raises(ChainUnavailable, match="still down"):
        asyncio.run(with_retries("reading", down, Retry(attempts=2, base_delay=1.0, max_delay=1.0), clock.sleep, str))
    assert Retry(base_delay=2, max_delay=5).delay(10) == 5


# -- the scorer with a chain --------------------------------------------------------------------


class Workers:
    """A proxy's ``/api/v1/workers`` on 127.0.0.1, the cheapest real hashrate source."""

    def __init__(self, workers: list[dict[str, Any]]) -> None:
        self.workers = workers
        self.status = 200
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        if self.status != 200:
            return web.Response(status=self.status)
        return web.json_response({"workers": self.workers})

    async def __aenter__(self) -> Workers:
        app = web.Application()
        app.router.add_get("/api/v1/workers", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


WORKERS = [
    {"worker_id": f"infinite.{ALICE}.a", "hashrate": 3e12},
    {"worker_id": f"infinite.{BOB}.b", "hashrate": 1e12},
]
NOW = datetime(2025, 5, 1, 12, 0, 30, tzinfo=UTC)


def make_scorer(url: str, chain: Any, clock: FakeTime, *extra: str) -> Scorer:
    settings = load_settings(["--proxy-api", url, "--json", "--retries", "2", *extra], environ={})
    return Scorer(settings, ProxyApiSource(url), chain, sleep=clock.sleep, clock=lambda: NOW)


def test_one_pass_burns_to_the_owner_uid_and_sets_weights() -> None:
    async def scenario() -> None:
        async with Workers(WORKERS) as proxy:
            chain = FakeChain({0: OWNER, 1: ALICE, 2: BOB}, owner=OWNER, commit_reveal=True)
            scorer = make_scorer(proxy.url, chain, FakeTime(chain), "--hashrate-share", "0.9")
            report = await scorer.run_pass()
            out = io.StringIO()
            scorer.print_report(report, out)
            doc = json.loads(out.getvalue().strip().splitlines()[-1])
            assert doc["burn_uid"] == 0
            assert doc["weights"] == {"0": pytest.approx(0.1), "1": pytest.approx(0.675), "2": pytest.approx(0.225)}
            assert doc["submitted"] == {"ok": True, "failed": []}
            assert doc["mechanism_count"] == 1
            assert doc["mechanisms"][0]["submitted"] == {
                "mechid": 0, "ok": True, "mode": "commit", "message": "in block", "attempts": 1,
            }  # fmt: skip
            assert chain.submitted[0].mode == "commit" and chain.submitted[0].uids == [0, 1, 2]

            # dry run: the metagraph is still read from the chain, weights are never touched
            chain.submitted.clear()
            dry = make_scorer(proxy.url, chain, FakeTime(chain), "--dry-run")
            dry_report = await dry.run_pass()
            assert [(m.mechid, m.rule, m.submission) for m in dry_report.mechanisms] == [(0, "hashrate", None)]
            assert chain.submitted == []

    asyncio.run(scenario())


@pytest.mark.parametrize("mechanisms", [1, 2])
def test_the_same_weights_on_every_mechanism(mechanisms: int) -> None:
    async def scenario() -> None:
        async with Workers(WORKERS) as proxy:
            chain = FakeChain({0: OWNER, 1: ALICE, 2: BOB}, owner=OWNER, mechanisms=mechanisms)
            report = await make_scorer(proxy.url, chain, FakeTime(chain), "--hashrate-share", "0.9").run_pass()
            assert report.mechanism_count == mechanisms
            assert [sent.mechid for sent in chain.submitted] == list(range(mechanisms)), "each mechanism once"
            vector = ([0, 1, 2], [pytest.approx(0.1), pytest.approx(0.675), pytest.approx(0.225)])
            assert all((sent.uids, sent.weights) == vector for sent in chain.submitted)
            assert [(m.mechid, m.rule, m.submission is not None and m.submission.ok) for m in report.mechanisms] == [
                (mechid, "hashrate", True) for mechid in range(mechanisms)
            ]
            assert not report.weights_not_set

    asyncio.run(scenario())


def test_skip_and_burn_mechanisms() -> None:
    async def scenario() -> None:
        async with Workers(WORKERS) as proxy:
            chain = FakeChain({0: OWNER, 1: ALICE, 2: BOB}, owner=OWNER, mechanisms=3)
            scorer = make_scorer(proxy.url, chain, FakeTime(chain), "--skip-mechanisms", "1", "--burn-mechanisms", "2")
            report = await scorer.run_pass()
            assert [(sent.mechid, sent.uids, sent.weights) for sent in chain.submitted] == [
                (0, [1, 2], [pytest.approx(0.75), pytest.approx(0.25)]),
                (2, [0], [1.0]),
            ]
            assert [m.rule for m in report.mechanisms] == ["hashrate", "skip", "burn"]

            # a burn mechanism without a burn uid is skipped, never given the hashrate vector
            chain.submitted.clear()
            chain.owner = None
            report = await scorer.run_pass()
            assert [sent.mechid for sent in chain.submitted] == [0]
            assert report.mechanisms[2].rule == "skip" and "without a burn uid" in report.mechanisms[2].note

    asyncio.run(scenario())


def test_burn_uid_is_read_again_each_pass() -> None:
    async def scenario() -> None:
        async with Workers(WORKERS) as proxy:
            chain = FakeChain({0: OWNER, 1: ALICE, 2: BOB, 3: CAROL}, owner=OWNER, mechanisms=2)
            scorer = make_scorer(proxy.url, chain, FakeTime(chain), "--hashrate-share", "0.5")
            first = await scorer.run_pass()
            chain.owner = CAROL  # the subnet changed hands between two passes
            second = await scorer.run_pass()
            assert (first.weights.burn_uid, second.weights.burn_uid) == (0, 3)
            sent = [(x.mechid, dict(zip(x.uids, x.weights, strict=True))) for x in chain.submitted]
            assert [mechid for mechid, _ in sent] == [0, 1, 0, 1]
            assert all(w[0] == pytest.approx(0.5) and 3 not in w for _, w in sent[:2]), "pass 1 burns to uid 0"
            assert all(w[3] == pytest.approx(0.5) and 0 not in w for _, w in sent[2:]), "pass 2 burns to uid 3"
            assert second.weights.weights[3] == pytest.approx(0.5) and second.weights.weights[0] == 0.0

    asyncio.run(scenario())


def test_the_rate_limit_is_waited_out_per_mechanism() -> None:
    async def scenario() -> None:
        async with Workers(WORKERS) as proxy:
            # block 100; rate limit 50; mechanism 0 set at block 95 (45 blocks to wait), mechanism 1 at 40
            chain = FakeChain({0: OWNER, 1: ALICE, 2: BOB}, owner=OWNER, mechanisms=2, rate_limit=50)
            chain.last_update = {0: 95, 1: 40}
            clock = FakeTime(chain)
            report = await make_scorer(proxy.url, chain, clock).run_pass()
            assert chain.too_early == []
            assert [(sent.mechid, sent.block) for sent in chain.submitted] == [(0, 145), (1, 145)]
            assert [m.waited_blocks for m in report.mechanisms] == [45, 0]
            assert clock.sleeps == [45 * BLOCK_SECONDS]

            # a long wait goes in bounded sleeps, each re-reading the chain
            chain.submitted.clear()
            chain.rate_limit = 200
            clock.sleeps.clear()
            report = await make_scorer(proxy.url, chain, clock).run_pass()
            assert chain.too_early == [] and [sent.block for sent in chain.submitted] == [345, 345]
            assert clock.sleeps == [600.0, 600.0, 600.0, 600.0], "200 blocks of 12 s, at most 600 s a sleep"
            assert report.mechanisms[0].waited_blocks == 200

    asyncio.run(scenario())


def test_a_stalled_chain_inside_the_rate_limit_sends_nothing() -> None:
    async def scenario() -> None:
        async with Workers(WORKERS) as proxy:
            chain = FakeChain({0: OWNER, 1: ALICE, 2: BOB}, owner=OWNER, rate_limit=100, last_update={0: 90})
            clock = FakeTime()  # sleeps never move this chain on: no block is produced
            report = await make_scorer(proxy.url, chain, clock).run_pass()
            assert chain.submitted == []
            (m,) = report.mechanisms
            assert m.submission is not None and not m.submission.ok and "rate limit" in m.submission.message
            assert report.weights_not_set
            assert len(clock.sleeps) == 5, "bounded: ceil(100 blocks × 12 s / 600 s) + 3 rounds"

    asyncio.run(scenario())


def test_dry_run_shows_every_mechanism() -> None:
    async def scenario() -> None:
        async with Workers(WORKERS) as proxy:
            chain = FakeChain({0: OWNER, 1: ALICE, 2: BOB}, owner=OWNER, mechanisms=3, rate_limit=10**6)
            chain.last_update = {0: 99}
            scorer = make_scorer(
                proxy.url, chain, FakeTime(chain), "--dry-run", "--hashrate-share", "0.9", "--skip-mechanisms", "2"
            )
            report = await scorer.run_pass()
            out = io.StringIO()
            scorer.print_report(report, out)
            text = out.getvalue()
            doc = json.loads(text.strip().splitlines()[-1])
            assert chain.submitted == [], "a dry run never sets weights, nor waits for the rate limit"
            assert doc["submitted"] is None and doc["mechanism_count"] == 3
            vector = {"0": pytest.approx(0.1), "1": pytest.approx(0.675), "2": pytest.approx(0.225)}
            assert [(m["mechid"], m["rule"], m["weights"], m["submitted"]) for m in doc["mechanisms"]] == [
                (0, "hashrate", vector, None),
                (1, "hashrate", vector, None),
                (2, "skip", {}, None),
            ]
            assert "mechanisms: 3  (dry run: nothing is set)" in text
            rows = [line.split() for line in text.splitlines() if line.startswith("  ") and line.split()[0].isdigit()]
            assert [row[:3] for row in rows] == [
                ["0", "hashrate", "would"],
                ["1", "hashrate", "would"],
                ["2", "skip", "skipped"],
            ]
            assert rows[0][4:] == ["0:0.1000", "1:0.6750", "2:0.2250"]

    asyncio.run(scenario())


def test_owner_without_uid_means_no_burn_uid() -> None:
    async def scenario() -> None:
        async with Workers(WORKERS) as proxy:
            chain = FakeChain({1: ALICE, 2: BOB}, owner=OWNER)
            report = await make_scorer(proxy.url, chain, FakeTime(chain), "--hashrate-share", "0.5").run_pass()
            assert report.weights.burn_uid is None
            assert report.weights.weights == {1: pytest.approx(0.75), 2: pytest.approx(0.25)}

    asyncio.run(scenario())


def test_loop_sets_weights_once_per_tempo_and_survives_failures() -> None:
    async def scenario() -> None:
        async with Workers(WORKERS) as proxy:
            chain = FakeChain(
                {0: OWNER, 1: ALICE, 2: BOB},
                owner=OWNER,
                tempo_blocks=10,
                outcomes=[SubmitResult(False, "SettingWeightsTooFast"), SubmitResult(False, "SettingWeightsTooFast")],
            )
            clock = FakeTime(chain)
            scorer = make_scorer(proxy.url, chain, clock, "--retry-delay", "1")
            out = io.StringIO()

            # pass 1: both attempts refused (logged, no crash); pass 2: set; pass 3: the metagraph
            # is unreadable (pass fails, loop goes on); pass 4: the source is down; pass 5: set again.
            original_run_pass = scorer.run_pass
            passes = 0

            async def run_pass(end: datetime | None = None) -> Any:
                nonlocal passes
                passes += 1
                if passes == 3:
                    chain.metagraph_errors = 2
                proxy.status = 500 if passes == 4 else 200
                return await original_run_pass(end)

            scorer.run_pass = run_pass  # type: ignore[method-assign]
            done = await scorer.run_loop(out, passes=5)
            assert done == 5
            blocks = [sent.block for sent in chain.submitted]
            # pass 1 at block 100 (two attempts, 1 s apart: no block passes), pass 2 one tempo later, …
            assert blocks == [100, 100, 110, 140]
            assert chain.block == 140
            lines = [json.loads(line) for line in out.getvalue().splitlines() if line.startswith("{")]
            assert [doc["submitted"]["ok"] for doc in lines] == [False, True, True]
            assert lines[0]["mechanisms"][0]["submitted"]["message"] == "SettingWeightsTooFast"
            # between passes: waits of one tempo (10 blocks × 12 s), plus the retry backoffs
            assert clock.sleeps.count(10 * BLOCK_SECONDS) == 4
            assert all(s <= 600 for s in clock.sleeps)

    asyncio.run(scenario())


def test_loop_without_a_chain_waits_a_default_tempo(tmp_path: Path) -> None:
    metagraph = tmp_path / "metagraph.json"
    metagraph.write_text(json.dumps({"0": OWNER, "1": ALICE}))

    async def scenario() -> None:
        async with Workers(WORKERS) as proxy:
            settings = load_settings(
                ["--proxy-api", proxy.url, "--dry-run", "--metagraph-file", str(metagraph), "--loop"], environ={}
            )
            from scorer.chain import load_metagraph_file

            clock = FakeTime()
            scorer = Scorer(
                settings, ProxyApiSource(proxy.url), None, load_metagraph_file(metagraph), sleep=clock.sleep,
                clock=lambda: NOW,
            )  # fmt: skip
            assert await scorer.run_loop(io.StringIO(), passes=2) == 2
            assert clock.sleeps == [360 * BLOCK_SECONDS]

    asyncio.run(scenario())


# -- the real BittensorChain on the SDK, over a fake substrate ----------------------------------


def as_substrate(fake: FakeSubstrate) -> bittensor.Substrate:
    """The fake implements the part of the SDK's `Substrate` protocol the client calls, not all of it."""
    return cast("bittensor.Substrate", fake)


class FakeSubstrate:
    """The SDK's ``bittensor.Substrate`` contract in memory: a subnet 89 with a few neurons."""

    def __init__(self, hotkeys: list[str], owner: str) -> None:
        import bittensor as bt

        self.bt = bt
        self.token_symbols: dict[int, str] = {}
        self.hotkeys = hotkeys
        self.owner = owner
        self.block = 5000
        self.commit_reveal = False
        self.mechanisms = 1
        # LastUpdate per mechanism storage index (mechid * 4096 + netuid)
        self.last_update: dict[int, list[int]] = {89: [0] * len(hotkeys)}
        self.version_key = 7
        self.submit_result: Any = None
        self.submitted: list[tuple[Any, str]] = []

    def balance(self, rao: int, netuid: int = 0) -> Any:
        return self.bt.Balance.from_rao(rao, netuid)

    async def connect(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def block_hash(self, block: int | None = None) -> str:
        return f"0x{block or self.block:064x}"

    async def block_number(self) -> int:
        return self.block

    async def finalized_block_number(self) -> int:
        return self.block

    async def block_time(self) -> float:
        return BLOCK_SECONDS

    async def spec_version(self) -> int:
        return 400

    async def query(
        self, module: str, name: str, params: list[Any] | None = None, block_hash: str | None = None
    ) -> Any:
        assert params is not None
        storage: dict[str, Callable[[], Any]] = {
            "Uids": lambda: self.hotkeys.index(params[1]) if params[1] in self.hotkeys else None,
            "CommitRevealWeightsEnabled": lambda: self.commit_reveal,
            "WeightsVersionKey": lambda: self.version_key,
            "Tempo": lambda: 360,
            "Burn": lambda: 0,
            "SubnetworkN": lambda: len(self.hotkeys),
            "WeightsSetRateLimit": lambda: 100,
            "LastUpdate": lambda: self.last_update.get(params[0]),
            "MechanismCountCurrent": lambda: self.mechanisms,
            "MinAllowedWeights": lambda: 1,
            "MaxWeightsLimit": lambda: 65535,
            "SubnetEpochConsensus": lambda: "Yuma",
            "RevealPeriodEpochs": lambda: 1,
            "LastEpochBlock": lambda: 4900,
            "PendingEpochAt": lambda: 0,
            "SubnetEpochIndex": lambda: 13,
            "BlocksSinceLastStep": lambda: 100,
        }
        if module != "SubtensorModule" or name not in storage:
            raise self.bt.ChainError(f"fake substrate has no storage {module}.{name}")
        return storage[name]()

    async def query_map(
        self, module: str, name: str, params: list[Any] | None = None, block_hash: str | None = None
    ) -> Any:
        raise self.bt.ChainError(f"fake substrate has no map {module}.{name}")

    async def runtime_call(self, api: str, method: str, params: list[Any], block_hash: str | None = None) -> Any:
        if (api, method) != ("SubnetInfoRuntimeApi", "get_metagraph") or params != [89]:
            raise self.bt.ChainError(f"fake substrate has no runtime call {api}.{method}({params})")
        return {
            "hotkeys": self.hotkeys, "coldkeys": [COLDKEY] * len(self.hotkeys), "block": self.block,
            "tempo": 360, "last_step": 4900, "blocks_since_last_step": 100, "owner_hotkey": self.owner,
            "owner_coldkey": COLDKEY, "network_registered_at": 1,
        }  # fmt: skip

    async def compose(self, call: Any) -> Any:
        return call

    async def estimate_fee(self, call: Any, keypair: Any) -> Any:
        return self.bt.Balance.from_rao(0)

    async def submit(self, call: Any, keypair: Any, **_: Any) -> Any:
        self.submitted.append((call, keypair.ss58_address))
        if self.submit_result is not None:
            return self.submit_result
        return self.bt.ExtrinsicResult(success=True, message="finalized", extrinsic_id=f"{self.block}-3")


@pytest.fixture(scope="module")
def wallet_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import bittensor as bt

    path = tmp_path_factory.mktemp("wallets")
    bt.Wallet("validator", "hk", str(path)).create_new_hotkey(suppress=True)
    return path


def validator_hotkey(wallet_dir: Path) -> str:
    import bittensor as bt

    address: str = bt.Wallet("validator", "hk", str(wallet_dir)).hotkeypub.ss58_address
    return address


def real_chain(substrate: FakeSubstrate, wallet_dir: Path) -> BittensorChain:
    import bittensor as bt

    async def connect() -> Any:
        return await bt.Client("local", substrate=as_substrate(substrate)).connect()

    return BittensorChain("local", "validator", "hk", str(wallet_dir), client_factory=connect)


def test_bittensor_chain_builds_without_touching_the_network() -> None:
    import bittensor as bt

    chain = BittensorChain("finney", "validator", "hk", "/nonexistent")
    set_intent = chain.weights_intent(89, 1, [1, 2], [0.25, 0.75], version_key=3)
    assert isinstance(set_intent, bt.SetWeights), "SetWeights picks plain set or timelocked commit itself"
    assert (set_intent.netuid, set_intent.mechid, set_intent.uids, set_intent.weights, set_intent.version_key) == (
        89, 1, [1, 2], [0.25, 0.75], 3,
    )  # fmt: skip
    assert chain.wallet().name == "validator" and chain.wallet().path == "/nonexistent"
    asyncio.run(chain.close())  # never connected: nothing to close


def test_bittensor_chain_reads_and_sets_weights(wallet_dir: Path) -> None:
    me = validator_hotkey(wallet_dir)
    substrate = FakeSubstrate([OWNER, me, ALICE, BOB], owner=OWNER)

    async def scenario() -> None:
        chain = real_chain(substrate, wallet_dir)
        graph = await chain.metagraph(89)
        assert graph.uids == {0: OWNER, 1: me, 2: ALICE, 3: BOB}
        assert (graph.owner_hotkey, graph.owner_uid, graph.block) == (OWNER, 0, 5000)
        assert (await chain.current_block(), await chain.tempo(89)) == (5000, 360)
        assert (await chain.mechanism_count(89), await chain.weights_rate_limit(89)) == (1, 100)
        substrate.mechanisms = 2
        assert await chain.mechanism_count(89) == 2
        assert await chain.last_weights_block(89, 0) is None, "never set: no rate limit applies"

        result = await chain.set_weights(89, 0, [0, 2, 3], [0.1, 0.675, 0.225])
        assert result.ok and "5000-3" in result.message and not result.committed
        call, signer = substrate.submitted[-1]
        assert signer == me, "signed by the wallet's hotkey"
        assert (call.module, call.function) == ("SubtensorModule", "set_mechanism_weights")
        assert call.params["netuid"] == 89 and call.params["mecid"] == 0 and call.params["dests"] == [0, 2, 3]
        assert call.params["weights"] == [round(0.1 / 0.675 * 65535), 65535, round(0.225 / 0.675 * 65535)]
        assert call.params["version_key"] == 7, "the subnet's required weights version is sent"

        result = await chain.set_weights(89, 1, [2], [1.0])
        assert result.ok and substrate.submitted[-1][0].params["mecid"] == 1

        # commit-reveal on: the same call, the SDK sends a timelocked commit with its own reveal round
        substrate.commit_reveal = True
        result = await chain.set_weights(89, 1, [2, 3], [0.75, 0.25])
        assert result.ok and result.committed and "reveal_round" in result.data
        call, _ = substrate.submitted[-1]
        assert call.function == "commit_timelocked_mechanism_weights"
        assert call.params["netuid"] == 89 and call.params["mecid"] == 1
        assert call.params["reveal_round"] == result.data["reveal_round"]
        assert isinstance(call.params["commit"], (bytes, bytearray, str, list))

        # the chain's refusals come back with its reason, never as an exception
        substrate.commit_reveal = False
        substrate.submit_result = substrate.bt.ExtrinsicResult(
            success=False, message="SubtensorModule.NotEnoughStakeToSetWeights"
        )
        result = await chain.set_weights(89, 0, [2], [1.0])
        assert not result.ok and "NotEnoughStakeToSetWeights" in result.message
        substrate.submit_result = None

        # LastUpdate is per mechanism: mechanism 1 lives at storage index 1 * 4096 + 89
        substrate.last_update[4096 + 89] = [0, 4990, 0, 0]  # set 10 blocks ago, rate limit 100
        assert await chain.last_weights_block(89, 1) == 4990
        assert await chain.last_weights_block(89, 0) is None
        result = await chain.set_weights(89, 1, [2], [1.0])
        assert not result.ok and "rate limit" in result.message

        substrate.hotkeys = [OWNER, ALICE, BOB]  # our hotkey was deregistered
        assert await chain.last_weights_block(89, 1) is None
        result = await chain.set_weights(89, 0, [1], [1.0])
        assert not result.ok and "not registered" in result.message
        await chain.close()

    asyncio.run(scenario())


def test_scorer_pass_through_the_sdk(wallet_dir: Path) -> None:
    me = validator_hotkey(wallet_dir)
    substrate = FakeSubstrate([OWNER, me, ALICE, BOB], owner=OWNER)
    substrate.commit_reveal = True

    async def scenario() -> None:
        async with Workers(WORKERS) as proxy:
            chain = real_chain(substrate, wallet_dir)
            scorer = make_scorer(proxy.url, chain, FakeTime(), "--hashrate-share", "0.8")
            substrate.mechanisms = 2
            report = await scorer.run_pass()
            assert [m.mechid for m in report.mechanisms] == [0, 1]
            for m in report.mechanisms:
                assert m.submission is not None and m.submission.ok, m.submission
                assert m.submission.mode == "commit"
            assert [call.params["mecid"] for call, _ in substrate.submitted] == [0, 1]
            assert report.weights.weights == {
                0: pytest.approx(0.2),
                1: 0.0,
                2: pytest.approx(0.6),
                3: pytest.approx(0.2),
            }
            call, signer = substrate.submitted[-1]
            assert call.function == "commit_timelocked_mechanism_weights" and signer == me
            await chain.close()

    asyncio.run(scenario())


def test_bittensor_chain_reconnects_after_a_failed_read(wallet_dir: Path) -> None:
    import bittensor as bt

    substrate = FakeSubstrate([OWNER, ALICE], owner=OWNER)
    connections = 0
    real_runtime_call = substrate.runtime_call
    failures = [bt.RpcConnectionError("socket closed")]

    async def flaky_runtime_call(*args: Any, **kwargs: Any) -> Any:
        if failures:
            raise failures.pop()
        return await real_runtime_call(*args, **kwargs)

    substrate.runtime_call = flaky_runtime_call  # type: ignore[method-assign]

    async def connect() -> Any:
        nonlocal connections
        connections += 1
        return await bt.Client("local", substrate=as_substrate(substrate)).connect()

    async def scenario() -> None:
        chain = BittensorChain("local", "validator", "hk", str(wallet_dir), client_factory=connect)
        with pytest.raises(bt.RpcConnectionError):
            await chain.metagraph(89)
        assert (await chain.metagraph(89)).uids == {0: OWNER, 1: ALICE}
        assert connections == 2
        await chain.close()

    asyncio.run(scenario())
