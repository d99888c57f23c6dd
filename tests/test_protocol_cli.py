"""`python -m protocol share ...` as an operator runs it: a subprocess, one JSON line out, exit 2 on bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.vectors import fields, json_lines, notify_01_params

REPO = Path(__file__).resolve().parents[1]
KEYS = {"hash", "difficulty", "version", "network_difficulty", "block"}


def share_command(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "protocol", "share", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def vector01() -> tuple[list[Any], str, list[Any], dict[str, str]]:
    v = fields("01")
    notify = notify_01_params("683")
    submit = ["worker", "683", v["extranonce2"], v["ntime"], v["nonce"]]
    return notify, v["extranonce1"], submit, v


def vector02() -> tuple[list[Any], str, list[Any], dict[str, str]]:
    lines = json_lines("02")
    (notify,) = [x.value["params"] for x in lines if x.method == "mining.notify"]
    (subscribed,) = [x.value["result"] for x in lines if x.method is None and x.value["id"] == 1]
    (submit,) = [x.value["params"] for x in lines if x.method == "mining.submit"]
    return notify, subscribed[1], submit, fields("02")


def args_for(notify: list[Any], extranonce1: str, submit: list[Any]) -> list[str]:
    return ["--notify", json.dumps(notify), "--extranonce1", extranonce1, "--submit", json.dumps(submit)]


def one_json_line(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1 and done.stdout.endswith("\n"), done.stdout
    report: dict[str, Any] = json.loads(lines[0])
    assert set(report) == KEYS
    return report


def test_share_command_vector01_mainnet_share() -> None:
    notify, extranonce1, submit, v = vector01()
    report = one_json_line(share_command(*args_for(notify, extranonce1, submit)))
    assert report["hash"] == v["hash (display)"]
    assert round(report["difficulty"], 2) == float(v["share difficulty"])
    assert report["version"] == v["job_version"]
    assert round(report["network_difficulty"] / 1e12, 2) == 49.55
    assert report["block"] is False
    # With the 6th param 00000000 (the default mask applies) the share is the same.
    again = one_json_line(share_command(*args_for(notify, extranonce1, [*submit, v["version_bits"]])))
    assert again == report


def test_share_command_vector02_version_rolled_share_with_default_mask() -> None:
    notify, extranonce1, submit, v = vector02()
    assert len(submit) == 6
    report = one_json_line(share_command(*args_for(notify, extranonce1, submit)))
    assert report["hash"] == v["hash (display)"]
    assert round(report["difficulty"], 2) == float(v["share difficulty"])
    assert report["version"] == "20002000"
    assert report["block"] is False
    # The mask public-pool granted, given explicitly, gives the same answer.
    explicit = one_json_line(share_command(*args_for(notify, extranonce1, submit), "--version-mask", "1fffe000"))
    assert explicit == report


def _bad_inputs() -> list[Any]:
    notify, extranonce1, submit, _ = vector02()
    good = {"notify": notify, "extranonce1": extranonce1, "submit": submit}
    cases: list[tuple[str, dict[str, Any], list[str]]] = [
        ("notify-not-json", {"notify": "not json"}, []),
        ("submit-not-json", {"submit": "[1, 2"}, []),
        ("notify-not-array", {"notify": {"params": notify}}, []),
        ("wrong-job-id", {"submit": [submit[0], "999", *submit[2:]]}, []),
        ("nonce-not-hex", {"submit": [*submit[:4], "zzzzzzzz", submit[5]]}, []),
        ("nonce-with-sign", {"submit": [*submit[:4], "+d460d91", submit[5]]}, []),
        ("extranonce2-odd-length", {"submit": [*submit[:2], "c708000", *submit[3:]]}, []),
        ("extranonce2-not-hex", {"submit": [*submit[:2], "c70800zz", *submit[3:]]}, []),
        ("extranonce1-not-hex", {"extranonce1": "57a6f0zz"}, []),
        ("submit-4-params", {"submit": submit[:4]}, []),
        ("submit-7-params", {"submit": [*submit, "00"]}, []),
        ("submit-number", {"submit": [*submit[:4], 12345678]}, []),
        ("notify-8-params", {"notify": notify[:8]}, []),
        ("prevhash-short", {"notify": [notify[0], notify[1][:-2], *notify[2:]]}, []),
        ("bits-outside-mask", {}, ["--version-mask", "1fff0000"]),
        ("mask-not-hex", {}, ["--version-mask", "xyz"]),
        ("mask-empty", {}, ["--version-mask", ""]),
        ("mask-too-long", {}, ["--version-mask", "1fffe0000"]),
    ]
    out = []
    for name, change, extra in cases:
        values = {**good, **change}
        argv = [
            "--notify",
            values["notify"] if isinstance(values["notify"], str) else json.dumps(values["notify"]),
            "--extranonce1",
            values["extranonce1"],
            "--submit",
            values["submit"] if isinstance(values["submit"], str) else json.dumps(values["submit"]),
            *extra,
        ]
        out.append(pytest.param(argv, id=name))
    out.append(pytest.param(["--notify", json.dumps(notify), "--extranonce1", extranonce1], id="missing-submit"))
    return out


@pytest.mark.parametrize("argv", _bad_inputs())
def test_share_command_bad_input_exits_2_with_a_message(argv: list[str]) -> None:
    done = share_command(*argv)
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert done.stdout == ""
    assert "error" in done.stderr and "Traceback" not in done.stderr
