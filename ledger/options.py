"""The one option loader both programs use: flags, `IH_*` environment variables and a TOML file.

Every option has one name. `max_line` is the flag `--max-line`, the variable `IH_MAX_LINE` and the
TOML key `max_line` (or `max-line`, or inside a grouping table such as `[limits]`); a dotted flag
such as `--wallet.name` is `IH_WALLET_NAME` and `[wallet] name`. Precedence: flag > environment >
TOML file > default. `--help` is generated from the same descriptions.

It lives in the bottom layer because both `proxy` and `scorer` read their settings with it; it knows
nothing of either program's options.
"""

from __future__ import annotations

import argparse
import os
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


class ConfigError(ValueError):
    """A setting is missing, malformed or contradicts another one; the message is for the operator."""


@dataclass(frozen=True)
class Option:
    name: str  # the one name: snake_case, or dotted for a TOML table (wallet.name)
    help: str
    convert: Callable[[Any], Any] = str
    default: Any = None
    switch: bool = False  # a flag without a value (true when given)
    repeat: bool = False  # the flag may repeat; the environment takes a comma list, TOML an array
    metavar: str | None = None
    secret: bool = False  # its value never appears in an error
    shown_default: str | None = None  # what --help says when the default is computed

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return "IH_" + self.name.replace(".", "_").replace("-", "_").upper()

    @property
    def key(self) -> str:
        return self.name.replace("_", "-")


def _help(option: Option) -> str:
    default = option.shown_default
    if default is None:
        value = option.default
        if isinstance(value, (tuple, list, frozenset, set)):
            default = ", ".join(str(v) for v in value) or "none"
        else:
            default = "none" if value is None else str(value)
    return f"{option.help} (default: {default}; env {option.env})"


def build_parser(
    prog: str, description: str, options: Sequence[Option], epilog: str | None = None
) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description, epilog=epilog)
    parser.add_argument("--config", metavar="FILE", help="TOML file with any of the options below (env IH_CONFIG)")
    for o in options:
        if o.switch:
            parser.add_argument(o.flag, dest=o.name, action="store_const", const=True, default=None, help=_help(o))
        elif o.repeat:
            parser.add_argument(o.flag, dest=o.name, action="append", default=None, metavar=o.metavar, help=_help(o))
        else:
            parser.add_argument(o.flag, dest=o.name, default=None, metavar=o.metavar, help=_help(o))
    return parser


def read_toml(path: str, options: Sequence[Option], tables: Iterable[str] = ()) -> dict[str, Any]:
    """The file as {option name: raw value}. `tables` only group keys (`[limits] max_line`)."""
    try:
        with open(path, "rb") as handle:
            table = tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    by_key = {o.key: o for o in options}
    grouping = tuple(f"{t}." for t in tables)
    out: dict[str, Any] = {}
    for key, value in _flatten(table).items():
        for prefix in grouping:
            if key.startswith(prefix) and key not in by_key:
                key = key[len(prefix) :]
        option = by_key.get(key) or by_key.get(key.replace(".", "-"))
        if option is None:
            raise ConfigError(f"config file {path}: unknown key {key!r}")
        out[option.name] = value
    return out


def _flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in table.items():
        name = f"{prefix}{key}".replace("_", "-")
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def load(
    options: Sequence[Option],
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
    tables: Iterable[str] = (),
) -> dict[str, Any]:
    """{option name: converted value} from flags, environment, TOML file and defaults."""
    args = vars(parser.parse_args(argv))
    env = os.environ if environ is None else environ
    config_file = args.get("config") or env.get("IH_CONFIG")
    from_file = read_toml(config_file, options, tables) if config_file else {}
    values: dict[str, Any] = {}
    for o in options:
        value: Any = args.get(o.name)
        where = o.flag
        if value is None and env.get(o.env) not in (None, ""):
            value, where = env[o.env], o.env
            if o.repeat:
                value = [v.strip() for v in value.split(",") if v.strip()]
        if value is None and o.name in from_file:
            value, where = from_file[o.name], f"{o.key} in {config_file}"
        if value is None:
            values[o.name] = o.default
            continue
        try:
            values[o.name] = o.convert(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{o.name}: {'bad value' if o.secret else exc} (from {where})") from None
    return values


# --- converters both programs use --------------------------------------------------------------


def to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def to_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("not an integer")
    return int(value)


def to_float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("not a number")
    number = float(value)
    if number != number or number in (float("inf"), float("-inf")):
        raise ValueError("not a finite number")
    return number


def to_strings(value: Any) -> tuple[str, ...]:
    """A repeated flag, a comma list or a TOML array → a tuple of non-empty strings."""
    items = value.split(",") if isinstance(value, str) else value
    return tuple(str(v).strip() for v in items if str(v).strip())
