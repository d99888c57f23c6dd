"""What both listeners (passthrough's `proxy.server`, farm mode's `proxy.farm_net`) do to a socket."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct

_LINGER_OFF = struct.pack("ii", 1, 0)


def reset(transport: asyncio.Transport) -> None:
    """Close at once with a reset. Linger 0: the kernel drops what the peer never read instead of
    holding the buffers of an orphaned socket for as long as the peer likes (a miner that does not
    read would keep a gracefully closed socket, and its fd, open for ever)."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_OFF)
    transport.abort()
