"""Start-up failures of `ih-proxy` and `ih-scorer`: one line on stderr, exit status 2, no traceback.

Real processes on 127.0.0.1: a port is taken by a real listening socket, a data directory by a real
second proxy (its flock). The pool URL points at a closed loopback port: nothing leaves the host.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import uvloop

from ledger.target import LedgerTarget
from proxy.cli import LOCK_NAME, _bind_failure, directories_to_lock, main
from proxy.config import load_config

REPO = Path(__file__).resolve().parent.parent
NO_POOL = "stratum+tcp://127.0.0.1:1"  # refused at once: the proxy starts, no pool is reachable


def _proxy_args(data_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "proxy",
        "--data-dir",
        str(data_dir),
        "--listen",
        "127.0.0.1:0",
        "--metrics",
        "127.0.0.1:0",
        "--upstream",
        NO_POOL,
        *extra,
    ]


def _run(args: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IH_")}
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def _one_line_exit_2(result: subprocess.CompletedProcess[str], prog: str) -> str:
    lines = result.stderr.splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert lines[0].startswith(f"{prog}: ")
    return lines[0]


@contextmanager
def occupied_port() -> Iterator[int]:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        yield held.getsockname()[1]


@pytest.mark.parametrize("option", ["--listen", "--metrics"])
def test_a_port_in_use_is_one_line(tmp_path: Path, option: str) -> None:
    with occupied_port() as port:
        line = _one_line_exit_2(_run([*_proxy_args(tmp_path / "data"), option, f"127.0.0.1:{port}"]), "ih-proxy")
    assert line == f"ih-proxy: {option} 127.0.0.1:{port}: address already in use"


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (["--log-level", "LOUD"], "log level must be one of DEBUG, INFO, WARNING, ERROR, got 'LOUD'"),
        (["--no-such-option"], "unrecognized arguments: --no-such-option (see ih-proxy --help)"),
    ],
)
def test_bad_options_are_one_line(tmp_path: Path, extra: list[str], says: str) -> None:
    line = _one_line_exit_2(_run(_proxy_args(tmp_path / "data", *extra)), "ih-proxy")
    assert says in line
    assert not (tmp_path / "data").exists()  # refused before anything was created


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (["--log-format", "xml"], "log format must be one of text, json, got 'xml'"),
        (["--ttl-days", "many"], "ttl_days: invalid literal"),
        (["--clickhouse-cluster", "ih"], "--clickhouse-cluster needs an http(s):// --clickhouse-url"),
        (
            ["--clickhouse-cluster", "bad'name", "--clickhouse-url", "http://127.0.0.1:1/"],
            "cluster name must be letters, digits",
        ),
    ],
)
def test_more_bad_options_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], says: str
) -> None:
    # The same main() as the subprocess runs above, in-process: each of these fails before logging is set up.
    assert main(_proxy_args(tmp_path / "data", *extra)[3:]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ih-proxy: ") and says in lines[0]
    assert not (tmp_path / "data").exists()


def test_cluster_schema_that_cannot_be_applied_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nobody listens on: the connection is refused
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}/"
    line = _one_line_exit_2(
        _run(_proxy_args(tmp_path / "data", "--clickhouse-url", url, "--clickhouse-cluster", "ih")), "ih-proxy"
    )
    assert line.startswith("ih-proxy: --clickhouse-cluster ih: cannot connect to http://default@127.0.0.1:")


def test_a_second_proxy_on_the_same_data_directory_refuses_to_start(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("IH_")}
    first = subprocess.Popen(
        _proxy_args(data), cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        locks = [data / LOCK_NAME, data / "spool" / LOCK_NAME]
        for _ in range(600):  # bounded: 60 s at most for the first proxy to take its locks
            if all(lock.exists() and lock.read_text().strip() == str(first.pid) for lock in locks):
                break
            assert first.poll() is None, first.communicate()[1]
            time.sleep(0.1)
        else:
            pytest.fail("the first proxy never wrote its PID into the lock file")
        line = _one_line_exit_2(_run(_proxy_args(data)), "ih-proxy")
        assert line.startswith(f"ih-proxy: directory {data.absolute()} is in use by another ih-proxy (pid {first.pid})")
        # Its own spool under another data directory does not help: the spool is locked too.
        other = _run(_proxy_args(tmp_path / "other", "--spool-dir", str(data / "spool")))
        assert f"directory {(data / 'spool').absolute()} is in use" in _one_line_exit_2(other, "ih-proxy")
        assert first.poll() is None  # the first one runs on, undisturbed
    finally:
        first.send_signal(signal.SIGTERM)
        try:
            first.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            first.kill()
            first.communicate()
    # The kernel dropped the lock with the process: the directory can be used again.
    again = subprocess.Popen(_proxy_args(data), cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for _ in range(600):
            if (data / LOCK_NAME).read_text().strip() == str(again.pid):
                break
            assert again.poll() is None
            time.sleep(0.1)
        else:
            pytest.fail("the directory stayed locked after the first proxy exited")
    finally:
        again.kill()
        again.communicate()


def test_locked_directories_follow_the_config(tmp_path: Path) -> None:
    config = load_config(["--data-dir", str(tmp_path / "d")], environ={})
    target = LedgerTarget.parse(config.clickhouse_url, data_dir=config.data_dir)
    assert directories_to_lock(config, target) == [tmp_path / "d", tmp_path / "d" / "spool"]
    server = load_config(
        ["--data-dir", str(tmp_path / "d"), "--spool-dir", str(tmp_path / "s"), "--clickhouse-url", "http://h:8123/"],
        environ={},
    )
    assert directories_to_lock(server, LedgerTarget.parse(server.clickhouse_url, data_dir=server.data_dir)) == [
        tmp_path / "s"
    ]


@pytest.mark.parametrize("use_uvloop", [False, True])
def test_the_listeners_own_bind_error_is_named_too(tmp_path: Path, use_uvloop: bool) -> None:
    """A port taken between the up-front check and the app's bind: the real error, from the event
    loop the proxy runs on, becomes the same one line."""
    with occupied_port() as port:
        config = load_config(["--listen", f"127.0.0.1:{port}", "--metrics", "127.0.0.1:0"], environ={})

        async def bind() -> OSError:
            try:
                server = await asyncio.get_running_loop().create_server(asyncio.Protocol, "127.0.0.1", port)
            except OSError as exc:
                return exc
            server.close()
            raise AssertionError("bound a port that is in use")

        error = uvloop.run(bind()) if use_uvloop else asyncio.run(bind())
    assert _bind_failure(error, config) == f"--listen 127.0.0.1:{port}: address already in use"


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (["--log-level", "LOUD"], "ih-scorer: log level must be one of DEBUG, INFO, WARNING, ERROR, got 'LOUD'"),
        (["--bogus"], "ih-scorer: unrecognized arguments: --bogus (see ih-scorer --help)"),
    ],
)
def test_scorer_bad_options_are_one_line(tmp_path: Path, extra: list[str], says: str) -> None:
    args = [sys.executable, "-m", "scorer", "--dry-run", "--clickhouse-url", f"chdb://{tmp_path}/ledger", *extra]
    assert _one_line_exit_2(_run(args), "ih-scorer").startswith(says)
