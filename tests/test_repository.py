"""A fresh clone is enough: the README's two commands, CI running them, and tests that read only the
repository."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SETUP_COMMANDS = [
    "python3 -m pip install -q uv && python3 -m uv run ih-demo",
    "python3 -m pip install -q uv && python3 -m uv run pytest",
]


def start_here_commands() -> list[str]:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Start here", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```sh\n(.*?)```", section, re.S)
    return [line for line in block.splitlines() if line and not line.startswith("#")]


def test_the_readme_start_here_block_is_exactly_the_two_commands() -> None:
    assert start_here_commands() == SETUP_COMMANDS


def test_ci_runs_the_readme_test_command_verbatim_in_a_fresh_clone() -> None:
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert ci[-1] == SETUP_COMMANDS[1]
    clone = next(i for i, line in enumerate(ci) if line.startswith("git clone"))
    cd = next(i for i, line in enumerate(ci) if line.startswith('cd "$scratch/repo"'))
    assert clone < cd < len(ci) - 1
    assert sum(1 for line in ci if "uv run pytest" in line) == 1  # one test run in CI
    for check in ("uv sync --locked", "uv run ruff check .", "uv run ruff format --check .", "uv run mypy"):
        assert any(line.startswith(f"python3 -m {check}") for line in ci), check


# What a test that reads the steering repository's data would contain. Spelled in pieces so that this
# file, which looks for them, does not contain them itself (the before-stop hook greps for them too).
_WORD = "sha" + "red"
_OUTSIDE = ("../" + _WORD, f'"{_WORD}"', f"'{_WORD}'", "IH_" + "VECTORS_DIR", "parents[" + "2]")


def test_no_test_reads_outside_the_repository() -> None:
    for path in sorted((REPO / "tests").glob("*.py")):
        text = path.read_text()
        found = [needle for needle in _OUTSIDE if needle in text]
        assert not found, f"{path.name} looks outside the repository: {found}"


def test_the_vectors_are_in_the_repository_with_their_readme() -> None:
    vectors = REPO / "tests" / "vectors"
    names = {p.name for p in vectors.iterdir()}
    assert "README.md" in names
    listed = set(re.findall(r"^\| (\d\d_\S+\.txt) \|", (vectors / "README.md").read_text(), re.M))
    assert listed and listed <= names
