"""The session's state table (`protocol.state`), walked in full: on its own, then through a real
`MinerConnection` and `PoolConnection` fed real lines, so the table is what the connections do."""

from __future__ import annotations

import itertools

import pytest

from protocol.connection import MinerConnection, PoolConnection, Refused, RequestReceived
from protocol.errors import ErrorCode, RejectReason
from protocol.messages import Authorize, Subscribe, decode_client_message, encode_request, encode_result
from protocol.state import TRANSITIONS, Refusal, State, Step, next_state

OPEN = [State.CONNECTED, State.SUBSCRIBED, State.AUTHORIZED, State.MINING]
SUBSCRIBE_RESULT = [[["mining.notify", "1"]], "08000002", 4]
SUBMIT_LINE = encode_request(9, "mining.submit", ["w", "1", "00000000", "64b3f3ec", "00000001"])
CONFIGURE_LINE = encode_request(8, "mining.configure", [["version-rolling"], {"version-rolling.mask": "1fffe000"}])
SUBSCRIBE = decode_client_message(encode_request(1, "mining.subscribe", ["bmminer/2.0.0"])[:-1])
AUTHORIZE = decode_client_message(encode_request(2, "mining.authorize", ["w", "x"])[:-1])


def test_the_table_is_total() -> None:
    """Every step has an outcome in every state: nothing is left to an unwritten default."""
    assert set(TRANSITIONS) == set(itertools.product(State, Step))


def test_submits_are_legal_only_when_mining() -> None:
    legal = {state for state in State if isinstance(next_state(state, Step.SUBMIT), State)}
    assert legal == {State.MINING}


@pytest.mark.parametrize(
    ("state", "code", "reason"),
    [
        (State.CONNECTED, ErrorCode.NOT_SUBSCRIBED, "not-subscribed"),
        (State.AUTHORIZED, ErrorCode.NOT_SUBSCRIBED, "not-subscribed"),
        (State.SUBSCRIBED, ErrorCode.UNAUTHORIZED, "unauthorized"),
    ],
)
def test_an_early_submit_is_refused_with_the_stratum_code(state: State, code: int, reason: str) -> None:
    refusal = next_state(state, Step.SUBMIT)
    assert isinstance(refusal, Refusal) and (refusal.code, refusal.reason) == (code, reason)
    assert (int(ErrorCode.UNAUTHORIZED), int(ErrorCode.NOT_SUBSCRIBED)) == (24, 25)
    assert isinstance(refusal.reason, RejectReason)


def test_configure_is_legal_in_every_open_state_and_changes_nothing() -> None:
    """bmminer configures before subscribe, ESP-Miner after it."""
    assert all(next_state(state, Step.CONFIGURE) is state for state in OPEN)


@pytest.mark.parametrize(
    "order",
    [
        (Step.SUBSCRIBE_ACCEPTED, Step.AUTHORIZE_ACCEPTED),
        (Step.AUTHORIZE_ACCEPTED, Step.SUBSCRIBE_ACCEPTED),
        (Step.CONFIGURE, Step.SUBSCRIBE_ACCEPTED, Step.CONFIGURE, Step.AUTHORIZE_ACCEPTED, Step.AUTHORIZE_ACCEPTED),
    ],
)
def test_either_handshake_order_reaches_mining(order: tuple[Step, ...]) -> None:
    state = State.CONNECTED
    for step in order:
        outcome = next_state(state, step)
        assert isinstance(outcome, State)
        state = outcome
    assert state is State.MINING


def test_close_ends_every_state_and_nothing_follows() -> None:
    assert all(next_state(state, Step.CLOSE) is State.CLOSED for state in State)
    assert all(isinstance(next_state(State.CLOSED, step), Refusal) for step in Step if step is not Step.CLOSE)


# --- the connections do what the table says ---------------------------------------------------------------


def miner_in(state: State) -> MinerConnection:
    """A MinerConnection driven into `state` by real answers."""
    conn = MinerConnection()
    if state in (State.SUBSCRIBED, State.MINING):
        conn.answer(SUBSCRIBE, SUBSCRIBE_RESULT)
    if state in (State.AUTHORIZED, State.MINING):
        conn.answer(AUTHORIZE, True)
    if state is State.CLOSED:
        conn.close()
    assert conn.state is state
    return conn


@pytest.mark.parametrize(("state", "step"), sorted(TRANSITIONS, key=str))
def test_miner_connection_follows_every_row(state: State, step: Step) -> None:
    conn = miner_in(state)
    expected = next_state(state, step)
    if step is Step.SUBSCRIBE_ACCEPTED:
        assert isinstance(SUBSCRIBE, Subscribe)
        conn.answer(SUBSCRIBE, SUBSCRIBE_RESULT)
    elif step is Step.AUTHORIZE_ACCEPTED:
        assert isinstance(AUTHORIZE, Authorize)
        conn.answer(AUTHORIZE, True)
    elif step is Step.CLOSE:
        conn.close()
    else:
        events = conn.receive_data(SUBMIT_LINE if step is Step.SUBMIT else CONFIGURE_LINE)
        if state is State.CLOSED:
            assert events == []  # nothing read after close is an event
        elif isinstance(expected, Refusal):
            (event,) = events
            assert isinstance(event, Refused)
            assert (event.error.code, event.reason) == (expected.code, expected.reason)
        else:
            (event,) = events
            assert isinstance(event, RequestReceived)
    assert conn.state is (expected if isinstance(expected, State) else state)


@pytest.mark.parametrize(
    ("replies", "state"),
    [
        ((), State.CONNECTED),
        (("subscribe",), State.SUBSCRIBED),
        (("authorize",), State.AUTHORIZED),
        (("subscribe", "authorize"), State.MINING),
        (("authorize", "subscribe"), State.MINING),
    ],
)
def test_pool_connection_moves_on_the_replies_it_receives(replies: tuple[str, ...], state: State) -> None:
    conn = PoolConnection()
    data = b""
    for what in replies:
        if what == "subscribe":
            request_id, _ = conn.send_request("mining.subscribe", [])
            data += encode_result(request_id, SUBSCRIBE_RESULT)
        else:
            request_id, _ = conn.send_request("mining.authorize", ["w", "x"])
            data += encode_result(request_id, True)
    conn.receive_data(data)
    assert conn.state is state
    assert conn.close() == [] and conn.state is State.CLOSED
