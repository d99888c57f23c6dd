"""The sans-I/O connections (`protocol.connection`): first over a real loopback socket through the
asyncio shim (`simulation.stream.StratumConnection`), against a small pool built on a MinerConnection;
then fed bytes directly, and fuzzed.

Every wait is bounded (BOUND) so a bug fails the test instead of hanging it; no test asserts on time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager
from typing import Any, TypeAlias, cast

import pytest
import uvloop
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.connection import (
    BadLine,
    MinerConnection,
    Notification,
    PendingRequests,
    PoolConnection,
    Refused,
    ReplyReceived,
    RequestReceived,
    UnmatchedReply,
)
from protocol.errors import (
    ErrorCode,
    InvalidJSON,
    InvalidMessage,
    LineTooLong,
    ProtocolError,
    RejectReason,
    StratumError,
)
from protocol.messages import (
    Authorize,
    Notify,
    Reconnect,
    Reply,
    Request,
    SetDifficulty,
    SetExtranonce,
    SetVersionMask,
    ShowMessage,
    Submit,
    Subscribe,
    SubscribeResult,
    decode_server_message,
    encode_request,
    encode_result,
    subscribe_result,
)
from protocol.state import State
from simulation.stream import StratumConnection, open_connection
from tests.vectors import json_lines

BOUND = 20.0  # seconds: a hang guard for whole scenarios, never an expectation
HOST = "127.0.0.1"

LOOPS = [pytest.param(asyncio.new_event_loop, id="asyncio"), pytest.param(uvloop.new_event_loop, id="uvloop")]

Message: TypeAlias = Any  # a decoded message, reply, or typed error
Handler = Callable[["ServerConnection", Message], None]


LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def run(loop_factory: LoopFactory, scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(asyncio.wait_for(scenario(), BOUND))


class ServerConnection(StratumConnection[MinerConnection]):
    """The pool's side of one connection; keeps its transport so a test can stop reading."""

    transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it


class Pool:
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections: list[ServerConnection] = []
        self.server: asyncio.Server | None = None

    def _connection(self) -> ServerConnection:
        connection = ServerConnection(MinerConnection(), self._events)  # type: ignore[arg-type]
        self.connections.append(connection)
        return connection

    def _events(self, conn: ServerConnection, events: Iterator[Any]) -> None:
        for event in events:  # requests, legal or not (this pool answers submits without a handshake)
            self.handler(conn, event.message if isinstance(event, RequestReceived | Refused) else event.error)

    @property
    def port(self) -> int:
        assert self.server is not None
        port: int = self.server.sockets[0].getsockname()[1]
        return port


@asynccontextmanager
async def pool(handler: Handler) -> AsyncIterator[Pool]:
    p = Pool(handler)
    p.server = await asyncio.get_running_loop().create_server(p._connection, HOST, 0)
    try:
        yield p
    finally:
        for connection in p.connections:
            connection.close()
        p.server.close()
        await p.server.wait_closed()


def vector_line(number: str, method: str) -> bytes:
    (line,) = [x for x in json_lines(number) if x.method == method]
    return line.data + b"\n"


def id1_version_mask() -> bytes:
    """06: a set_version_mask notification that carries id 1."""
    (line,) = [x for x in json_lines("06") if x.method == "mining.set_version_mask" and x.value["id"] == 1]
    return line.data + b"\n"


# --- request / reply matching ---------------------------------------------------------------------------


@pytest.mark.parametrize("loop_factory", LOOPS)
def test_replies_to_a_repeated_id_are_matched_in_order(loop_factory: Callable[[], asyncio.AbstractEventLoop]) -> None:
    """cpuminer sends every submit with id 4; the pool answers in order; each caller gets its own reply."""

    async def scenario() -> None:
        waiting: list[Submit] = []

        def answer_when_three_wait(conn: ServerConnection, message: Message) -> None:
            assert isinstance(message, Submit) and message.id == 4
            waiting.append(message)
            if len(waiting) == 3:  # all three pending on the client at once, answered in one write
                conn.send(b"".join(encode_result(m.id, m.params.nonce) for m in waiting))

        unmatched: list[Message] = []
        async with pool(answer_when_three_wait) as p:
            client = await open_connection(HOST, p.port, lambda _, events: unmatched.extend(events))
            requests = [
                asyncio.ensure_future(
                    client.request("mining.submit", ["w", "1", "00000000", "64b3f3ec", f"{n:08x}"], request_id=4)
                )
                for n in range(3)
            ]
            replies = await asyncio.gather(*requests)
            assert [r.id for r in replies] == [4, 4, 4]
            assert [r.value() for r in replies] == ["00000000", "00000001", "00000002"]
            assert unmatched == []
            client.close()

    run(loop_factory, scenario)


def test_pending_requests_fifo_per_id_and_fresh_ids() -> None:
    pending = PendingRequests()
    first, second = pending.new_id(), pending.new_id()
    assert first != second
    for context in ("a", "b", "c"):
        pending.add(4, context)
    pending.add(first, "x")
    assert len(pending) == 4
    assert [pending.pop(4), pending.pop(4)] == ["a", "b"]
    assert pending.pop(99) is None
    assert pending.drain() == ["c", "x"]
    assert len(pending) == 0 and pending.pop(4) is None


def test_pending_requests_expire_oldest_first_and_stop_at_the_first_not_due() -> None:
    """The proxy's submit timeout: fresh ids are sent in order, so the oldest are at the front."""
    pending = PendingRequests()
    for sent_at in (1.0, 2.0, 3.0, 2.5):
        pending.add(pending.new_id(), sent_at)
    assert pending.expire(lambda sent_at: sent_at < 2.8) == [1.0, 2.0]
    assert list(pending.contexts()) == [3.0, 2.5] and len(pending) == 2
    assert pending.expire(lambda sent_at: True) == [3.0, 2.5] and len(pending) == 0
    assert pending.pop(["unhashable"]) is None


@pytest.mark.parametrize("loop_factory", LOOPS)
def test_notifications_before_a_reply_reach_on_message(loop_factory: Callable[[], asyncio.AbstractEventLoop]) -> None:
    """Pools send set_difficulty / notify before the subscribe reply (OCEAN, public-pool); a notification that
    happens to carry the pending request's id (06: set_version_mask with id 1) must not be taken for the reply."""

    async def scenario() -> None:
        def answer(conn: ServerConnection, message: Message) -> None:
            assert isinstance(message, Subscribe)
            conn.send(id1_version_mask())
            conn.send(vector_line("02", "mining.set_difficulty") + vector_line("02", "mining.notify"))
            conn.send(b'{"id":99,"result":true,"error":null}\n')  # a reply nobody waits for
            conn.send(
                b'{"id":1,"error":null,"result":[[["mining.notify","57a6f098"]],"57a6f098",4]}\n'
                b'{"id":null,"method":"client.show_message","params":["after"]}\n'
            )

        seen: list[Message] = []
        after = asyncio.Event()

        def on_events(_: StratumConnection[PoolConnection], events: Iterator[Any]) -> None:
            for event in events:
                assert isinstance(event, Notification | UnmatchedReply), event
                message = event.message if isinstance(event, Notification) else event.reply
                seen.append(message)
                if isinstance(message, ShowMessage):
                    after.set()

        async with pool(answer) as p:
            client = await open_connection(HOST, p.port, on_events)
            reply = await client.request("mining.subscribe", ["bitaxe v2.2"], request_id=1)
            assert isinstance(reply, Reply) and reply.id == 1
            assert subscribe_result(reply.value()) is not None
            before_reply = list(seen[:4])
            assert [type(m) for m in before_reply] == [SetVersionMask, SetDifficulty, Notify, Reply]
            assert before_reply[0] == SetVersionMask(0x1FFFE000)
            assert before_reply[1] == SetDifficulty(512.0)
            assert isinstance(before_reply[3], Reply) and before_reply[3].id == 99
            await after.wait()
            assert seen[4:] == [ShowMessage("after")]
            client.close()

    run(loop_factory, scenario)


# --- connection loss ------------------------------------------------------------------------------------


@pytest.mark.parametrize("loop_factory", LOOPS)
def test_connection_loss_fails_every_pending_request(loop_factory: Callable[[], asyncio.AbstractEventLoop]) -> None:
    async def scenario() -> None:
        received: list[Message] = []

        def hang_up_after_two(conn: ServerConnection, message: Message) -> None:
            received.append(message)
            if len(received) == 2:
                conn.close()

        closes: list[Exception | None] = []
        async with pool(hang_up_after_two) as p:
            loop = asyncio.get_running_loop()
            _, client = await loop.create_connection(
                lambda: StratumConnection(PoolConnection(), on_close=lambda _, exc, left: closes.append(exc)),
                HOST,
                p.port,
            )
            requests = [
                asyncio.ensure_future(client.request("mining.authorize", ["w", "x"], request_id=4)),
                asyncio.ensure_future(client.request("mining.submit", ["w", "1", "00", "64b3f3ec", "00000000"])),
            ]
            outcomes = await asyncio.gather(*requests, return_exceptions=True)
            assert all(isinstance(o, ConnectionError) for o in outcomes), outcomes
            await client.closed
            assert not client.is_open and len(closes) == 1
            with pytest.raises(ConnectionError):
                client.send(encode_request(5, "mining.submit", []))
            with pytest.raises(ConnectionError):
                await client.request("mining.subscribe", [])

    run(loop_factory, scenario)


# --- write backpressure ---------------------------------------------------------------------------------

HIGH_WATER = 256 * 1024
MAX_SEND = 128 * 1024 * 1024  # bound on the fill loop (kernel socket buffers on loopback take a few MB)


async def fill_until_paused(
    transport: asyncio.Transport, client: StratumConnection[PoolConnection], line: bytes
) -> int:
    transport.set_write_buffer_limits(high=HIGH_WATER)
    sent = 0
    while transport.get_write_buffer_size() <= HIGH_WATER:
        assert sent < MAX_SEND, "the peer's socket never filled up"
        client.send(line)
        sent += 1
        if sent % 64 == 0:
            await asyncio.sleep(0)  # let the loop push what the kernel will take
    return sent


@pytest.mark.parametrize("loop_factory", LOOPS)
def test_drain_waits_for_a_peer_that_does_not_read_without_blocking_the_loop(
    loop_factory: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    async def scenario() -> None:
        got = 0
        all_arrived = asyncio.Event()
        expected: list[int] = []

        def handler(conn: ServerConnection, message: Message) -> None:
            nonlocal got
            if isinstance(message, Subscribe):
                conn.send(encode_result(message.id, True))
                return
            assert isinstance(message, Request) and message.method == "mining.noise"
            got += 1
            if expected and got == expected[0]:
                all_arrived.set()

        async with pool(handler) as p:
            loop = asyncio.get_running_loop()
            transport, client = await loop.create_connection(lambda: StratumConnection(PoolConnection()), HOST, p.port)
            while not p.connections:  # bounded by BOUND
                await asyncio.sleep(0)
            p.connections[0].transport.pause_reading()  # the peer stops reading

            line = encode_request(None, "mining.noise", ["n" * 8000])
            sent = await fill_until_paused(transport, client, line)
            drain = asyncio.ensure_future(client.drain())
            for _ in range(20):
                await asyncio.sleep(0)
            assert not drain.done()
            assert transport.get_write_buffer_size() > HIGH_WATER

            # The loop is not blocked: another miner on the same loop is served meanwhile.
            other = await open_connection(HOST, p.port)
            assert (await other.request("mining.subscribe", ["other"])).value() is True
            assert not drain.done()

            expected.append(sent)
            p.connections[0].transport.resume_reading()  # the peer reads again
            await drain
            low, _ = transport.get_write_buffer_limits()
            assert transport.get_write_buffer_size() <= low
            await all_arrived.wait()  # every line got through, none lost to backpressure
            assert got == sent
            client.close()
            other.close()

    run(loop_factory, scenario)


@pytest.mark.parametrize("loop_factory", LOOPS)
def test_drain_fails_instead_of_hanging_when_the_peer_goes_away(
    loop_factory: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    async def scenario() -> None:
        async with pool(lambda conn, message: None) as p:
            loop = asyncio.get_running_loop()
            transport, client = await loop.create_connection(lambda: StratumConnection(PoolConnection()), HOST, p.port)
            while not p.connections:
                await asyncio.sleep(0)
            p.connections[0].transport.pause_reading()
            await fill_until_paused(transport, client, encode_request(None, "mining.noise", ["n" * 8000]))
            drain = asyncio.ensure_future(client.drain())
            await asyncio.sleep(0)
            assert not drain.done()
            p.connections[0].transport.abort()  # the miner vanishes with our data unread
            with pytest.raises(ConnectionError):
                await drain
            await client.closed

    run(loop_factory, scenario)


# --- sans-I/O: the connection with a pool (we are the miner) --------------------------------------------

SUBSCRIBE_RESULT = b'{"id":1,"result":[[["mining.notify","ae6812eb4cd7735a"]],"08000002",4],"error":null}\n'


def test_pool_connection_matches_replies_by_id_with_method_and_context() -> None:
    conn = PoolConnection()
    sub_id, sub_line = conn.send_request("mining.subscribe", ["cpuminer/2.5.1"], "sub")
    auth_id, _ = conn.send_request("mining.authorize", ["w", "x"], "auth")
    assert (sub_id, auth_id) == (1, 2) and sub_line == encode_request(1, "mining.subscribe", ["cpuminer/2.5.1"])
    assert conn.state == State.CONNECTED
    (subscribed,) = conn.receive_data(SUBSCRIBE_RESULT)
    assert isinstance(subscribed, ReplyReceived)
    assert (subscribed.method, subscribed.context, subscribed.line) == (
        "mining.subscribe",
        "sub",
        SUBSCRIBE_RESULT[:-1],
    )
    assert conn.state == State.SUBSCRIBED and conn.subscription == SubscribeResult("08000002", 4)
    (authorized,) = conn.receive_data(b'{"id":2,"result":true,"error":null}\n')
    assert isinstance(authorized, ReplyReceived) and authorized.context == "auth"
    assert conn.state == State.MINING
    # A reply nobody waits for (a second answer to id 2, or a late one) is an event, not a crash.
    (late,) = conn.receive_data(b'{"id":2,"result":true,"error":null}\n')
    assert isinstance(late, UnmatchedReply) and late.reply.id == 2
    assert len(conn.pending) == 0


def test_pool_connection_refused_authorize_does_not_authorize() -> None:
    conn = PoolConnection()
    conn.send_request("mining.subscribe", [])
    conn.send_request("mining.authorize", ["w", "x"])
    events = conn.receive_data(SUBSCRIBE_RESULT + b'{"id":2,"result":null,"error":[24,"unauthorized",null]}\n')
    assert [type(e) for e in events] == [ReplyReceived, ReplyReceived]
    assert conn.state == State.SUBSCRIBED


def test_pool_connection_repeated_id_fifo_and_split_reads() -> None:
    """cpuminer: every submit is id 4; replies match in order, whatever the read boundaries."""
    conn = PoolConnection()
    for n in range(3):
        conn.send_request("mining.submit", ["w", "1", "00000000", "64b3f3ec", f"{n:08x}"], n, request_id=4)
    data = b"".join(encode_result(4, n) for n in range(3))
    events = [e for i in range(len(data)) for e in conn.receive_data(data[i : i + 1])]  # one byte per read
    assert [(type(e), e.context) for e in events if isinstance(e, ReplyReceived)] == [
        (ReplyReceived, n) for n in range(3)
    ]
    assert len(events) == 3


def test_pool_connection_notifications_before_the_reply_keep_their_bytes_and_order() -> None:
    conn = PoolConnection()
    conn.send_request("mining.subscribe", ["bitaxe"])
    lines = [id1_version_mask(), vector_line("02", "mining.set_difficulty"), vector_line("02", "mining.notify")]
    events = conn.receive_data(b"".join(lines) + SUBSCRIBE_RESULT)
    assert [type(e) for e in events] == [Notification, Notification, Notification, ReplyReceived]
    # The set_version_mask carrying id 1 is not the subscribe's reply; every line is kept byte for byte.
    assert [e.line + b"\n" for e in events[:3]] == lines
    assert [type(e.message) for e in events[:3] if isinstance(e, Notification)] == [
        SetVersionMask,
        SetDifficulty,
        Notify,
    ]


def test_pool_connection_close_hands_back_what_was_never_answered() -> None:
    conn = PoolConnection()
    conn.send_request("mining.submit", [], "a")
    conn.send_request("mining.submit", [], "b", request_id=4)
    conn.expect("raw", "mining.submit", "c")
    assert conn.close() == ["a", "b", "c"]
    assert conn.state == State.CLOSED
    assert conn.receive_data(encode_result(1, True)) == []


# --- sans-I/O: the connection with a miner (we are the pool) --------------------------------------------

SUB = encode_request(1, "mining.subscribe", ["bitaxe/BM1370/v2.9.0"])
CONFIGURE = encode_request(2, "mining.configure", [["version-rolling"], {"version-rolling.mask": "ffffffff"}])
AUTH = encode_request(3, "mining.authorize", ["acct.hk.w1", "x"])
SUBMIT = encode_request(4, "mining.submit", ["acct.hk.w1", "1", "00000000", "64b3f3ec", "00000001"])
EN1_RESULT = [[["mining.notify", "1"]], "08000002", 4]


def answer_all(conn: MinerConnection, data: bytes) -> list[Any]:
    """Iterate events(), answering subscribe and authorize as a synchronous pool does."""
    seen: list[Any] = []
    for event in conn.events(data):
        seen.append(event)
        if isinstance(event, RequestReceived):
            if isinstance(event.message, Subscribe):
                conn.answer(event.message, EN1_RESULT)
            elif isinstance(event.message, Authorize):
                conn.answer(event.message, True)
    return seen


def test_miner_connection_pipelined_bitaxe_handshake_then_submit() -> None:
    """ESP-Miner pipelines subscribe, configure (after subscribe), authorize; a submit after them is legal."""
    conn = MinerConnection()
    events = answer_all(conn, SUB + CONFIGURE + AUTH + SUBMIT)
    assert [type(e) for e in events] == [RequestReceived] * 4
    assert isinstance(events[3].message, Submit) and events[3].line + b"\n" == SUBMIT
    assert conn.state == State.MINING


def test_miner_connection_receive_data_judges_a_read_before_any_answer() -> None:
    conn = MinerConnection()
    events = conn.receive_data(SUB + AUTH + SUBMIT)
    assert isinstance(events[2], Refused) and events[2].error.code == ErrorCode.NOT_SUBSCRIBED
    assert events[2].reason == RejectReason.NOT_SUBSCRIBED == "not-subscribed"


@pytest.mark.parametrize(
    ("handshake", "code", "reason"),
    [
        (b"", ErrorCode.NOT_SUBSCRIBED, "not-subscribed"),
        (SUB, ErrorCode.UNAUTHORIZED, "unauthorized"),
        (AUTH, ErrorCode.NOT_SUBSCRIBED, "not-subscribed"),
        (CONFIGURE, ErrorCode.NOT_SUBSCRIBED, "not-subscribed"),  # bmminer configures first
    ],
)
def test_miner_connection_refuses_a_submit_out_of_order(handshake: bytes, code: int, reason: str) -> None:
    conn = MinerConnection()
    answer_all(conn, handshake)
    (refused,) = conn.receive_data(SUBMIT)
    assert isinstance(refused, Refused) and isinstance(refused.message, Submit)
    assert (refused.error.code, refused.reason) == (code, reason)
    answer = decode_server_message(conn.refuse(refused.message, refused.error).rstrip(b"\n"))
    assert isinstance(answer, Reply) and answer.id == 4
    failure = answer.failure()
    assert failure is not None and failure.code == code


def test_miner_connection_refused_authorize_leaves_submits_unauthorized() -> None:
    conn = MinerConnection()
    for event in conn.events(SUB + AUTH):
        assert isinstance(event, RequestReceived)
        if isinstance(event.message, Subscribe):
            conn.answer(event.message, EN1_RESULT)
        else:
            conn.refuse(event.message, StratumError(ErrorCode.UNAUTHORIZED, "no"))
    (refused,) = conn.receive_data(SUBMIT)
    assert isinstance(refused, Refused) and refused.error.code == ErrorCode.UNAUTHORIZED


def test_miner_connection_relays_a_pool_reply_readdressed_and_moves_on_success() -> None:
    """The proxy relays the pool's subscribe/authorize replies: ids re-addressed, bytes unchanged."""
    conn = MinerConnection()
    (sub, auth) = conn.receive_data(SUB + AUTH)
    assert isinstance(sub, RequestReceived) and isinstance(auth, RequestReceived)
    pool_reply = decode_server_message(SUBSCRIBE_RESULT.replace(b'"id":1', b'"id":77').rstrip(b"\n"))
    assert isinstance(pool_reply, Reply)
    relayed = conn.relay(sub.message, pool_reply)
    assert relayed == SUBSCRIBE_RESULT  # id 1 again, result bytes as the pool sent them
    assert conn.state == State.SUBSCRIBED
    refused = decode_server_message(b'{"id":78,"result":false,"error":[24,"unauthorized",null]}')
    assert isinstance(refused, Reply)
    conn.relay(auth.message, refused)
    assert conn.state == State.SUBSCRIBED
    conn.relay(auth.message, decode_server_message(b'{"id":79,"result":true,"error":null}'))  # type: ignore[arg-type]
    assert conn.state == State.MINING


def test_miner_connection_sends_notifications_encoded_or_byte_for_byte() -> None:
    conn = MinerConnection()
    raw = vector_line("02", "mining.notify")
    assert conn.send(raw) == raw and conn.send(raw.rstrip(b"\n")) == raw
    for message in (
        SetDifficulty(512.0),
        SetVersionMask(0x1FFFE000),
        SetExtranonce("08000002", 4),
        Reconnect("127.0.0.1", 3333, 5),
        Reconnect(),
        ShowMessage("hello"),
        decode_server_message(raw.rstrip(b"\n")),
    ):
        line = conn.send(message)  # type: ignore[arg-type]
        assert line.endswith(b"\n") and decode_server_message(line[:-1]) == message


def test_miner_connection_bad_lines_are_events_with_their_bytes() -> None:
    conn = MinerConnection(max_line=64)
    events = conn.receive_data(b'{"id": 7, "method": "mining.submit", "params": [1, 2]}\nnot json\n' + b"x" * 100)
    assert [type(e) for e in events] == [BadLine, BadLine, BadLine]
    assert isinstance(events[0].error, InvalidMessage) and events[0].error.id == 7
    assert events[1].line == b"not json" and isinstance(events[1].error, InvalidJSON)
    assert isinstance(events[2].error, LineTooLong) and events[2].line == b""
    conn.close()
    assert conn.state == State.CLOSED and conn.receive_data(SUB) == []


# --- fuzzing: no input makes receive_data raise -----------------------------------------------------------

_STRATUM_BITS = st.sampled_from(
    [
        SUB,
        AUTH,
        SUBMIT,
        CONFIGURE,
        SUBSCRIBE_RESULT,
        b"\n",
        b"\r\n",
        b"{",
        b"}",
        b'"id":',
        b"null",
        b"\xff",
        b"[[",
        b",",
    ]
)
_CHUNKS = st.lists(st.one_of(st.binary(max_size=80), _STRATUM_BITS), max_size=30)


@settings(max_examples=300, deadline=None)
@given(_CHUNKS)
def test_miner_connection_receive_data_never_raises(chunks: list[bytes]) -> None:
    conn = MinerConnection(max_line=256)
    for chunk in chunks:
        for event in conn.receive_data(chunk):
            assert isinstance(event, RequestReceived | Refused | BadLine)
            if isinstance(event, BadLine):
                assert isinstance(event.error, ProtocolError)


@settings(max_examples=300, deadline=None)
@given(_CHUNKS)
def test_pool_connection_receive_data_never_raises(chunks: list[bytes]) -> None:
    conn = PoolConnection(max_line=256)
    conn.send_request("mining.subscribe", [])
    conn.send_request("mining.submit", [], request_id=4)
    for chunk in chunks:
        for event in conn.receive_data(chunk):
            assert isinstance(event, ReplyReceived | UnmatchedReply | Notification | BadLine)
