"""Log set-up shared by `ih-proxy` and `ih-scorer`: level and format parsing, the text and JSON
formats, and the client libraries' own noise turned down.

It lives in `ledger/` because both programs import this package and not each other; it imports
nothing of the project.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TextIO, TypeVar

T = TypeVar("T")

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Libraries that log every failed connection attempt themselves (urllib3 "Retrying ... after
# connection broken", clickhouse_connect "Unexpected Http Driver Exception"): the error still reaches
# us as an exception, and our own line says what it means and when we retry. Their errors stay.
QUIET_LOGGERS = ("urllib3", "urllib3.connectionpool", "clickhouse_connect")

# Attributes every LogRecord has; anything else on a record came from `extra=` and goes into JSON.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


def parse_level(text: str) -> int:
    """`text` (any case) as a logging level; ValueError names the accepted ones."""
    name = text.strip().upper()
    if name not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, got {text!r}")
    return int(getattr(logging, name))


def parse_format(text: str) -> str:
    name = text.strip().lower()
    if name not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, got {text!r}")
    return name


Redact = Callable[[str], str]


def _same(text: str) -> str:
    return text


class TextFormatter(logging.Formatter):
    """`2025-01-01 12:00:00,000 INFO proxy: message`, secrets replaced by `redact`."""

    def __init__(self, redact: Redact = _same) -> None:
        super().__init__(TEXT_FORMAT)
        self.redact = redact

    def format(self, record: logging.LogRecord) -> str:
        return self.redact(super().format(record))


class JSONFormatter(logging.Formatter):
    """One JSON object per line: ts (ISO 8601, UTC), level, logger, message, then any `extra=`
    fields, and `exception` with the traceback text when there is one."""

    def __init__(self, redact: Redact = _same) -> None:
        super().__init__()
        self.redact = redact

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": self.redact(record.getMessage()),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.redact(self.formatException(record.exc_info))
        elif record.exc_text:
            entry["exception"] = self.redact(record.exc_text)
        # default=str: an extra field that JSON cannot hold (a Path, an enum) is written as text.
        return json.dumps(entry, ensure_ascii=False, default=str)


def setup_logging(
    level: int,
    fmt: str = "text",
    *,
    stream: TextIO | None = None,
    redact: Redact = _same,
    root_level: int | None = None,
    own: tuple[str, ...] = (),
) -> logging.Handler:
    """One handler on the root logger writing to `stream` (stderr) in `fmt`.

    `level` applies to the root logger, unless `root_level` is given: then the root gets that and
    only the loggers named in `own` get `level` (the scorer keeps libraries at WARNING even when
    its own lines are DEBUG). Returns the handler (tests read it)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JSONFormatter(redact) if parse_format(fmt) == "json" else TextFormatter(redact))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level if root_level is None else root_level)
    for name in own:
        logging.getLogger(name).setLevel(level)
    quiet_client_libraries()
    return handler


def quiet_client_libraries() -> None:
    """Silence the HTTP client libraries' per-attempt warnings (see QUIET_LOGGERS)."""
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


# --- start-up messages ---------------------------------------------------------------------------


class UsageError(Exception):
    """A command line argparse refused, as one line (argparse's own message, without the usage)."""


def parse_quietly(parse: Callable[[], T]) -> T:
    """Run an argparse-based `parse()`; its usage dump on a bad option becomes one UsageError line.

    argparse prints the whole usage (30 lines for the proxy) and then the error; an operator needs
    the error. `--help` still prints and exits as usual."""
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            result = parse()
    except SystemExit as exc:
        if exc.code in (0, None):
            sys.stderr.write(captured.getvalue())
            raise
        lines = [line for line in captured.getvalue().splitlines() if line.strip()]
        message = lines[-1] if lines else f"bad command line (exit {exc.code})"
        prog, sep, rest = message.partition(": error: ")
        raise UsageError(f"{prog}: {rest} (see {prog} --help)" if sep else message) from None
    sys.stderr.write(captured.getvalue())  # anything else parse() wrote is not ours to swallow
    return result
