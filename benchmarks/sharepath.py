"""The proxy's per-share Python work without sockets: `MinerSession` (sans-I/O) fed a submit line
and the pool's verdict, as `proxy/server.py` feeds it. Run: `uv run python -m benchmarks.sharepath`.

What it times per share: decode the submit, the checks, the share hash (12 branches, fresh
extranonce2: 14 sha256d), encode the upstream request, decode the verdict, re-address it, count it
in the metrics, record the ledger row (an append; the insert itself is a background thread's job).
Compared with the proxy process's CPU per share in the full benchmark, the rest is the event loop,
the transports and the kernel. Also timed: the share check alone, the metric updates one share
makes (in the session and in server.py), and the LineFramer + write-join glue of the asyncio layer.
"""

from __future__ import annotations

import gc
import time
from typing import Any

from benchmarks.micro import NTIME, make_notify
from ledger.rows import Row, ShareRow
from protocol.framing import LineFramer
from protocol.messages import encode_notify
from protocol.work import Job
from proxy.config import Limits
from proxy.metrics import ProxyMetrics
from proxy.session import MinerSession, SessionContext
from simulation.hotkeys import hotkey

SHARES = 20_000
REPEATS = 3
EXTRANONCE1 = "57a6f098"


def _session(metrics: Any, rows: list[Row]) -> tuple[MinerSession, str]:
    limits = Limits(submits_per_second=1e12, submit_burst=1e12)
    ctx = SessionContext(accounts=("infinite",), proxy_id="bench", limits=limits, record=rows.append, metrics=metrics)
    session = MinerSession(ctx, "s-1", "127.0.0.1:3333", time.monotonic())
    worker = f"infinite.{hotkey(0, 'benchmark')}.w0"
    now = time.monotonic()
    # An antminer's handshake and the pool's answers (upstream ids 1..4 in this order).
    for line in (
        b'{"id":1,"method":"mining.configure","params":[["version-rolling"],{"version-rolling.mask":"1fffe000",'
        b'"version-rolling.min-bit-count":2}]}',
        b'{"id":2,"method":"mining.subscribe","params":["bmminer/2.0.0"]}',
        b'{"id":3,"method":"mining.authorize","params":["' + worker.encode() + b'","x"]}',
        b'{"id":4,"method":"mining.extranonce.subscribe","params":[]}',
    ):
        session.miner_line(line, now)
    for line in (
        b'{"id":1,"result":{"version-rolling":true,"version-rolling.mask":"1fffe000"},"error":null}',
        b'{"id":2,"result":[[["mining.set_difficulty","1"],["mining.notify","1"]],"'
        + EXTRANONCE1.encode()
        + b'",4],"error":null}',
        b'{"id":3,"result":true,"error":null}',
        b'{"id":4,"result":true,"error":null}',
        b'{"id":null,"method":"mining.set_difficulty","params":[1e-10]}',
        encode_notify(make_notify()).rstrip(b"\n"),
    ):
        session.pool_line(line, now)
    assert session.state == "mining" and session.jobs, "handshake failed"
    session.to_miner.clear()
    session.to_pool.clear()
    return session, worker


def _per_share_ns(metrics_factory: Any, repeats: int = REPEATS) -> float:
    best = float("inf")
    for _ in range(repeats):
        rows: list[Row] = []
        session, worker = _session(metrics_factory(), rows)
        first_id = 5
        submits = [
            b'{"id":%d,"method":"mining.submit","params":["%s","bench","%08x","%s","%08x","%08x"]}'
            % (i + 10, worker.encode(), i, NTIME.encode(), (i * 2654435761) & 0xFFFFFFFF, (i << 13) & 0x1FFFE000)
            for i in range(SHARES)
        ]
        replies = [b'{"id":%d,"result":true,"error":null}' % (first_id + i) for i in range(SHARES)]
        gc.collect()
        started = time.perf_counter_ns()
        for submit, reply in zip(submits, replies, strict=True):
            now = time.monotonic()
            session.miner_line(submit, now)
            session.to_pool.clear()
            session.pool_line(reply, now)
            session.to_miner.clear()
        elapsed = time.perf_counter_ns() - started
        accepted = sum(1 for r in rows if isinstance(r, ShareRow) and r.accepted)
        assert accepted == SHARES, f"only {accepted} of {SHARES} shares accepted: {rows[-1] if rows else None}"
        best = min(best, elapsed / SHARES)
    return best


def _check_ns(repeats: int = REPEATS) -> float:
    notify = make_notify()
    best = float("inf")
    for _ in range(repeats):
        job = Job(notify, EXTRANONCE1, 4, 1e-10)
        en2 = [f"{i:08x}" for i in range(SHARES)]
        started = time.perf_counter_ns()
        for e in en2:
            job.check_share(e, NTIME, e, "00002000", 0x1FFFE000)
        best = min(best, (time.perf_counter_ns() - started) / SHARES)
    return best


def _glue_ns() -> float:
    """LineFramer.feed of one submit line, and the join of one output line (what server.py adds)."""
    line = b'{"id":5,"method":"mining.submit","params":["w","bench","00000001","64b3f3ec","00000001","00002000"]}\n'
    framer = LineFramer()
    best = float("inf")
    for _ in range(REPEATS):
        out: list[bytes] = []
        started = time.perf_counter_ns()
        for _ in range(SHARES):
            for got in framer.feed(line):
                out.append(got)  # type: ignore[arg-type]
            b"".join(out)
            out.clear()
        best = min(best, (time.perf_counter_ns() - started) / SHARES)
    return best * 2  # a share crosses the proxy twice: the submit and the verdict


def _metrics_ns() -> float:
    """The metric updates one accepted share makes: three in the session (upstream latency,
    share counter, accepted difficulty) and two in server.py (proxy latency, each direction)."""
    metrics = ProxyMetrics()
    best = float("inf")
    for _ in range(REPEATS):
        started = time.perf_counter_ns()
        for _ in range(SHARES):
            metrics.upstream_latency.observe(0.0012)
            metrics.count_share("accepted", "")
            metrics.accepted_difficulty += 1e-10
            metrics.proxy_latency.observe(0.00004)
            metrics.proxy_latency.observe(0.00003)
        best = min(best, (time.perf_counter_ns() - started) / SHARES)
    return best


def measure() -> dict[str, float]:
    # Alternated, best of each: this kind of machine drifts by tens of percent within seconds.
    session, check = float("inf"), float("inf")
    for _ in range(REPEATS + 2):
        session = min(session, _per_share_ns(ProxyMetrics, 1))
        check = min(check, _check_ns(1))
    return {
        "session_share_ns": session,
        "share_check_ns": check,
        "metrics_ns": _metrics_ns(),
        "framing_glue_ns": _glue_ns(),
    }


def main() -> int:
    figures = measure()
    s, check, metrics, glue = (
        figures[k] for k in ("session_share_ns", "share_check_ns", "metrics_ns", "framing_glue_ns")
    )
    print(f"sans-I/O session, per share (submit + verdict):  {s / 1000:6.1f} µs")
    print(f"  of which the share check (14 sha256d):          {check / 1000:6.1f} µs")
    print(f"  the rest (decode, encode, checks, ledger row):  {(s - check) / 1000:6.1f} µs")
    print(f"metric updates per share (3 session + 2 server):  {metrics / 1000:5.1f} µs")
    print(f"framing and write joins (server.py), per share:  {glue / 1000:6.1f} µs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
