"""Micro-benchmarks of the protocol hot path. Run: `uv run python -m benchmarks.micro`.

Each figure is the best of REPEATS runs of a fixed number of iterations (time.perf_counter_ns, GC off while
timing, as timeit does), so it measures the code rather than the machine's noise. The loop's own overhead is
included and printed separately for reference. Total runtime is a few seconds.
"""

from __future__ import annotations

import gc
import hashlib
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from protocol import work
from protocol.connection import MinerConnection
from protocol.messages import Notify, decode_client_message, encode_notify, encode_result, parse_notify
from protocol.work import BIP320_MASK, Job
from proxy.session import Forwarded, HashSet

REPEATS = 5
BRANCHES = 12
# Below DIFF1 / 2**256 (~2.3e-10), the least difficulty any hash can have: every share passes.
TINY_DIFFICULTY = 1e-12
DECODE_ENCODE_TARGET_NS = 1_000
SHARE_CHECK_TARGET_NS = 10_000

# A real Bitaxe submit (vector 02): six params, version bits.
SUBMIT_LINE = (
    b'{"id": 5, "method": "mining.submit", "params": ["tb1qumezefzdeqqwn5zfvgdrhxjzc5ylr39uhuxcz4.bitaxe3", '
    b'"1", "c7080000", "64b3f3ec", "ed460d91", "00002000"]}'
)
NTIME = "64b3f3ec"


def make_notify() -> Notify:
    """A mainnet-sized job: ~110-byte coinb1, ~200-byte coinb2, 12 random merkle branches."""
    return parse_notify(
        [
            "bench",
            os.urandom(32).hex(),
            os.urandom(110).hex(),
            os.urandom(200).hex(),
            [os.urandom(32).hex() for _ in range(BRANCHES)],
            "20000000",
            "1705ae3a",
            NTIME,
            True,
        ]
    )


Runner = Callable[[int], "int | None"]  # runs n iterations; returns the ns it timed itself, if it did


def best_ns_per_op(run: Runner, iterations: int) -> float:
    best = float("inf")
    for _ in range(REPEATS):
        gc.disable()
        try:
            start = time.perf_counter_ns()
            timed = run(iterations)
            elapsed = time.perf_counter_ns() - start if timed is None else timed
        finally:
            gc.enable()
        best = min(best, elapsed / iterations)
    return best


# --- the operations -------------------------------------------------------------------------------------


def empty_loop(n: int) -> None:
    for _ in range(n):
        pass


def decode_submit(n: int) -> None:
    decode = decode_client_message
    line = SUBMIT_LINE
    for _ in range(n):
        decode(line)


def encode_reply(n: int) -> None:
    encode = encode_result
    for _ in range(n):
        encode(5, True)


def decode_and_encode(n: int) -> None:
    decode = decode_client_message
    encode = encode_result
    line = SUBMIT_LINE
    for _ in range(n):
        message = decode(line)
        encode(message.id, True)


def connection_submits(n: int) -> int:
    """One read of n submit lines through a MinerConnection that is mining, each answered: the
    framing, decoding, state check and event a proxy or pool pays per share."""
    conn = MinerConnection(max_line=1 << 30)
    subscribe = decode_client_message(b'{"id":1,"method":"mining.subscribe","params":[]}')
    authorize = decode_client_message(b'{"id":2,"method":"mining.authorize","params":["w","x"]}')
    conn.answer(subscribe, [[], "57a6f098", 4])
    conn.answer(authorize, True)
    data = (SUBMIT_LINE + b"\n") * n
    start = time.perf_counter_ns()
    for event in conn.events(data):
        conn.answer(event.message, True)  # type: ignore[union-attr]
    return time.perf_counter_ns() - start


def notify_encoder(notify: Notify) -> Callable[[int], None]:
    def run(n: int) -> None:
        encode = encode_notify
        for _ in range(n):
            encode(notify)

    return run


def share_checker(notify: Notify, *, fresh_extranonce2: bool) -> Runner:
    """check_share on a new Job per run, distinct nonces (no duplicates), version bits rolled as an S19 does.
    Only the check loop is timed, not building the job and the inputs."""

    def run(n: int) -> int:
        job = Job(notify, "57a6f098", 4, TINY_DIFFICULTY)
        nonces = [f"{i:08x}" for i in range(n)]
        extranonce2s = [f"{i:08x}" for i in range(n)] if fresh_extranonce2 else ["c7080000"] * n
        check = job.check_share
        mask = BIP320_MASK
        start = time.perf_counter_ns()
        for extranonce2, nonce in zip(extranonce2s, nonces, strict=True):
            check(extranonce2, NTIME, nonce, "00002000", mask)
        elapsed = time.perf_counter_ns() - start
        assert len(job.seen) == n  # every share passed
        return elapsed

    return run


def sha256d_header(n: int, sha256: Any = hashlib.sha256) -> None:
    """hashlib's (OpenSSL's) sha256d by default; another constructor with `sha256=`."""
    header = os.urandom(80)
    for _ in range(n):
        sha256(sha256(header).digest()).digest()


def share_path_sha256d_header(n: int) -> None:
    """The sha256d the share check calls (protocol.work.sha256d: C where it was built)."""
    header = os.urandom(80)
    sha256d = work.sha256d
    for _ in range(n):
        sha256d(header)


# --- memory and journal (the benchmark run prints these) ------------------------------------------------

DUPLICATE_SET_SHARES = 100_000
DUPLICATE_GC_SHARES = 1_000_000
JOURNAL_ROWS = 20_000
JOURNAL_ROWS_PER_COMMIT = 10  # rows one loop iteration appends at ~10,000 shares/s


def duplicate_set_bytes_per_share(n: int = DUPLICATE_SET_SHARES) -> float:
    """Bytes the duplicate check keeps per accepted share, measured with tracemalloc.

    The session remembers, per block (prevhash), the 32-byte hash of every share it forwarded
    (`proxy.session.Forwarded`, the last two blocks): one bytes object and one dict slot per share,
    for as long as the block lasts (~10 minutes)."""
    import tracemalloc

    hashes = [hashlib.sha256(i.to_bytes(8, "little")).digest() for i in range(n)]
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    memory = _duplicate_memory(hashes)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert len(memory) == n
    return (after - before) / n


def _duplicate_memory(hashes: Iterable[bytes]) -> HashSet:
    forwarded = Forwarded()
    forwarded.take_block("00" * 32)
    (memory,) = forwarded.by_block.values()
    for h in hashes:
        memory[h[:31] + h[31:]] = None  # a new 32-byte object, as a share hash is
    return memory


def full_collection_ms(n: int = DUPLICATE_GC_SHARES) -> dict[str, float]:
    """A full collection with one block's hashes remembered (n: ~5,000 shares/s for 3 minutes),
    in the session's container and in a set (what it was): a set is walked entry by entry."""

    def hashes() -> Iterator[bytes]:  # no list of them kept alive: a list is walked too
        return (hashlib.sha256(i.to_bytes(8, "little")).digest() for i in range(n))

    out = {}
    for name, make in (("dict", lambda: _duplicate_memory(hashes())), ("set", lambda: set(hashes()))):
        memory = make()
        gc.collect()
        started = time.perf_counter()
        gc.collect()
        out[f"full_collection_ms_{name}"] = (time.perf_counter() - started) * 1e3
        del memory
    return out


def journal_cost(rows: int = JOURNAL_ROWS) -> dict[str, float]:
    """The crash journal per share: encode + append + one os.write per loop iteration (ns), bytes."""
    import tempfile
    from pathlib import Path

    from ledger.rows import ShareRow
    from proxy.journal import Journal

    hotkey = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY"
    sample = [
        ShareRow(
            ts=1_790_000_000.0 + i * 1e-4,
            proxy_id="bench-1",
            hotkey=hotkey,
            worker=f"infinite.{hotkey}.w{i % 1000}",
            session=f"{i % 1000:08x}",
            job_id="1a2b3c4d",
            difficulty=65536.0,
            share_difficulty=81234.5,
            hash=hashlib.sha256(i.to_bytes(8, "little")).hexdigest(),
            accepted=1,
            reject_reason="",
            upstream="127.0.0.1:3333",
            block=0,
            job_key="f" * 64,
            extranonce1="0badc0de",
            extranonce2=f"{i:08x}",
            ntime=1_790_000_000,
            nonce=i * 2654435761 & 0xFFFFFFFF,
            version_bits=0x2000,
            version_mask=0x1FFFE000,
        )
        for i in range(rows)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        best = float("inf")
        written = 0
        for repeat in range(3):
            journal = Journal(Path(tmp) / str(repeat), "bench", 10_000, lambda callback: None)
            journal.open(0)
            gc.disable()
            started = time.perf_counter_ns()
            for i, row in enumerate(sample):
                journal.append(row)
                if i % JOURNAL_ROWS_PER_COMMIT == 0:
                    journal.commit()
            journal.commit()
            best = min(best, (time.perf_counter_ns() - started) / rows)
            gc.enable()
            written = journal.bytes_written
            journal.close()
    return {"journal_ns_per_share": best, "journal_bytes_per_share": written / rows}


def memory_and_journal() -> dict[str, float]:
    return {
        "duplicate_set_bytes_per_share": duplicate_set_bytes_per_share(),
        **full_collection_ms(),
        **journal_cost(),
    }


# --- report ---------------------------------------------------------------------------------------------


def main() -> int:
    started = time.perf_counter_ns()
    notify = make_notify()
    rows: list[tuple[str, float, int | None]] = [
        ("loop overhead (reference, included below)", best_ns_per_op(empty_loop, 500_000), None),
        ("decode submit line (decode_client_message)", best_ns_per_op(decode_submit, 100_000), None),
        ("encode reply (encode_result)", best_ns_per_op(encode_reply, 100_000), None),
        ("decode submit + encode reply", best_ns_per_op(decode_and_encode, 100_000), DECODE_ENCODE_TARGET_NS),
        ("submit through MinerConnection (frame..answer)", best_ns_per_op(connection_submits, 100_000), None),
        (f"encode notify ({BRANCHES} branches)", best_ns_per_op(notify_encoder(notify), 50_000), None),
        (
            f"share check, {BRANCHES} branches, fresh extranonce2",
            best_ns_per_op(share_checker(notify, fresh_extranonce2=True), 10_000),
            SHARE_CHECK_TARGET_NS,
        ),
        (
            f"share check, {BRANCHES} branches, reused extranonce2",
            best_ns_per_op(share_checker(notify, fresh_extranonce2=False), 20_000),
            SHARE_CHECK_TARGET_NS,
        ),
        ("sha256d of an 80-byte header (reference)", best_ns_per_op(sha256d_header, 200_000), None),
    ]
    print(f"protocol micro-benchmarks: best of {REPEATS}, Python {sys.version.split()[0]}")
    print(f"{'operation':<52} {'ns/op':>9} {'ops/s':>12}   target")
    over = 0
    for name, ns, target in rows:
        verdict = ""
        if target is not None:
            ok = ns <= target
            over += not ok
            verdict = f"<= {target / 1000:g} us  {'ok' if ok else 'OVER'}"
        print(f"{name:<52} {ns:>9.1f} {1e9 / ns:>12,.0f}   {verdict}")
    sha_ns = rows[-1][1]
    fresh_ns, reused_ns = rows[-3][1], rows[-2][1]
    print(
        f"share check = {fresh_ns / sha_ns:.1f}x (fresh) / {reused_ns / sha_ns:.1f}x (reused) "
        f"one header sha256d; total {(time.perf_counter_ns() - started) / 1e9:.1f} s"
    )
    for name, value in memory_and_journal().items():
        print(f"{name:<52} {value:>9.1f}")
    if over:
        print(f"{over} operation(s) over target")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
