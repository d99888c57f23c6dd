"""The asyncio layer: a Stratum V1 connection on `asyncio.Protocol` that only moves bytes.

Framing and decoding are the sans-I/O pieces of this package; this module adds the transport,
matching replies to requests, and write backpressure. It serves both sides: `role="client"`
decodes what a pool sends (replies, notifications), `role="server"` decodes what a miner sends.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
from collections.abc import Callable
from typing import Any, Literal, cast

from protocol.errors import ProtocolError
from protocol.framing import DEFAULT_MAX_LINE, LineFramer
from protocol.messages import (
    ClientMessage,
    Reply,
    ServerMessage,
    decode_client_message,
    decode_server_message,
    encode_request,
)

Message = ClientMessage | ServerMessage | ProtocolError


class PendingRequests:
    """Requests awaiting replies, matched by id in order (sans-I/O).

    Ids need not be unique: cpuminer sends every submit with id 4, and a pool answers a connection's
    requests in order, so replies to one id are matched first-in first-out. Requests sent without an
    id get a fresh one from this connection's counter.
    """

    def __init__(self) -> None:
        self._waiting: dict[Any, collections.deque[Any]] = {}
        self._ids = itertools.count(1)

    def new_id(self) -> int:
        return next(self._ids)

    def add(self, request_id: Any, context: Any) -> None:
        queue = self._waiting.get(request_id)
        if queue is None:
            queue = self._waiting[request_id] = collections.deque()
        queue.append(context)

    def pop(self, request_id: Any) -> Any | None:
        """The context of the oldest request with this id, or None when nothing waits for it."""
        queue = self._waiting.get(request_id)
        if not queue:
            return None
        context = queue.popleft()
        if not queue:
            del self._waiting[request_id]
        return context

    def drain(self) -> list[Any]:
        """Every waiting context, oldest first per id (for a connection that closed)."""
        contexts = [c for queue in self._waiting.values() for c in queue]
        self._waiting.clear()
        return contexts

    def __len__(self) -> int:
        return sum(len(q) for q in self._waiting.values())


class StratumConnection(asyncio.Protocol):
    """One Stratum connection. `on_message` receives every decoded line that is not a reply to one
    of our own requests (notifications, requests, typed errors for bad lines); `on_close` once."""

    def __init__(
        self,
        role: Literal["client", "server"],
        on_message: Callable[[StratumConnection, Message], None] | None = None,
        *,
        max_line: int = DEFAULT_MAX_LINE,
        on_close: Callable[[StratumConnection, Exception | None], None] | None = None,
    ) -> None:
        self.role = role
        self._decode = decode_server_message if role == "client" else decode_client_message
        self._framer = LineFramer(max_line)
        self._on_message = on_message
        self._on_close = on_close
        self._pending = PendingRequests()
        self._transport: asyncio.Transport | None = None
        self._writable: asyncio.Future[None] | None = None
        self.closed: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()

    # --- asyncio.Protocol ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not an isinstance check: uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        for line in self._framer.feed(data):
            message = self._decode(line) if isinstance(line, bytes) else line
            if isinstance(message, Reply):
                future = self._pending.pop(message.id)
                if future is not None:
                    if not future.done():
                        future.set_result(message)
                    continue
            if self._on_message is not None:
                self._on_message(self, message)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        error = exc or ConnectionResetError("connection closed")
        for future in self._pending.drain():
            if not future.done():
                future.set_exception(error)
        if self._writable is not None and not self._writable.done():
            self._writable.set_exception(error)
        if not self.closed.done():
            self.closed.set_result(exc)
        if self._on_close is not None:
            self._on_close(self, exc)

    def pause_writing(self) -> None:
        if self._writable is None or self._writable.done():
            self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    # --- sending ------------------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    def send(self, line: bytes) -> None:
        """Queue one encoded line (with its newline). Callers that send a lot await `drain()`."""
        if self._transport is None or self._transport.is_closing():
            raise ConnectionResetError("connection closed")
        self._transport.write(line)

    async def drain(self) -> None:
        """Wait while the peer is not reading (the transport's buffer is above its high mark)."""
        if self._writable is not None and not self._writable.done():
            await self._writable

    async def request(
        self, method: str, params: list[Any], *, request_id: Any = None, timeout: float | None = 30.0
    ) -> Reply:
        """Send a request and wait for its reply. Without `request_id` a fresh unique id is used."""
        if request_id is None:
            request_id = self._pending.new_id()
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._pending.add(request_id, future)
        self.send(encode_request(request_id, method, params))
        await self.drain()
        async with asyncio.timeout(timeout):  # (not wait_for: on 3.11 it can swallow a cancellation)
            return await future

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    @property
    def peer(self) -> tuple[str, int] | None:
        if self._transport is None:
            return None
        peer = self._transport.get_extra_info("peername")
        return (peer[0], peer[1]) if peer else None


async def open_connection(
    host: str,
    port: int,
    on_message: Callable[[StratumConnection, Message], None] | None = None,
    *,
    max_line: int = DEFAULT_MAX_LINE,
) -> StratumConnection:
    """Connect to a pool as a miner would."""
    loop = asyncio.get_running_loop()
    _, connection = await loop.create_connection(
        lambda: StratumConnection("client", on_message, max_line=max_line), host, port
    )
    return connection
