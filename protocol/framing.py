"""Newline framing with a hard cap on line length (sans-I/O)."""

from __future__ import annotations

from protocol.errors import LineTooLong

DEFAULT_MAX_LINE = 16 * 1024  # a mining.notify with a large coinbase and 16 branches is ~3 KiB


class LineFramer:
    """Splits a byte stream into lines on `\\n` (a trailing `\\r` is dropped), across partial reads.

    A line longer than `max_line` bytes yields one `LineTooLong` in its place, as soon as it is known
    (not at its newline, which may never come); the framer skips the rest of it up to the next
    newline, so a peer can never make us buffer more than `max_line` bytes.
    Empty lines (keep-alives some miners send) are dropped.
    """

    __slots__ = ("_buffer", "_cr", "_discarding", "max_line")

    def __init__(self, max_line: int = DEFAULT_MAX_LINE) -> None:
        self.max_line = max_line
        self._buffer = b""
        self._discarding = False  # skipping the tail of an over-long line already reported
        self._cr = False  # a max_line-long line's trailing `\r` held as a flag, not a byte, until its `\n`

    def feed(self, data: bytes) -> list[bytes | LineTooLong]:
        # The common read: one whole line and nothing held (a share, a verdict). Same result as below.
        size = len(data)
        if (
            0 < size <= self.max_line + 1
            and data.find(b"\n") == size - 1
            and not (self._buffer or self._cr or self._discarding)
        ):
            line = data[:-2] if data.endswith(b"\r\n") else data[:-1]
            return [line] if line and not line.isspace() else []
        held = self._buffer + b"\r" if self._cr else self._buffer
        self._cr = False
        buffer = held + data if held else data
        out: list[bytes | LineTooLong] = []
        start = 0
        while True:
            end = buffer.find(b"\n", start)
            if end < 0:
                break
            if self._discarding:
                self._discarding = False
            elif end - start > self.max_line and not (end - start == self.max_line + 1 and buffer[end - 1] == 13):
                out.append(LineTooLong("line too long", end - start))
            else:
                line = buffer[start:end]
                if line.endswith(b"\r"):
                    line = line[:-1]
                if line.strip():
                    out.append(line)
            start = end + 1
        rest = buffer[start:]
        if self._discarding:
            rest = b""
        elif len(rest) == self.max_line + 1 and rest.endswith(b"\r"):
            self._cr = True  # `\r\n` split across reads: the line may still be exactly max_line long
            rest = rest[:-1]
        elif len(rest) > self.max_line:
            out.append(LineTooLong("line too long", len(rest)))  # length so far: at least this
            self._discarding = True
            rest = b""
        self._buffer = rest
        return out

    @property
    def buffered(self) -> int:
        """Bytes held waiting for a newline (never more than max_line)."""
        return len(self._buffer)
