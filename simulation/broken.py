"""A TCP server that is no pool, for the proxy's failover paths: what a load balancer with no pool
behind it does (accept, then hang up), or a server that answers the handshake with nothing usable."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Literal

import msgspec

Behaviour = Literal["close", "garbage"]


class BrokenPool:
    """A TCP server that is no pool: it closes every connection at once ("close"), or answers every
    request with a result no subscribe can use ("garbage"). Counts the connections it took."""

    def __init__(self, behaviour: Behaviour, host: str = "127.0.0.1") -> None:
        self.host = host
        self.behaviour = behaviour
        self.connections = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> BrokenPool:
        self._server = await asyncio.start_server(self._serve, self.host, 0)
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        with contextlib.suppress(ConnectionError):
            for _ in range(100):
                if self.behaviour == "close":
                    break
                line = await reader.readline()
                if not line:
                    break
                request = msgspec.json.decode(line)
                writer.write(msgspec.json.encode({"id": request.get("id"), "result": "garbage", "error": None}) + b"\n")
                await writer.drain()
        writer.close()
