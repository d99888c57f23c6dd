"""A small ClickHouse HTTP-interface server backed by chdb (TEST INFRASTRUCTURE, not product code).

No clickhouse-server can be installed where the tests run, but chdb embeds the real ClickHouse
engine. `ClickHouseHTTPServer` puts that engine behind the subset of the HTTP interface that
clickhouse-connect (1.12) uses, so that:

* another process (the proxy, started as a subprocess) can reach a real engine over HTTP with
  `clickhouse_connect.get_client(host=..., port=..., username=..., password=...)`;
* a test can switch ClickHouse OFF (`stop()`: connections refused) and ON again (`start()`: same
  port, same data), make it answer errors (`set_failing`, `fail_next`), or lose the reply of a
  committed insert (`drop_reply_after_insert`) to exercise the deduplication token.

What is implemented (all that clickhouse-connect sends):
* `GET /` and `GET /ping` -> `Ok.`;
* a query from the `query` URL parameter, the POST body, or both (joined by a newline, as the
  server does); the body may be `Content-Encoding` lz4 (frame), zstd, gzip, deflate or br (if
  brotli is installed). Replies are never compressed (clients accept identity);
* `INSERT ... FORMAT <fmt>` followed by data (Native from clickhouse-connect): the data is streamed
  into chdb's native insert path, so insert settings (`insert_deduplication_token`, ...) behave as
  on a server;
* URL parameters: `database`, `default_format`, `param_<name>` (server-side bind parameters), HTTP
  transport parameters (ignored), everything else is a ClickHouse setting applied to that one
  request (SET before, restored after);
* Basic auth / `X-ClickHouse-User` + `X-ClickHouse-Key` / `user` + `password` parameters, checked
  when the server was given a user;
* errors as ClickHouse sends them: `Code: N. DB::Exception: ... (NAME) (version ...)` body,
  `X-ClickHouse-Exception-Code` header and the server's HTTP status for that error.

Not implemented: HTTP sessions (`session_id` is accepted and ignored; `SET` persists in the single
chdb session for everybody), the `decompress=1` ClickHouse-native block compression, external data
(multipart), progress headers, streaming replies (results are buffered), TLS.

chdb allows ONE data directory per process at a time: while a server is open, the same process may
open that same directory again (e.g. `get_client(interface="chdb", path=...)`), but no other one.

Run it as its own process:
    python -m tests.clickhouse_http --data-dir DIR [--port N] [--user U --password P]
It prints the port on one line when it is ready. SIGTERM/SIGINT: exit cleanly. SIGUSR1: stop
listening (outage, data kept). SIGUSR2: listen again on the same port.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import gzip
import json
import queue
import re
import signal
import socket
import sys
import threading
import time
import uuid
import zlib
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from socketserver import TCPServer
from types import TracebackType
from typing import Any, Final, Literal
from urllib.parse import parse_qs, quote, urlsplit

import lz4.frame
from chdb import session as chdb_session

# chdb.session.Session: chdb ships no type hints, so its objects are typed Any here.
_Session = Any

try:  # Python >= 3.14 has zstd in the stdlib; clickhouse-connect depends on backports.zstd before.
    from compression import zstd  # type: ignore[import-not-found,unused-ignore]
except ImportError:  # pragma: no cover - depends on the Python version
    from backports import zstd  # type: ignore[import-not-found,no-redef,unused-ignore]

__all__ = ["ClickHouseHTTPServer", "RequestRecord"]

# URL parameters that belong to the HTTP transport, not to the query: never passed on as settings.
_TRANSPORT_PARAMS: Final = frozenset(
    {
        "query",
        "database",
        "default_format",
        "user",
        "password",
        "quota_key",
        "query_id",
        "session_id",
        "session_timeout",
        "session_check",
        "buffer_size",
        "wait_end_of_query",
        "compress",
        "decompress",
        "client_protocol_version",
        "role",
        "send_progress_in_http_headers",
        "http_headers_progress_interval_ms",
        "enable_http_compression",
        "cancel_http_readonly_queries_on_client_close",
        "add_http_cors_header",
    }
)
_TRANSPORT_PREFIXES: Final = ("http_",)

# HTTP status the server answers for an error, by error name (src/Server/HTTP/exceptionCodeToHTTPStatus.cpp).
_STATUS_BY_ERROR: Final[dict[str, int]] = {
    "REQUIRED_PASSWORD": 401,
    **dict.fromkeys(
        ("UNKNOWN_USER", "WRONG_PASSWORD", "AUTHENTICATION_FAILED", "SET_NON_GRANTED_ROLE", "ACCESS_DENIED"), 403
    ),
    **dict.fromkeys(
        (
            "BAD_ARGUMENTS",
            "CANNOT_COMPILE_REGEXP",
            "CANNOT_PARSE_TEXT",
            "CANNOT_PARSE_ESCAPE_SEQUENCE",
            "CANNOT_PARSE_QUOTED_STRING",
            "CANNOT_PARSE_DATE",
            "CANNOT_PARSE_DATETIME",
            "CANNOT_PARSE_NUMBER",
            "CANNOT_PARSE_DOMAIN_VALUE_FROM_STRING",
            "CANNOT_PARSE_IPV4",
            "CANNOT_PARSE_IPV6",
            "CANNOT_PARSE_INPUT_ASSERTION_FAILED",
            "CANNOT_PARSE_UUID",
            "DUPLICATE_COLUMN",
            "ILLEGAL_COLUMN",
            "UNKNOWN_ELEMENT_IN_AST",
            "UNKNOWN_TYPE_OF_AST_NODE",
            "THERE_IS_NO_COLUMN",
            "TOO_DEEP_AST",
            "TOO_BIG_AST",
            "UNEXPECTED_AST_STRUCTURE",
            "SYNTAX_ERROR",
            "INCORRECT_DATA",
            "TYPE_MISMATCH",
            "VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE",
        ),
        400,
    ),
    **dict.fromkeys(
        (
            "UNKNOWN_TABLE",
            "UNKNOWN_FUNCTION",
            "UNKNOWN_IDENTIFIER",
            "UNKNOWN_TYPE",
            "UNKNOWN_STORAGE",
            "UNKNOWN_DATABASE",
            "UNKNOWN_SETTING",
            "UNKNOWN_DIRECTION_OF_SORTING",
            "UNKNOWN_AGGREGATE_FUNCTION",
            "UNKNOWN_FORMAT",
            "UNKNOWN_DATABASE_ENGINE",
            "UNKNOWN_TYPE_OF_QUERY",
            "UNKNOWN_ROLE",
        ),
        404,
    ),
    "QUERY_IS_TOO_LARGE": 413,
    "NOT_IMPLEMENTED": 501,
    "SOCKET_TIMEOUT": 503,
    "CANNOT_OPEN_FILE": 503,
    "CANNOT_SCHEDULE_TASK": 503,
    "HTTP_LENGTH_REQUIRED": 411,
    "TIMEOUT_EXCEEDED": 408,
    "UNSUPPORTED_MEDIA_TYPE": 415,
}

_SETTING_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ERROR_CODE: Final = re.compile(r"Code: (\d+)\.")
_ERROR_NAME: Final = re.compile(r"\(([A-Z][A-Z0-9_]*)\)(?: \(version [^)]*\))?\s*$")
_IS_INSERT: Final = re.compile(r"\A\s*INSERT\b", re.IGNORECASE)
_CHANGES_CONTEXT: Final = re.compile(r"\A\s*(?:SET|USE)\b", re.IGNORECASE)
# `INSERT ... FORMAT <name>` at the start of a request; what follows the name is the data.
_INSERT_WITH_FORMAT: Final = re.compile(
    rb"\A\s*INSERT\s.*?\bFORMAT\s+([A-Za-z_][A-Za-z0-9_]*)", re.IGNORECASE | re.DOTALL
)
_INLINE_SOURCE: Final = re.compile(rb"\b(?:VALUES|SELECT)\b", re.IGNORECASE)
_TRAILING_FORMAT: Final = re.compile(r"\bFORMAT\s+([A-Za-z_][A-Za-z0-9_]*)\s*;?\s*\Z", re.IGNORECASE)
_INSERT_HEAD_LIMIT: Final = 1 << 20  # the INSERT statement must start within the first MiB
_GRACE_S: Final = 30.0  # stop() lets in-flight requests finish for this long, then cuts them off

_BINARY_FORMATS: Final = ("native", "rowbinary", "parquet", "arrow", "orc", "avro", "protobuf", "capnproto", "msgpack")


class _ClientGone(Exception):
    """The client closed the connection before the request was complete."""


class _ClickHouseError(Exception):
    """An error to answer the way ClickHouse does."""

    def __init__(self, code: int, name: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.name = name
        self.message = message
        self.status = status if status is not None else _STATUS_BY_ERROR.get(name, 500)


@dataclass(frozen=True)
class RequestRecord:
    """One query request the server received (`ClickHouseHTTPServer.history`).

    `sql` is the statement without insert data; `settings` the ClickHouse settings from the URL;
    `outcome` one of "ok", "error", "simulated-error", "dropped-before", "dropped-after".
    """

    sql: str
    settings: dict[str, str]
    outcome: str
    is_insert: bool


@dataclass
class _FailRule:
    remaining: int | None  # None: until set_failing(False)
    inserts_only: bool
    status: int
    code: int
    name: str
    message: str


@dataclass
class _Reply:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


_DROP: Final = "drop"  # reply sentinel: close the connection without answering


class ClickHouseHTTPServer:
    """chdb behind a ClickHouse HTTP endpoint; see the module docstring.

    Lifecycle: `start()` -> `stop()` -> `start()` ... -> `close()`. The chdb session is opened by
    the first `start()` (or `execute()`) and kept until `close()`, so the data survives every stop.
    """

    def __init__(
        self,
        data_dir: Path,
        host: str = "127.0.0.1",
        port: int = 0,
        user: str | None = None,
        password: str | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.host = host
        self._port = port
        self.user = user
        self.password = password
        self.history: deque[RequestRecord] = deque(maxlen=10_000)
        self.inserts_committed = 0  # INSERT statements executed successfully (also when the reply was dropped)
        self._session: _Session | None = None
        self._version = ""
        self._timezone = "UTC"
        self._engine_lock = threading.Lock()  # chdb is used by one request at a time
        self._state_lock = threading.Lock()  # listener, failure rules, counters
        self._lifecycle_lock = threading.RLock()  # start / stop / close one at a time
        self._listener: _Listener | None = None
        self._thread: threading.Thread | None = None
        self._fail: _FailRule | None = None
        self._drop_before_insert = 0
        self._drop_after_insert = 0
        self._closed = False
        # chdb session bookkeeping (under _engine_lock): current database, settings we SET
        # (name -> value) and their values before we touched them (name -> (value, changed)).
        self._database: str | None = None
        self._overrides: dict[str, str] = {}
        self._baseline: dict[str, tuple[str, bool]] = {}

    # ---- lifecycle ---------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The listening port (fixed by the first `start()` when created with port=0)."""
        if self._port == 0:
            raise RuntimeError("the port is chosen by start()")
        return self._port

    @property
    def url(self) -> str:
        """`http://user:password@host:port/`, usable as clickhouse-connect `dsn` or the proxy's URL."""
        auth = ""
        if self.user is not None:
            auth = f"{quote(self.user, safe='')}:{quote(self.password or '', safe='')}@"
        return f"http://{auth}{self.host}:{self.port}/"

    @property
    def running(self) -> bool:
        return self._listener is not None

    def start(self) -> None:
        """Listen (on the same port as before, after a stop) and serve in a background thread."""
        with self._lifecycle_lock:
            if self._closed:
                raise RuntimeError("the server is closed")
            if self._listener is not None:
                return
            self._open_session()
            listener = _Listener((self.host, self._port), self)
            self._port = listener.server_address[1]
            thread = threading.Thread(
                target=listener.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"clickhouse-http:{self._port}",
                daemon=True,
            )
            thread.start()
            with self._state_lock:
                self._listener, self._thread = listener, thread

    def stop(self) -> None:
        """Stop listening: new connections are refused, idle keep-alive connections are closed,
        in-flight requests finish first (for up to 30 s). The chdb session (and so the data) stays open."""
        with self._lifecycle_lock:
            with self._state_lock:
                listener, thread = self._listener, self._thread
                self._listener = self._thread = None
            if listener is None or thread is None:
                return
            listener.shutdown()  # leave serve_forever: nothing more is accepted
            listener.server_close()  # close the listening socket: connecting is refused from now on
            deadline = time.monotonic() + _GRACE_S
            for handler_thread in listener.close_connections(idle_only=True):
                handler_thread.join(max(0.0, deadline - time.monotonic()))
            for handler_thread in listener.close_connections(idle_only=False):  # stuck past the grace period
                handler_thread.join(_GRACE_S)
            thread.join(_GRACE_S)

    @property
    def in_flight(self) -> int:
        """Requests being processed right now (0 when not listening)."""
        listener = self._listener
        return listener.busy_count() if listener is not None else 0

    def close(self) -> None:
        """Stop and close the chdb session (the data directory may then be opened elsewhere)."""
        with self._lifecycle_lock:
            self.stop()
            self._closed = True
            with self._engine_lock:
                if self._session is not None:
                    self._session.close()
                    self._session = None

    def __enter__(self) -> ClickHouseHTTPServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ---- failure injection -------------------------------------------------------------------

    def set_failing(
        self,
        failing: bool,
        *,
        inserts_only: bool = False,
        status: int = 500,
        code: int = 252,
        name: str = "TOO_MANY_PARTS",
        message: str = "Too many parts (simulated by ClickHouseHTTPServer). Merges are processing significantly"
        " slower than inserts",
    ) -> None:
        """Answer every query (or every INSERT) with this ClickHouse error until `set_failing(False)`.
        `/ping` keeps answering Ok: the server is up, it rejects the work."""
        rule = _FailRule(None, inserts_only, status, code, name, message) if failing else None
        with self._state_lock:
            self._fail = rule

    def fail_next(
        self,
        n: int = 1,
        *,
        inserts_only: bool = False,
        status: int = 500,
        code: int = 252,
        name: str = "TOO_MANY_PARTS",
        message: str = "Too many parts (simulated by ClickHouseHTTPServer)",
    ) -> None:
        """Answer the next `n` queries (or INSERTs) with this ClickHouse error, then work again."""
        with self._state_lock:
            self._fail = _FailRule(n, inserts_only, status, code, name, message) if n > 0 else None

    def drop_reply_after_insert(self, n: int = 1) -> None:
        """Execute (commit) the next `n` INSERTs, then close the connection without answering:
        the lost-ack case. Note clickhouse-connect 1.12 re-sends an insert ONCE by itself when the
        connection is closed without a reply, so n=1 is absorbed by that re-send (which the table's
        deduplication must drop); n=2 makes `client.insert` raise."""
        with self._state_lock:
            self._drop_after_insert = n

    def drop_request_before_insert(self, n: int = 1) -> None:
        """Close the connection without executing the next `n` INSERTs (crash before commit)."""
        with self._state_lock:
            self._drop_before_insert = n

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Inside the block, requests are accepted but hang before executing (a ClickHouse that
        stopped answering: client read timeouts); they run when the block exits. Do not call
        `execute()` or `close()` inside the block."""
        with self._engine_lock:
            yield

    def clear_faults(self) -> None:
        """Cancel every failure rule set above."""
        with self._state_lock:
            self._fail = None
            self._drop_after_insert = self._drop_before_insert = 0

    # ---- direct engine access (for assertions; works while stopped) --------------------------

    def execute(self, sql: str, fmt: str = "TabSeparated") -> bytes:
        """Run `sql` in the chdb session directly, bypassing HTTP and failure rules."""
        self._open_session()
        with self._engine_lock:
            session = self._prepare("default", {})
            try:
                return bytes(_run(session, sql, fmt).bytes())
            finally:
                if _CHANGES_CONTEXT.match(sql):
                    self._database = None
                    self._baseline.clear()

    # ---- request handling (called from handler threads) ---------------------------------------

    def _open_session(self) -> None:
        with self._engine_lock:
            if self._session is not None:
                return
            self.data_dir.mkdir(parents=True, exist_ok=True)
            session: _Session = chdb_session.Session(str(self.data_dir.absolute()))  # type: ignore[no-untyped-call]
            row = bytes(session.query("SELECT version(), timezone()", "TabSeparated").bytes())
            self._version, self._timezone = row.decode().rstrip("\n").split("\t")
            self._session = session

    def _check_auth(self, headers: Any, params: dict[str, str]) -> None:
        if self.user is None:
            return
        user, password = params.get("user"), params.get("password")
        if headers.get("X-ClickHouse-User") is not None:
            user, password = headers.get("X-ClickHouse-User"), headers.get("X-ClickHouse-Key", "")
        authorization = headers.get("Authorization", "")
        if authorization.startswith("Basic "):
            try:
                user, _, password = base64.b64decode(authorization[6:]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                user = password = None
        if user != self.user or (password or "") != (self.password or ""):
            raise _ClickHouseError(
                516,
                "AUTHENTICATION_FAILED",
                f"{user or 'default'}: Authentication failed: password is incorrect, or there is no user with"
                " such name.",
            )

    def _handle_query(self, headers: Any, params: dict[str, str], body: bytes) -> _Reply | str:
        query_id = params.get("query_id") or str(uuid.uuid4())
        base_headers = {"X-ClickHouse-Query-Id": query_id, "X-ClickHouse-Timezone": self._timezone}
        sql = ""
        settings: dict[str, str] = {}
        is_insert = False
        outcome = "error"
        try:
            self._check_auth(headers, params)
            if params.get("decompress") in ("1", "true"):
                raise _ClickHouseError(
                    48, "NOT_IMPLEMENTED", "decompress=1 (native block compression) is not supported"
                )
            text = _join_query(params.get("query", ""), _decode_body(body, headers.get("Content-Encoding")))
            if not text.strip():
                raise _ClickHouseError(62, "SYNTAX_ERROR", "Empty query.")
            insert = _split_insert(text)
            sql = insert[0] if insert else text.decode("utf-8", errors="replace")
            is_insert = insert is not None or bool(_IS_INSERT.match(sql))
            settings = {k: v for k, v in params.items() if _is_setting(k)}
            bind = {k[len("param_") :]: v for k, v in params.items() if k.startswith("param_")}

            action = self._take_fault(is_insert)
            if isinstance(action, _FailRule):
                outcome = "simulated-error"
                raise _ClickHouseError(action.code, action.name, action.message, action.status)
            if action == "drop-before":
                outcome = "dropped-before"
                return _DROP

            reply = self._execute(sql, insert, settings, bind, params.get("database") or "default", params)
            outcome = "ok"
            if is_insert:
                with self._state_lock:
                    self.inserts_committed += 1
                    if self._drop_after_insert > 0:
                        self._drop_after_insert -= 1
                        outcome = "dropped-after"
                        return _DROP
            reply.headers.update(base_headers)
            return reply
        except _ClickHouseError as exc:
            error = exc.message.rstrip()
            if not error.startswith("Code: "):
                error = f"Code: {exc.code}. DB::Exception: {error.rstrip('.')}. ({exc.name})"
            if "(version " not in error:
                error = f"{error} (version {self._version})"
            error_headers = {**base_headers, "X-ClickHouse-Exception-Code": str(exc.code)}
            return _Reply(exc.status, f"{error}\n".encode(), error_headers)
        except Exception as exc:  # a bug here: answer it as a server error rather than hang up
            message = (
                f"Code: 1001. DB::Exception: {type(exc).__name__}: {exc}. (STD_EXCEPTION) (version {self._version})"
            )
            return _Reply(500, f"{message}\n".encode(), {**base_headers, "X-ClickHouse-Exception-Code": "1001"})
        finally:
            self.history.append(RequestRecord(sql, settings, outcome, is_insert))

    def _take_fault(self, is_insert: bool) -> _FailRule | str | None:
        with self._state_lock:
            rule = self._fail
            if rule is not None and (is_insert or not rule.inserts_only):
                if rule.remaining is not None:
                    rule.remaining -= 1
                    if rule.remaining <= 0:
                        self._fail = None
                return rule
            if is_insert and self._drop_before_insert > 0:
                self._drop_before_insert -= 1
                return "drop-before"
        return None

    def _execute(
        self,
        sql: str,
        insert: tuple[str, str, bytes] | None,
        settings: dict[str, str],
        bind: dict[str, str],
        database: str,
        params: dict[str, str],
    ) -> _Reply:
        started = time.perf_counter()
        with self._engine_lock:
            session = self._prepare(database, settings)
            try:
                if insert is not None:
                    return self._insert(session, insert, started)
                return self._query(session, sql, bind, params.get("default_format"), started)
            finally:
                if _CHANGES_CONTEXT.match(sql):  # SET / USE sent as a query: the bookkeeping is stale
                    self._database = None
                    self._baseline.clear()

    def _prepare(self, database: str, settings: dict[str, str]) -> _Session:
        """Under the engine lock: put the chdb session in `database` with exactly the request's
        settings on top of the session defaults. Settings are changed incrementally (SET only what
        differs from the previous request, SET ... = <old value> / DEFAULT what the request does not
        carry), so the same settings on every request cost nothing."""
        session = self._session
        if session is None:
            raise _ClickHouseError(210, "NETWORK_ERROR", "the server is closed")
        for name in settings:
            if not _SETTING_NAME.fullmatch(name):
                raise _ClickHouseError(115, "UNKNOWN_SETTING", f"Unknown setting '{name}'")
        for name in [n for n in self._overrides if n not in settings]:
            value, changed = self._baseline.get(name, ("", False))
            literal = value if len(value) >= 2 and value[0] == value[-1] == "'" else _quote_string(value)
            with contextlib.suppress(_ClickHouseError):
                _run(session, f"SET {name} = {literal if changed else 'DEFAULT'}")
            del self._overrides[name]
        missing = [name for name in settings if name not in self._baseline and name not in self._overrides]
        if missing:
            names = ", ".join(_quote_string(name) for name in missing)
            rows = _run(
                session, f"SELECT name, value, changed FROM system.settings WHERE name IN ({names})", "JSONEachRow"
            )
            for line in rows.bytes().splitlines():
                row = json.loads(line)
                self._baseline[row["name"]] = (row["value"], bool(row["changed"]))
        for name, value in settings.items():
            if name in self._overrides:
                if self._overrides[name] == value:
                    continue
            elif name in self._baseline and self._baseline[name][0] == value:
                continue
            _run(session, f"SET {name} = {_quote_string(value)}")
            self._overrides[name] = value
        if database != self._database:
            _run(session, f"USE {_quote_identifier(database)}")
            self._database = database
        return session

    def _insert(self, session: _Session, insert: tuple[str, str, bytes], started: float) -> _Reply:
        head, fmt, data = insert
        try:
            inserter = session.send_insert(head, fmt)
        except Exception as exc:
            raise _error_from_chdb(exc) from None
        try:
            if data:
                inserter.append(data)
            result = inserter.finish()
        except Exception as exc:
            with contextlib.suppress(Exception):
                inserter.cancel()
            raise _error_from_chdb(exc) from None
        summary = _summary(0, 0, result.rows_written, result.bytes_written, started)
        return _Reply(200, b"", {"X-ClickHouse-Summary": summary, "Content-Type": "text/plain; charset=UTF-8"})

    @staticmethod
    def _query(session: _Session, sql: str, bind: dict[str, str], default_format: str | None, started: float) -> _Reply:
        trailing = _TRAILING_FORMAT.search(sql)
        # Without a FORMAT clause, ask for the names line: a statement that returns a result set
        # always prints it, one that does not prints nothing. The server reports a result set with
        # the X-ClickHouse-Format header (clickhouse-connect's command() depends on it).
        run_format = default_format or ("TabSeparated" if trailing else "TabSeparatedWithNames")
        result = _run(session, sql, run_format, bind)
        body = bytes(result.bytes())
        out_format: str | None
        if trailing:
            out_format = trailing.group(1)
        elif default_format:
            out_format = default_format if body else None
        elif body:
            out_format = "TabSeparated"
            body = body[body.index(b"\n") + 1 :] if b"\n" in body else b""
        else:
            out_format = None
        headers = {
            "X-ClickHouse-Summary": _summary(
                result.rows_read(), result.bytes_read(), result.rows_written(), result.bytes_written(), started
            ),
            "Content-Type": _content_type(out_format),
        }
        if out_format:
            headers["X-ClickHouse-Format"] = out_format
        return _Reply(200, body, headers)


# ---- HTTP plumbing --------------------------------------------------------------------------


class _Listener(ThreadingHTTPServer):
    """One listening period of a ClickHouseHTTPServer (a new one per start())."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], owner: ClickHouseHTTPServer) -> None:
        self.owner = owner
        self.stopping = False
        self.connections: dict[_Handler, threading.Thread] = {}
        self.connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host name (getfqdn), which can be slow: skip it.
        TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], OSError):  # a client going away is not worth a traceback
            super().handle_error(request, client_address)

    def register(self, handler: _Handler) -> bool:
        with self.connections_lock:
            if self.stopping:
                return False
            self.connections[handler] = threading.current_thread()
            return True

    def unregister(self, handler: _Handler) -> None:
        with self.connections_lock:
            self.connections.pop(handler, None)

    def begin_request(self, handler: _Handler) -> bool:
        with self.connections_lock:
            handler.busy = not self.stopping
            return handler.busy

    def end_request(self, handler: _Handler) -> bool:
        """Mark the handler idle; True when the connection must now be closed."""
        with self.connections_lock:
            handler.busy = False
            return self.stopping

    def close_connections(self, idle_only: bool) -> list[threading.Thread]:
        """Refuse further requests; close the idle connections (busy ones close after their reply),
        or all of them; return the threads still serving connections."""
        with self.connections_lock:
            self.stopping = True
            for handler in self.connections:
                if not (idle_only and handler.busy):
                    with contextlib.suppress(OSError):
                        handler.connection.shutdown(socket.SHUT_RDWR)
            return list(self.connections.values())

    def busy_count(self) -> int:
        with self.connections_lock:
            return sum(1 for handler in self.connections if handler.busy)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ClickHouse-chdb"
    disable_nagle_algorithm = True  # headers and body go out in two writes: avoid the delayed-ACK stall
    server: _Listener
    busy = False

    def handle(self) -> None:
        if not self.server.register(self):
            return
        try:
            super().handle()
        finally:
            self.server.unregister(self)

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        finally:
            if self.server.end_request(self):
                self.close_connection = True

    def parse_request(self) -> bool:
        if not super().parse_request():
            return False
        if not self.server.begin_request(self):  # the server is stopping: drop, like a dead server
            self.close_connection = True
            return False
        return True

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def _serve(self) -> None:
        url = urlsplit(self.path)
        params = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        try:
            body = self._read_body()
        except _ClientGone:
            self.close_connection = True
            return
        if url.path == "/ping" or (url.path == "/" and not body and "query" not in params):
            self._send(_Reply(200, b"Ok.\n", {"Content-Type": "text/html; charset=UTF-8"}))
            return
        if url.path != "/":
            self._send(_Reply(404, b"There is no handle " + url.path.encode() + b"\n"))
            return
        reply = self.server.owner._handle_query(self.headers, params, body)
        if isinstance(reply, _Reply):
            self._send(reply)
        else:  # drop: no status line, no headers, just a closed connection
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            while True:
                line = self.rfile.readline(65537)
                if not line.endswith(b"\n"):
                    raise _ClientGone
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537).strip():  # trailers, up to the empty line
                        pass
                    return b"".join(chunks)
                chunk = self.rfile.read(size)
                if len(chunk) != size or not self.rfile.readline(65537).endswith(b"\n"):
                    raise _ClientGone
                chunks.append(chunk)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if len(body) != length:
            raise _ClientGone
        return body

    def _send(self, reply: _Reply) -> None:
        self.send_response(reply.status)
        headers = {"Content-Type": "text/plain; charset=UTF-8", **reply.headers}
        headers["Content-Length"] = str(len(reply.body))
        if self.server.stopping:
            self.close_connection = True
            headers["Connection"] = "close"
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(reply.body)


# ---- helpers ----------------------------------------------------------------------------------


def _run(session: _Session, sql: str, fmt: str = "TabSeparated", params: dict[str, str] | None = None) -> Any:
    try:
        return session.query(sql, fmt, params=params or None)
    except Exception as exc:
        raise _error_from_chdb(exc) from None


def _error_from_chdb(exc: BaseException) -> _ClickHouseError:
    message = str(exc)
    start = message.find("Code: ")
    message = message[start:] if start >= 0 else message
    code_match = _ERROR_CODE.search(message)
    name_match = _ERROR_NAME.search(message)
    if code_match is None:
        return _ClickHouseError(1001, "STD_EXCEPTION", message)
    return _ClickHouseError(int(code_match.group(1)), name_match.group(1) if name_match else "", message)


def _decode_body(body: bytes, encoding: str | None) -> bytes:
    encoding = (encoding or "").strip().lower()
    if not body or encoding in ("", "identity"):
        return body
    try:
        if encoding == "lz4":  # lz4 frames, possibly several one after the other
            parts: list[bytes] = []
            while body:
                decompressor = lz4.frame.LZ4FrameDecompressor()
                parts.append(decompressor.decompress(body))
                if not decompressor.eof:
                    raise ValueError("truncated lz4 frame")
                body = decompressor.unused_data
            return b"".join(parts)
        if encoding == "zstd":
            return bytes(zstd.decompress(body))
        if encoding in ("gzip", "x-gzip"):
            return gzip.decompress(body)
        if encoding == "deflate":
            return zlib.decompress(body)
        if encoding == "br":
            import brotli  # type: ignore[import-not-found,unused-ignore]

            return bytes(brotli.decompress(body))
    except ImportError:
        pass
    except Exception as exc:
        raise _ClickHouseError(
            271, "CANNOT_DECOMPRESS", f"Cannot decompress the request body ({encoding}): {exc}"
        ) from None
    raise _ClickHouseError(36, "BAD_ARGUMENTS", f"Unknown HTTP Content-Encoding {encoding!r}")


def _join_query(query_param: str, body: bytes) -> bytes:
    """The query text is the `query` parameter, then a newline, then the body (as the server does)."""
    if query_param and body:
        return query_param.encode() + b"\n" + body
    return query_param.encode() if query_param else body


def _split_insert(text: bytes) -> tuple[str, str, bytes] | None:
    """(`INSERT ...` without FORMAT, format, data) when `text` is an INSERT with a data format."""
    match = _INSERT_WITH_FORMAT.match(text[:_INSERT_HEAD_LIMIT])
    if match is None or match.group(1).lower() == b"values":
        return None
    statement = text[: match.start(1)].rstrip()  # ends with the FORMAT keyword
    statement = statement[: -len(b"FORMAT")].rstrip()
    if _INLINE_SOURCE.search(statement):
        return None
    # The data starts after the first newline if there is one, else after the blanks (as the server parses).
    pos = match.end(1)
    while pos < len(text) and text[pos : pos + 1] in (b" ", b"\t", b"\f"):
        pos += 1
    if text[pos : pos + 1] == b"\r":
        pos += 1
    if text[pos : pos + 1] == b"\n":
        pos += 1
    return statement.decode("utf-8", errors="replace"), match.group(1).decode(), text[pos:]


def _is_setting(name: str) -> bool:
    return not (name in _TRANSPORT_PARAMS or name.startswith(_TRANSPORT_PREFIXES) or name.startswith("param_"))


def _quote_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _quote_identifier(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def _summary(read_rows: int, read_bytes: int, written_rows: int, written_bytes: int, started: float) -> str:
    return json.dumps(
        {
            "read_rows": str(read_rows),
            "read_bytes": str(read_bytes),
            "written_rows": str(written_rows),
            "written_bytes": str(written_bytes),
            "total_rows_to_read": str(read_rows),
            "result_rows": "0",
            "result_bytes": "0",
            "elapsed_ns": str(int((time.perf_counter() - started) * 1e9)),
        },
        separators=(",", ":"),
    )


def _content_type(fmt: str | None) -> str:
    if fmt and fmt.lower().startswith(_BINARY_FORMATS):
        return "application/octet-stream"
    if fmt and fmt.lower().startswith("json"):
        return "application/json; charset=UTF-8"
    return "text/tab-separated-values; charset=UTF-8"


# ---- python -m tests.clickhouse_http --------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="ClickHouse HTTP interface backed by chdb (test server)")
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--user", default=None)
    parser.add_argument("--password", default=None)
    args = parser.parse_args(argv)

    commands: queue.SimpleQueue[Literal["exit", "stop", "start"]] = queue.SimpleQueue()
    signal.signal(signal.SIGTERM, lambda *_: commands.put("exit"))
    signal.signal(signal.SIGINT, lambda *_: commands.put("exit"))
    signal.signal(signal.SIGUSR1, lambda *_: commands.put("stop"))
    signal.signal(signal.SIGUSR2, lambda *_: commands.put("start"))

    server = ClickHouseHTTPServer(args.data_dir, args.host, args.port, args.user, args.password)
    try:
        server.start()
        print(server.port, flush=True)
        while True:
            # A timed wait: the signal may be delivered to another thread, and Python runs the
            # handler only when the main thread next executes bytecode.
            try:
                command = commands.get(timeout=0.1)
            except queue.Empty:
                continue
            if command == "exit":
                break
            if command == "stop":
                server.stop()
            else:
                server.start()
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
