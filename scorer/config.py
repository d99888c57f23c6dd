"""``ih-scorer`` settings: command-line flags, ``IH_*`` environment variables, a TOML file, read by
the loader both programs share (``ledger/options.py``).

Precedence: flag > environment > ``--config`` TOML > default. The TOML file takes the same keys as the
flags, without the dashes in front; ``_`` and ``-`` are the same, and tables nest with dots, so
``window = "6h"``, ``min_hashrate = "100T"`` and ``[wallet] name = "validator"`` all work.

Secrets (the ClickHouse password inside the URL, the Luxor API key) are best given through the
environment (``IH_CLICKHOUSE_URL``, ``IH_LUXOR_API_KEY``) or the TOML file rather than a flag, which
other users of the machine can see in the process list. They are never logged.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ledger import options
from ledger.options import ConfigError, to_bool, to_float, to_int
from ledger.target import LedgerTarget

from .hashrate import parse_duration, parse_hashrate, parse_time
from .luxor import DEFAULT_LUXOR_URL
from .policy import Policy, PolicyError
from .sources import DEFAULT_CLICKHOUSE_URL, parse_clickhouse_url

__all__ = ["ConfigError", "Settings", "load_settings"]


@dataclass(frozen=True)
class Settings:
    clickhouse: LedgerTarget | None
    proxy_api: str | None
    pattern: str
    window_seconds: int
    end: datetime | None
    netuid: int
    network: str
    wallet_name: str
    wallet_hotkey: str
    wallet_path: str | None
    dry_run: bool
    json: bool
    workers: bool
    metagraph_file: str | None
    policy: Policy
    burn_uid: int | None
    skip_mechanisms: frozenset[int]
    burn_mechanisms: frozenset[int]
    loop: bool
    passes: int | None
    retries: int
    retry_delay: float
    luxor_api_key: str | None
    luxor_subaccount: str
    luxor_url: str
    luxor_threshold: float
    log_level: str
    audit_sample: int | None = None  # re-hash this many credited shares before setting weights (scorer/audit.py)
    min_coverage: float = 0.9  # scorer/coverage.py: refuse windows the proxies covered less
    log_format: str = "text"  # or "json": one object per line (ledger/logs.py)

    def secrets(self) -> list[str]:
        out = list(self.clickhouse.secrets()) if self.clickhouse else []
        if self.luxor_api_key:
            out.append(self.luxor_api_key)
        return [s for s in out if s]


_DEST: dict[str, str] = {}  # option name (as in the flag, maybe dotted) → Settings' raw key


def Option(
    flag: str,
    dest: str,
    help: str,
    convert: Callable[[Any], Any] = str,
    default: Any = None,
    flag_only: bool = False,
    env: str | None = None,  # every option has IH_<NAME> now; kept so the table reads as before
    metavar: str | None = None,
) -> options.Option:
    name = flag.lstrip("-").replace("-", "_")
    _DEST[name] = dest
    shown = None if flag_only or default is not None else "none"
    return options.Option(
        name,
        help,
        convert,
        default,
        switch=flag_only,
        metavar=metavar,
        secret=dest in ("luxor_api_key", "clickhouse_url"),
        shown_default=shown,
    )


def _positive_int(value: Any) -> int:
    number = to_int(value)
    if number < 1:
        raise ValueError("must be at least 1")
    return number


def _mechids(value: Any) -> frozenset[int]:
    """``"1,2"`` on the command line, ``[1, 2]`` (or ``"1,2"``) in TOML → mechanism ids."""
    items = value if isinstance(value, list) else [p for p in str(value).replace(" ", "").split(",") if p]
    out = set()
    for item in items:
        mechid = to_int(item)
        if not 0 <= mechid <= 255:
            raise ValueError(f"{item!r} is not a mechanism id (0..255)")
        out.add(mechid)
    return frozenset(out)


OPTIONS: tuple[options.Option, ...] = (
    Option(
        "--clickhouse-url",
        "clickhouse_url",
        "the ledger: http(s)://user:pass@host:port/[db] (db default infinitehash), chdb:///abs/path or "
        f"chdb://rel/path (default {DEFAULT_CLICKHOUSE_URL}: the proxy's default data dir; an embedded "
        "directory can be open in one process at a time)",
        env="IH_CLICKHOUSE_URL",
        metavar="URL",
    ),
    Option(
        "--proxy-api",
        "proxy_api",
        "read hashrate from a running proxy's GET /api/v1/workers instead of the ledger (no share counts)",
        metavar="URL",
    ),
    Option("--pattern", "pattern", "worker glob for --proxy-api (default *)", default="*"),
    Option(
        "--window",
        "window",
        "scoring window ending now (or at --end): 90m, 6h, 1d (default 6h); minute-aligned",
        default="6h",
        metavar="DURATION",
    ),
    Option(
        "--end", "end", "end of the window, ISO 8601 (default now, UTC; rounded down to the minute)", metavar="TIME"
    ),
    Option("--netuid", "netuid", "subnet uid (default 89)", to_int, 89),
    Option("--network", "network", "finney, test, local, or a ws(s):// URL (default finney)", default="finney"),
    Option("--wallet.name", "wallet_name", "wallet name (default default)", default="default"),
    Option("--wallet.hotkey", "wallet_hotkey", "hotkey name in the wallet (default default)", default="default"),
    Option("--wallet.path", "wallet_path", "wallets directory (default ~/.bittensor/wallets)"),
    Option(
        "--dry-run",
        "dry_run",
        "print the table and weights; never set weights on chain",
        to_bool,
        False,
        flag_only=True,
    ),
    Option("--json", "json", "also print one JSON object as the last line of stdout", to_bool, False, flag_only=True),
    Option("--workers", "workers", "list each hotkey's workers in the table", to_bool, False, flag_only=True),
    Option(
        "--metagraph-file",
        "metagraph_file",
        "JSON object uid → hotkey to use instead of the chain's metagraph (needs --dry-run)",
        metavar="FILE",
    ),
    Option("--phase", "phase", "weight policy: 1 proportional (default), 2 minimum + ceiling", to_int, 1),
    Option(
        "--min-hashrate",
        "min_hashrate",
        "phase 2: hashrate needed for the base reward, e.g. 100T or 1.5PH/s",
        parse_hashrate,
        metavar="RATE",
    ),
    Option(
        "--max-hashrate",
        "max_hashrate",
        "phase 2: most hashrate a hotkey is credited with (default the minimum)",
        parse_hashrate,
        metavar="RATE",
    ),
    Option(
        "--hashrate-share",
        "hashrate_share",
        "part of the weight that hashrate earns, 0..1 (default 1); the rest goes to the burn uid",
        to_float,
        1.0,
    ),
    Option("--burn-uid", "burn_uid", "uid that gets the unearned weight (default the subnet owner's uid)", to_int),
    Option(
        "--skip-mechanisms",
        "skip_mechanisms",
        "mechanism ids this scorer never sets weights on, e.g. 1,2 (default none: every mechanism)",
        _mechids,
        frozenset(),
        metavar="IDS",
    ),
    Option(
        "--burn-mechanisms",
        "burn_mechanisms",
        "mechanism ids that get the whole weight on the burn uid instead of the hashrate vector",
        _mechids,
        frozenset(),
        metavar="IDS",
    ),
    Option("--loop", "loop", "keep running: score and set weights once per tempo", to_bool, False, flag_only=True),
    Option("--passes", "passes", "with --loop: stop after this many passes (default never)", to_int),
    Option("--retries", "retries", "attempts for each chain call (default 3)", to_int, 3),
    Option("--retry-delay", "retry_delay", "first backoff in seconds, doubled per retry (default 2)", to_float, 2.0),
    Option(
        "--luxor-api-key",
        "luxor_api_key",
        "enable the Luxor cross-check (report only)",
        env="IH_LUXOR_API_KEY",
        metavar="KEY",
    ),
    Option(
        "--luxor-subaccount",
        "luxor_subaccount",
        "Luxor subaccount (default infinite)",
        default="infinite",
        env="IH_LUXOR_SUBACCOUNT",
    ),
    Option(
        "--luxor-url",
        "luxor_url",
        f"Luxor API base (default {DEFAULT_LUXOR_URL})",
        default=DEFAULT_LUXOR_URL,
        metavar="URL",
    ),
    Option(
        "--luxor-threshold",
        "luxor_threshold",
        "flag a hotkey when |ours/Luxor - 1| exceeds this (default 0.1)",
        to_float,
        0.1,
    ),
    Option("--log-level", "log_level", "DEBUG, INFO, WARNING (default INFO)", default="INFO"),
    Option(
        "--log-format",
        "log_format",
        "text, or json for one JSON object per line on stderr (default text)",
        default="text",
    ),
    Option(
        "--audit-sample",
        "audit_sample",
        "before setting weights, re-hash a random sample of N credited shares of the window from the ledger "
        "(ih-scorer audit) and refuse unless every one verifies",
        _positive_int,
        metavar="N",
    ),
    Option(
        "--min-coverage",
        "min_coverage",
        "refuse to score a window the proxies covered less than this, 0..1 (default 0.9; 0: no check)",
        to_float,
        0.9,
    ),
)


def build_parser() -> argparse.ArgumentParser:
    return options.build_parser(
        "ih-scorer",
        "SN89 InfiniteHash scorer: hashrate per hotkey from the share ledger → weights on chain.",
        OPTIONS,
        epilog="Every option can also come from the environment (IH_<NAME>) or --config FILE.toml (same keys, "
        'e.g. window = "6h", [wallet] name = "v"). The window is minute-aligned: minutes >= start and < end.',
    )


def load_settings(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    values = options.load(OPTIONS, build_parser(), argv, environ)
    return _settings({_DEST[name]: value for name, value in values.items()})


def _settings(raw: dict[str, Any]) -> Settings:
    if raw["clickhouse_url"] is not None and raw["proxy_api"] is not None:
        raise ConfigError("give --clickhouse-url or --proxy-api, not both")
    clickhouse: LedgerTarget | None = None
    if raw["proxy_api"] is None:
        try:
            clickhouse = parse_clickhouse_url(raw["clickhouse_url"] or DEFAULT_CLICKHOUSE_URL)
        except ValueError as exc:
            raise ConfigError(f"--clickhouse-url: {exc}") from None
    try:
        window_seconds = parse_duration(raw["window"])
    except ValueError as exc:
        raise ConfigError(f"--window: {exc}") from None
    try:
        end = parse_time(raw["end"]) if raw["end"] else None
    except ValueError:
        raise ConfigError(f"--end: not an ISO 8601 time: {raw['end']!r}") from None
    policy = Policy(
        phase=raw["phase"],
        min_hashrate=raw["min_hashrate"],
        max_hashrate=raw["max_hashrate"],
        hashrate_share=raw["hashrate_share"],
    )
    try:
        policy.validate()
    except PolicyError as exc:
        raise ConfigError(str(exc)) from None
    if raw["metagraph_file"] and not raw["dry_run"]:
        raise ConfigError("--metagraph-file is for runs without a chain: add --dry-run")
    if raw["burn_uid"] is not None and not 0 <= raw["burn_uid"] <= 65535:
        raise ConfigError("--burn-uid must be a uid (0..65535)")
    if raw["skip_mechanisms"] & raw["burn_mechanisms"]:
        both = ", ".join(str(m) for m in sorted(raw["skip_mechanisms"] & raw["burn_mechanisms"]))
        raise ConfigError(f"mechanism {both} is in both --skip-mechanisms and --burn-mechanisms")
    if raw["retries"] < 1:
        raise ConfigError("--retries must be at least 1")
    if raw["retry_delay"] < 0:
        raise ConfigError("--retry-delay must not be negative")
    if raw["passes"] is not None and raw["passes"] < 1:
        raise ConfigError("--passes must be at least 1")
    if raw["luxor_threshold"] < 0:
        raise ConfigError("--luxor-threshold must not be negative")
    if not 0 <= raw["netuid"] <= 65535:
        raise ConfigError("--netuid must be 0..65535")
    if not 0 <= raw["min_coverage"] <= 1:
        raise ConfigError("--min-coverage must be 0..1")
    return Settings(
        clickhouse=clickhouse,
        proxy_api=raw["proxy_api"],
        pattern=raw["pattern"],
        window_seconds=window_seconds,
        end=end,
        netuid=raw["netuid"],
        network=raw["network"],
        wallet_name=raw["wallet_name"],
        wallet_hotkey=raw["wallet_hotkey"],
        wallet_path=raw["wallet_path"],
        dry_run=bool(raw["dry_run"]),
        json=bool(raw["json"]),
        workers=bool(raw["workers"]),
        metagraph_file=raw["metagraph_file"],
        policy=policy,
        burn_uid=raw["burn_uid"],
        skip_mechanisms=raw["skip_mechanisms"],
        burn_mechanisms=raw["burn_mechanisms"],
        loop=bool(raw["loop"]),
        passes=raw["passes"],
        retries=raw["retries"],
        retry_delay=raw["retry_delay"],
        luxor_api_key=raw["luxor_api_key"] or None,
        luxor_subaccount=raw["luxor_subaccount"],
        luxor_url=raw["luxor_url"],
        luxor_threshold=raw["luxor_threshold"],
        log_level=str(raw["log_level"]).upper(),
        audit_sample=raw["audit_sample"],
        min_coverage=raw["min_coverage"],
        log_format=str(raw["log_format"]),
    )
