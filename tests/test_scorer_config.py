"""Scorer settings and units: durations, hashrates, the minute-aligned window, ClickHouse URLs, TOML."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from scorer.config import ConfigError, load_settings
from scorer.hashrate import Window, format_hashrate, hashrate, parse_duration, parse_hashrate, parse_time
from scorer.sources import DEFAULT_CLICKHOUSE_URL, parse_clickhouse_url


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90m", 5400), ("6h", 21600), ("1d", 86400), ("1.5h", 5400), ("1w", 604800), (" 2H ", 7200), ("1m", 60)],
)
def test_parse_duration(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "6", "30s", "0m", "0.5m", "1.01h", "h", "-1h", "6 hours"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "hs"),
    [
        ("100T", 100e12),
        ("100TH", 100e12),
        ("1.5 PH/s", 1.5e15),
        ("250e12", 250e12),
        ("42", 42.0),
        ("3g", 3e9),
        (7, 7.0),
        (2.5e15, 2.5e15),
    ],
)
def test_parse_hashrate(text: str | float, hs: float) -> None:
    assert parse_hashrate(text) == pytest.approx(hs)


@pytest.mark.parametrize("text", ["", "fast", "-1T", "1Z", "nan"])
def test_parse_hashrate_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_hashrate(text)


@pytest.mark.parametrize(
    ("hs", "text"),
    [(0.0, "0.00 H/s"), (999.0, "999.00 H/s"), (1.5e12, "1.50 TH/s"), (123.456e12, "123.46 TH/s"), (2e15, "2.00 PH/s")],
)
def test_format_hashrate(hs: float, text: str) -> None:
    assert format_hashrate(hs) == text


def test_hashrate_formula() -> None:
    # 1 share of difficulty 1 per second is 2^32 H/s; 6 h of difficulty-65536 shares at 1/s likewise scales.
    assert hashrate(1.0, 1.0) == 2**32
    assert hashrate(65536.0 * 21600, 21600) == 65536.0 * 2**32
    with pytest.raises(ValueError):
        hashrate(1.0, 0)


def test_window_is_minute_aligned() -> None:
    w = Window.ending(datetime(2025, 3, 1, 12, 34, 56, 789, tzinfo=UTC), 6 * 3600)
    assert w.end == datetime(2025, 3, 1, 12, 34, tzinfo=UTC)
    assert w.start == datetime(2025, 3, 1, 6, 34, tzinfo=UTC)
    assert w.seconds == 21600
    with pytest.raises(ValueError):
        Window.ending(w.end, 90)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2025-03-01T12:00:00Z", datetime(2025, 3, 1, 12, tzinfo=UTC)),
        ("2025-03-01T12:00:00+02:00", datetime(2025, 3, 1, 10, tzinfo=UTC)),
        ("2025-03-01T12:00", datetime(2025, 3, 1, 12, tzinfo=UTC)),
    ],
)
def test_parse_time(text: str, expected: datetime) -> None:
    assert parse_time(text) == expected


@pytest.mark.parametrize(
    ("url", "kind", "database", "host", "port", "user", "password", "path"),
    [
        ("http://ih:s3cret@ch.example:9000/ledger", "http", "ledger", "ch.example", 9000, "ih", "s3cret", ""),
        ("https://ih:p%40ss@ch.example/", "https", "infinitehash", "ch.example", 8443, "ih", "p@ss", ""),
        ("http://ch.example", "http", "infinitehash", "ch.example", 8123, "default", "", ""),
        ("chdb:///var/lib/ih/ledger", "chdb", "infinitehash", "", 0, "default", "", "/var/lib/ih/ledger"),
        ("chdb://data/ledger", "chdb", "infinitehash", "", 0, "default", "", "data/ledger"),
        (DEFAULT_CLICKHOUSE_URL, "chdb", "infinitehash", "", 0, "default", "", "./data/ledger"),
    ],
)
def test_parse_clickhouse_url(
    url: str, kind: str, database: str, host: str, port: int, user: str, password: str, path: str
) -> None:
    parsed = parse_clickhouse_url(url)
    assert (parsed.kind, parsed.database, parsed.host, parsed.port) == (kind, database, host, port)
    assert (parsed.username, parsed.password) == (user, password)
    assert parsed.path == (Path(path).absolute() if path else None)
    if password:
        assert password not in parsed.redacted()
        assert "***" in parsed.redacted()


@pytest.mark.parametrize(
    "url", ["ftp://x", "http://u:topsecret@/db", "chdb://", "http://u:topsecret@h/bad-db;DROP", "http://h:99999999/"]
)
def test_bad_clickhouse_urls_never_echo_the_password(url: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_clickhouse_url(url)
    assert "topsecret" not in str(info.value)


def test_defaults() -> None:
    s = load_settings([], environ={})
    assert s.clickhouse is not None and s.clickhouse.path == Path("./data/ledger").absolute()
    assert (s.window_seconds, s.netuid, s.network, s.policy.phase) == (21600, 89, "finney", 1)
    assert (s.wallet_name, s.wallet_hotkey, s.wallet_path) == ("default", "default", None)
    assert not s.dry_run and not s.json and not s.loop
    assert s.policy.hashrate_share == 1.0 and s.burn_uid is None


def test_toml_flags_and_environment(tmp_path: Path) -> None:
    config = tmp_path / "scorer.toml"
    config.write_text(
        """
        clickhouse_url = "http://ih:from-file@db.example:8123/ledger"
        window = "90m"
        netuid = 12
        phase = 2
        min-hashrate = "100T"
        hashrate_share = 0.9
        burn_uid = 0
        dry_run = true
        [wallet]
        name = "validator"
        hotkey = "hk"
        path = "/wallets"
        [luxor]
        subaccount = "sub"
        threshold = 0.25
        """
    )
    s = load_settings(["--config", str(config), "--window", "1d"], environ={"IH_LUXOR_API_KEY": "lux-key"})
    assert s.window_seconds == 86400, "a flag wins over the file"
    assert s.clickhouse is not None and s.clickhouse.password == "from-file"
    assert (s.netuid, s.policy.phase, s.policy.min_hashrate, s.policy.ceiling) == (12, 2, 100e12, 100e12)
    assert (s.wallet_name, s.wallet_hotkey, s.wallet_path) == ("validator", "hk", "/wallets")
    assert (s.luxor_subaccount, s.luxor_threshold, s.luxor_api_key) == ("sub", 0.25, "lux-key")
    assert s.dry_run and s.burn_uid == 0 and s.policy.hashrate_share == 0.9
    assert set(s.secrets()) == {"from-file", "lux-key"}

    env = {"IH_CLICKHOUSE_URL": "chdb:///from/env"}
    s = load_settings(["--config", str(config)], environ=env)
    assert s.clickhouse is not None and s.clickhouse.path == Path("/from/env"), "the environment wins over the file"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--window", "30s"], "--window"),
        (["--phase", "2"], "minimum"),
        (["--phase", "2", "--min-hashrate", "100T", "--max-hashrate", "10T"], "must not be below"),
        (["--hashrate-share", "2"], "hashrate_share"),
        (["--metagraph-file", "mg.json"], "--dry-run"),
        (["--clickhouse-url", "chdb:///x", "--proxy-api", "http://127.0.0.1:1"], "not both"),
        (["--end", "yesterday"], "--end"),
        (["--netuid", "x"], "--netuid"),
        (["--retries", "0"], "--retries"),
        (["--clickhouse-url", "gopher://u:topsecret@h"], "--clickhouse-url"),
    ],
)
def test_bad_settings(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load_settings(argv, environ={})
    assert "topsecret" not in str(info.value)


def test_unknown_toml_key(tmp_path: Path) -> None:
    config = tmp_path / "scorer.toml"
    config.write_text('windwo = "6h"\n')
    with pytest.raises(ConfigError, match="unknown key 'windwo'"):
        load_settings(["--config", str(config)], environ={})


def test_example_config_loads() -> None:
    example = Path(__file__).resolve().parent.parent / "scorer" / "scorer.example.toml"
    s = load_settings(["--config", str(example)], environ={})
    assert s.clickhouse is not None and s.clickhouse.kind == "http" and s.clickhouse.password == "change-me"
    assert (s.window_seconds, s.netuid, s.network, s.wallet_name) == (21600, 89, "finney", "validator")


def test_mechanism_lists(tmp_path: Path) -> None:
    settings = load_settings(["--skip-mechanisms", "1, 3", "--burn-mechanisms", "2"], environ={})
    assert (settings.skip_mechanisms, settings.burn_mechanisms) == (frozenset({1, 3}), frozenset({2}))
    assert load_settings([], environ={}).skip_mechanisms == frozenset(), "by default every mechanism is set"
    toml = tmp_path / "scorer.toml"
    toml.write_text("skip_mechanisms = [1]\nburn_mechanisms = [0, 2]\n")
    from_file = load_settings(["--config", str(toml)], environ={})
    assert (from_file.skip_mechanisms, from_file.burn_mechanisms) == (frozenset({1}), frozenset({0, 2}))
    with pytest.raises(ConfigError, match="both"):
        load_settings(["--skip-mechanisms", "1", "--burn-mechanisms", "1,2"], environ={})
    with pytest.raises(ConfigError, match="skip-mechanisms"):
        load_settings(["--skip-mechanisms", "x"], environ={})
    with pytest.raises(ConfigError):
        load_settings(["--burn-mechanisms", "256"], environ={})
