"""What both network layers (passthrough's `proxy.server`, farm mode's `proxy.farm_net`) do to a socket."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct

_RESET_ON_CLOSE = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends a reset


def reset(transport: asyncio.Transport) -> None:
    """Close at once with a reset. Linger 0: the kernel drops what the peer never read instead of
    holding the buffers of an orphaned socket for as long as the peer likes (a miner that does not
    read would keep a gracefully closed socket, and its fd, open for ever)."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
    transport.abort()


def watch_peer(transport: asyncio.BaseTransport, dead_after: float) -> None:
    """Have the kernel drop the connection `dead_after` seconds after its peer vanished: TCP
    keepalive on an idle connection, TCP_USER_TIMEOUT on one with bytes in flight (without them a
    half-open connection lives for the ~15 min of retransmissions, the ASICs behind it mining for
    nothing). Where the platform lacks an option it is skipped."""
    pseudo = transport.get_extra_info("socket")
    if pseudo is None or dead_after <= 0:
        return
    idle = max(1, int(dead_after / 2))
    interval = max(1, int(dead_after / 6))
    options = [
        (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPIDLE", None), idle),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPINTVL", None), interval),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPCNT", None), 3),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_USER_TIMEOUT", None), int(dead_after * 1000)),
    ]
    # One socket object over the transport's fd for the five options (uvloop's pseudo-socket builds
    # one per call: 14 → 5 µs per pool connection); detached, so the fd stays the transport's. Its
    # type and protocol given, not asked of the kernel (two getsockopt calls fewer).
    try:
        sock = socket.socket(pseudo.family, pseudo.type, pseudo.proto, pseudo.fileno())
    except (OSError, ValueError):  # closed meanwhile (fileno -1): nothing to watch
        return
    try:
        for level, option, value in options:
            if option is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(level, option, value)
    finally:
        sock.detach()
