"""The legal order of a Stratum V1 session, as one table (sans-I/O).

A session moves on what the POOL accepts, not on what the miner asks: a subscribe request changes
nothing until its reply succeeds. So the steps are "subscribe accepted", "authorize accepted", plus
the requests whose legality depends on the state (configure, submit) and the end of the connection.
Both roles walk the same table: the miner side when it sends a successful answer, the pool side when
it receives one.

Real firmware disagrees on order, and the table says so: bmminer configures before subscribing,
ESP-Miner (Bitaxe) after; some miners authorize before they subscribe. A submit is legal only once
both were accepted; before that it is refused with the code ckpool and ESP-Miner use (25 when not
subscribed, 24 when subscribed but not authorized).
"""

from __future__ import annotations

from enum import StrEnum

from protocol.errors import ErrorCode, RejectReason


class State(StrEnum):
    CONNECTED = "connected"  # nothing accepted yet
    SUBSCRIBED = "subscribed"  # the pool gave an extranonce1; no worker yet
    AUTHORIZED = "authorized"  # a worker accepted before the subscribe (some firmware does this)
    MINING = "mining"  # subscribed and authorized: submits are legal
    CLOSED = "closed"


class Step(StrEnum):
    SUBSCRIBE_ACCEPTED = "subscribe accepted"
    AUTHORIZE_ACCEPTED = "authorize accepted"
    CONFIGURE = "configure"
    SUBMIT = "submit"
    CLOSE = "close"


class Refusal:
    """What a step that is illegal in a state is answered with."""

    __slots__ = ("code", "message", "reason")

    def __init__(self, code: ErrorCode, reason: RejectReason, message: str) -> None:
        self.code = code
        self.reason = reason
        self.message = message

    def __repr__(self) -> str:
        return f"Refusal({self.code!r}, {self.reason!r})"


NOT_SUBSCRIBED = Refusal(ErrorCode.NOT_SUBSCRIBED, RejectReason.NOT_SUBSCRIBED, "Not subscribed")
UNAUTHORIZED = Refusal(ErrorCode.UNAUTHORIZED, RejectReason.UNAUTHORIZED, "Unauthorized worker")
CLOSED = Refusal(ErrorCode.OTHER, RejectReason.MALFORMED, "connection closed")

C, S, A, M, X = State.CONNECTED, State.SUBSCRIBED, State.AUTHORIZED, State.MINING, State.CLOSED

# (state, step) → the next state, or the refusal when the step is illegal there. A pair that is not
# in the table is a step that cannot happen in that state (nothing happens after CLOSE).
TRANSITIONS: dict[tuple[State, Step], State | Refusal] = {
    (C, Step.SUBSCRIBE_ACCEPTED): S,
    (C, Step.AUTHORIZE_ACCEPTED): A,
    (C, Step.CONFIGURE): C,  # bmminer: configure first
    (C, Step.SUBMIT): NOT_SUBSCRIBED,
    (S, Step.SUBSCRIBE_ACCEPTED): S,  # a resubscribe (new extranonce1) keeps the session
    (S, Step.AUTHORIZE_ACCEPTED): M,
    (S, Step.CONFIGURE): S,  # ESP-Miner: configure after subscribe
    (S, Step.SUBMIT): UNAUTHORIZED,
    (A, Step.SUBSCRIBE_ACCEPTED): M,
    (A, Step.AUTHORIZE_ACCEPTED): A,
    (A, Step.CONFIGURE): A,
    (A, Step.SUBMIT): NOT_SUBSCRIBED,
    (M, Step.SUBSCRIBE_ACCEPTED): M,
    (M, Step.AUTHORIZE_ACCEPTED): M,  # more workers on one connection
    (M, Step.CONFIGURE): M,
    (M, Step.SUBMIT): M,
    **{(state, Step.CLOSE): X for state in (C, S, A, M, X)},
    **{(X, step): CLOSED for step in (Step.SUBSCRIBE_ACCEPTED, Step.AUTHORIZE_ACCEPTED, Step.CONFIGURE, Step.SUBMIT)},
}


def next_state(state: State, step: Step) -> State | Refusal:
    """Where `step` leads from `state`: the next state, or the refusal that answers it."""
    return TRANSITIONS[state, step]
