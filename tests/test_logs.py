"""Logs: --log-format json, and a ClickHouse outage as two state lines (down, back), not lines per retry."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ledger.logs import QUIET_LOGGERS, setup_logging
from ledger.target import LedgerTarget
from tests.clickhouse_http import ClickHouseHTTPServer
from tests.test_ledger import assert_ledger, make_rows, writer

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    levels = {name: logging.getLogger(name).level for name in (*QUIET_LOGGERS, "scorer")}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, old in levels.items():
        logging.getLogger(name).setLevel(old)


def test_json_lines_carry_the_fields_and_extras(restore_logging: None) -> None:
    out = io.StringIO()
    setup_logging(logging.INFO, "json", stream=out, redact=lambda text: text.replace("hunter2", "***"))
    log = logging.getLogger("proxy.session")
    log.info("authorized %s from %s (password hunter2)", "infinite.5F.w1", "127.0.0.1", extra={"worker": "w1"})
    log.debug("not at INFO")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["level"] == "INFO" and first["logger"] == "proxy.session" and first["worker"] == "w1"
    assert first["message"] == "authorized infinite.5F.w1 from 127.0.0.1 (password ***)"
    assert first["ts"].endswith("+00:00")
    assert second["level"] == "ERROR" and "ValueError: boom" in second["exception"]


def test_text_is_the_default_format(restore_logging: None) -> None:
    out = io.StringIO()
    setup_logging(logging.WARNING, stream=out)
    logging.getLogger("proxy").warning("pool down")
    logging.getLogger("proxy").info("hidden")
    (line,) = out.getvalue().splitlines()
    assert line.endswith(" WARNING proxy: pool down")
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)


def test_clickhouse_outage_is_one_line_down_and_one_line_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, restore_logging: None
) -> None:
    setup_logging(logging.DEBUG, stream=io.StringIO())  # what both programs do at start: quiets the clients
    logging.getLogger().addHandler(caplog.handler)  # setup_logging replaced the root's handlers
    rows = make_rows(30)
    retries = 4
    with ClickHouseHTTPServer(tmp_path / "ch") as server:
        target = LedgerTarget.parse(server.url, data_dir=tmp_path)

        async def scenario() -> None:
            w = writer(target.connect, tmp_path / "spool")
            await w.start()
            server.stop()  # outage: connections refused
            for i in range(retries):
                w.record(rows[i])
                await w.flush()  # forces a try now: the first fails the insert, the rest the connect
            server.start()
            for row in rows[retries:]:
                w.record(row)
            await w.flush()
            await w.stop()

        with caplog.at_level(logging.DEBUG):
            asyncio.run(scenario())
    assert_ledger(tmp_path / "ch", rows)
    ours = [r for r in caplog.records if r.name == "proxy.ledger" and "ClickHouse" in r.getMessage()]
    down = [r for r in ours if "ClickHouse down" in r.getMessage()]
    back = [r for r in ours if "ClickHouse back" in r.getMessage()]
    still = [r for r in caplog.records if r.name == "proxy.ledger" and "still down" in r.getMessage()]
    assert [r.levelno for r in down] == [logging.WARNING]
    assert [r.levelno for r in back] == [logging.INFO]
    assert len(still) == retries - 1 and {r.levelno for r in still} == {logging.DEBUG}
    libraries = [r for r in caplog.records if r.name.startswith(("urllib3", "clickhouse_connect"))]
    assert [r for r in libraries if r.levelno >= logging.WARNING] == []


def test_the_proxy_logs_json_lines(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IH_")}
    args = [sys.executable, "-m", "proxy", "--data-dir", str(tmp_path), "--log-format", "json"]
    args += ["--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0", "--upstream", "stratum+tcp://127.0.0.1:1"]
    proc = subprocess.Popen(args, cwd=REPO, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    assert proc.stderr is not None
    lines: list[str] = []
    try:
        for _ in range(50):  # bounded: the start-up writes a handful of lines
            line = proc.stderr.readline()
            if not line:
                break
            lines.append(line)
            if "listening for ASICs" in line:
                break
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        rest = proc.stderr.read()  # the same buffered file readline() used (communicate() reads past its buffer)
    lines += (rest or "").splitlines()
    entries = [json.loads(line) for line in lines if line.strip()]  # every line is one JSON object
    assert any("listening for ASICs on 127.0.0.1:" in e["message"] for e in entries), lines
    assert all({"ts", "level", "logger", "message"} <= e.keys() for e in entries)
    assert proc.returncode == 0
