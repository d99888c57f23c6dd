"""The proxy's config (flags > IH_* environment > TOML > defaults) and its choice of pool."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from proxy.config import LUXOR_URL, ConfigError, load_config
from proxy.upstream import PoolURL, Upstreams, parse_pool_url

REPO = Path(__file__).resolve().parent.parent


def test_defaults_are_what_the_issue_promises() -> None:
    config = load_config([], environ={})
    assert config.listen == "0.0.0.0:3333"
    assert config.upstream == (LUXOR_URL,)
    assert config.account == ("infinite",)
    assert config.metrics == "127.0.0.1:9464"  # nothing exposed beyond the host by default
    assert config.ledger_url == f"chdb://{Path('data') / 'ledger'}"
    assert config.ledger_spool_dir == Path("data") / "spool"


def test_flags_beat_environment_beat_toml(tmp_path: Path) -> None:
    toml = tmp_path / "proxy.toml"
    toml.write_text(
        'listen = "127.0.0.1:1111"\naccount = "fromtoml"\nupstream = ["stratum+tcp://a:1", "stratum+tcp://b:2"]\n'
        "[limits]\nmax_sessions = 7\nrequest_cost = 3.5\n"
    )
    env = {"IH_ACCOUNT": "fromenv", "IH_MAX_SESSIONS": "9", "IH_REQUIRE_REGISTERED": "true"}
    config = load_config(["--config", str(toml), "--listen", "127.0.0.1:2222"], environ=env)
    assert config.listen == "127.0.0.1:2222"  # flag
    assert config.account == ("fromenv",)  # env over TOML
    assert config.upstream == ("stratum+tcp://a:1", "stratum+tcp://b:2")  # TOML, order kept
    assert config.limits.max_sessions == 9 and config.limits.request_cost == 3.5
    assert config.require_registered is True


def test_the_address_strikes_are_limits_like_the_others(tmp_path: Path) -> None:
    toml = tmp_path / "proxy.toml"
    toml.write_text("[limits]\naddress_strike_forgiven_after = 30\n")
    config = load_config(
        ["--config", str(toml), "--address-strike-limit", "0"], environ={"IH_ADDRESS_STRIKE_FORGIVEN_AFTER": "90"}
    )
    assert config.limits.address_strike_limit == 0  # strikes off
    assert config.limits.address_strike_forgiven_after == 90.0  # env over TOML
    assert load_config([], environ={}).limits.address_strike_limit > 0  # on by default


def test_repeated_upstream_flags_keep_their_priority_order() -> None:
    config = load_config(["--upstream", "stratum+tcp://p:700", "--upstream", "stratum+tcp://b:700"], environ={})
    assert config.upstream == ("stratum+tcp://p:700", "stratum+tcp://b:700")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--listen", "nohost"], "listen must be HOST:PORT"),
        (["--upstream", "http://pool:700"], r"stratum\+tcp://host:port"),
        (["--upstream", "stratum+tcp://pool"], r"stratum\+tcp://host:port"),
        (["--account", "a.b"], "without dots"),
        (["--max-sessions", "many"], "max_sessions"),
        (["--clickhouse-url", "ftp://u:secret@h/"], "unsupported ClickHouse URL"),
        (["--workers", "0", "--clickhouse-url", "http://ch:8123/"], "workers must be at least 1"),
        (["--workers", "3", "--clickhouse-url", "http://ch:8123/", "--metrics", "h:65534"], "do not fit"),
    ],
)
def test_bad_settings_are_clear_errors(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load_config(argv, environ={})
    assert "secret" not in str(info.value)


def test_the_command_line_reports_bad_settings_with_exit_2() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "--upstream", "ftp://x:1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "upstream" in result.stderr and "Traceback" not in result.stderr


def test_pool_urls() -> None:
    assert parse_pool_url("stratum+tcp://btc.global.luxor.tech:700") == PoolURL("btc.global.luxor.tech", 700)
    assert parse_pool_url("pool.example:3333").label == "pool.example:3333"


def test_a_failed_pool_is_skipped_until_its_backoff_ends_then_preferred_again() -> None:
    primary, backup = PoolURL("primary", 1), PoolURL("backup", 2)
    upstreams = Upstreams([primary, backup], base_backoff=10.0)
    assert upstreams.candidates(now=0.0) == [primary, backup]
    backoff = upstreams.failed(primary, now=0.0)
    assert 5.0 <= backoff <= 10.0
    assert upstreams.candidates(now=1.0) == [backup, primary]  # still tried last, never refused outright
    # the backoff grows with repeated failures, within its cap
    assert upstreams.failed(primary, now=1.0) <= 20.0
    # once the backoff is over, new sessions try the primary first again; a success clears the record
    assert upstreams.candidates(now=100.0) == [primary, backup]
    upstreams.succeeded(primary)
    assert upstreams.is_healthy(primary, now=0.0)


def test_the_wait_before_the_next_attempt_is_zero_while_one_pool_is_healthy_else_the_soonest_backoff() -> None:
    primary, backup = PoolURL("primary", 1), PoolURL("backup", 2)
    upstreams = Upstreams([primary, backup], base_backoff=10.0)
    assert upstreams.wait(now=0.0) == 0.0
    first = upstreams.failed(primary, now=0.0)
    assert upstreams.wait(now=1.0) == 0.0  # the backup may be tried at once: failover never waits
    second = upstreams.failed(backup, now=1.0)
    assert upstreams.wait(now=2.0) == min(first, 1.0 + second) - 2.0
    assert upstreams.wait(now=1_000.0) == 0.0
