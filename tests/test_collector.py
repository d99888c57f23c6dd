"""proxy/collector.py: what survives a full collection is frozen, so is what survives an interval,
thawed every few, and freezing the sessions is safe: a closed session leaves no reference cycle
behind (reference counting frees it, frozen or not), in passthrough and in farm mode."""

from __future__ import annotations

import asyncio
import gc
import threading
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import proxy.collector as collector
from proxy.app import ProxyApp
from proxy.collector import CROWD_MIN, CollectorPolicy
from proxy.config import ProxyConfig
from simulation import Fleet, SimulatedPool, run
from simulation.hotkeys import hotkeys

HOST = "127.0.0.1"


@pytest.fixture
def thawed() -> Iterator[None]:
    """Whatever a test freezes is thawed again: other tests' garbage must stay collectable. No
    automatic collection meanwhile: the tests start the full passes they count on themselves."""
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.unfreeze()


class Survivor:
    """A tracked object, as a session's are."""


class Cycle:
    """Garbage only the cyclic collector frees."""

    def __init__(self) -> None:
        self.me: object = self


def _walked() -> set[int]:
    """Ids of the objects a full collection walks (every generation; the frozen ones are in none)."""
    return {id(o) for generation in range(3) for o in gc.get_objects(generation)}


def test_what_survives_is_frozen_every_interval_and_thawed_every_few(thawed: None) -> None:
    seen: dict[str, bool] = {}

    async def scenario() -> None:
        policy = CollectorPolicy(0.01, thaw_every=3)
        policy.start()
        survivors = [Survivor() for _ in range(1000)]
        seen["walked before the sweep"] = all(id(s) in _walked() for s in survivors[:10])
        for _ in range(500):  # bounded: two sweeps and the thaw after them
            if policy.thaws:
                break
            if policy.freezes and "walked after a sweep" not in seen:
                walked = _walked()
                seen["walked after a sweep"] = any(id(s) in walked for s in survivors)
            await asyncio.sleep(0.005)
        policy.stop()
        walked = _walked()
        seen["walked after the thaw"] = all(id(s) in walked for s in survivors)
        assert (policy.freezes, policy.thaws) == (2, 1)
        assert all(gc.is_tracked(s) for s in survivors)

    asyncio.run(scenario())
    assert seen == {"walked before the sweep": True, "walked after a sweep": False, "walked after the thaw": True}


async def _until(predicate: Callable[[], bool]) -> bool:
    for _ in range(200):  # bounded: each look is one short timer away
        if predicate():
            return True
        await asyncio.sleep(0.005)
    return predicate()


def test_what_survives_a_full_collection_is_frozen_whichever_thread_ran_it(thawed: None) -> None:
    async def scenario() -> None:
        policy = CollectorPolicy(0.0)  # no interval: only the full passes freeze
        policy.start()
        survivors = [Survivor() for _ in range(1000)]
        gc.collect(1)  # a younger generation's pass freezes nothing
        await asyncio.sleep(0.01)
        assert policy.survivor_freezes == 0
        walked = _walked()
        assert all(id(s) in walked for s in survivors)
        # A full pass in another thread (the ledger's insert thread allocates too).
        await asyncio.to_thread(gc.collect)
        assert await _until(lambda: policy.survivor_freezes == 1)  # one loop callback away
        walked = _walked()
        assert not any(id(s) in walked for s in survivors)
        newer = [Survivor() for _ in range(10)]
        assert all(id(s) in _walked() for s in newer)  # walked until a full pass has seen them
        policy.stop()
        gc.collect()
        await asyncio.sleep(0.01)
        assert policy.survivor_freezes == 1  # stopped: the collector's passes are its own again
        assert all(id(s) in _walked() for s in newer)

    asyncio.run(scenario())


def test_collections_run_on_the_loop_not_in_the_thread_that_crossed_the_threshold() -> None:
    """The ledger's insert thread allocates a batch's columns: the collections that calls for run on
    the loop's thread, as the collector would have run them (the middle generation every `middle`
    young passes), and stop() gives the collector its thresholds back."""
    before = gc.get_threshold()
    young, middle, _ = before
    started: list[tuple[int, int]] = []  # (thread, generation) of every collection

    def record(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started.append((threading.get_ident(), info["generation"]))

    def allocate() -> list[list[int]]:
        # Tracked objects, kept: past the young threshold, until a pass.
        return [[] for _ in range(2 * young)]

    async def scenario() -> int:
        policy = CollectorPolicy(0.0)
        policy.start()
        gc.callbacks.append(record)
        kept = []
        try:
            for batch in range(middle + 2):  # enough young passes for a middle one
                kept.append(await asyncio.to_thread(allocate))
                assert await _until(lambda: gc.get_count()[0] <= young), f"batch {batch} never collected"
            return threading.get_ident()
        finally:
            gc.callbacks.remove(record)
            policy.stop()

    try:
        loop_thread = asyncio.run(scenario())
        assert gc.get_threshold() == before
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()
    assert {thread for thread, _ in started} == {loop_thread}, started
    assert any(generation >= 1 for _, generation in started), "never the middle generation"


def _timers(monkeypatch: pytest.MonkeyPatch, *, crowd_check: float, look: float) -> None:
    """The crowd check's and the looks' periods, so that a test watches one of the two."""
    monkeypatch.setattr(collector, "CROWD_CHECK", crowd_check)
    monkeypatch.setattr(collector, "LOOK_QUIET", look)
    monkeypatch.setattr(collector, "LOOK_BUSY", look)


def test_sessions_arriving_fast_are_frozen_at_the_next_look_without_a_pass(
    thawed: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    _timers(monkeypatch, crowd_check=10.0, look=0.005)  # only the looks at the collector's counts
    sessions = [3]

    async def scenario() -> weakref.ref[Cycle]:
        policy = CollectorPolicy(3600.0, population=lambda: sessions[0])  # thaws come, none in this test
        policy.start()  # the sessions already there are no arrivals
        try:
            sessions[0] += collector.CROWD_PER_LOOK - 1  # fewer than a crowd between two looks
            await asyncio.sleep(0.05)
            assert policy.crowd_freezes == 0
            survivors = [Survivor() for _ in range(1000)]
            assert all(id(s) in _walked() for s in survivors)
            cycle = Cycle()
            gone = weakref.ref(cycle)
            del cycle
            sessions[0] += collector.CROWD_PER_LOOK
            assert await _until(lambda: policy.crowd_freezes >= 1)
            walked = _walked()
            assert not any(id(s) in walked for s in survivors)
            assert gone() is not None and id(gone()) not in walked  # garbage that formed meanwhile: frozen too
            return gone
        finally:
            policy.stop()

    gone = asyncio.run(scenario())
    gc.unfreeze()
    gc.collect()
    assert gone() is None  # ... and freed by the first full pass after a thaw


def test_without_an_interval_nothing_thaws_so_arrivals_are_not_frozen_unwalked(
    thawed: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    _timers(monkeypatch, crowd_check=10.0, look=0.005)
    sessions = [0]

    async def scenario() -> None:
        policy = CollectorPolicy(0.0, population=lambda: sessions[0])
        policy.start()
        survivors = [Survivor() for _ in range(100)]
        sessions[0] += 10 * collector.CROWD_PER_LOOK
        await asyncio.sleep(0.05)  # several looks
        policy.stop()
        assert policy.crowd_freezes == 0
        assert all(id(s) in _walked() for s in survivors)

    asyncio.run(scenario())


def test_a_crowd_of_new_sessions_is_frozen_at_the_next_check_young_cycles_collected_first(
    thawed: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Sessions that come more slowly than CROWD_PER_LOOK a look, but add up: the once-a-second check.
    _timers(monkeypatch, crowd_check=0.01, look=10.0)  # no looks: only the check
    sessions = [0]

    async def scenario() -> None:
        policy = CollectorPolicy(0.0, population=lambda: sessions[0])
        policy.start()
        survivors = [Survivor() for _ in range(1000)]
        sessions[0] = CROWD_MIN // 2  # a few sessions are not a crowd
        await asyncio.sleep(0.05)
        assert policy.crowd_freezes == 0
        walked = _walked()
        assert all(id(s) in walked for s in survivors)
        cycle = Cycle()
        gone = weakref.ref(cycle)
        del cycle
        sessions[0] += CROWD_MIN
        assert await _until(lambda: policy.crowd_freezes == 1)
        walked = _walked()
        assert not any(id(s) in walked for s in survivors)
        assert gone() is None  # collected before the freeze, not frozen with the crowd
        # They all leave and come back: a crowd again, against the population that was left.
        sessions[0] = 0
        await asyncio.sleep(0.05)
        sessions[0] = CROWD_MIN
        assert await _until(lambda: policy.crowd_freezes == 2)
        policy.stop()

    asyncio.run(scenario())


def test_after_a_thaw_nothing_freezes_until_a_full_collection(thawed: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(collector, "CROWD_CHECK", 0.01)
    sessions = [0]

    async def scenario() -> None:
        policy = CollectorPolicy(0.01, thaw_every=2, population=lambda: sessions[0])  # freeze, thaw, ...
        policy.start()
        assert await _until(lambda: policy.thaws == 1)
        survivors = [Survivor() for _ in range(1000)]
        sessions[0] = 10 * CROWD_MIN
        await asyncio.sleep(0.1)  # several ticks and looks
        assert (policy.freezes, policy.crowd_freezes) == (1, 0)
        walked = _walked()
        assert all(id(s) in walked for s in survivors)  # the thaw's full pass must see everything
        await asyncio.to_thread(gc.collect)
        assert await _until(lambda: policy.survivor_freezes == 1)
        walked = _walked()
        assert not any(id(s) in walked for s in survivors)
        policy.stop()

    asyncio.run(scenario())


def test_no_interval_freezes_only_after_start_up(thawed: None) -> None:
    async def scenario() -> None:
        policy = CollectorPolicy(0.0)
        policy.start()
        frozen = gc.get_freeze_count()
        survivors = [Survivor() for _ in range(1000)]
        await asyncio.sleep(0.05)
        assert gc.get_freeze_count() < frozen + len(survivors)  # (frozen objects freed meanwhile drop out)
        assert policy.freezes == 0
        policy.stop()

    asyncio.run(scenario())


OURS = ("proxy.", "protocol.", "ledger.")


def _cyclic_garbage_of_ours() -> list[str]:
    """Types of ours among the objects only the cyclic collector could free (since its last pass),
    leaving out what hangs off the simulated pool's and fleet's own garbage (they run in this
    process and parse Stratum with the protocol package too)."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        garbage = {id(o): o for o in gc.garbage}
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    theirs: set[int] = set()
    todo = [o for o in garbage.values() if type(o).__module__.startswith("simulation.")]
    while todo:
        o = todo.pop()
        if id(o) not in theirs:
            theirs.add(id(o))
            todo.extend(r for r in gc.get_referents(o) if id(r) in garbage and id(r) not in theirs)
    return sorted(
        {
            f"{type(o).__module__}.{type(o).__qualname__}"
            for key, o in garbage.items()
            if key not in theirs and type(o).__module__.startswith(OURS)
        }
    )


@pytest.mark.parametrize("mode", ["passthrough", "aggregate"])
def test_a_closed_session_leaves_no_reference_cycle(tmp_path: Path, mode: str) -> None:
    leftovers: list[str] = []

    async def scenario() -> None:
        # 8 bytes of extranonce2, as Luxor gives: farm mode keeps a prefix of them for its ASICs.
        async with SimulatedPool(difficulty=2.0**-26, extranonce2_size=8, seed=5) as pool:
            config = ProxyConfig(
                listen=f"{HOST}:0",
                upstream=(f"stratum+tcp://{HOST}:{pool.port}",),
                data_dir=tmp_path,
                metrics=f"{HOST}:0",
                proxy_id="gc",
                mode=mode,
                ledger_flush_interval=0.05,
            )
            app = ProxyApp(config)
            await app.start()
            gc.collect()  # earlier garbage (another test's proxy) is not this test's
            try:
                # (Not a bitaxe: it suggests difficulty 1,000, which farm mode honours, too high to grind here.)
                fleet = Fleet.for_hotkeys(
                    HOST, app.port, hotkeys(2, namespace="gc"), 4, max_shares=5, profiles=("antminer", "cpuminer")
                )
                await fleet.run(timeout=60)
                for _ in range(500):  # bounded: until the proxy has let go of every session
                    if app.stratum.sessions == 0:
                        break
                    await asyncio.sleep(0.01)
                assert app.stratum.sessions == 0
                await app.ledger.flush()
                leftovers.extend(_cyclic_garbage_of_ours())
            finally:
                await app.stop()

    run(asyncio.wait_for(scenario(), 90))
    assert leftovers == []


def test_an_untracked_fresh_tuple_keeps_what_it_holds_alive_and_frees_it_with_itself() -> None:
    """`untrack_fresh` spares the collector a tuple's items; it must not make the collector free what
    the tuple holds (a garbage cycle inside it stays alive while the tuple does), nor leak it after."""
    node = Cycle()
    alive = weakref.ref(node)
    values = (node, 1, "one")
    assert gc.is_tracked(values)
    assert collector.untrack_fresh(values) is values
    assert not gc.is_tracked(values)
    del node
    gc.collect()
    assert alive() is not None  # held by the untracked tuple: to the collector, a root
    del values
    gc.collect()
    assert alive() is None
