"""A simulated Stratum V1 pool: a real TCP server on 127.0.0.1 that checks every share itself.

It is the ground truth of the end-to-end tests ("the ledger equals, per hotkey, exactly what the pool
accepted") and the far end of the benchmarks, so the per-share path is one `asyncio.Protocol`
callback: the sans-I/O `protocol.connection.MinerConnection` frames, decodes and judges the order
(a submit before subscribe/authorize is refused by its state table), `protocol.work.Job` checks the
share, and the answer is written. Replies produced while handling one read are written with one `transport.write`; late
replies (`reply_delay`) wait in one FIFO per connection behind one timer, never a task per share.

Accounting, counted when a submit's verdict is written to its connection:

- `accepted[worker]` — sum of the assigned difficulty of the JOB of every accepted share, per worker
  name as submitted; `accepted_shares[worker]`, `accepted_count`, `accepted_by_hotkey()`;
- `rejected_count`, `rejected_by_code`;
- `submits_seen` — every submit line that reached the pool (`PoolSubmit`: params, extranonce1,
  job difficulty, verdict), and `count_submits(...)` to ask whether a given share ever arrived;
- `undelivered` — accepted verdicts that never went out (the connection closed while a late reply
  waited); they are not in `accepted`.

Attacks on the credit rules (tests/test_attacks_credit.py) need a pool that misbehaves on purpose:
`resend_job` sends a job again verbatim (a re-notify) or its content under a new id, `retarget` sends
set_difficulty without a new job (optionally applied to the live jobs), and `hold_verdicts` /
`release_verdicts` keep every submit unanswered until the test says so.

A verdict written to a connection the miner has already closed still counts (the pool cannot know);
`SimulatedASIC.stop()` therefore waits for the replies it is owed before closing.
"""

from __future__ import annotations

import asyncio
import collections
import math
import random
import socket
import struct
import time
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any, Literal

import msgspec

from ledger.workers import hotkey_of as ledger_hotkey_of
from protocol.connection import BadLine, MinerConnection, MinerEvent, Refused, RequestReceived
from protocol.errors import ErrorCode, InvalidMessage, LineTooLong, StratumError
from protocol.framing import DEFAULT_MAX_LINE
from protocol.messages import (
    Authorize,
    Configure,
    ExtranonceSubscribe,
    Notify,
    Request,
    Submit,
    Subscribe,
    SuggestDifficulty,
    configure_options,
    encode_notification,
    encode_notify,
    encode_result,
)
from protocol.state import State
from protocol.work import BIP320_MASK, Job, ShareRejected
from simulation.stream import StratumConnection

__all__ = [
    "DEFAULT_DIFFICULTY",
    "ErrorShape",
    "PoolSession",
    "PoolSubmit",
    "SimulatedPool",
    "VerifyMode",
    "hotkey_of",
]

VerifyMode = Literal["all", "sample", "none"]
ErrorShape = Literal["list", "string", "jsonrpc2", "reject-reason"]

# One hash in 2**4 qualifies (difficulty 1 is one in 2**32): tens of microseconds of Python hashing
# per share, and most random hashes still fall below it, so low-difficulty shares are easy to make.
# Below ~2**-32 every hash qualifies (the benchmarks' 2**-33): no share can be low then.
DEFAULT_DIFFICULTY = 2.0**-28
DEFAULT_NBITS = "1705ae3a"  # a mainnet target (May 2023): no simulated share is ever a block
_COINBASE_TAG = b"/InfiniteHash-sim/"
_BLOCK_SUBSIDY = 312_500_000  # 3.125 BTC in satoshis

_json = msgspec.json.Encoder()


def hotkey_of(worker: str) -> str:
    """The hotkey a share of `worker` is credited to, by the one worker-name rule; a name the rule
    refuses (the pool takes any) is its own bucket."""
    return ledger_hotkey_of(worker) or worker


class PoolSubmit(msgspec.Struct, gc=False):
    """One `mining.submit` line as it reached the pool, and the pool's verdict on it."""

    session: int  # PoolSession.number
    extranonce1: str
    worker: str
    job_id: str
    extranonce2: str
    ntime: str
    nonce: str
    version_bits: str | None
    difficulty: float  # the assigned difficulty of the job (0.0 when the job is unknown)
    error: int | None  # None: accepted; else the Stratum error code answered
    raw: bytes | None = None  # the line itself, kept only for malformed submits

    @property
    def accepted(self) -> bool:
        return self.error is None

    @property
    def params(self) -> list[str]:
        fields = [self.worker, self.job_id, self.extranonce2, self.ntime, self.nonce]
        return fields if self.version_bits is None else [*fields, self.version_bits]


class _SessionJob:
    """A job as one session was told about it: the notify, its difficulty, and the checker (lazy)."""

    __slots__ = ("difficulty", "job", "notify")

    def __init__(self, notify: Notify, difficulty: float) -> None:
        self.notify = notify
        self.difficulty = difficulty
        self.job: Job | None = None


class PoolSession:
    """One miner (or proxy upstream link) connected to the pool."""

    def __init__(self, pool: SimulatedPool, number: int, extranonce1: str) -> None:
        self.pool = pool
        self.number = number
        self.extranonce1 = extranonce1
        self.extranonce2_size = pool.extranonce2_size
        self.user_agent: str | None = None
        self.version_mask = 0
        self.workers: list[str] = []  # authorized worker names, in order
        self.methods: list[str] = []  # the first requests' methods, in order (handshake checks)
        self.requests = 0  # every request read, whatever its method (floods are measured by it)
        self.difficulty = pool.difficulty
        self.submits = 0
        self.closed = False
        self._jobs: dict[str, _SessionJob] = {}
        self.connection = MinerConnection(max_line=pool.max_line)
        self.stream = StratumConnection(self.connection, self._on_events, on_close=self._on_close)
        self._out: list[bytes] = []
        # Late submit replies: (due, line, worker, job difficulty, error code or None), answered in order.
        self._late: collections.deque[tuple[float, bytes, str, float, int | None]] = collections.deque()
        self._late_timer: asyncio.TimerHandle | None = None

    @property
    def subscribed(self) -> bool:
        return self.connection.state in (State.SUBSCRIBED, State.MINING)

    # --- the stream's callbacks -----------------------------------------------------------------------

    def _on_close(
        self, stream: StratumConnection[MinerConnection], exc: Exception | None, unanswered: list[Any]
    ) -> None:
        self.closed = True
        self.pool.sessions.pop(self.number, None)
        if self._late_timer is not None:
            self._late_timer.cancel()
            self._late_timer = None
        for _, _, worker, difficulty, code in self._late:
            self.pool._undelivered(worker, difficulty, code)
        self._late.clear()

    def _on_events(self, stream: StratumConnection[MinerConnection], events: Iterator[MinerEvent]) -> None:
        # Iterated, not listed: each line is judged after the one before was answered (a pipelined
        # subscribe, authorize, submit is legal when this pool answers them in turn).
        for event in events:
            if type(event) is RequestReceived:
                message = event.message
                if type(message) is Submit:
                    self._submit(message)
                else:
                    self._dispatch(message)
            elif type(event) is Refused:
                if type(event.message) is Submit:
                    self._submit(event.message, event.error)
                else:
                    self._error(event.message.id, event.error.code, event.error.message)
            elif isinstance(event, BadLine):
                self._bad_line(event)
        if self._out:
            self._write(b"".join(self._out))
            self._out.clear()

    # --- requests -----------------------------------------------------------------------------------

    def _bad_line(self, event: BadLine) -> None:
        error = event.error
        if isinstance(error, LineTooLong):
            self._error(None, ErrorCode.OTHER, "line too long")
        elif isinstance(error, InvalidMessage) and error.method == "mining.submit":
            self._malformed_submit(error, event.line)
        else:
            self._error(error.id, ErrorCode.OTHER, error.reason)

    def _dispatch(self, message: Any) -> None:
        self.requests += 1
        if len(self.methods) < 32:
            self.methods.append(message.method if isinstance(message, Request) else _method(message))
        if isinstance(message, Subscribe):
            self.user_agent = message.params.user_agent
            sid = self.extranonce1
            self._result(
                message,
                [[["mining.set_difficulty", sid], ["mining.notify", sid]], self.extranonce1, self.extranonce2_size],
            )
            if self.workers and len(self._jobs) == 0:
                self._first_job()
        elif isinstance(message, Authorize):
            self._authorize(message)
        elif isinstance(message, Configure):
            self._configure(message)
        elif isinstance(message, ExtranonceSubscribe | SuggestDifficulty):
            if isinstance(message, SuggestDifficulty) and self.pool.honour_suggested_difficulty:
                self._suggested(message.params.difficulty)
            self._result(message, True)
        elif message.id is not None:  # an unknown method; notifications without an id are ignored
            self._error(message.id, ErrorCode.OTHER, "unknown method")

    def _authorize(self, message: Authorize) -> None:
        worker = message.params.worker
        if not self.pool.authorize(worker, message.params.password):
            self._error(message.id, ErrorCode.UNAUTHORIZED, "unauthorized")
            return
        first = not self.workers
        if worker not in self.workers:
            self.workers.append(worker)
        self._result(message, True)
        if first and self.subscribed:
            self._first_job()

    def _suggested(self, difficulty: float) -> None:
        # As public-pool does, before the session's first job; later it would need a new job to apply.
        if not self._jobs and difficulty > 0:
            self.difficulty = difficulty

    def _configure(self, message: Configure) -> None:
        options = configure_options(message)
        if isinstance(options, InvalidMessage):
            self._error(message.id, ErrorCode.OTHER, options.reason)
            return
        result: dict[str, Any] = {}
        for extension in message.params.extensions:
            result[extension] = False
        if options.version_rolling:
            self.version_mask = self.pool.version_mask & options.version_rolling_mask
            result["version-rolling"] = True
            result["version-rolling.mask"] = f"{self.version_mask:08x}"
        if options.minimum_difficulty is not None:
            result["minimum-difficulty"] = True
        self._result(message, result)

    def _submit(self, message: Submit, refused: StratumError | None = None) -> None:
        """`refused`: the state table's answer (not subscribed / not authorized), already decided."""
        pool = self.pool
        params = message.params
        self.submits += 1
        entry = self._jobs.get(params.job_id)
        difficulty = entry.difficulty if entry is not None else 0.0
        error: StratumError | None = refused
        if error is not None:
            pass
        elif params.worker not in self.workers:
            error = StratumError(int(ErrorCode.UNAUTHORIZED), "Unauthorized worker")
        elif entry is None:
            error = StratumError(int(ErrorCode.JOB_NOT_FOUND), "Job not found")
        else:
            if pool._should_verify():
                job = entry.job
                if job is None:
                    job = entry.job = Job(entry.notify, self.extranonce1, self.extranonce2_size, difficulty)
                try:
                    job.check_share(
                        params.extranonce2, params.ntime, params.nonce, params.version_bits, self.version_mask
                    )
                except ShareRejected as exc:
                    error = StratumError(int(exc.code), exc.message)
            if error is None and pool.reject_every:
                pool._valid_shares += 1
                if pool._valid_shares % pool.reject_every == 0:
                    error = StratumError(int(ErrorCode.OTHER), "simulated rejection")
        code = None if error is None else error.code
        if pool.record_submits:
            pool.submits_seen.append(
                PoolSubmit(
                    self.number,
                    self.extranonce1,
                    params.worker,
                    params.job_id,
                    params.extranonce2,
                    params.ntime,
                    params.nonce,
                    params.version_bits,
                    difficulty,
                    code,
                )
            )
        line = encode_result(message.id, True) if error is None else pool._encode_error(message.id, error)
        self._answer_submit(line, params.worker, difficulty, code)

    def _malformed_submit(self, message: InvalidMessage, line: bytes) -> None:
        pool = self.pool
        self.submits += 1
        if pool.record_submits:
            pool.submits_seen.append(
                PoolSubmit(self.number, self.extranonce1, "", "", "", "", "", None, 0.0, int(ErrorCode.OTHER), line)
            )
        reply = pool._encode_error(message.id, StratumError(int(ErrorCode.OTHER), message.reason))
        self._answer_submit(reply, "", 0.0, int(ErrorCode.OTHER))

    def _answer_submit(self, line: bytes, worker: str, difficulty: float, code: int | None) -> None:
        self.pool.submits_received += 1
        if self.pool.reply_delay > 0 or self.pool.holding or self._late:
            self._defer(line, worker, difficulty, code)
        else:
            self._out.append(line)
            self.pool._count(worker, difficulty, code)

    # --- jobs ---------------------------------------------------------------------------------------

    def _first_job(self) -> None:
        pool = self.pool
        current = pool.current_job
        if current is None:
            return
        self._out.append(encode_notification("mining.set_difficulty", [self.difficulty]))
        # A scripted job goes out as it was given (a real pool's first notify may be clean_jobs=false).
        first = current if pool.scripted_job else msgspec.structs.replace(current, clean_jobs=True)
        self.notify(first, write=False)

    def notify(self, notify: Notify, line: bytes | None = None, *, write: bool = True) -> None:
        """Tell this session about a job at its current difficulty (the pool calls this)."""
        jobs = self._jobs
        if notify.clean_jobs:
            jobs.clear()
        jobs[notify.job_id] = _SessionJob(notify, self.difficulty)
        while len(jobs) > self.pool.keep_jobs:
            del jobs[next(iter(jobs))]
        line = line or encode_notify(notify)
        if write:
            self._write(line)
        else:
            self._out.append(line)

    def set_difficulty(self, difficulty: float, *, live_jobs: bool = False) -> None:
        """Send `mining.set_difficulty`; it applies to the jobs notified after it, and with
        `live_jobs` to the jobs this session already has too (their shares are judged and credited
        at it from now on)."""
        self.difficulty = difficulty
        if live_jobs:
            for entry in self._jobs.values():
                entry.difficulty = difficulty
                if entry.job is not None:
                    entry.job.difficulty = difficulty
        self._write(encode_notification("mining.set_difficulty", [difficulty]))

    @property
    def active(self) -> bool:
        """Subscribed and authorized: this session receives jobs."""
        return self.subscribed and bool(self.workers) and not self.closed

    @property
    def job_ids(self) -> list[str]:
        return list(self._jobs)

    # --- writing ------------------------------------------------------------------------------------

    def _result(self, request: Any, result: Any) -> None:
        self._out.append(self.connection.answer(request, result))

    def _error(self, request_id: Any, code: int, message: str) -> None:
        self._out.append(self.pool._encode_error(request_id, StratumError(code, message)))

    def _write(self, data: bytes) -> None:
        self.stream.write(data)

    def _defer(self, line: bytes, worker: str, difficulty: float, code: int | None) -> None:
        loop = asyncio.get_running_loop()
        # Held (hold_verdicts): due never, until release_verdicts sets a time.
        due = math.inf if self.pool.holding else loop.time() + self.pool.reply_delay
        if self._late and self._late[-1][0] > due:
            due = self._late[-1][0]  # replies stay in order
        self._late.append((due, line, worker, difficulty, code))
        if self._late_timer is None and due < math.inf:
            self._late_timer = loop.call_at(due, self._flush_late)

    def release(self) -> int:
        """Answer the held submits now (in order); returns how many."""
        late = self._late
        now = asyncio.get_running_loop().time()
        held = sum(1 for entry in late if entry[0] == math.inf)
        if held:
            self._late = collections.deque(
                (min(due, now), line, worker, difficulty, code) for due, line, worker, difficulty, code in late
            )
            if self._late_timer is not None:
                self._late_timer.cancel()
                self._late_timer = None
            self._flush_late()
        return held

    def _flush_late(self) -> None:
        self._late_timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        out = []
        late = self._late
        while late and late[0][0] <= now:
            _, line, worker, difficulty, code = late.popleft()
            out.append(line)
            self.pool._count(worker, difficulty, code)
        if out:
            self._write(b"".join(out))
        if late and late[0][0] < math.inf:
            self._late_timer = loop.call_at(late[0][0], self._flush_late)

    def close(self, *, abort: bool = False) -> None:
        if abort:
            self.stream.abort()
        else:
            self.stream.close()


def _method(message: Any) -> str:
    return str(message.__struct_config__.tag)


class SimulatedPool:
    """A Stratum V1 pool on 127.0.0.1 that verifies every share with `protocol.work.Job.check_share`.

    Use `await pool.start()` (then `pool.port`) and `await pool.stop()`, or `async with`.
    `stop()` then `start()` again listens on the same port: the pool went down and came back.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        difficulty: float = DEFAULT_DIFFICULTY,
        extranonce1_size: int = 4,
        extranonce2_size: int = 4,
        version_mask: int = BIP320_MASK,
        merkle_branches: int = 12,
        nbits: str = DEFAULT_NBITS,
        job_interval: float = 30.0,
        keep_jobs: int = 8,
        verify: VerifyMode = "all",
        sample_every: int = 100,
        reject_every: int = 0,
        reply_delay: float = 0.0,
        error_shape: ErrorShape = "list",
        authorize: Callable[[str, str | None], bool] | None = None,
        record_submits: bool = True,
        max_line: int = DEFAULT_MAX_LINE,
        seed: int | None = None,
        first_extranonce1: str | None = None,
        job: Notify | None = None,
        honour_suggested_difficulty: bool = False,
    ) -> None:
        """
        difficulty: sent after authorize, and assigned to every job notified after it.
        job_interval: seconds between new (not clean) jobs broadcast to every session; 0 = never.
        keep_jobs: jobs a session may still submit to (cleared by a clean_jobs job).
        verify: "all" hashes every share; "sample" every `sample_every`-th (the rest are accepted
            if their job is known, for benchmarks); "none" hashes none.
        reject_every: reject every Nth otherwise-valid share with [20, "simulated rejection", null].
        reply_delay: seconds before a submit is answered (replies stay in order).
        error_shape: "list" [code, msg, null]; "string" (error is a bare string, result false);
            "jsonrpc2" ({"code", "message", "data"} object); "reject-reason" (result false, no error).
        authorize: predicate (worker, password) → accept; refused names get [24, "unauthorized", null].
        record_submits: keep `submits_seen` (turn off for long benchmarks).
        To replay a recorded session (tests/vectors):
        first_extranonce1: hex extranonce1 of the first connection (the next count up from it; its
            length sets extranonce1_size); None: drawn from the seed.
        job: the job every session gets first, sent exactly as given (a real notify); None: generated.
            With job_interval=0 it is the only one.
        honour_suggested_difficulty: a `mining.suggest_difficulty` that comes before a session's first
            job sets that session's difficulty (public-pool does so).
        """
        if first_extranonce1 is not None:
            if not 2 <= len(first_extranonce1) <= 16 or len(first_extranonce1) % 2:
                raise ValueError("first_extranonce1 must be 1..8 bytes of hex")
            extranonce1_size = len(first_extranonce1) // 2
        if not 1 <= extranonce1_size <= 8:
            raise ValueError("extranonce1_size must be 1..8 bytes")
        if not 1 <= extranonce2_size <= 16:
            raise ValueError("extranonce2_size must be 1..16 bytes")
        if difficulty <= 0:
            raise ValueError("difficulty must be > 0")
        if verify not in ("all", "sample", "none"):
            raise ValueError("verify must be 'all', 'sample' or 'none'")
        if error_shape not in ("list", "string", "jsonrpc2", "reject-reason"):
            raise ValueError("unknown error_shape")
        self.host = host
        self.port = port
        self.difficulty = difficulty
        self.extranonce1_size = extranonce1_size
        self.extranonce2_size = extranonce2_size
        self.version_mask = version_mask
        self.merkle_branches = merkle_branches
        self.nbits = nbits
        self.job_interval = job_interval
        self.keep_jobs = max(1, keep_jobs)
        self.verify: VerifyMode = verify
        self.sample_every = max(1, sample_every)
        self.reject_every = reject_every
        self.reply_delay = reply_delay
        self.error_shape: ErrorShape = error_shape
        self.authorize: Callable[[str, str | None], bool] = authorize or (lambda worker, password: True)
        self.record_submits = record_submits
        self.max_line = max_line
        self.honour_suggested_difficulty = honour_suggested_difficulty
        self.scripted_job = job is not None

        self.sessions: dict[int, PoolSession] = {}  # open connections by number
        self.connections_total = 0
        self.current_job: Notify | None = job
        self.jobs_sent = 0
        self.holding = False  # hold_verdicts(): submits are judged, answered only at release_verdicts()
        # The last 64 jobs sent, by id (for resend_job).
        self.recent_jobs: dict[str, Notify] = {} if job is None else {job.job_id: job}
        # Ground truth.
        self.accepted: dict[str, float] = {}
        self.accepted_shares: dict[str, int] = {}
        self.accepted_count = 0
        self.rejected_count = 0
        self.rejected_by_code: dict[int, int] = {}
        self.submits_seen: list[PoolSubmit] = []
        self.undelivered: dict[str, float] = {}  # accepted, but the connection closed before the reply
        self.undelivered_count = 0
        self.submits_received = 0  # submit lines answered or waiting to be answered

        self._rng = random.Random(seed)
        self._job_prefix = f"{self._rng.getrandbits(16):04x}"
        self._job_counter = 0
        self._en1_base = self._rng.getrandbits(8 * extranonce1_size)
        if first_extranonce1 is not None:
            self._en1_base = int(first_extranonce1, 16)
        self._height = 840_000 + self._rng.randrange(100_000)
        self._prevhash = self._random_hex(32)
        self._server: asyncio.Server | None = None
        self._job_timer: asyncio.TimerHandle | None = None
        self._verify_counter = 0
        self._valid_shares = 0

    # --- lifecycle ------------------------------------------------------------------------------------

    async def start(self) -> SimulatedPool:
        if self._server is not None:
            return self
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._new_session, self.host, self.port, reuse_address=True, backlog=4096
        )
        self.port = self._server.sockets[0].getsockname()[1]
        if self.current_job is None:
            self._next_job(clean=True)
        self._schedule_jobs()
        return self

    async def stop(self) -> None:
        """Stop listening and close every connection (replies already written are delivered)."""
        if self._job_timer is not None:
            self._job_timer.cancel()
            self._job_timer = None
        server, self._server = self._server, None
        if server is not None:
            server.close()
        self.disconnect_all()
        if server is not None:
            await server.wait_closed()
        for _ in range(3):  # let connection_lost callbacks run
            await asyncio.sleep(0)

    async def __aenter__(self) -> SimulatedPool:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    @property
    def url(self) -> str:
        return f"stratum+tcp://{self.host}:{self.port}"

    @property
    def listening(self) -> bool:
        return self._server is not None

    def _new_session(self) -> StratumConnection[MinerConnection]:
        number = self.connections_total
        self.connections_total += 1
        en1 = (self._en1_base + number) % (1 << (8 * self.extranonce1_size))
        session = PoolSession(self, number, f"{en1:0{2 * self.extranonce1_size}x}")
        self.sessions[number] = session  # accepted: connection_made follows in the same loop step
        return session.stream

    # --- test controls --------------------------------------------------------------------------------

    def new_job(self, clean: bool = True) -> str:
        """Broadcast a new job to every active session; returns its id. clean=True ends the old jobs."""
        notify = self._next_job(clean)
        line = encode_notify(notify)
        for session in list(self.sessions.values()):
            if session.active:
                session.notify(notify, line)
        return notify.job_id

    def set_difficulty(self, difficulty: float, *, clean: bool = False, worker: str | None = None) -> str:
        """Broadcast set_difficulty (to the sessions of `worker` only, if given), then a new job:
        the new difficulty applies to that job and later ones; old jobs keep theirs. Returns the job id."""
        if difficulty <= 0:
            raise ValueError("difficulty must be > 0")
        if worker is None:
            self.difficulty = difficulty
        for session in list(self.sessions.values()):
            if session.active and (worker is None or worker in session.workers):
                session.set_difficulty(difficulty)
        return self.new_job(clean=clean)

    def retarget(self, difficulty: float, *, live_jobs: bool = False, worker: str | None = None) -> int:
        """Send set_difficulty WITHOUT a new job (to the sessions of `worker` only, if given); returns
        how many sessions got it. `live_jobs=False`: the jobs already sent keep the difficulty they
        were notified at, only later jobs take the new one (as `set_difficulty`). `live_jobs=True`:
        the jobs already sent take it too, so a share on them is judged and credited at the new
        difficulty, lower or higher (pools that apply vardiff at once)."""
        if difficulty <= 0:
            raise ValueError("difficulty must be > 0")
        if worker is None:
            self.difficulty = difficulty
        sessions = [s for s in self.sessions.values() if s.active and (worker is None or worker in s.workers)]
        for session in sessions:
            session.set_difficulty(difficulty, live_jobs=live_jobs)
        return len(sessions)

    def resend_job(self, job_id: str, *, as_id: str | None = None, clean: bool = False) -> str:
        """Broadcast a job sent before, its content unchanged: under its own id (a re-notify) or,
        with `as_id`, under a new id (the same work twice); `clean` sets clean_jobs. Returns the id.
        Each session takes it as a new job at its current difficulty and, as for any new job, forgets
        the shares it saw under that id: the pool alone would accept the same share again (the
        proxy must not credit it twice). Only the last 64 jobs can be resent."""
        old = self.recent_jobs.get(job_id)
        if old is None:
            raise KeyError(f"job {job_id!r} was not sent lately")
        notify = msgspec.structs.replace(old, job_id=as_id or job_id, clean_jobs=clean)
        self._remember(notify)
        self.current_job = notify
        self.jobs_sent += 1
        line = encode_notify(notify)
        for session in list(self.sessions.values()):
            if session.active:
                session.notify(notify, line)
        return notify.job_id

    def _remember(self, notify: Notify) -> None:
        self.recent_jobs[notify.job_id] = notify
        while len(self.recent_jobs) > 64:
            del self.recent_jobs[next(iter(self.recent_jobs))]

    def disconnect_all(self, *, abort: bool = False) -> int:
        """Close every connection (the upstream dies mid-session); the pool keeps listening.
        abort=True resets the connections instead of closing them after the pending writes."""
        sessions = list(self.sessions.values())
        for session in sessions:
            session.close(abort=abort)
        return len(sessions)

    def stop_reading(self) -> int:
        """Stop reading every open connection (a pool that hangs but keeps its sockets): what is sent
        to it piles up in the kernel and then in the sender. Its receive buffer is shrunk so that
        happens within a few hundred submits. Returns how many connections stopped."""
        sessions = list(self.sessions.values())
        for session in sessions:
            transport = session.stream.transport
            if transport is None:
                continue
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            transport.pause_reading()
        return len(sessions)

    def hold_verdicts(self) -> None:
        """From now on judge every submit but answer none (a pool that stalls), until
        `release_verdicts()`; the verdicts count when they are written, as with `reply_delay`."""
        self.holding = True

    def release_verdicts(self) -> int:
        """Stop holding: answer the held submits now, in order; returns how many were held."""
        self.holding = False
        return sum(session.release() for session in list(self.sessions.values()))

    def send_reconnect(self, host: str | None = None, port: int | None = None, wait: int = 0) -> int:
        """Send `client.reconnect` to every session; returns how many got it."""
        params: list[Any] = [] if host is None else [host, port if port is not None else self.port, wait]
        line = encode_notification("client.reconnect", params)
        sessions = list(self.sessions.values())
        for session in sessions:
            session._write(line)
        return len(sessions)

    # --- accounting -----------------------------------------------------------------------------------

    def accepted_by_hotkey(self) -> dict[str, float]:
        """Accepted difficulty per hotkey (the middle of `account.hotkey.worker`)."""
        totals: dict[str, float] = {}
        for worker, difficulty in self.accepted.items():
            hotkey = hotkey_of(worker)
            totals[hotkey] = totals.get(hotkey, 0.0) + difficulty
        return totals

    def count_submits(
        self, job_id: str, extranonce2: str, ntime: str, nonce: str, version_bits: str | None = None
    ) -> int:
        """How many submits of this share reached the pool (hex compared case-insensitively;
        version bits only when given). Takes a fleet ShareParams as `*params`."""
        en2, ntime, nonce = extranonce2.lower(), ntime.lower(), nonce.lower()
        bits = version_bits.lower() if version_bits is not None else None
        return sum(
            1
            for s in self.submits_seen
            if s.job_id == job_id
            and s.extranonce2.lower() == en2
            and s.nonce.lower() == nonce
            and s.ntime.lower() == ntime
            and (bits is None or (s.version_bits or "").lower() == bits)
        )

    def reset_accounting(self) -> None:
        """Forget every count (e.g. after a warm-up)."""
        self.accepted.clear()
        self.accepted_shares.clear()
        self.accepted_count = self.rejected_count = self.undelivered_count = self.submits_received = 0
        self.rejected_by_code.clear()
        self.submits_seen.clear()
        self.undelivered.clear()

    def _count(self, worker: str, difficulty: float, code: int | None) -> None:
        if code is not None:
            self.rejected_count += 1
            self.rejected_by_code[code] = self.rejected_by_code.get(code, 0) + 1
            return
        self.accepted_count += 1
        self.accepted[worker] = self.accepted.get(worker, 0.0) + difficulty
        self.accepted_shares[worker] = self.accepted_shares.get(worker, 0) + 1

    def _undelivered(self, worker: str, difficulty: float, code: int | None) -> None:
        self.undelivered_count += 1
        if code is None:
            self.undelivered[worker] = self.undelivered.get(worker, 0.0) + difficulty

    def _should_verify(self) -> bool:
        if self.verify == "all":
            return True
        if self.verify == "none":
            return False
        self._verify_counter += 1
        return self._verify_counter % self.sample_every == 0

    def _encode_error(self, request_id: Any, error: StratumError) -> bytes:
        shape = self.error_shape
        if shape == "list":
            body: dict[str, Any] = {"id": request_id, "result": None, "error": error.as_list()}
        elif shape == "string":
            body = {"id": request_id, "result": False, "error": error.message}
        elif shape == "jsonrpc2":
            body = {
                "jsonrpc": "2.0",
                "id": request_id,
                "error": {"code": error.code, "message": error.message, "data": error.data},
            }
        else:
            body = {"reject-reason": error.message, "result": False, "error": None, "id": request_id}
        return _json.encode(body) + b"\n"

    # --- jobs -----------------------------------------------------------------------------------------

    def _schedule_jobs(self) -> None:
        if self.job_interval > 0 and self._server is not None:
            self._job_timer = asyncio.get_running_loop().call_later(self.job_interval, self._timer_job)

    def _timer_job(self) -> None:
        self._job_timer = None
        self.new_job(clean=False)
        self._schedule_jobs()

    def _random_hex(self, size: int) -> str:
        return self._rng.getrandbits(8 * size).to_bytes(size, "big").hex()

    def _next_job(self, clean: bool) -> Notify:
        """A real-looking job: a BIP34 coinbase with room for extranonce1 ‖ extranonce2, a payout and
        a witness commitment output; random merkle branches; a new prevhash when clean (a new block)."""
        if clean:
            self._height += 1
            self._prevhash = self._random_hex(32)
        self._job_counter += 1
        extranonce_size = self.extranonce1_size + self.extranonce2_size
        height = self._height.to_bytes(3, "little")
        script_head = b"\x03" + height + bytes([len(_COINBASE_TAG)]) + _COINBASE_TAG + bytes([extranonce_size])
        coinb1 = (
            struct.pack("<I", 1)  # tx version
            + b"\x01"
            + b"\x00" * 32
            + b"\xff\xff\xff\xff"  # one input: the null outpoint
            + bytes([len(script_head) + extranonce_size])
            + script_head
        )
        payout = b"\x00\x14" + self._rng.randbytes(20)  # P2WPKH
        commitment = b"\x6a\x24\xaa\x21\xa9\xed" + self._rng.randbytes(32)  # OP_RETURN witness commitment
        coinb2 = (
            b"\xff\xff\xff\xff"  # sequence
            + b"\x02"
            + struct.pack("<q", _BLOCK_SUBSIDY + self._rng.randrange(10_000_000))
            + bytes([len(payout)])
            + payout
            + struct.pack("<q", 0)
            + bytes([len(commitment)])
            + commitment
            + b"\x00\x00\x00\x00"  # lock time
        )
        notify = Notify(
            job_id=f"{self._job_prefix}{self._job_counter:04x}",
            prevhash=self._prevhash,
            coinb1=coinb1.hex(),
            coinb2=coinb2.hex(),
            merkle_branch=[self._random_hex(32) for _ in range(self.merkle_branches)],
            version="20000000",
            nbits=self.nbits,
            ntime=f"{int(time.time()):08x}",
            clean_jobs=clean,
        )
        self.current_job = notify
        self._remember(notify)
        self.scripted_job = False  # from now on the first job of a session is a generated one, made clean
        self.jobs_sent += 1
        return notify


def main(argv: list[str] | None = None) -> int:
    """`ih-sim-pool --listen 127.0.0.1:3334` (or `python -m simulation.pool`): the simulated pool on its
    own, to point a hand-run ih-proxy at. Runs until Ctrl-C or SIGTERM, then prints the difficulty it
    accepted per hotkey."""
    import argparse
    import signal
    import sys

    from simulation import run

    parser = argparse.ArgumentParser(prog="python -m simulation.pool", description=main.__doc__)
    parser.add_argument("--listen", default="127.0.0.1:3334", help="host:port (default 127.0.0.1:3334)")
    parser.add_argument(
        "--difficulty", type=float, default=DEFAULT_DIFFICULTY, help=f"share difficulty (default {DEFAULT_DIFFICULTY})"
    )
    parser.add_argument("--job-interval", type=float, default=30.0, help="seconds between new jobs (default 30)")
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")

    async def serve() -> SimulatedPool:
        pool = SimulatedPool(host=host, port=int(port), difficulty=args.difficulty, job_interval=args.job_interval)
        await pool.start()
        print(f"simulated pool on stratum+tcp://{host}:{pool.port} (difficulty {args.difficulty:g}); Ctrl-C stops")
        stop = asyncio.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(signum, stop.set)
        try:
            await stop.wait()
        finally:
            await pool.stop()
            for hotkey, difficulty in sorted(pool.accepted_by_hotkey().items()):
                print(f"accepted {difficulty:g} difficulty from {hotkey}")
        return pool

    try:
        run(serve())
    except OSError as exc:  # the port is taken, most often
        print(f"ih-sim-pool: cannot listen on {args.listen}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
