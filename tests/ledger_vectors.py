"""Ledger rows made from the real shares in the test vectors, exactly as the proxy makes them.

The job row is `ledger.jobs.job_row` of the notify the pool sent, keyed by `ledger.jobs.job_key`; the
share row carries what `protocol.work.Job.check_share` computed for the submit the miner sent, the
session's extranonce1 and the mask in force. `mine` finds further shares on the same real job at a
tiny credited difficulty (a few thousand hashes each), so a session has several shares per job.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import clickhouse_connect
from clickhouse_connect.driver.client import Client

from ledger.jobs import job_key, job_row
from ledger.rows import JOBS, SHARES, Column, JobRow, ShareRow
from ledger.schema import apply_migrations
from protocol.messages import (
    Configure,
    Notify,
    Reply,
    SetDifficulty,
    Submit,
    configure_options,
    decode_client_message,
    decode_server_message,
    parse_notify,
    subscribe_result,
)
from protocol.work import Job, ShareRejected
from tests.vectors import fields, json_lines, notify_01_params

ALICE = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY"
BOB = "5FHneW46xGXgs5mUiveU4sbTyGBzmstUspZC92UhjJM694ty"
CHARLIE = "5FLSigC9HGRKVhB9FiEo4Y3koPsNmBmLJbpXg2mp1hXcS59Y"
T0 = 1_717_200_000.0  # 2024-06-01T00:00:00Z
TTL_DAYS = 20_000
DATABASE = "infinitehash"
TINY = 2.0**-20  # credited difficulty of the mined extra shares: 2^12 hashes expected each


@dataclass(frozen=True)
class Connection:
    """One miner session as the proxy saw it: the pool's job, the session's extranonce1 and mask."""

    notify: Notify
    extranonce1: str
    extranonce2_size: int
    difficulty: float
    version_mask: int
    upstream: str


@dataclass(frozen=True)
class Submitted:
    extranonce2: str
    ntime: str
    nonce: str
    version_bits: str | None


def vector01() -> tuple[Connection, Submitted]:
    """The mainnet share (Slush, May 2023): no version rolling; credited at the integer part of its difficulty."""
    v = fields("01")
    notify = parse_notify(notify_01_params("slush-683"))
    credit = float(int(float(v["share difficulty"])))
    connection = Connection(notify, v["extranonce1"], len(v["extranonce2"]) // 2, credit, 0, "slush:3333")
    return connection, Submitted(v["extranonce2"], v["ntime"], v["nonce"], None)


def vector02() -> tuple[Connection, Submitted]:
    """The testnet Bitaxe session (public-pool): version rolling under the mask both sides agreed on."""
    lines = json_lines("02")
    sent = {line.value["id"]: decode_client_message(line.data) for line in lines if line.from_client}
    received = [decode_server_message(line.data) for line in lines if not line.from_client]
    replies = {m.id: m for m in received if isinstance(m, Reply)}
    subscribed = subscribe_result(replies[1].value())
    assert subscribed is not None
    configure = sent[2]
    assert isinstance(configure, Configure)
    asked = configure_options(configure).version_rolling_mask
    assert asked is not None
    mask = asked & int(replies[2].value()["version-rolling.mask"], 16)
    (difficulty,) = [m.difficulty for m in received if isinstance(m, SetDifficulty)]
    (notify,) = [m for m in received if isinstance(m, Notify)]
    submit = sent[5]
    assert isinstance(submit, Submit)
    p = submit.params
    connection = Connection(
        notify, subscribed.extranonce1, subscribed.extranonce2_size, difficulty, mask, "public-pool:21496"
    )
    return connection, Submitted(p.extranonce2, p.ntime, p.nonce, p.version_bits)


def job_row_of(c: Connection, first_seen: float, proxy_id: str = "proxy-a") -> JobRow:
    return job_row(c.notify, job_key(c.notify), first_seen, proxy_id, c.upstream)


def share_row(
    c: Connection,
    s: Submitted,
    *,
    ts: float,
    hotkey: str,
    session: str,
    proxy_id: str = "proxy-a",
    worker_id: str = "rig1",
    difficulty: float | None = None,
) -> ShareRow:
    """The row the proxy records when the pool accepts this submit."""
    credit = c.difficulty if difficulty is None else difficulty
    job = Job(c.notify, c.extranonce1, c.extranonce2_size, credit)
    share = job.check_share(s.extranonce2, s.ntime, s.nonce, s.version_bits, c.version_mask)
    return ShareRow(
        ts,
        proxy_id,
        hotkey,
        f"infinite.{hotkey}.{worker_id}",
        session,
        c.notify.job_id,
        credit,
        share.difficulty,
        share.hex_hash,
        1,
        "",
        c.upstream,
        1 if share.is_block else 0,
        job_key(c.notify),
        c.extranonce1.lower(),
        s.extranonce2.lower(),
        int(s.ntime, 16),
        int(s.nonce, 16),
        None if s.version_bits is None else int(s.version_bits, 16),
        c.version_mask,
    )


def mine(c: Connection, count: int, *, first_extranonce2: int = 1) -> list[Submitted]:
    """`count` shares of difficulty >= TINY on the connection's real job (bounded search)."""
    job = Job(c.notify, c.extranonce1, c.extranonce2_size, TINY)
    ntime = c.notify.ntime
    bits = None if c.version_mask == 0 else f"{c.version_mask & 0x00002000:08x}"
    out: list[Submitted] = []
    for n in range(first_extranonce2, first_extranonce2 + 64):
        extranonce2 = f"{n:0{2 * c.extranonce2_size}x}"
        for nonce in range(1 << 16):
            try:
                job.check_share(extranonce2, ntime, f"{nonce:08x}", bits, c.version_mask)
            except ShareRejected:
                continue
            out.append(Submitted(extranonce2, ntime, f"{nonce:08x}", bits))
            break
        if len(out) == count:
            return out
    raise AssertionError(f"found only {len(out)} of {count} shares")


@contextmanager
def chdb_ledger(path: Path) -> Iterator[Client]:
    """A chdb ledger directory at the latest schema (close it before another engine opens it)."""
    client = clickhouse_connect.get_client(interface="chdb", path=str(path))
    try:
        apply_migrations(client, DATABASE, TTL_DAYS)
        yield client
    finally:
        client.close()


def _insert(client: Client, table: str, columns: tuple[Column, ...], rows: Sequence[tuple[Any, ...]]) -> None:
    # As the proxy's batch does it (proxy/ledger.py): DateTime64(3) as millisecond ticks, column-oriented.
    data = [
        [round(v * 1000) for v in values] if c.kind == "ms" else list(values)
        for c, values in zip(columns, zip(*rows, strict=True), strict=True)
    ]
    client.insert(
        f"{DATABASE}.{table}",
        data,
        column_names=[c.name for c in columns],
        column_type_names=[c.type for c in columns],
        column_oriented=True,
    )


def insert(client: Client, shares: Sequence[ShareRow], jobs: Sequence[JobRow] = ()) -> None:
    if shares:
        _insert(client, "shares", SHARES, shares)
    if jobs:
        _insert(client, "jobs", JOBS, jobs)
