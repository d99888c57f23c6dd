"""The proxy's one config object; it is read by the loader both programs share (`ledger/options.py`):
defaults < TOML file < IH_* environment < flags.

Every option has one name used everywhere: the field `idle_timeout` is `--idle-timeout`,
`IH_IDLE_TIMEOUT` and `idle_timeout = …` in the TOML file. Its help text is `_HELP` below.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ledger import options
from ledger.options import ConfigError, Option, to_bool, to_float, to_int, to_strings

__all__ = ["ConfigError", "Limits", "ProxyConfig", "load_config"]

LUXOR_URL = "stratum+tcp://btc.global.luxor.tech:700"


@dataclasses.dataclass(frozen=True)
class Limits:
    """Per-session costs and limits (in the spirit of aiorpcx): breaking one closes that session."""

    max_line: int = 16 * 1024  # bytes; a notify with a large coinbase is ~3 KiB
    handshake_timeout: float = 60.0  # seconds from connect to a successful authorize
    idle_timeout: float = 900.0  # seconds without a line from the miner
    max_sessions: int = 10_000
    max_sessions_per_ip: int = 2_000  # farms sit behind one NAT address
    submits_per_second: float = 100.0  # sustained, per session (an S21 at Luxor difficulty sends < 1/s)
    submit_burst: float = 200.0
    max_bad_lines: int = 20  # malformed lines per session before it is closed
    submit_timeout: float = 20.0  # seconds to wait for the pool's verdict on a share
    late_verdict_timeout: float = 120.0  # seconds a verdict still counts after the miner was told "no answer"
    max_miner_buffer: int = 1024 * 1024  # bytes queued to a miner that does not read


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
    log_level: str = "INFO"
    limits: Limits = dataclasses.field(default_factory=Limits)
    mode: str = "passthrough"  # or "aggregate": farm mode (proxy/farm.py)
    farm_asics_per_upstream: int = 256
    log_format: str = "text"
    clickhouse_cluster: str | None = None  # None: one ClickHouse server (or chdb), plain MergeTree tables

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
    "log_level": "DEBUG, INFO, WARNING or ERROR",
    "log_format": "text, or json for one JSON object per line (ts, level, logger, message, extra fields)",
    "clickhouse_cluster": "ClickHouse cluster name (from remote_servers): the migrations run ON CLUSTER with "
    "Replicated tables (<table>_local) and Distributed tables under the names readers use; needs an "
    "http(s):// --clickhouse-url and ClickHouse Keeper (default: none, one server)",
    "max_line": "longest line a miner may send, in bytes",
    "handshake_timeout": "seconds a miner has to subscribe and authorize",
    "idle_timeout": "seconds a miner may stay silent",
    "max_sessions": "ASIC sessions at most",
    "max_sessions_per_ip": "ASIC sessions per source address at most",
    "submits_per_second": "sustained submits per second per session",
    "submit_burst": "submits a session may send in a burst",
    "max_bad_lines": "malformed lines a session may send before it is closed",
    "submit_timeout": "seconds to wait for the pool's verdict on a share",
    "late_verdict_timeout": "seconds a pool verdict still reaches the ledger after the miner was answered",
    "max_miner_buffer": "bytes queued to a miner that does not read before it is closed",
    "mode": "passthrough (one pool connection per ASIC) or aggregate (farm mode: the ASICs of one hotkey share "
    "pool connections and keep their connection when the pool fails over)",
    "farm_asics_per_upstream": "in aggregate mode, ASICs per pool connection at most",
}

_LIMIT_FIELDS = {f.name: f for f in dataclasses.fields(Limits)}
_TOP_FIELDS = {f.name: f for f in dataclasses.fields(ProxyConfig) if f.name != "limits"}
_SHOWN_DEFAULT = {"proxy_id": "the host name", "api_token": "none: the API is open"}
_SECRET = {"clickhouse_url", "api_token"}


def _path(value: Any) -> Path | None:
    return Path(value) if value not in (None, "") else None


def _converter(kind: Any) -> tuple[Callable[[Any], Any], bool, bool]:
    """(convert, switch, repeat) for a field's real type (not its spelling)."""
    args = set(typing.get_args(kind)) - {type(None)}
    base = next(iter(args)) if typing.get_origin(kind) in (types.UnionType, typing.Union) and len(args) == 1 else kind
    if base is bool:
        return to_bool, True, False
    if base is int:
        return to_int, False, False
    if base is float:
        return to_float, False, False
    if base is Path:
        return _path, False, False
    if typing.get_origin(base) is tuple:
        return to_strings, False, True
    return str, False, False


def _options() -> list[Option]:
    hints = {**typing.get_type_hints(Limits), **typing.get_type_hints(ProxyConfig)}
    defaults = {**dataclasses.asdict(Limits()), **{n: f.default for n, f in _TOP_FIELDS.items()}}
    out = []
    for name in [*_TOP_FIELDS, *_LIMIT_FIELDS]:
        convert, switch, repeat = _converter(hints[name])
        default = defaults[name]
        out.append(
            Option(
                name,
                _HELP[name],
                convert,
                None if default is dataclasses.MISSING else default,
                switch=switch,
                repeat=repeat,
                metavar=("URL" if name == "upstream" else "NAME") if repeat else None,
                secret=name in _SECRET,
                shown_default=_SHOWN_DEFAULT.get(name),
            )
        )
    return out


OPTIONS = _options()


def build_parser() -> argparse.ArgumentParser:
    return options.build_parser(
        "ih-proxy",
        "SN89 InfiniteHash share proxy: ASICs → proxy → pool, with a verified share ledger. "
        "Every option can also be set as IH_<NAME> in the environment or in a TOML file (--config; "
        "limits at the top level or in a [limits] table).",
        OPTIONS,
    )


def load_config(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> ProxyConfig:
    """Read the config from flags, the environment and an optional TOML file."""
    values = options.load(OPTIONS, build_parser(), argv, environ, tables=("limits",))
    limits = Limits(**{k: values.pop(k) for k in list(values) if k in _LIMIT_FIELDS})
    top = {k: v for k, v in values.items() if v is not None or _TOP_FIELDS[k].default is None}
    config = ProxyConfig(**top, limits=limits)
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
    if config.mode not in ("passthrough", "aggregate"):
        raise ConfigError(f"mode must be passthrough or aggregate, got {config.mode!r}")
    if config.farm_asics_per_upstream < 1:
        raise ConfigError("farm_asics_per_upstream must be at least 1")
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
