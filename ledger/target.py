"""Where the ledger lives: parse `--clickhouse-url` and open a clickhouse-connect client.

URL forms:
  http(s)://user:pass@host:port/[database]   a ClickHouse server (database `infinitehash` by default)
  chdb:///absolute/path, chdb://relative/path an embedded chdb directory
  None or ""                                  chdb://<data_dir>/ledger

The client is opened WITHOUT a default database (the database may not exist yet); the migrations
create it and every query names tables as `db.table`.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import clickhouse_connect
from clickhouse_connect.driver.client import Client

DEFAULT_DATABASE = "infinitehash"

# HTTP timeouts: a hung server must fail the insert (the batch is then spooled to disk) instead of
# holding rows in memory for clickhouse-connect's default 5 minutes.
_CONNECT_TIMEOUT = 5.0
_SEND_RECEIVE_TIMEOUT = 15.0

_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^:@/\s]*):[^@/\s]*@")
_PASSWORD_PARAM = re.compile(r"(?i)(password=)[^&\s]*")
_DATABASE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


# chdb (with pyarrow and pandas) is the optional extra `embedded`; a server deployment leaves it out.
NO_EMBEDDED_ENGINE = (
    "chdb:// needs the embedded ClickHouse engine, which is not installed: install the extra "
    "(uv sync --extra embedded, or pip install 'infinitehash-proxy[embedded]') or use an http(s):// ClickHouse URL"
)


def _require_embedded_engine() -> None:
    if importlib.util.find_spec("chdb") is None:
        raise ValueError(NO_EMBEDDED_ENGINE)


def redact(text: str) -> str:
    """`text` (a URL, or an error message that may contain one) with every password replaced by ***."""
    text = _USERINFO.sub(r"\g<scheme>\g<user>:***@", text)
    return _PASSWORD_PARAM.sub(r"\1***", text)


@dataclass(frozen=True)
class LedgerTarget:
    """A parsed ledger URL. `str()` and `repr()` never show the password."""

    kind: str  # "http" | "https" | "chdb"
    database: str
    path: Path | None = None  # chdb only
    host: str = ""
    port: int = 0
    username: str = "default"
    password: str = field(default="", repr=False)

    @classmethod
    def parse(cls, url: str | None, *, data_dir: Path) -> LedgerTarget:
        if not url:
            _require_embedded_engine()
            return cls(kind="chdb", database=DEFAULT_DATABASE, path=(data_dir / "ledger").absolute())
        if url.startswith("chdb://"):
            _require_embedded_engine()
            rest = url[len("chdb://") :]
            if not rest:
                raise ValueError("chdb URL needs a path: chdb:///absolute/path or chdb://relative/path")
            # chdb:///abs → "/abs"; chdb://rel/path → "rel/path" (relative to the working directory).
            return cls(kind="chdb", database=DEFAULT_DATABASE, path=Path(rest).absolute())
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"unsupported ClickHouse URL {redact(url)!r}: use http(s)://… or chdb://…")
        database = parts.path.strip("/") or DEFAULT_DATABASE
        if not _DATABASE_NAME.fullmatch(database):
            # The name is pasted into SQL as `db.table`, so only plain identifiers are allowed.
            raise ValueError(f"invalid database name {database!r} in ClickHouse URL")
        return cls(
            kind=parts.scheme,
            database=database,
            host=parts.hostname,
            port=parts.port or (8443 if parts.scheme == "https" else 8123),
            username=unquote(parts.username) if parts.username else "default",
            password=unquote(parts.password) if parts.password else "",
        )

    def __str__(self) -> str:
        if self.kind == "chdb":
            return f"chdb://{self.path}"
        auth = f"{quote(self.username, safe='')}:***" if self.password else quote(self.username, safe="")
        return f"{self.kind}://{auth}@{self.host}:{self.port}/{self.database}"

    def redacted(self) -> str:
        """The URL with the password replaced by ***: safe to print."""
        return str(self)

    def secrets(self) -> list[str]:
        return [self.password] if self.password else []

    def connect(self, *, create: bool = True, send_receive_timeout: float = _SEND_RECEIVE_TIMEOUT) -> Client:
        """A new clickhouse-connect client (blocking: call it from a worker thread).

        `create`: an embedded directory that does not exist is created (the proxy, which owns the
        ledger) or refused (readers: a typo must not read as an empty ledger). Errors are re-raised
        as ConnectionError with a message scrubbed of the password, and without the original
        exception attached, so no log line can leak the secret.
        """
        if self.kind == "chdb" and importlib.util.find_spec("chdb") is None:
            raise ConnectionError(NO_EMBEDDED_ENGINE)
        if self.kind == "chdb" and not create and not (self.path and self.path.is_dir()):
            raise ConnectionError(f"no ledger at {self.path}: the directory does not exist")
        try:
            if self.kind == "chdb":
                assert self.path is not None
                self.path.mkdir(parents=True, exist_ok=True)
                return clickhouse_connect.get_client(interface="chdb", path=str(self.path))
            return clickhouse_connect.get_client(
                interface=self.kind,
                host=self.host,
                port=self.port,
                username=self.username,
                password=self.password,
                connect_timeout=_CONNECT_TIMEOUT,
                send_receive_timeout=send_receive_timeout,
                # No HTTP session: the client is stateless, so a server restart never leaves it locked.
                autogenerate_session_id=False,
            )
        except Exception as exc:
            raise ConnectionError(f"cannot connect to {self}: {self.scrub(exc)}") from None

    def scrub(self, exc: BaseException | str) -> str:
        """An error message safe to log: URLs redacted and the literal password removed."""
        text = redact(exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}")
        if self.password:
            text = text.replace(self.password, "***")
        return text


def connect(url: str | None, *, data_dir: Path) -> Client:
    """Shorthand: parse `url` and open a client (the database name is `LedgerTarget.database`)."""
    return LedgerTarget.parse(url, data_dir=data_dir).connect()
