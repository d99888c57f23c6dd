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
from ledger.schema import DEFAULT_TTL_DAYS
from proxy.upstream import DNS_TTL

__all__ = ["ConfigError", "Limits", "ProxyConfig", "load_config"]

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
    # A session closed for what it sent (its cost, malformed or over-long lines, requests piled up before
    # its pool connection) is a strike against its source address, outliving the session. At
    # `address_strike_limit` strikes, new connections from that address are refused at accept until one
    # strike is forgiven. Sessions already open from it are never touched: an honest farm behind one NAT
    # address collects no strikes, and one bad rig among them only delays the others' reconnects.
    address_strike_limit: int = 5  # 0: never refuse an address
    address_strike_forgiven_after: float = 60.0  # seconds after which one strike is forgiven
    submit_timeout: float = 20.0  # seconds to wait for the pool's verdict on a share
    late_verdict_timeout: float = 120.0  # seconds a verdict still counts after the miner was told "no answer"
    # A pool connection whose peer is gone without a FIN or reset (a NAT or firewall dropped its state,
    # a host died) is dropped by the kernel after this long: our bytes unacknowledged, or keepalive
    # probes of an idle connection unanswered. Left to the defaults that takes ~15 min, of dead work.
    pool_dead_after: float = 30.0
    max_miner_buffer: int = 1024 * 1024  # bytes queued to a miner that does not read
    max_write_stall: float = 60.0  # seconds a miner (farm mode: a pool too) may leave its socket unread
    close_grace: float = 2.0  # seconds a closed miner has to take its last bytes before it is aborted
    max_queued_before_pool: int = 64  # requests a miner may send before its pool connection is up
    max_jobs: int = 16  # live jobs kept per session; a clean_jobs notify drops all earlier ones
    # Workers one session may authorize: an IHP carries a farm's workers in one session, but without a
    # bound a miner authorizing name after name grows the session's memory (and the log) for ever.
    max_workers: int = 1_000
    jobs_remembered: int = 4096  # job keys the proxy remembers having ledgered (one job row per content)
    max_text: int = 128  # characters kept of a user agent or a worker name in a log line
    max_error_text: int = 200  # characters of a decoder's message sent back to a miner
    max_reason_text: int = 120  # characters of a pool's reject message kept in the ledger
    # The HTTP port (metrics, the validators' API) shares the process's file descriptors with the
    # sessions: a bounded number of connections, and idle keep-alive ones closed.
    max_http_connections: int = 256
    # SN89 has at most 64 validators, each asking from its own address; 0 turns it off, as it must be
    # behind a reverse proxy (every client then comes from the proxy's address).
    max_http_connections_per_ip: int = 64
    http_idle_timeout: float = 75.0  # seconds an idle keep-alive HTTP connection stays open


@dataclasses.dataclass(frozen=True)
class LedgerBudget:
    """How the ledger writer batches its inserts and what it may hold before shares are refused: the
    one home of these defaults (ProxyConfig's `ledger_*` options default to them)."""

    batch_rows: int = 10_000
    # Two inserts a second: an insert costs ~19 ms of engine work whatever its size (embedded,
    # measured: 94 µs/row in batches of 250, 37 at 1,000, 17 at 10,000) and is one more part to
    # merge (ClickHouse asks for about one a second), while the ingest lag must stay under 2 s
    # (the interval plus the insert). Rows are in the crash journal meanwhile.
    flush_interval: float = 0.5
    max_memory_rows: int = 500_000  # rows held in memory before miners' shares are refused
    max_spool_rows: int = 100_000_000  # rows spooled on disk before miners' shares are refused
    max_spool_bytes: int = 20 * 2**30  # bytes spooled on disk before miners' shares are refused
    max_retry_delay: float = 30.0  # seconds between attempts to reach ClickHouse at most


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
    api_cache_seconds: float = 5.0  # an API answer serves the same request this long (proxy/http.Answers)
    proxy_id: str = dataclasses.field(default_factory=lambda: os.uname().nodename)
    spool_dir: Path | None = None  # None → <data_dir>/spool
    ttl_days: int = DEFAULT_TTL_DAYS
    require_registered: bool = False
    netuid: int = 89
    network: str = "finney"
    metagraph_refresh: float = 300.0
    upstream_connect_timeout: float = 10.0
    upstream_dns_ttl: float = DNS_TTL  # seconds a pool host's addresses serve every new connection
    shutdown_grace: float = 10.0  # seconds SIGTERM waits for in-flight submits
    ledger_batch_rows: int = LedgerBudget.batch_rows
    ledger_flush_interval: float = LedgerBudget.flush_interval
    ledger_max_memory_rows: int = LedgerBudget.max_memory_rows
    ledger_max_spool_rows: int = LedgerBudget.max_spool_rows
    ledger_max_spool_bytes: int = LedgerBudget.max_spool_bytes
    log_level: str = "INFO"
    limits: Limits = dataclasses.field(default_factory=Limits)
    mode: str = "passthrough"  # or "aggregate": farm mode (proxy/farm.py)
    farm_asics_per_upstream: int = 256
    log_format: str = "text"
    clickhouse_cluster: str | None = None  # None: one ClickHouse server (or chdb), plain MergeTree tables
    workers: int = 1  # Stratum processes on one port (proxy/supervisor.py); >1 needs a ClickHouse server
    background_nice: int = 10  # every thread but the event loop's (proxy/priority.py); 0: leave them alone
    gil_switch_interval: float = 0.001  # sys.setswitchinterval (proxy/priority.py); 0: Python's own 5 ms
    cpu_slice: float = 0.0001  # each thread's CPU slice (proxy/priority.py; Linux 6.12+); 0: the kernel's own
    gc_freeze_interval: float = 60.0  # seconds between two gc.freeze() of what survived (proxy/collector.py)

    @property
    def ledger_url(self) -> str:
        return self.clickhouse_url or f"chdb://{self.data_dir / 'ledger'}"

    @property
    def ledger_spool_dir(self) -> Path:
        return self.spool_dir or self.data_dir / "spool"

    @property
    def ledger_budget(self) -> LedgerBudget:
        return LedgerBudget(
            batch_rows=self.ledger_batch_rows,
            flush_interval=self.ledger_flush_interval,
            max_memory_rows=self.ledger_max_memory_rows,
            max_spool_rows=self.ledger_max_spool_rows,
            max_spool_bytes=self.ledger_max_spool_bytes,
        )


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
    "api_cache_seconds": "seconds an answer of /api/v1/workers or /api/v1/coverage serves the same request again "
    "(validators ask for the same windows at the same moments); identical requests in flight always share one "
    "query (0: only those)",
    "proxy_id": "name written in every ledger row (default: the host name)",
    "spool_dir": "where batches ClickHouse did not take wait (default <data-dir>/spool)",
    "ttl_days": "days the ledger keeps shares",
    "require_registered": "refuse hotkeys not registered on the subnet (reads the metagraph)",
    "netuid": "subnet for --require-registered",
    "network": "bittensor network for --require-registered: finney, test or a ws(s):// URL",
    "metagraph_refresh": "seconds between metagraph refreshes",
    "upstream_connect_timeout": "seconds to wait for a pool connection",
    "upstream_dns_ttl": "seconds a pool host's looked-up addresses serve every new connection to it before "
    "the next lookup (0: look up for every connection; a host that refused on every address is looked up again)",
    "shutdown_grace": "seconds SIGTERM waits for the pool's verdict on in-flight shares",
    "ledger_batch_rows": "rows per ledger insert at most",
    "ledger_flush_interval": "seconds between ledger inserts at most",
    "ledger_max_memory_rows": "rows held in memory (ClickHouse down, spool full) before shares are refused",
    "ledger_max_spool_rows": "rows spooled to disk before new shares are refused",
    "ledger_max_spool_bytes": "bytes spooled to disk before new shares are refused",
    "log_level": "DEBUG, INFO, WARNING or ERROR",
    "log_format": "text, or json for one JSON object per line (ts, level, logger, message, extra fields)",
    "clickhouse_cluster": "ClickHouse cluster name (from remote_servers): the migrations run ON CLUSTER with "
    "Replicated tables (<table>_local) and Distributed tables under the names readers use; needs an "
    "http(s):// --clickhouse-url and ClickHouse Keeper (default: none, one server)",
    "workers": "proxy processes sharing the listen port (SO_REUSEPORT: the kernel spreads the ASICs), each "
    "with its own proxy id <proxy-id>-<k>, spool <spool-dir>/worker-<k> and /metrics and API port <metrics "
    "port>+k, for k = 0..N-1; more than 1 needs a ClickHouse server (an http(s):// --clickhouse-url)",
    "background_nice": "CPU priority (nice, 0-19) of every proxy thread but the event loop's: the ledger's insert "
    "thread and the embedded engine's pools yield the core to the share path (0: leave them alone)",
    "cpu_slice": "seconds of CPU every proxy thread asks the kernel for per turn (Linux 6.12+, sched_setattr): "
    "short, so a background thread runs in short turns and the event loop never waits long behind one "
    "(0: the kernel's own, ~1-3 ms; 0.0001 is the shortest it grants; with --background-nice 0 only the loop's)",
    "gil_switch_interval": "seconds a background Python thread (the ledger's) may keep the GIL once the event "
    "loop asks for it (sys.setswitchinterval; 0: Python's own 0.005)",
    "gc_freeze_interval": "seconds between two gc.freeze() of the objects that survived (the sessions), besides "
    "the one after every full collection: full collections then walk only newer ones (0: no interval)",
    "max_line": "longest line a miner may send, in bytes",
    "handshake_timeout": "seconds a miner has to subscribe and authorize",
    "idle_timeout": "seconds a miner may stay silent",
    "max_sessions": "ASIC sessions at most (0: about half of the open-file limit, RLIMIT_NOFILE)",
    "max_sessions_per_ip": "ASIC sessions per source address (an IPv6 /64) at most",
    "cost_decay_per_second": "a session's cost decays by this much per second (one submit costs 1)",
    "cost_soft_limit": "session cost above which the proxy stops reading the miner until it decays",
    "cost_hard_limit": "session cost above which the session is closed",
    "submit_cost": "cost of one submit",
    "request_cost": "cost of any other request (most are relayed to the pool)",
    "error_cost": "extra cost of a malformed line or a refused or rejected submit",
    "byte_cost": "cost of one byte read from the miner",
    "max_bad_lines": "malformed lines (not yet forgiven) a session may send before it is closed",
    "bad_line_forgiven_after": "seconds after which one malformed line is forgiven",
    "address_strike_limit": "sessions closed for abuse (cost, malformed lines), not yet forgiven, after which new "
    "connections from their source address (an IPv6 /64) are refused; 0: never",
    "address_strike_forgiven_after": "seconds after which one strike against an address is forgiven",
    "submit_timeout": "seconds to wait for the pool's verdict on a share",
    "late_verdict_timeout": "seconds a pool verdict still reaches the ledger after the miner was answered",
    "pool_dead_after": "seconds after which a pool connection whose peer vanished (bytes unacknowledged, keepalive "
    "probes unanswered) is dropped by the kernel",
    "max_miner_buffer": "bytes queued to a miner that does not read before it is closed",
    "mode": "passthrough (one pool connection per ASIC) or aggregate (farm mode: the ASICs of one hotkey share "
    "pool connections and keep their connection when the pool fails over)",
    "farm_asics_per_upstream": "in aggregate mode, ASICs per pool connection at most",
    "max_write_stall": "seconds a miner (in farm mode, a pool too) may leave its socket unread while the proxy has "
    "bytes for it",
    "close_grace": "seconds a closed miner has to read its last bytes before the socket is aborted",
    "max_queued_before_pool": "requests a miner may send before its pool connection is up",
    "max_jobs": "live jobs kept per session",
    "max_workers": "distinct workers one session may authorize; more are refused (error 24)",
    "jobs_remembered": "job keys remembered as ledgered (one job row per distinct content)",
    "max_text": "characters kept of a user agent or worker name",
    "max_error_text": "characters of a decoder error sent back to a miner",
    "max_reason_text": "characters of a pool's reject message kept in the ledger",
    "max_http_connections": "connections the HTTP port (metrics, API) keeps open at most; more are closed at "
    "accept (put a reverse proxy in front for more clients)",
    "max_http_connections_per_ip": "connections to the HTTP port one source address (an IPv6 /64) keeps open at "
    "most; 0: no such limit (behind a reverse proxy, where every client has its address)",
    "http_idle_timeout": "seconds an idle keep-alive connection to the HTTP port stays open",
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
        target = LedgerTarget.parse(config.clickhouse_url, data_dir=config.data_dir)
    except ValueError as exc:
        raise ConfigError(f"clickhouse_url: {redact(str(exc))}") from None
    if config.workers < 1:
        raise ConfigError("workers must be at least 1")
    if config.workers > 1 and target.kind == "chdb":
        raise ConfigError(
            "workers: more than one proxy process needs a ClickHouse server (--clickhouse-url http(s)://...): "
            "the embedded chdb ledger can be opened by one process only"
        )
    metrics_port = parse_host_port(config.metrics, "metrics")[1]
    if metrics_port and metrics_port + config.workers - 1 > 65535:
        raise ConfigError(f"metrics: worker k listens on the metrics port + k, and {config.workers} do not fit")
    if not config.account or any(not ACCOUNT.fullmatch(a) for a in config.account):
        raise ConfigError("account must be one or more names of A-Z a-z 0-9 _ -, without dots")
    if config.mode not in ("passthrough", "aggregate"):
        raise ConfigError(f"mode must be passthrough or aggregate, got {config.mode!r}")
    if config.farm_asics_per_upstream < 1:
        raise ConfigError("farm_asics_per_upstream must be at least 1")
    if config.ttl_days < 1:
        raise ConfigError("ttl_days must be at least 1")
    if not 0 <= config.background_nice <= 19:
        raise ConfigError("background_nice must be 0 (leave the threads alone) to 19")
    if not 0 <= config.gil_switch_interval <= 0.1:
        raise ConfigError("gil_switch_interval must be 0 (Python's own) to 0.1 seconds")
    if not (config.cpu_slice == 0 or 0.0001 <= config.cpu_slice <= 0.1):
        raise ConfigError("cpu_slice must be 0 (the kernel's own) or 0.0001 to 0.1 seconds")
    if config.upstream_dns_ttl < 0:
        raise ConfigError("upstream_dns_ttl must be 0 (look up every time) or more seconds")
    if config.gc_freeze_interval < 0:
        raise ConfigError("gc_freeze_interval must be 0 (no interval) or more seconds")
    if config.limits.max_http_connections < 1 or config.limits.http_idle_timeout <= 0:
        raise ConfigError("max_http_connections must be at least 1 and http_idle_timeout above 0 seconds")
    if config.limits.max_http_connections_per_ip < 0:
        raise ConfigError("max_http_connections_per_ip must be 0 (no limit) or more")
    if not 0 <= config.api_cache_seconds <= 3600:
        raise ConfigError("api_cache_seconds must be 0 (share only requests in flight) to 3600")
    if config.api_token is not None and (
        len(config.api_token) < 16 or not config.api_token.isprintable() or " " in config.api_token
    ):
        raise ConfigError("api_token: at least 16 printable characters, no spaces (e.g. openssl rand -hex 32)")


def parse_host_port(text: str, what: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{what} must be HOST:PORT, got {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)
