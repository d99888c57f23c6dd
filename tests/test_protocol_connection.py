"""StratumConnection over a real loopback socket, against a small pool built on StratumConnection(role="server").

Every wait is bounded (BOUND) so a bug fails the test instead of hanging it; no test asserts on time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any, cast

import pytest
import uvloop

from protocol.connection import Message, PendingRequests, StratumConnection, open_connection
from protocol.messages import (
    Notify,
    Reply,
    Request,
    SetDifficulty,
    SetVersionMask,
    ShowMessage,
    Submit,
    Subscribe,
    encode_request,
    encode_result,
    subscribe_result,
)
from tests.vectors import json_lines

BOUND = 20.0  # seconds: a hang guard for whole scenarios, never an expectation
HOST = "127.0.0.1"

LOOPS = [pytest.param(asyncio.new_event_loop, id="asyncio"), pytest.param(uvloop.new_event_loop, id="uvloop")]

Handler = Callable[["ServerConnection", Message], None]


LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def run(loop_factory: LoopFactory, scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(asyncio.wait_for(scenario(), BOUND))


class ServerConnection(StratumConnection):
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
        connection = ServerConnection("server", self.handler)  # type: ignore[arg-type]
        self.connections.append(connection)
        return connection

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
            client = await open_connection(HOST, p.port, lambda _, m: unmatched.append(m))
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

        def on_message(_: StratumConnection, message: Message) -> None:
            seen.append(message)
            if isinstance(message, ShowMessage):
                after.set()

        async with pool(answer) as p:
            client = await open_connection(HOST, p.port, on_message)
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
                lambda: StratumConnection("client", on_close=lambda _, exc: closes.append(exc)), HOST, p.port
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


async def fill_until_paused(transport: asyncio.Transport, client: StratumConnection, line: bytes) -> int:
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
            transport, client = await loop.create_connection(lambda: StratumConnection("client"), HOST, p.port)
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
            transport, client = await loop.create_connection(lambda: StratumConnection("client"), HOST, p.port)
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
