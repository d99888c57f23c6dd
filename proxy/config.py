"""The proxy's one config object, and how it is read: defaults < TOML file < IH_* environment < flags.

Every option has one name used everywhere: the field `session_timeout` is `--session-timeout`,
`IH_SESSION_TIMEOUT` and `session_timeout = …` in the TOML file.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

LUXOR_URL = "stratum+tcp://btc.global.luxor.tech:700"


@dataclasses.dataclass(frozen=True)
class Limits:
    """Per-session costs and limits (in the spirit of aiorpcX): every knob of a session's budget.

    Costs are in submits: one submit costs 1. A session's cost decays at `cost_decay_per_second`;
    above `cost_soft_limit` the proxy stops reading that miner until it decays below, above
    `cost_hard_limit` it closes the session. A farm behind one session (IHP) sends hundreds of
    submits a second and stays far below; a loop of extranonce.subscribe or unknown methods, each
    relayed to the pool, costs `request_cost` apiece and is throttled to a few dozen a second."""

    max_line: int = 16 * 1024  # bytes; a notify with a large coinbase is ~3 KiB
    handshake_timeout: float = 15.0  # seconds from connect to a successful authorize
    idle_timeout: float = 900.0  # seconds without a line from the miner
    max_sessions: int = 0  # 0: from RLIMIT_NOFILE (each session holds two fds; headroom kept)
    max_sessions_per_ip: int = 2_000  # farms sit behind one NAT address
    cost_decay_per_second: float = 2_000.0  # the sustained budget: 2,000 submits/s per session
    cost_soft_limit: float = 10_000.0  # above it, reading pauses until the cost decays below
    cost_hard_limit: float = 50_000.0  # above it, the session is closed
    submit_cost: float = 1.0  # a submit, answered here or forwarded
    request_cost: float = 25.0  # any other request: relayed to the pool, which pays for it too
    error_cost: float = 50.0  # a malformed line, a refused or rejected submit (on top of its own cost)
    byte_cost: float = 0.001  # per byte read (a submit line is ~150 bytes)
    max_bad_lines: int = 20  # malformed lines not yet forgiven before the session is closed
    bad_line_forgiven_after: float = 60.0  # seconds after which one malformed line is forgiven
    submit_timeout: float = 20.0  # seconds to wait for the pool's verdict on a share
    late_verdict_timeout: float = 120.0  # seconds a verdict still counts after the miner was told "no answer"
    max_miner_buffer: int = 1024 * 1024  # bytes queued to a miner that does not read
    max_write_stall: float = 60.0  # seconds a miner may leave its socket unread (writes paused)
    close_grace: float = 2.0  # seconds a closed miner has to take its last bytes before it is aborted
    max_queued_before_pool: int = 64  # requests a miner may send before its pool connection is up
    max_jobs: int = 16  # live jobs kept per session; a clean_jobs notify drops all earlier ones
    jobs_remembered: int = 4096  # job keys the proxy remembers having ledgered (one job row per content)
    max_text: int = 128  # characters kept of a user agent or a worker name in a log line
    max_error_text: int = 200  # characters of a decoder's message sent back to a miner
    max_reason_text: int = 120  # characters of a pool's reject message kept in the ledger


@dataclasses.dataclass(frozen=True)
class ProxyConfig:
    listen: str = "0.0.0.0:3333"
    upstream: tuple[str, ...] = (LUXOR_URL,)
    account: tuple[str, ...] = ("infinite",)  # the first is prefixed to a bare <hotkey>.<workerID>
    health_check: tuple[str, ...] = ()  # worker names never credited, besides <account>.check
    data_dir: Path = Path("data")
    clickhouse_url: str | None = None  # None → chdb://<data_dir>/ledger
    metrics: str = "127.0.0.1:9464"
    api_token: str | None = dataclasses.field(default=None, repr=False)  # None: the API is open
    proxy_id: str = dataclasses.field(default_factory=lambda: os.uname().nodename)
    spool_dir: Path | None = None  # None → <data_dir>/spool
    ttl_days: int = 90
    require_registered: bool = False
    netuid: int = 89
    network: str = "finney"
    metagraph_refresh: float = 300.0
    upstream_connect_timeout: float = 10.0
    shutdown_grace: float = 10.0  # seconds SIGTERM waits for in-flight submits
    ledger_batch_rows: int = 10_000
    ledger_flush_interval: float = 0.25
    ledger_max_memory_rows: int = 500_000  # rows held in memory before miners' shares are refused
    ledger_max_spool_rows: int = 100_000_000  # rows spooled on disk before miners' shares are refused
    ledger_max_spool_bytes: int = 20 * 2**30  # bytes spooled on disk before miners' shares are refused
    log_level: str = "INFO"
    limits: Limits = dataclasses.field(default_factory=Limits)

    @property
    def ledger_url(self) -> str:
        return self.clickhouse_url or f"chdb://{self.data_dir / 'ledger'}"

    @property
    def ledger_spool_dir(self) -> Path:
        return self.spool_dir or self.data_dir / "spool"


# name → (help, parser for strings). Limits are options too, at the top level of flags/env/TOML.
_HELP: dict[str, str] = {
    "listen": "HOST:PORT where ASICs connect",
    "upstream": "pool URL stratum+tcp://host:port; repeat for failover, in priority order",
    "account": "pool account: worker names are <account>.<hotkey>.<workerID>; repeat for several "
    "(e.g. infinite and sn89auction), the first is prefixed to a bare <hotkey>.<workerID>",
    "health_check": "a worker name that is authorized and gets work but is never credited (besides "
    "<account>.check for every account); repeatable",
    "data_dir": "directory for the embedded ledger and the spool",
    "clickhouse_url": "http(s)://user:pass@host:port/[db] for a ClickHouse server, chdb://PATH for an embedded "
    "directory (default chdb://<data-dir>/ledger)",
    "metrics": "HOST:PORT for Prometheus /metrics, /healthz, /readyz and the /api/v1/ HTTP API",
    "api_token": "token the /api/v1/ endpoints require as 'Authorization: Bearer <token>' (or Basic with it as "
    "the password); prefer IH_API_TOKEN over the flag, which the process list shows",
    "proxy_id": "name written in every ledger row (default: the host name)",
    "spool_dir": "where batches ClickHouse did not take wait (default <data-dir>/spool)",
    "ttl_days": "days the ledger keeps shares",
    "require_registered": "refuse hotkeys not registered on the subnet (reads the metagraph)",
    "netuid": "subnet for --require-registered",
    "network": "bittensor network for --require-registered: finney, test or a ws(s):// URL",
    "metagraph_refresh": "seconds between metagraph refreshes",
    "upstream_connect_timeout": "seconds to wait for a pool connection",
    "shutdown_grace": "seconds SIGTERM waits for the pool's verdict on in-flight shares",
    "ledger_batch_rows": "rows per ledger insert at most",
    "ledger_flush_interval": "seconds between ledger inserts at most",
    "ledger_max_memory_rows": "rows held in memory (ClickHouse down, spool full) before shares are refused",
    "ledger_max_spool_rows": "rows spooled to disk before new shares are refused",
    "ledger_max_spool_bytes": "bytes spooled to disk before new shares are refused",
    "log_level": "DEBUG, INFO, WARNING or ERROR",
    "max_line": "longest line a miner may send, in bytes",
    "handshake_timeout": "seconds a miner has to subscribe and authorize",
    "idle_timeout": "seconds a miner may stay silent",
    "max_sessions": "ASIC sessions at most (0: about half of the open-file limit, RLIMIT_NOFILE)",
    "max_sessions_per_ip": "ASIC sessions per source address at most",
    "cost_decay_per_second": "a session's cost decays by this much per second (one submit costs 1)",
    "cost_soft_limit": "session cost above which the proxy stops reading the miner until it decays",
    "cost_hard_limit": "session cost above which the session is closed",
    "submit_cost": "cost of one submit",
    "request_cost": "cost of any other request (most are relayed to the pool)",
    "error_cost": "extra cost of a malformed line or a refused or rejected submit",
    "byte_cost": "cost of one byte read from the miner",
    "max_bad_lines": "malformed lines (not yet forgiven) a session may send before it is closed",
    "bad_line_forgiven_after": "seconds after which one malformed line is forgiven",
    "submit_timeout": "seconds to wait for the pool's verdict on a share",
    "late_verdict_timeout": "seconds a pool verdict still reaches the ledger after the miner was answered",
    "max_miner_buffer": "bytes queued to a miner that does not read before it is closed",
    "max_write_stall": "seconds a miner may leave its socket unread while the proxy has bytes for it",
    "close_grace": "seconds a closed miner has to read its last bytes before the socket is aborted",
    "max_queued_before_pool": "requests a miner may send before its pool connection is up",
    "max_jobs": "live jobs kept per session",
    "jobs_remembered": "job keys remembered as ledgered (one job row per distinct content)",
    "max_text": "characters kept of a user agent or worker name",
    "max_error_text": "characters of a decoder error sent back to a miner",
    "max_reason_text": "characters of a pool's reject message kept in the ledger",
}

_LIMIT_FIELDS = {f.name: f for f in dataclasses.fields(Limits)}
_TOP_FIELDS = {f.name: f for f in dataclasses.fields(ProxyConfig) if f.name != "limits"}


class ConfigError(ValueError):
    pass


def _field_type(name: str) -> Any:
    field = _TOP_FIELDS.get(name) or _LIMIT_FIELDS[name]
    return field.type


def _convert(name: str, value: Any) -> Any:
    """Turn a string (flag, env) or TOML value into the field's type."""
    kind = str(_field_type(name))
    try:
        if "tuple" in kind:
            if isinstance(value, str):
                return tuple(v.strip() for v in value.split(",") if v.strip())
            return tuple(str(v) for v in value)
        if kind == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(f"expected true or false, got {value!r}")
        if kind == "int":
            return int(value)
        if kind == "float":
            return float(value)
        if "Path" in kind:
            return Path(value) if value not in (None, "") else None
        return str(value) if value is not None else None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name}: {exc}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ih-proxy",
        description="SN89 InfiniteHash share proxy: ASICs → proxy → pool, with a verified share ledger. "
        "Every option can also be set as IH_<NAME> in the environment or in a TOML file (--config).",
    )
    parser.add_argument("--config", type=Path, help="TOML file with any of the options below")
    for name in [*_TOP_FIELDS, *_LIMIT_FIELDS]:
        flag = "--" + name.replace("_", "-")
        default = _default(name)
        shown = ", ".join(default) if isinstance(default, tuple) else default
        text = f"{_HELP[name]} (default: {shown}; env IH_{name.upper()})"
        if str(_field_type(name)) == "bool":
            parser.add_argument(flag, action="store_const", const=True, default=None, help=text)
        elif "tuple" in str(_field_type(name)):
            parser.add_argument(
                flag, action="append", default=None, metavar="URL" if name == "upstream" else "NAME", help=text
            )
        else:
            parser.add_argument(flag, default=None, help=text)
    return parser


def _default(name: str) -> Any:
    if name in _LIMIT_FIELDS:
        return getattr(Limits(), name)
    if name == "proxy_id":
        return "the host name"
    if name == "api_token":
        return "none: the API is open"
    return getattr(ProxyConfig, name, None) if name != "upstream" else (LUXOR_URL,)


def load_config(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> ProxyConfig:
    """Read the config from flags, the environment and an optional TOML file."""
    args = vars(build_parser().parse_args(argv))
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}

    config_file = args.pop("config") or environ.get("IH_CONFIG")
    if config_file:
        try:
            with open(config_file, "rb") as f:
                table = tomllib.load(f)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config file {config_file}: {exc}") from None
        limits_table = table.pop("limits", {})  # limits may sit in their own [limits] table
        table = {**table, **limits_table}
        for key, value in table.items():
            name = key.replace("-", "_")
            if name not in _TOP_FIELDS and name not in _LIMIT_FIELDS:
                raise ConfigError(f"unknown option {key!r} in {config_file}")
            values[name] = _convert(name, value)

    for name in [*_TOP_FIELDS, *_LIMIT_FIELDS]:
        env_value = environ.get(f"IH_{name.upper()}")
        if env_value is not None:
            values[name] = _convert(name, env_value)
        if args.get(name) is not None:
            values[name] = _convert(name, args[name])

    limits = Limits(**{k: values.pop(k) for k in list(values) if k in _LIMIT_FIELDS})
    config = ProxyConfig(**values, limits=limits)
    validate(config)
    return config


def validate(config: ProxyConfig) -> None:
    from ledger.target import LedgerTarget, redact
    from ledger.workers import ACCOUNT
    from proxy.upstream import parse_pool_url

    parse_host_port(config.listen, "listen")
    parse_host_port(config.metrics, "metrics")
    if not config.upstream:
        raise ConfigError("at least one --upstream is needed")
    try:
        for url in config.upstream:
            parse_pool_url(url)
    except ValueError as exc:
        raise ConfigError(f"upstream: {exc}") from None
    try:
        LedgerTarget.parse(config.clickhouse_url, data_dir=config.data_dir)
    except ValueError as exc:
        raise ConfigError(f"clickhouse_url: {redact(str(exc))}") from None
    if not config.account or any(not ACCOUNT.fullmatch(a) for a in config.account):
        raise ConfigError("account must be one or more names of A-Z a-z 0-9 _ -, without dots")
    if config.ttl_days < 1:
        raise ConfigError("ttl_days must be at least 1")
    if config.api_token is not None and (
        len(config.api_token) < 16 or not config.api_token.isprintable() or " " in config.api_token
    ):
        raise ConfigError("api_token: at least 16 printable characters, no spaces (e.g. openssl rand -hex 32)")


def parse_host_port(text: str, what: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{what} must be HOST:PORT, got {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)
