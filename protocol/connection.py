"""Sans-I/O Stratum V1 connections, one per role: bytes in → typed events, messages out → bytes.

- `MinerConnection`: our end of a connection WITH A MINER (we are the pool, or the proxy facing an
  ASIC). It decodes the miner's requests, answers them, and sends it notifications.
- `PoolConnection`: our end of a connection WITH A POOL (we are the miner, or the proxy's upstream).
  It sends requests under ids it picks, and decodes the pool's replies and notifications.

Each owns the line framer, the decoder of its direction, the request/reply bookkeeping and the
session state (`protocol.state`). Neither does I/O: the caller moves the bytes (asyncio, a test, a
benchmark). Bad input is an event (`BadLine`), never an exception: one bad line costs only the peer
that sent it. Every event keeps the line it came from (without its newline), so a proxy can relay a
notification byte for byte.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Callable, Iterator
from typing import Any, TypeAlias

import msgspec

from protocol.errors import ProtocolError, RejectReason, StratumError
from protocol.framing import DEFAULT_MAX_LINE, LineFramer
from protocol.messages import (
    Authorize,
    ClientMessage,
    Configure,
    Notify,
    Reconnect,
    Reply,
    ServerMessage,
    SetDifficulty,
    SetExtranonce,
    SetVersionMask,
    ShowMessage,
    Submit,
    Subscribe,
    SubscribeResult,
    decode_client_message,
    decode_server_message,
    encode_error,
    encode_notification,
    encode_notify,
    encode_reply,
    encode_request,
    encode_result,
    subscribe_result,
)
from protocol.state import Refusal, State, Step, next_state

__all__ = [
    "BadLine",
    "Event",
    "MinerConnection",
    "MinerEvent",
    "Notification",
    "PendingRequests",
    "PoolConnection",
    "PoolEvent",
    "Refused",
    "ReplyReceived",
    "RequestReceived",
    "UnmatchedReply",
    "encode_notification_message",
]

_MINING, _CLOSED = State.MINING, State.CLOSED  # module globals: an enum attribute costs a lookup per line

# --- events ---------------------------------------------------------------------------------------
# gc=False: events hold no reference cycles, and the share path makes one per submit.


class RequestReceived(msgspec.Struct, frozen=True, gc=False):
    """A request from the miner that is legal in the session's state (answer it)."""

    message: ClientMessage
    line: bytes


class Refused(msgspec.Struct, frozen=True, gc=False):
    """A request the state table forbids here (a submit before subscribe/authorize). `error` is the
    answer to send (`MinerConnection.refuse(event.message, event.error)`); `reason` is for the ledger."""

    message: ClientMessage
    line: bytes
    error: StratumError
    reason: RejectReason


class BadLine(msgspec.Struct, frozen=True, gc=False):
    """A line that did not decode (or was too long: `line` is empty then, the framer dropped it)."""

    error: ProtocolError
    line: bytes


class ReplyReceived(msgspec.Struct, frozen=True, gc=False):
    """The pool's reply to one of our requests, with what we sent it for."""

    reply: Reply
    line: bytes
    method: str
    context: Any


class UnmatchedReply(msgspec.Struct, frozen=True, gc=False):
    """A reply to no request of ours (a late reply after a timeout, or a pool's mistake)."""

    reply: Reply
    line: bytes


class Notification(msgspec.Struct, frozen=True, gc=False):
    """Anything else the pool sends: notify, set_difficulty, set_extranonce, set_version_mask,
    client.reconnect, client.show_message, or a request of its own (`ServerRequest`)."""

    message: ServerMessage
    line: bytes


MinerEvent: TypeAlias = RequestReceived | Refused | BadLine
PoolEvent: TypeAlias = ReplyReceived | UnmatchedReply | Notification | BadLine
Event: TypeAlias = MinerEvent | PoolEvent


# --- request bookkeeping --------------------------------------------------------------------------


class _Queue(collections.deque[Any]):
    """Several requests waiting under one id (a miner that reuses ids), oldest first."""

    __slots__ = ()


_NONE: Any = object()


class PendingRequests:
    """Requests awaiting replies, matched by id in order.

    Ids need not be unique: cpuminer sends every submit with id 4, and a pool answers a connection's
    requests in order, so replies to one id are matched first-in first-out. Requests sent without an
    id get a fresh one from this connection's counter. (One waiting request is held as is, several
    under one id in a queue: the share path, one fresh id per submit, allocates no queue.)
    """

    __slots__ = ("_ids", "_waiting")

    def __init__(self) -> None:
        self._waiting: dict[Any, Any] = {}  # id → the context, or a _Queue of them
        self._ids = itertools.count(1)

    def new_id(self) -> int:
        return next(self._ids)

    def add(self, request_id: Any, context: Any) -> None:
        waiting = self._waiting
        held = waiting.get(request_id, _NONE)
        if held is _NONE:
            waiting[request_id] = context
        elif type(held) is _Queue:
            held.append(context)
        else:
            waiting[request_id] = _Queue((held, context))

    def pop(self, request_id: Any) -> Any | None:
        """The context of the oldest request with this id, or None when nothing waits for it."""
        waiting = self._waiting
        try:
            held = waiting.get(request_id, _NONE)
        except TypeError:  # an unhashable id (a list): nothing of ours
            return None
        if held is _NONE:
            return None
        if type(held) is not _Queue:
            del waiting[request_id]
            return held
        context = held.popleft()
        if not held:
            del waiting[request_id]
        return context

    def expire(self, is_due: Callable[[Any], bool]) -> list[Any]:
        """Pop, oldest id first, the contexts `is_due` says have waited too long; stops at the first
        that has not (with fresh ids, the order requests were sent in)."""
        expired = []
        waiting = self._waiting
        while waiting:
            request_id, held = next(iter(waiting.items()))
            queued = type(held) is _Queue
            if not is_due(held[0] if queued else held):
                break
            if queued:
                expired.append(held.popleft())
                if held:
                    continue
            else:
                expired.append(held)
            del waiting[request_id]
        return expired

    def drain(self) -> list[Any]:
        """Every waiting context, oldest first per id (for a connection that closed)."""
        contexts = list(self.contexts())
        self._waiting.clear()
        return contexts

    def contexts(self) -> Iterator[Any]:
        for held in self._waiting.values():
            if type(held) is _Queue:
                yield from held
            else:
                yield held

    def __len__(self) -> int:
        return sum(len(h) if type(h) is _Queue else 1 for h in self._waiting.values())


class _Session:
    """The state both roles keep, moved only through the table."""

    __slots__ = ("state",)

    def __init__(self) -> None:
        self.state = State.CONNECTED

    def step(self, step: Step) -> Refusal | None:
        outcome = next_state(self.state, step)
        if isinstance(outcome, Refusal):
            return outcome
        self.state = outcome
        return None


# --- our end of a connection with a miner ---------------------------------------------------------


class MinerConnection:
    """We are the pool (or the proxy facing an ASIC): decode requests, encode answers and notifications.

    Subscribe and authorize move the state when their SUCCESSFUL answer is sent through `answer` or
    `relay` (a refused authorize leaves the miner unauthorized). A submit is checked against the state
    when it is read: `receive_data` judges every line of a read before the caller answers any of
    them, so a pool that answers synchronously iterates `events(data)` instead, which judges each
    line only after the caller handled the one before (a pipelined subscribe, authorize and submit).
    """

    __slots__ = ("_framer", "_session")

    def __init__(self, *, max_line: int = DEFAULT_MAX_LINE) -> None:
        self._framer = LineFramer(max_line)
        self._session = _Session()

    @property
    def state(self) -> State:
        return self._session.state

    def receive_data(self, data: bytes) -> list[MinerEvent]:
        return list(self.events(data))

    def events(self, data: bytes) -> Iterator[MinerEvent]:
        session = self._session
        if session.state is _CLOSED:  # nothing read after close counts
            return
        for line in self._framer.feed(data):
            if type(line) is not bytes:
                yield BadLine(line, b"")  # type: ignore[arg-type]  # a LineTooLong
                continue
            message = decode_client_message(line)
            if type(message) is Submit:
                if session.state is not _MINING:
                    refusal = session.step(Step.SUBMIT)
                    if refusal is not None:
                        yield Refused(message, line, StratumError(int(refusal.code), refusal.message), refusal.reason)
                        continue
                yield RequestReceived(message, line)
            elif isinstance(message, ProtocolError):
                yield BadLine(message, line)
            else:
                if type(message) is Configure:
                    refusal = session.step(Step.CONFIGURE)
                    if refusal is not None:
                        yield Refused(message, line, StratumError(int(refusal.code), refusal.message), refusal.reason)
                        continue
                yield RequestReceived(message, line)

    # --- answers: `request` is the decoded message (or a bare id, which moves no state) -------------

    def answer(self, request: ClientMessage | ProtocolError | Any, result: Any) -> bytes:
        """A successful answer (`true` for authorize, the subscribe result for subscribe, ...)."""
        kind = type(request)
        if kind is Subscribe or kind is Authorize:
            self._accepted(request, result)
        return encode_result(getattr(request, "id", request), result)

    def refuse(self, request: ClientMessage | ProtocolError | Any, error: StratumError) -> bytes:
        return encode_error(getattr(request, "id", request), error)

    def relay(self, request: ClientMessage | ProtocolError | Any, reply: Reply) -> bytes:
        """The pool's reply re-addressed to the miner's id, its result and error bytes unchanged."""
        kind = type(request)
        if (kind is Subscribe or kind is Authorize) and reply.failure() is None:
            self._accepted(request, reply.value())
        return encode_reply(getattr(request, "id", request), reply)

    def send(self, message: ServerMessage | bytes) -> bytes:
        """A notification (Notify, SetDifficulty, ...) encoded, or a line as given (a relayed
        notification, byte for byte; a newline is added when missing)."""
        if isinstance(message, bytes):
            return message if message.endswith(b"\n") else message + b"\n"
        return encode_notification_message(message)

    def close(self) -> None:
        self._session.step(Step.CLOSE)

    def _accepted(self, request: Any, result: Any) -> None:
        if type(request) is Subscribe:
            if subscribe_result(result) is not None:
                self._session.step(Step.SUBSCRIBE_ACCEPTED)
        elif type(request) is Authorize and result is True:
            self._session.step(Step.AUTHORIZE_ACCEPTED)


def encode_notification_message(message: ServerMessage) -> bytes:
    """One pool → miner notification as a line."""
    if type(message) is Notify:
        return encode_notify(message)
    if isinstance(message, SetDifficulty):
        return encode_notification("mining.set_difficulty", [message.difficulty])
    if isinstance(message, SetExtranonce):
        return encode_notification("mining.set_extranonce", [message.extranonce1, message.extranonce2_size])
    if isinstance(message, SetVersionMask):
        return encode_notification("mining.set_version_mask", [f"{message.mask:08x}"])
    if isinstance(message, Reconnect):
        params: list[Any] = [] if message.host is None else [message.host, message.port, message.wait]
        return encode_notification("client.reconnect", params)
    if isinstance(message, ShowMessage):
        return encode_notification("client.show_message", [message.message])
    raise TypeError(f"not a notification: {type(message).__name__}")


# --- our end of a connection with a pool ----------------------------------------------------------


class PoolConnection:
    """We are the miner (or the proxy's upstream): encode requests under ids we pick, decode replies
    and notifications.

    A reply is matched to the oldest request with its id (`ReplyReceived` carries the request's method
    and the caller's context); a reply nobody waits for is an `UnmatchedReply`, not a crash.
    Notifications are delivered in the order they arrive, before or after the reply they belong to
    (pools send set_difficulty and notify before the subscribe reply), and a notification that
    carries a pending request's id is never taken for its reply. The state moves when a subscribe
    or authorize reply succeeds; `subscription` keeps the subscribe result.
    """

    __slots__ = ("_framer", "_pending", "_session", "subscription")

    def __init__(self, *, max_line: int = DEFAULT_MAX_LINE) -> None:
        self._framer = LineFramer(max_line)
        self._pending = PendingRequests()
        self._session = _Session()
        self.subscription: SubscribeResult | None = None

    @property
    def state(self) -> State:
        return self._session.state

    @property
    def pending(self) -> PendingRequests:
        """The requests waiting for replies; contexts are `(method, context)` pairs."""
        return self._pending

    def new_id(self) -> int:
        return self._pending.new_id()

    def send_request(
        self, method: str, params: list[Any], context: Any = None, *, request_id: Any = None
    ) -> tuple[Any, bytes]:
        """A request to send, and the id it went under (a fresh one unless `request_id` is given:
        cpuminer's every-submit-is-id-4 is legal, replies then match in order)."""
        if request_id is None:
            request_id = self._pending.new_id()
        self._pending.add(request_id, (method, context))
        return request_id, encode_request(request_id, method, params)

    def expect(self, request_id: Any, method: str, context: Any = None) -> None:
        """Wait for a reply to a line the caller wrote itself (a raw or deliberately bad request)."""
        self._pending.add(request_id, (method, context))

    def send(self, message: ClientMessage | bytes) -> bytes:
        """A request struct encoded as given (its own id; no reply expected), or a line as given
        (an answer to the pool's own request, say)."""
        if isinstance(message, bytes):
            return message if message.endswith(b"\n") else message + b"\n"
        return msgspec.json.encode(message) + b"\n"

    def answer(self, request_id: Any, result: Any) -> bytes:
        """An answer to the pool's own request (client.get_version, mining.ping)."""
        return encode_result(request_id, result)

    def refuse(self, request_id: Any, error: StratumError) -> bytes:
        return encode_error(request_id, error)

    def receive_data(self, data: bytes) -> list[PoolEvent]:
        return list(self.events(data))

    def events(self, data: bytes) -> Iterator[PoolEvent]:
        pending = self._pending
        if self._session.state is _CLOSED:
            return
        for line in self._framer.feed(data):
            if type(line) is not bytes:
                yield BadLine(line, b"")  # type: ignore[arg-type]  # a LineTooLong
                continue
            message = decode_server_message(line)
            if type(message) is Reply:
                waiting = pending.pop(message.id)
                if waiting is None:
                    yield UnmatchedReply(message, line)
                    continue
                method, context = waiting
                if method == "mining.subscribe" or method == "mining.authorize":
                    self._accepted(method, message)
                yield ReplyReceived(message, line, method, context)
            elif isinstance(message, ProtocolError):
                yield BadLine(message, line)
            else:
                yield Notification(message, line)

    def close(self) -> list[Any]:
        """The connection is gone: the contexts of every request that will never be answered."""
        self._session.step(Step.CLOSE)
        return [context for _, context in self._pending.drain()]

    def _accepted(self, method: str, reply: Reply) -> None:
        if reply.failure() is not None:
            return
        value = reply.value()
        if method == "mining.subscribe":
            result = subscribe_result(value)
            if result is not None:
                self.subscription = result
                self._session.step(Step.SUBSCRIBE_ACCEPTED)
        elif value is True:
            self._session.step(Step.AUTHORIZE_ACCEPTED)
