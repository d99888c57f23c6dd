"""The asyncio glue for `protocol.connection`: one `asyncio.Protocol` that moves bytes, nothing else.

`protocol/` stays sans-I/O (no asyncio in it), so the glue lives with the code that runs on a loop.
A read is handed to the owner as the iterator of its events (so the owner can answer a whole read
with one write); requests made with `request()` are awaited here and never reach the owner; on
close the owner gets the contexts of every request left unanswered. Write backpressure: `drain()`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar, cast

from protocol.connection import MinerConnection, PoolConnection, PoolEvent, ReplyReceived
from protocol.framing import DEFAULT_MAX_LINE
from protocol.messages import Reply

__all__ = ["StratumConnection", "open_connection"]

C = TypeVar("C", MinerConnection, PoolConnection)
Handler = Callable[["StratumConnection[C]", Iterator[Any]], None]
CloseHandler = Callable[["StratumConnection[C]", Exception | None, list[Any]], None]


class StratumConnection(asyncio.Protocol, Generic[C]):
    """One Stratum connection on a transport. `on_events(self, events)` gets each read's events (it
    should consume them: what it leaves is dropped); `on_close(self, exc, unanswered)` once."""

    def __init__(
        self, connection: C, on_events: Handler[C] | None = None, *, on_close: CloseHandler[C] | None = None
    ) -> None:
        self.connection: C = connection
        self._on_events: Handler[C] | None = on_events
        self._on_close: CloseHandler[C] | None = on_close
        self._awaited = 0  # requests made with request() still unanswered
        self.transport: asyncio.Transport | None = None
        self._writable: asyncio.Future[None] | None = None
        self.closed: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()

    # --- asyncio.Protocol ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not an isinstance check: uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        events: Iterator[Any] = self.connection.events(data)
        if self._awaited:
            events = self._resolving(events)
        if self._on_events is not None:
            self._on_events(self, events)
        for _ in events:  # whatever the owner left (or all of it, without an owner): still read
            pass

    def _resolving(self, events: Iterator[PoolEvent]) -> Iterator[PoolEvent]:
        for event in events:
            if type(event) is ReplyReceived and type(event.context) is _Waiter:
                self._awaited -= 1
                event.context.resolve(event.reply)
            else:
                yield event

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        error = exc or ConnectionResetError("connection closed")
        connection = self.connection
        unanswered: list[Any] = []
        if isinstance(connection, PoolConnection):
            unanswered = connection.close()
        else:
            connection.close()
        left = []
        for context in unanswered:
            if type(context) is _Waiter:
                context.fail(error)
            else:
                left.append(context)
        self._awaited = 0
        if self._writable is not None and not self._writable.done():
            self._writable.set_exception(error)
        if not self.closed.done():
            self.closed.set_result(exc)
        if self._on_close is not None:
            self._on_close(self, exc, left)

    def pause_writing(self) -> None:
        if self._writable is None or self._writable.done():
            self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    # --- sending ------------------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def send(self, data: bytes) -> None:
        """Write encoded lines. Raises ConnectionResetError when closed; callers that send a lot
        await `drain()`."""
        if self.transport is None or self.transport.is_closing():
            raise ConnectionResetError("connection closed")
        self.transport.write(data)

    def write(self, data: bytes) -> None:
        """Write if still open (a late answer to a miner that left is nobody's error)."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    async def drain(self) -> None:
        """Wait while the peer is not reading (the transport's buffer is above its high mark)."""
        if self._writable is not None and not self._writable.done():
            await self._writable

    async def request(
        self, method: str, params: list[Any], *, request_id: Any = None, timeout: float | None = 30.0
    ) -> Reply:
        """Send a request to the pool and wait for its reply (a fresh id unless `request_id` is given)."""
        connection = self.connection
        if not isinstance(connection, PoolConnection):
            raise TypeError("only a connection with a pool sends requests")
        if not self.is_open:
            raise ConnectionResetError("connection closed")
        waiter = _Waiter()
        _, line = connection.send_request(method, params, waiter, request_id=request_id)
        self._awaited += 1
        self.send(line)
        await self.drain()
        async with asyncio.timeout(timeout):  # (not wait_for: on 3.11 it can swallow a cancellation)
            return await waiter.future

    async def expect_reply(self, request_id: Any, line: bytes, *, timeout: float | None = 30.0) -> Reply:
        """Send a line written by hand and wait for the reply carrying `request_id`."""
        connection = self.connection
        if not isinstance(connection, PoolConnection):
            raise TypeError("only a connection with a pool expects replies")
        waiter = _Waiter()
        connection.expect(request_id, "", waiter)
        self._awaited += 1
        self.send(line)
        async with asyncio.timeout(timeout):
            return await waiter.future

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    @property
    def peer(self) -> tuple[str, int] | None:
        if self.transport is None:
            return None
        peer = self.transport.get_extra_info("peername")
        return (peer[0], peer[1]) if peer else None


class _Waiter:
    """The context of a request someone awaits (a distinct type, so it is told apart in one check)."""

    __slots__ = ("future",)

    def __init__(self) -> None:
        self.future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()

    def resolve(self, reply: Reply) -> None:
        if not self.future.done():
            self.future.set_result(reply)

    def fail(self, error: Exception) -> None:
        if not self.future.done():
            self.future.set_exception(error)


async def open_connection(
    host: str,
    port: int,
    on_events: Handler[PoolConnection] | None = None,
    *,
    max_line: int = DEFAULT_MAX_LINE,
    on_close: CloseHandler[PoolConnection] | None = None,
) -> StratumConnection[PoolConnection]:
    """Connect to a pool as a miner would."""
    loop = asyncio.get_running_loop()
    _, stream = await loop.create_connection(
        lambda: StratumConnection(PoolConnection(max_line=max_line), on_events, on_close=on_close), host, port
    )
    return stream
