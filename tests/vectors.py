"""Loader for the real Stratum data in `tests/vectors/` (public data, kept in the repository).

Only the repository is read: a fresh clone has everything the tests need. When a file is missing the
tests fail with `VectorsMissing` instead of skipping: the vectors are the point.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

VECTORS_DIR = Path(__file__).resolve().parent / "vectors"

# Methods a miner sends; every other JSON line in the vectors travels pool → miner.
CLIENT_METHODS = frozenset(
    {
        "mining.subscribe",
        "mining.authorize",
        "mining.configure",
        "mining.extranonce.subscribe",
        "mining.suggest_difficulty",
        "mining.submit",
    }
)
# Transcript prefixes in 07 (who sent the line).
CLIENT_PREFIXES = frozenset({"ASIC", "tx", "tx:", ">"})
SERVER_PREFIXES = frozenset({"AntPool", "rx", "rx:", "<"})
TRUNCATION_MARK = "...(truncated"


class VectorsMissing(RuntimeError):
    """The vectors directory is not where the tests expect it."""


def vectors_dir() -> Path:
    if not VECTORS_DIR.is_dir():
        raise VectorsMissing(
            f"Stratum test vectors not found at {VECTORS_DIR}. They are part of the repository "
            f"(real mainnet shares and device transcripts); restore tests/vectors/ from git. "
            f"These tests do not skip without them."
        )
    return VECTORS_DIR


def vector_file(number: str) -> Path:
    """The one vector file whose name starts with `<number>_`, e.g. "01"."""
    found = sorted(vectors_dir().glob(f"{number}_*.txt"))
    if len(found) != 1:
        raise VectorsMissing(f"expected exactly one {number}_*.txt in {vectors_dir()}, found {found}")
    return found[0]


def all_vector_files() -> list[Path]:
    files = sorted(vectors_dir().glob("[0-9][0-9]_*.txt"))
    if not files:
        raise VectorsMissing(f"no NN_*.txt vector files in {vectors_dir()}")
    return files


@cache
def fields(number: str) -> dict[str, str]:
    """`key = value` lines (value = first token; notes after it dropped); `key = [` opens a list that
    runs to `]`, returned comma-joined. JSON lines and comments are skipped."""
    out: dict[str, str] = {}
    lines = iter(vector_file(number).read_text().splitlines())
    for line in lines:
        if line.startswith("#") or "{" in line or "=" not in line:
            continue
        key, _, value = line.partition("=")
        value = value.strip()
        if value.startswith("["):
            items = [value[1:]]
            while "]" not in items[-1]:
                items.append(next(lines))
            joined = " ".join(items).replace("]", "")
            out[key.strip()] = ",".join(v.strip() for v in joined.split(",") if v.strip())
        else:
            out[key.strip()] = value.split()[0]
    return out


def notify_01_params(job_id: str) -> list[Any]:
    """The mining.notify params of vector 01 (the real mainnet job), under `job_id`."""
    v = fields("01")
    return [
        job_id,
        v["prevhash(stratum)"],
        v["coinb1"],
        v["coinb2"],
        v["merkle_branch"].split(","),
        v["job_version"],
        v["nbits"],
        v["ntime"],
        True,
    ]


@dataclass(frozen=True)
class VectorLine:
    """One JSON line quoted in a vector file."""

    file: str
    lineno: int
    prefix: str  # transcript marker before the JSON (07), "" when none
    text: str  # the JSON text; for a truncated line, everything from `{` to the end of the line
    comment: str  # text after the JSON on the same line
    note: str  # the comment lines just above it
    truncated: bool

    @property
    def data(self) -> bytes:
        return self.text.encode()

    @property
    def value(self) -> Any:
        return json.loads(self.text)

    @property
    def method(self) -> str | None:
        if self.truncated:
            found = re.search(r'"method"\s*:\s*"([^"]+)"', self.text)
            return found.group(1) if found else None
        value = self.value
        return value.get("method") if isinstance(value, dict) else None

    @property
    def from_client(self) -> bool:
        return self.method in CLIENT_METHODS

    @property
    def must_be_rejected(self) -> bool:
        """The vector's own notes say this line must be refused."""
        return "must be rejected" in self.comment or "must be rejected" in self.note

    def __str__(self) -> str:
        return f"{self.file}:{self.lineno}"


@cache
def json_lines(number: str) -> tuple[VectorLine, ...]:
    path = vector_file(number)
    decoder = json.JSONDecoder()
    out: list[VectorLine] = []
    note: list[str] = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if line.startswith("#"):
            note.append(line)
            continue
        start = line.find("{")
        if start < 0:
            note = []
            continue
        prefix = line[:start].strip()
        if TRUNCATION_MARK in line:
            text, comment, truncated = line[start:], "", True
        else:
            try:
                _, end = decoder.raw_decode(line, start)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path.name}:{lineno}: unreadable vector line: {exc}") from None
            text, comment, truncated = line[start:end], line[end:].strip(), False
        out.append(VectorLine(path.name, lineno, prefix, text, comment, "\n".join(note), truncated))
        note = []
    return tuple(out)


def all_json_lines() -> list[VectorLine]:
    return [line for path in all_vector_files() for line in json_lines(path.name[:2])]
