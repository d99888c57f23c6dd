"""Simulated ASICs that mine real shares: a fleet for end-to-end tests, the demo and the benchmarks.

A `SimulatedASIC` connects to a pool (or the proxy), handshakes the way a real device does (three
profiles taken from recorded sessions, `../shared/vectors/`), pipelining its requests without waiting
for replies, and mines: for every `mining.notify` it builds a `protocol.work.Job` with the
extranonce1/extranonce2_size it was given and the difficulty in force when the notify arrived, then
grinds nonces (and version bits inside the negotiated mask) on the real block header until the
share's difficulty reaches the job's. The per-share path is a callback on one `asyncio.Protocol`
(`simulation.stream`) over the sans-I/O `protocol.connection.PoolConnection`, which frames, decodes
and matches replies to requests: no task per share, one write per read batch.

Modes: "closed" (`pipeline` submits in flight; the next share goes as soon as a reply comes back:
throughput) or "rate" (`rate` shares/s, open loop: latency). Both stop at `max_shares` and/or
`duration`. Every submit is recorded (send time, reply time, verdict); `bad_every` mixes in bad
shares of known kinds, and `submit()`/`send_raw()`/`find_share()` let a test craft its own.
"""

from __future__ import annotations

import array
import asyncio
import hashlib
import random
import struct
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, NamedTuple

import msgspec

from protocol.connection import Notification, PoolConnection, PoolEvent, ReplyReceived, UnmatchedReply
from protocol.errors import ErrorCode, StratumError
from protocol.framing import DEFAULT_MAX_LINE
from protocol.messages import (
    Notify,
    Reconnect,
    Reply,
    ServerRequest,
    SetDifficulty,
    SetExtranonce,
    SetVersionMask,
    ShowMessage,
    encode_error,
    encode_result,
    subscribe_result,
)
from protocol.work import DIFF1, Job, roll_version
from simulation.pool import hotkey_of
from simulation.stream import StratumConnection

__all__ = [
    "BAD_KINDS",
    "EXPECTED_CODE",
    "PROFILES",
    "DeviceProfile",
    "Fleet",
    "HandshakeError",
    "Mode",
    "Profile",
    "ShareParams",
    "SimulatedASIC",
    "SubmitRecord",
    "quantile",
    "worker_names",
]

Profile = Literal["bitaxe", "antminer", "cpuminer"]
Mode = Literal["closed", "rate"]

# Bad shares a test can mix in, and the Stratum code a pool (or the proxy) must answer each with.
EXPECTED_CODE: dict[str, int] = {
    "duplicate": ErrorCode.DUPLICATE,  # the previous share again
    "low-difficulty": ErrorCode.LOW_DIFFICULTY,  # a real hash below the job's difficulty
    "stale": ErrorCode.JOB_NOT_FOUND,  # a job ended by clean_jobs, or one never sent
    "bad-extranonce2": ErrorCode.OTHER,  # extranonce2 one byte short
    "bad-version": ErrorCode.OTHER,  # version bits 40000000, outside any BIP320 mask (old bmminer)
    "malformed": ErrorCode.OTHER,  # numbers where hex strings belong (a known-bad line)
    "unauthorized": ErrorCode.UNAUTHORIZED,  # a worker name this connection never authorized
}
BAD_KINDS: tuple[str, ...] = tuple(EXPECTED_CODE)

_HEADER76 = struct.Struct("<I32s32sII")  # the header up to the nonce (layout as in protocol.work)
_NONCE_END = 1 << 32
_MIN_SHARE_DIFFICULTY = DIFF1 / ((1 << 256) - 1)  # the difficulty of the worst possible hash
_sha256 = hashlib.sha256


@dataclass(frozen=True)
class DeviceProfile:
    """How one kind of device opens a session and formats its submits."""

    name: str
    user_agent: str
    # The requests sent on connect, in order, all at once: mining.subscribe and mining.authorize,
    # and any of mining.configure, mining.suggest_difficulty, mining.extranonce.subscribe.
    handshake: tuple[str, ...]
    configure_mask: str = "ffffffff"  # the version-rolling mask asked for in mining.configure
    min_bit_count: int | None = None  # version-rolling.min-bit-count, when the device sends one
    suggest_difficulty: float = 1000.0
    submit_id: int | None = None  # every submit with this id (cpuminer: 4); None: a fresh id each
    version_bits: Literal["always", "rolling", "never"] = "rolling"  # when the 6th submit param is sent

    @property
    def configures(self) -> bool:
        return "mining.configure" in self.handshake


PROFILES: dict[str, DeviceProfile] = {
    # ESP-Miner: subscribe, configure(ffffffff, no min-bit-count), suggest_difficulty, authorize;
    # always sends version bits (00000000 when it may not roll).
    "bitaxe": DeviceProfile(
        "bitaxe",
        "bitaxe/BM1370/v2.9.0",
        ("mining.subscribe", "mining.configure", "mining.suggest_difficulty", "mining.authorize"),
        configure_mask="ffffffff",
        version_bits="always",
    ),
    # bmminer: configure(1fffe000, min-bit-count 2) BEFORE subscribe, authorize, extranonce.subscribe.
    "antminer": DeviceProfile(
        "antminer",
        "bmminer/2.0.0",
        ("mining.configure", "mining.subscribe", "mining.authorize", "mining.extranonce.subscribe"),
        configure_mask="1fffe000",
        min_bit_count=2,
        version_bits="rolling",
    ),
    # cpuminer: subscribe, authorize; no configure; every submit has id 4; no version bits.
    "cpuminer": DeviceProfile(
        "cpuminer",
        "cpuminer/2.5.1",
        ("mining.subscribe", "mining.authorize"),
        submit_id=4,
        version_bits="never",
    ),
}


class HandshakeError(Exception):
    """The session could not be opened: refused authorization, a bad subscribe reply, a timeout."""

    def __init__(self, message: str, error: StratumError | None = None) -> None:
        super().__init__(message)
        self.error = error


class ShareParams(NamedTuple):
    """The fields of one mining.submit after the worker name."""

    job_id: str
    extranonce2: str
    ntime: str
    nonce: str
    version_bits: str | None = None


class SubmitRecord:
    """One submit this ASIC sent: what, when, and the verdict (None while unanswered or if lost)."""

    __slots__ = (
        "auto",
        "difficulty",
        "error",
        "future",
        "kind",
        "params",
        "replied_at",
        "request_id",
        "sent_at",
        "worker",
    )

    def __init__(
        self, kind: str, worker: str, params: ShareParams | None, difficulty: float, request_id: Any, auto: bool
    ) -> None:
        self.kind = kind  # "valid", a BAD_KINDS entry, "manual" or "raw"
        self.worker = worker
        self.params = params
        self.difficulty = difficulty  # the job's assigned difficulty (0.0 if the job is unknown)
        self.request_id = request_id
        self.auto = auto
        self.sent_at = 0.0  # time.perf_counter() seconds
        self.replied_at: float | None = None
        self.error: StratumError | None = None
        self.future: asyncio.Future[SubmitRecord] | None = None

    @property
    def replied(self) -> bool:
        return self.replied_at is not None

    @property
    def accepted(self) -> bool:
        return self.replied_at is not None and self.error is None

    @property
    def error_code(self) -> int | None:
        return None if self.error is None else self.error.code

    @property
    def expected_code(self) -> int | None:
        """The code a correct pool/proxy answers this kind of bad share with (None for valid ones)."""
        return EXPECTED_CODE.get(self.kind)

    @property
    def latency(self) -> float | None:
        return None if self.replied_at is None else self.replied_at - self.sent_at

    def __repr__(self) -> str:
        verdict = "pending" if self.replied_at is None else ("accepted" if self.error is None else self.error)
        return f"SubmitRecord({self.kind}, {self.params}, diff={self.difficulty:g}, {verdict})"


def _mask_bits(mask: int) -> list[int]:
    return [1 << i for i in range(32) if mask >> i & 1]


class _Work:
    """One job as this ASIC mines it: a protocol `Job` plus a cursor over extranonce2, version bits
    and nonce, with the header's first 64 bytes hashed once (the midstate, as ASICs do)."""

    __slots__ = (
        "_bits",
        "_en2",
        "_en2_hex",
        "_merkle",
        "_mid",
        "_nonce",
        "_shift",
        "_tail",
        "_vbits",
        "_vindex",
        "checked",
        "difficulty",
        "job",
        "mask",
        "ntime",
        "target",
    )

    def __init__(
        self, notify: Notify, extranonce1: str, extranonce2_size: int, difficulty: float, mask: int, extranonce2: int
    ) -> None:
        self.job = Job(notify, extranonce1, extranonce2_size, difficulty)
        self.ntime = notify.ntime
        self.difficulty = difficulty
        self.target = int(DIFF1 / difficulty) + 1  # a pre-filter; the exact test is DIFF1/value
        self.checked = False
        self._en2 = extranonce2 % (1 << (8 * extranonce2_size))
        self._nonce = 0
        self._vindex = 0
        self.mask = 0
        self._bits: list[int] = []
        self._vbits = 0
        self._shift: int | None = None
        self._merkle = b""
        self._en2_hex = ""
        self._set_en2(self._en2)
        self.set_mask(mask)

    @property
    def job_id(self) -> str:
        return self.job.job_id

    def set_mask(self, mask: int) -> None:
        self.mask = mask
        self._bits = _mask_bits(mask)
        self._shift = None
        if mask:  # a contiguous mask (BIP320's 1fffe000 is): the index shifted into place
            low = (mask & -mask).bit_length() - 1
            if (mask >> low) & ((mask >> low) + 1) == 0:
                self._shift = low
        self._vbits = self._deposit(self._vindex)
        self._prepare()

    def _deposit(self, index: int) -> int:
        """The index-th combination of the mask's bits (bit i of index → the mask's i-th bit)."""
        if self._shift is not None:
            return (index << self._shift) & self.mask
        bits = 0
        for i, bit in enumerate(self._bits):
            if index >> i & 1:
                bits |= bit
        return bits

    def _set_en2(self, value: int) -> None:
        self._en2 = value
        en2 = value.to_bytes(self.job.extranonce2_size, "big")
        self._en2_hex = en2.hex()
        self._merkle = self.job.merkle_root(en2)

    def _prepare(self) -> None:
        job = self.job
        version = roll_version(job.version, self._vbits, self.mask)
        head = _HEADER76.pack(version, job.prevhash, self._merkle, job.ntime, job.nbits)
        self._mid = _sha256(head[:64])
        self._tail = head[64:]

    def _advance(self, nonce: int) -> None:
        """After a share: next nonce, and new version bits (a new midstate) when rolling."""
        if nonce >= _NONCE_END:
            nonce = 0
            self._set_en2((self._en2 + 1) % (1 << (8 * self.job.extranonce2_size)))
            self._prepare()
        self._nonce = nonce
        if self._bits:
            self._vindex = (self._vindex + 1) % (1 << len(self._bits))
            self._vbits = self._deposit(self._vindex)
            self._prepare()

    def grind(self, budget: int, low: bool = False) -> tuple[str, str, int] | None:
        """Hash up to `budget` headers; the first whose difficulty reaches the job's (or, with
        low=True, stays below it) → (extranonce2 hex, nonce hex, version bits). None: keep going."""
        mid = self._mid
        tail = self._tail
        sha = _sha256
        start = self._nonce
        end = min(start + budget, _NONCE_END)
        target = self.target
        difficulty = self.difficulty
        for nonce in range(start, end):
            state = mid.copy()
            state.update(tail + nonce.to_bytes(4, "little"))
            value = int.from_bytes(sha(state.digest()).digest(), "little")
            if low:
                if value and DIFF1 / value < difficulty:
                    return self._found(nonce, low)
            elif value <= target and (value == 0 or DIFF1 / value >= difficulty):
                return self._found(nonce, low)
        self._advance(end)
        return None

    def _found(self, nonce: int, low: bool) -> tuple[str, str, int]:
        found = (self._en2_hex, f"{nonce:08x}", self._vbits)
        if not self.checked:  # the first share of a job: protocol's own hash must agree
            self.checked = True
            share = self.job.hash_share(found[0], self.ntime, found[1], f"{self._vbits:08x}", self.mask)
            if (share.difficulty >= self.difficulty) == low:
                raise RuntimeError("the simulated ASIC's header disagrees with protocol.work")
        self._advance(nonce + 1)
        return found

    def peek(self) -> tuple[str, str, int]:
        """The cursor's fields without hashing (for shares that are meant to fail before hashing)."""
        return self._en2_hex, f"{self._nonce:08x}", self._vbits


class _Link(StratumConnection[PoolConnection]):
    """The device's connection to its pool: the handshake goes out from connection_made, at once."""

    def __init__(self, asic: SimulatedASIC, max_line: int) -> None:
        super().__init__(PoolConnection(max_line=max_line), asic._on_data, on_close=asic._on_lost)
        self.asic = asic

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.asic._on_connected(self)


class SimulatedASIC:
    """One mining device. `await start()` connects, handshakes and mines; `await wait()` until the
    bounds are reached; `await stop()`. For crafted tests: `await connect()` then `submit()`,
    `send_raw()`, `find_share()`. It reconnects (bounded) when its connection is lost while mining."""

    def __init__(
        self,
        host: str,
        port: int,
        worker: str,
        *,
        password: str = "x",
        profile: Profile | DeviceProfile = "bitaxe",
        mode: Mode = "closed",
        pipeline: int = 1,
        rate: float = 1.0,
        max_in_flight: int = 256,
        max_shares: int | None = None,
        duration: float | None = None,
        drain_timeout: float = 5.0,
        bad_every: int = 0,
        bad_kinds: Sequence[str] = BAD_KINDS,
        bad_offset: int = 0,
        reconnect: bool = True,
        max_reconnects: int = 5,
        reconnect_delay: float = 0.2,
        handshake_timeout: float = 10.0,
        record_submits: bool = True,
        grind_budget: int = 20_000,
        max_line: int = DEFAULT_MAX_LINE,
        seed: int | None = None,
    ) -> None:
        """
        mode: "closed" keeps `pipeline` submits in flight; "rate" sends `rate` shares/s regardless of
            replies (at most `max_in_flight` unanswered).
        max_shares / duration: bounds on the shares mined (bad ones included); after `duration`
            seconds no new share is sent and replies are awaited up to `drain_timeout`.
        bad_every: every Nth mined submit is a bad share, cycling through `bad_kinds` (starting at
            `bad_offset`, so a fleet covers every kind).
        grind_budget: hashes per callback before yielding to the event loop.
        """
        if isinstance(profile, str) and profile not in PROFILES:
            raise ValueError(f"unknown profile {profile!r}; one of {sorted(PROFILES)}")
        required = {"mining.subscribe", "mining.authorize"}
        if isinstance(profile, DeviceProfile) and not required <= set(profile.handshake):
            raise ValueError("a profile's handshake must subscribe and authorize")
        unknown = set(bad_kinds) - set(EXPECTED_CODE)
        if unknown:
            raise ValueError(f"unknown bad share kinds: {sorted(unknown)}")
        if mode not in ("closed", "rate"):
            raise ValueError("mode must be 'closed' or 'rate'")
        if mode == "rate" and not rate > 0:
            raise ValueError("rate must be > 0")
        self.host = host
        self.port = port
        self.worker = worker
        self.password = password
        self.profile = PROFILES[profile] if isinstance(profile, str) else profile
        self.mode: Mode = mode
        self.pipeline = max(1, pipeline)
        self.rate = rate
        self.max_in_flight = max(1, max_in_flight)
        self.max_shares = max_shares
        self.duration = duration
        self.drain_timeout = drain_timeout
        self.bad_every = bad_every
        self.bad_kinds = tuple(bad_kinds)
        self.bad_offset = bad_offset
        self.reconnect = reconnect
        self.max_reconnects = max_reconnects
        self.reconnect_delay = reconnect_delay
        self.handshake_timeout = handshake_timeout
        self.record_submits = record_submits
        self.grind_budget = max(1, grind_budget)
        self.max_line = max_line
        self._rng = random.Random(seed)

        # Session state (reset on every connection).
        self.extranonce1: str | None = None
        self.extranonce2_size = 0
        self.version_mask = 0
        self.difficulty = 1.0  # in force for the next notify
        self.authorized = False
        self.connected = False
        self.ready = False  # handshake complete on the current connection
        self._conn: _Link | None = None
        self._works: dict[str, _Work] = {}
        self._work: _Work | None = None
        self._early: list[tuple[Notify, float]] = []  # notifies that came before the subscribe reply
        self._handshake: asyncio.Future[None] | None = None
        self._waiting_for: set[str] = set()
        self._target: tuple[str, int] = (host, port)
        self._reconnect_wait = 0.0  # asked by client.reconnect

        # Mining state.
        self._mining = False
        self._stopping = False
        self._in_flight = 0  # mined submits unanswered (the pipeline)
        self._owed = 0  # every submit unanswered on this connection, manual ones included
        self._mined = 0  # automatic submits sent (bounded by max_shares)
        self._batching = False
        self._out: list[bytes] = []
        self._deadline: float | None = None
        self._expired = False  # the duration is over
        self._paused = False  # draining the connection before closing it: send no more shares
        self._draining: asyncio.TimerHandle | None = None
        self._timer: asyncio.Handle | None = None  # rate ticks / a yielded grind
        self._bound_timer: asyncio.TimerHandle | None = None  # the duration deadline, then the drain
        self._next_at = 0.0
        self._done: asyncio.Future[None] | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._en2_next = self._rng.getrandbits(16)
        self._stale_ids: list[str] = []
        self.last_share: ShareParams | None = None  # the last valid share mined (for duplicates)

        # Statistics.
        self.submitted = 0
        self.accepted = 0
        self.rejected = 0
        self.lost = 0  # in flight when the connection closed
        self.accepted_difficulty = 0.0
        self.accepted_by_worker: dict[str, float] = {}
        self.rejected_by_code: dict[int, int] = {}
        self.latencies = array.array("d")
        self.records: list[SubmitRecord] = []
        self.notifies = 0
        self.reconnects = 0
        self.reconnect_requests = 0
        self.messages: list[str] = []  # client.show_message texts
        self.errors: list[str] = []  # why connections failed
        self.bad_lines = 0
        self.started_at: float | None = None
        self.finished_at: float | None = None

    # --- lifecycle ------------------------------------------------------------------------------------

    async def connect(self, timeout: float | None = None) -> None:
        """Open a connection and handshake; returns when subscribed, authorized and holding a job.
        Raises HandshakeError (refused, bad reply, timeout) or OSError (cannot connect)."""
        loop = asyncio.get_running_loop()
        timeout = self.handshake_timeout if timeout is None else timeout
        host, port = self._target
        if self._conn is not None:
            self._conn.close()
        # The handshake goes out from connection_made (like firmware, at once), and the session state
        # is reset there too: a pool may talk first, before create_connection returns to us.
        handshake = self._handshake = loop.create_future()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: _Link(self, self.max_line), host, port), timeout
            )
        except TimeoutError:
            handshake.cancel()
            raise HandshakeError(f"connect to {host}:{port} timed out") from None
        except BaseException:
            handshake.cancel()
            raise
        try:
            await asyncio.wait_for(asyncio.shield(handshake), timeout)
        except TimeoutError:
            handshake.cancel()
            conn.close()
            raise HandshakeError(f"handshake timed out waiting for {sorted(self._waiting_for)}") from None
        except BaseException:
            handshake.cancel()
            conn.close()
            raise

    async def start(self) -> SimulatedASIC:
        """Connect (unless connected), then mine in the background until the bounds or `stop()`."""
        loop = asyncio.get_running_loop()
        if self._done is None:
            self._done = loop.create_future()
        if not self.connected:
            try:
                await self.connect()
            except BaseException:
                self._finish()
                raise
        self.started_at = loop.time()
        if self.duration is not None:
            self._deadline = self.started_at + self.duration
            self._bound_timer = loop.call_at(self._deadline, self._on_deadline)
        self._mining = True
        self._next_at = loop.time() + self._rng.random() / self.rate
        self._resume()
        if self._supervisor is None:
            self._supervisor = asyncio.create_task(self._supervise())
        return self

    async def wait(self, timeout: float | None = None) -> None:
        """Until mining ended (bounds reached, stopped, or the connection was lost for good)."""
        if self._done is None:
            raise RuntimeError("not started")
        await asyncio.wait_for(asyncio.shield(self._done), timeout)

    async def stop(self, *, drain: bool = True) -> None:
        """Stop mining and close the connection. With drain, the replies still owed are awaited first
        (at most `drain_timeout`), so that both ends agree on every share that was sent."""
        self._stopping = True
        self._finish()
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            supervisor.cancel()
        conn = self._conn
        if conn is not None:
            if drain:
                self._close_when_drained()
            else:
                conn.close()
            # asyncio.wait neither raises the awaited thing's errors nor swallows our own cancellation.
            await asyncio.wait([conn.closed], timeout=self.drain_timeout + 2.0)
            if conn.transport is not None:
                conn.transport.abort()
        if supervisor is not None:
            await asyncio.wait([supervisor], timeout=5.0)
        if self._conn is not None and self._conn is not conn:  # opened by a reconnect racing the stop
            self._conn.close()

    async def run(self, timeout: float | None = None) -> SimulatedASIC:
        """start, wait (at most `timeout`), stop."""
        try:
            await self.start()
            await self.wait(timeout)
        finally:
            await self.stop()
        return self

    async def __aenter__(self) -> SimulatedASIC:
        await self.connect()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    @property
    def done(self) -> bool:
        return self._done is not None and self._done.done()

    @property
    def mining(self) -> bool:
        return self._mining

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def job(self) -> Job | None:
        """The job being mined (the newest one notified)."""
        return self._work.job if self._work is not None else None

    @property
    def jobs(self) -> dict[str, Job]:
        """Jobs this session still holds (older ones end with a clean_jobs notify), oldest first."""
        return {job_id: work.job for job_id, work in self._works.items()}

    async def _supervise(self) -> None:
        """Reconnect when the connection is lost while mining (bounded), like real firmware."""
        while True:
            conn = self._conn
            if conn is not None:
                await asyncio.shield(conn.closed)  # shielded: cancelling us must not cancel it
            if self._stopping or self.done:
                return
            if not self.reconnect or self.reconnects >= self.max_reconnects:
                self.errors.append("connection lost; not reconnecting")
                self._finish()
                return
            self.reconnects += 1
            wait, self._reconnect_wait = self._reconnect_wait, 0.0
            await asyncio.sleep(wait + self.reconnect_delay * (1 + self._rng.random()))
            if self._stopping or self.done:
                return
            try:
                await self.connect()
            except (OSError, HandshakeError) as exc:
                self.errors.append(f"reconnect: {exc}")
                self._conn = None
                continue
            if self._stopping:
                return
            self._resume()

    # --- the session ----------------------------------------------------------------------------------

    def _on_connected(self, conn: _Link) -> None:
        self._reset_session(conn)
        self._send_handshake()

    def _reset_session(self, conn: _Link) -> None:
        self._conn = conn  # a new PoolConnection: fresh ids, nothing pending
        self.connected = True
        self.ready = False
        self.extranonce1 = None
        self.extranonce2_size = 0
        self.version_mask = 0
        self.difficulty = 1.0
        self.authorized = False
        self._works.clear()
        self._work = None
        self._early.clear()
        self._in_flight = 0
        self._owed = 0
        self._out.clear()
        self._paused = False
        self._draining = None

    def _link(self) -> PoolConnection:
        if self._conn is None:
            raise ConnectionResetError("not connected")
        return self._conn.connection

    def _request(self, method: str, params: list[Any], handler: Callable[[Reply], None]) -> bytes:
        return self._link().send_request(method, params, handler)[1]

    def _send_handshake(self) -> None:
        profile = self.profile
        self._waiting_for = {"subscribe", "authorize", "job"}
        lines = []
        for method in profile.handshake:
            if method == "mining.subscribe":
                lines.append(self._request(method, [profile.user_agent], self._on_subscribe))
            elif method == "mining.authorize":
                lines.append(self._request(method, [self.worker, self.password], self._on_authorize))
            elif method == "mining.configure":
                self._waiting_for.add("configure")
                options: dict[str, Any] = {"version-rolling.mask": profile.configure_mask}
                if profile.min_bit_count is not None:
                    options["version-rolling.min-bit-count"] = profile.min_bit_count
                lines.append(self._request(method, [["version-rolling"], options], self._on_configure))
            elif method == "mining.suggest_difficulty":
                lines.append(self._request(method, [profile.suggest_difficulty], _ignore))
            else:
                lines.append(self._request(method, [], _ignore))
        self._write(b"".join(lines))  # pipelined, like firmware: no waiting between requests

    def _handshake_step(self, step: str) -> None:
        self._waiting_for.discard(step)
        if not self._waiting_for and self._handshake is not None and not self._handshake.done():
            self.ready = True
            self._handshake.set_result(None)

    def _handshake_failed(self, message: str, error: StratumError | None = None) -> None:
        self.errors.append(message)
        handshake = self._handshake
        if handshake is not None and not handshake.done():
            handshake.set_exception(HandshakeError(message, error))
            handshake.exception()  # retrieved: nobody may be waiting any more (a timed-out connect)

    def _on_subscribe(self, reply: Reply) -> None:
        failure = reply.failure()
        result = subscribe_result(reply.value()) if failure is None else None
        if result is None:
            self._handshake_failed(f"subscribe failed: {failure or 'unexpected result'}", failure)
            return
        self.extranonce1 = result.extranonce1
        self.extranonce2_size = result.extranonce2_size
        early, self._early = self._early, []
        for notify, difficulty in early:
            self._add_work(notify, difficulty)
        self._handshake_step("subscribe")

    def _on_configure(self, reply: Reply) -> None:
        result = reply.value() if reply.failure() is None else None
        mask = 0
        if isinstance(result, dict) and result.get("version-rolling") is True:
            raw = result.get("version-rolling.mask")
            requested = int(self.profile.configure_mask, 16)
            if isinstance(raw, str) and raw and len(raw) <= 8:
                try:
                    mask = int(raw, 16) & requested
                except ValueError:
                    mask = 0
        self._set_mask(mask)
        self._handshake_step("configure")

    def _on_authorize(self, reply: Reply) -> None:
        failure = reply.failure()
        if failure is not None or reply.value() is not True:
            self._handshake_failed(f"authorize {self.worker!r} refused: {failure or reply.value()!r}", failure)
            return
        self.authorized = True
        self._handshake_step("authorize")

    def _set_mask(self, mask: int) -> None:
        self.version_mask = mask
        for work in self._works.values():
            work.set_mask(mask)

    def _add_work(self, notify: Notify, difficulty: float) -> None:
        assert self.extranonce1 is not None
        works = self._works
        if notify.clean_jobs:
            self._stale_ids = [*self._stale_ids, *works][-8:]
            works.clear()
        work = _Work(notify, self.extranonce1, self.extranonce2_size, difficulty, self.version_mask, self._en2_next)
        self._en2_next += 1
        works[notify.job_id] = work
        while len(works) > 16:
            del works[next(iter(works))]
        self._work = work
        self._handshake_step("job")

    # --- reading --------------------------------------------------------------------------------------

    def _on_data(self, conn: StratumConnection[PoolConnection], events: Iterator[PoolEvent]) -> None:
        if conn is not self._conn:
            return
        self._batching = True
        try:
            for event in events:
                if type(event) is ReplyReceived:
                    context = event.context
                    if type(context) is SubmitRecord:
                        self._on_submit_reply(context, event.reply)
                    elif context is not None:
                        context(event.reply)
                elif type(event) is Notification:
                    self._on_notification(event.message)
                elif type(event) is not UnmatchedReply:  # a bad or over-long line
                    self.bad_lines += 1
            if self._draining is not None:
                self._check_drained()
            elif self._mining and self.mode == "closed":
                self._pump()
        finally:
            self._batching = False
            if self._out:
                conn.write(b"".join(self._out))
                self._out.clear()

    def _on_submit_reply(self, record: SubmitRecord, reply: Reply) -> None:
        now = time.perf_counter()
        self._owed -= 1
        record.replied_at = now
        self.latencies.append(now - record.sent_at)
        failure = reply.failure()
        if failure is None:
            self.accepted += 1
            self.accepted_difficulty += record.difficulty
            self.accepted_by_worker[record.worker] = self.accepted_by_worker.get(record.worker, 0.0) + record.difficulty
        else:
            record.error = failure
            self.rejected += 1
            self.rejected_by_code[failure.code] = self.rejected_by_code.get(failure.code, 0) + 1
        if record.auto:
            self._in_flight -= 1
            if self._mining and self._in_flight == 0 and self._bounded():
                self._finish()
        if record.future is not None and not record.future.done():
            record.future.set_result(record)

    def _on_notification(self, message: Any) -> None:
        if type(message) is Notify:
            self.notifies += 1
            if self.extranonce1 is None:
                self._early.append((message, self.difficulty))
            else:
                self._add_work(message, self.difficulty)
        elif isinstance(message, SetDifficulty):
            self.difficulty = message.difficulty
        elif isinstance(message, SetExtranonce):
            self.extranonce1 = message.extranonce1
            self.extranonce2_size = message.extranonce2_size
        elif isinstance(message, SetVersionMask):
            if self.profile.configures:
                self._set_mask(message.mask & int(self.profile.configure_mask, 16))
        elif isinstance(message, Reconnect):
            self.reconnect_requests += 1
            self._target = (message.host or self._target[0], message.port or self._target[1])
            self._reconnect_wait = float(min(max(message.wait, 0), 30))
            self._close_when_drained()  # answers owed on this connection still count
        elif isinstance(message, ShowMessage):
            if len(self.messages) < 100:
                self.messages.append(message.message)
        elif isinstance(message, ServerRequest) and message.id is not None:
            if message.method == "client.get_version":
                self._send(encode_result(message.id, self.profile.user_agent))
            elif message.method == "mining.ping":
                self._send(encode_result(message.id, "pong"))
            else:
                self._send(encode_error(message.id, StratumError(ErrorCode.OTHER, "unknown method")))

    def _on_lost(self, conn: StratumConnection[PoolConnection], exc: Exception | None, unanswered: list[Any]) -> None:
        if conn is not self._conn:
            return
        self.connected = False
        error = ConnectionResetError("connection closed")
        for context in unanswered:
            if type(context) is SubmitRecord:
                self.lost += 1
                if context.future is not None and not context.future.done():
                    context.future.set_exception(error)
        self._in_flight = 0
        self._owed = 0
        self.ready = False
        if self._draining is not None:
            self._draining.cancel()
            self._draining = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._handshake is not None and not self._handshake.done():
            self._handshake_failed("connection closed during the handshake")

    def _close_when_drained(self) -> None:
        """Send nothing more on this connection; close it once every submit sent on it is answered
        (or after `drain_timeout`)."""
        conn = self._conn
        if conn is None or self._draining is not None:
            return
        self._paused = True
        if self._owed == 0:
            conn.close()
            return
        self._draining = asyncio.get_running_loop().call_later(self.drain_timeout, conn.close)

    def _check_drained(self) -> None:
        if self._draining is not None and self._owed == 0 and self._conn is not None:
            self._draining.cancel()
            self._conn.close()

    # --- writing --------------------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        if self._conn is None:
            raise ConnectionResetError("not connected")
        self._conn.write(data)

    def _send(self, line: bytes) -> None:
        if self._batching:
            self._out.append(line)
        elif self._conn is not None:
            self._conn.write(line)

    def _submit_line(self, record: SubmitRecord) -> bytes:
        """The submit's line, its reply now awaited under the record's id."""
        params = record.params
        assert params is not None
        fields: list[Any] = [record.worker, params.job_id, params.extranonce2, params.ntime, params.nonce]
        if params.version_bits is not None:
            fields.append(params.version_bits)
        return self._link().send_request("mining.submit", fields, record, request_id=record.request_id)[1]

    def _new_record(
        self,
        kind: str,
        params: ShareParams | None,
        difficulty: float,
        auto: bool,
        worker: str | None = None,
        request_id: Any = None,
    ) -> SubmitRecord:
        if request_id is None:
            request_id = self.profile.submit_id if self.profile.submit_id is not None else self._link().new_id()
        record = SubmitRecord(kind, worker or self.worker, params, difficulty, request_id, auto)
        record.sent_at = time.perf_counter()
        self._owed += 1
        self.submitted += 1
        if self.record_submits:
            self.records.append(record)
        return record

    # --- mining ---------------------------------------------------------------------------------------

    def _version_param(self, vbits: int) -> str | None:
        when = self.profile.version_bits
        if when == "always" or (when == "rolling" and self.version_mask):
            return f"{vbits:08x}"
        return None

    def _valid_share(self, work: _Work) -> ShareParams | None:
        found = work.grind(self.grind_budget)
        if found is None:
            return None
        en2, nonce, vbits = found
        share = ShareParams(work.job_id, en2, work.ntime, nonce, self._version_param(vbits))
        self.last_share = share
        return share

    def _mine_one(self) -> bool:
        """Send the next mined submit; False when the grind budget ran out first."""
        work = self._work
        assert work is not None
        kind = "valid"
        if self.bad_every and (self._mined + 1) % self.bad_every == 0:
            nth = (self._mined + 1) // self.bad_every - 1 + self.bad_offset
            kind = self.bad_kinds[nth % len(self.bad_kinds)]
        if kind == "malformed":
            link = self._link()
            request_id = self.profile.submit_id if self.profile.submit_id is not None else link.new_id()
            record = self._new_record(kind, None, work.difficulty, True, request_id=request_id)
            link.expect(request_id, "mining.submit", record)
            self._send(
                msgspec.json.encode(
                    {"id": request_id, "method": "mining.submit", "params": [self.worker, work.job_id, "ab", 0, 1.5]}
                )
                + b"\n"
            )
        else:
            params, worker = self._bad_share(kind, work) if kind != "valid" else (None, None)
            if params is None:
                kind, worker = "valid", None
                params = self._valid_share(work)
                if params is None:
                    return False
            record = self._new_record(kind, params, work.difficulty, True, worker=worker)
            self._send(self._submit_line(record))
        self._mined += 1
        self._in_flight += 1
        return True

    def _bad_share(self, kind: str, work: _Work) -> tuple[ShareParams | None, str | None]:
        en2, nonce, vbits = work.peek()
        version = self._version_param(vbits)
        if kind == "duplicate":
            last = self.last_share
            return (last, None) if last is not None and last.job_id == work.job_id else (None, None)
        if kind == "low-difficulty":
            if work.difficulty <= _MIN_SHARE_DIFFICULTY:  # every hash meets so tiny a difficulty
                return None, None
            found = work.grind(self.grind_budget, low=True)
            if found is None:  # the difficulty is too tiny for any hash to fall below it
                return None, None
            return ShareParams(work.job_id, found[0], work.ntime, found[1], self._version_param(found[2])), None
        if kind == "stale":
            job_id = self._stale_ids[-1] if self._stale_ids else "stale-job"
            return ShareParams(job_id, en2, work.ntime, nonce, version), None
        if kind == "bad-extranonce2":
            return ShareParams(work.job_id, en2[:-2], work.ntime, nonce, version), None
        if kind == "bad-version":
            return ShareParams(work.job_id, en2, work.ntime, nonce, "40000000"), None
        if kind == "unauthorized":
            return ShareParams(work.job_id, en2, work.ntime, nonce, version), self.worker + "-unauthorized"
        raise ValueError(kind)

    def _bounded(self) -> bool:
        """No more mined shares may be sent."""
        return self._expired or (self.max_shares is not None and self._mined >= self.max_shares)

    def _resume(self) -> None:
        """(Re)start sending after a connect."""
        if not self._mining:
            return
        if self.mode == "closed":
            self._pump()
        else:
            self._tick()

    def _pump(self) -> None:
        """Closed loop: fill the pipeline."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._conn is None or self._work is None or not self.ready or self._paused:
            return
        while self._in_flight < self.pipeline:
            if self._bounded():
                if self._in_flight == 0:
                    self._finish()
                return
            if not self._mine_one():
                self._timer = asyncio.get_running_loop().call_soon(self._pump)
                return

    def _tick(self) -> None:
        """Open loop: one share per 1/rate seconds."""
        self._timer = None
        if not self._mining or self._conn is None or self._work is None or not self.ready or self._paused:
            return
        loop = asyncio.get_running_loop()
        if self._bounded():
            if self._in_flight == 0:
                self._finish()
            return
        now = loop.time()
        if now >= self._next_at:
            if self._in_flight < self.max_in_flight and not self._mine_one():
                self._timer = loop.call_soon(self._tick)
                return
            self._next_at = max(self._next_at + 1 / self.rate, now - 1.0)
        self._timer = loop.call_at(self._next_at, self._tick)

    def _on_deadline(self) -> None:
        self._bound_timer = None
        self._expired = True
        if not self._mining:
            return
        if self._in_flight == 0:
            self._finish()
        else:
            self._bound_timer = asyncio.get_running_loop().call_later(self.drain_timeout, self._finish)

    def _finish(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._bound_timer is not None:
            self._bound_timer.cancel()
            self._bound_timer = None
        if self._mining or (self._done is not None and not self._done.done()):
            self._mining = False
            self.finished_at = asyncio.get_running_loop().time()
        if self._done is not None and not self._done.done():
            self._done.set_result(None)

    # --- for tests: crafted shares --------------------------------------------------------------------

    def find_share(
        self, *, low_difficulty: bool = False, job_id: str | None = None, max_hashes: int = 10_000_000
    ) -> ShareParams:
        """Grind a share on the current job (or `job_id`) that meets its difficulty, or with
        low_difficulty=True one that does not. The cursor advances: the share is fresh."""
        work = self._works.get(job_id) if job_id is not None else self._work
        if work is None:
            raise LookupError("no such job")
        hashed = 0
        while hashed < max_hashes:
            found = work.grind(min(self.grind_budget, max_hashes - hashed), low=low_difficulty)
            if found is not None:
                en2, nonce, vbits = found
                return ShareParams(work.job_id, en2, work.ntime, nonce, self._version_param(vbits))
            hashed += self.grind_budget
        raise RuntimeError(f"no {'low-difficulty ' if low_difficulty else ''}share in {max_hashes} hashes")

    async def submit(
        self,
        job_id: str,
        extranonce2: str,
        ntime: str,
        nonce: str,
        version_bits: str | None = None,
        *,
        worker: str | None = None,
        timeout: float = 10.0,
    ) -> SubmitRecord:
        """Send one mining.submit as given and wait for the verdict."""
        params = ShareParams(job_id, extranonce2, ntime, nonce, version_bits)
        work = self._works.get(job_id)
        record = self._new_record("manual", params, work.difficulty if work is not None else 0.0, False, worker)
        future: asyncio.Future[SubmitRecord] = asyncio.get_running_loop().create_future()
        record.future = future
        self._write(self._submit_line(record))
        return await asyncio.wait_for(future, timeout)

    async def submit_share(
        self, share: ShareParams, *, worker: str | None = None, timeout: float = 10.0
    ) -> SubmitRecord:
        return await self.submit(*share, worker=worker, timeout=timeout)

    async def request(self, method: str, params: list[Any], *, timeout: float = 10.0) -> Reply:
        """Send any request and wait for its reply."""
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._write(self._request(method, params, _resolve(future)))
        return await asyncio.wait_for(future, timeout)

    async def send_raw(self, line: bytes | str, *, wait_reply: bool = True, timeout: float = 10.0) -> Reply | None:
        """Send a line exactly as given (a newline is added if missing). With wait_reply, wait for the
        reply carrying the line's id (null when the line has none or cannot be read)."""
        data = line.encode() if isinstance(line, str) else line
        if not data.endswith(b"\n"):
            data += b"\n"
        if not wait_reply:
            self._write(data)
            return None
        try:
            request_id = msgspec.json.decode(data).get("id")
        except (msgspec.DecodeError, AttributeError):
            request_id = None
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._link().expect(request_id, "", _resolve(future))
        self._write(data)
        return await asyncio.wait_for(future, timeout)


def _ignore(reply: Reply) -> None:
    return None


def _resolve(future: asyncio.Future[Reply]) -> Callable[[Reply], None]:
    def resolve(reply: Reply) -> None:
        if not future.done():
            future.set_result(reply)

    return resolve


# --- fleets ---------------------------------------------------------------------------------------------


def worker_names(hotkeys: Sequence[str], count: int | None = None, *, account: str = "infinite") -> list[str]:
    """`count` worker names spread round-robin over the hotkeys: `account.hotkey.workerN`."""
    if not hotkeys:
        raise ValueError("no hotkeys")
    count = len(hotkeys) if count is None else count
    return [f"{account}.{hotkeys[i % len(hotkeys)]}.worker{i // len(hotkeys)}" for i in range(count)]


def quantile(values: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) of the values, nearest rank; nan when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


class Fleet:
    """N simulated ASICs started, waited for and stopped together, with aggregate statistics."""

    def __init__(
        self,
        host: str,
        port: int,
        workers: Sequence[str],
        *,
        profiles: Sequence[Profile] = ("bitaxe",),
        connect_concurrency: int = 256,
        **asic_options: Any,
    ) -> None:
        """One ASIC per worker name; profiles are assigned round-robin; `asic_options` go to every
        SimulatedASIC (mode, pipeline, rate, max_shares, duration, bad_every, ...)."""
        if not profiles:
            raise ValueError("no profiles")
        seed = asic_options.pop("seed", 0)
        offset = asic_options.pop("bad_offset", 0)
        self.asics = [
            SimulatedASIC(
                host,
                port,
                worker,
                profile=profiles[i % len(profiles)],
                seed=None if seed is None else seed + i,
                bad_offset=offset + i,
                **asic_options,
            )
            for i, worker in enumerate(workers)
        ]
        self.connect_concurrency = max(1, connect_concurrency)
        self.failed: list[tuple[SimulatedASIC, BaseException]] = []
        self.started_at: float | None = None
        self.finished_at: float | None = None

    @classmethod
    def for_hotkeys(
        cls,
        host: str,
        port: int,
        hotkeys: Sequence[str],
        asics: int | None = None,
        *,
        account: str = "infinite",
        **options: Any,
    ) -> Fleet:
        """`asics` devices (default one per hotkey) spread round-robin over the hotkeys."""
        return cls(host, port, worker_names(hotkeys, asics, account=account), **options)

    async def start(self, *, require_all: bool = True) -> Fleet:
        """Connect every ASIC and start mining. With require_all, one failure stops the fleet and
        raises it; otherwise failures are kept in `failed` and the rest mine."""
        semaphore = asyncio.Semaphore(self.connect_concurrency)

        async def start_one(asic: SimulatedASIC) -> None:
            async with semaphore:
                await asic.start()

        self.started_at = asyncio.get_running_loop().time()
        results = await asyncio.gather(*(start_one(asic) for asic in self.asics), return_exceptions=True)
        self.failed = [(a, r) for a, r in zip(self.asics, results, strict=True) if isinstance(r, BaseException)]
        for asic, _ in self.failed:
            await asic.stop()
        if self.failed and require_all:
            await self.stop()
            raise self.failed[0][1]
        return self

    async def wait(self, timeout: float | None = None) -> None:
        """Until every running ASIC reached its bounds (raises TimeoutError after `timeout`)."""
        failed = {id(a) for a, _ in self.failed}
        running = [asic.wait() for asic in self.asics if id(asic) not in failed]
        await asyncio.wait_for(asyncio.gather(*running), timeout)
        self.finished_at = asyncio.get_running_loop().time()

    async def stop(self) -> None:
        await asyncio.gather(*(asic.stop() for asic in self.asics))
        if self.finished_at is None:
            self.finished_at = asyncio.get_running_loop().time()

    async def run(self, timeout: float | None = None) -> Fleet:
        """start, wait, stop."""
        try:
            await self.start()
            await self.wait(timeout)
        finally:
            await self.stop()
        return self

    async def __aenter__(self) -> Fleet:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # --- statistics ---------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.asics)

    @property
    def submitted(self) -> int:
        return sum(a.submitted for a in self.asics)

    @property
    def accepted(self) -> int:
        return sum(a.accepted for a in self.asics)

    @property
    def rejected(self) -> int:
        return sum(a.rejected for a in self.asics)

    @property
    def lost(self) -> int:
        return sum(a.lost for a in self.asics)

    @property
    def accepted_difficulty(self) -> float:
        return sum(a.accepted_difficulty for a in self.asics)

    def accepted_by_worker(self) -> dict[str, float]:
        totals: dict[str, float] = {}
        for asic in self.asics:
            for worker, difficulty in asic.accepted_by_worker.items():
                totals[worker] = totals.get(worker, 0.0) + difficulty
        return totals

    def accepted_by_hotkey(self) -> dict[str, float]:
        totals: dict[str, float] = {}
        for worker, difficulty in self.accepted_by_worker().items():
            hotkey = hotkey_of(worker)
            totals[hotkey] = totals.get(hotkey, 0.0) + difficulty
        return totals

    def rejected_by_code(self) -> dict[int, int]:
        totals: dict[int, int] = {}
        for asic in self.asics:
            for code, count in asic.rejected_by_code.items():
                totals[code] = totals.get(code, 0) + count
        return totals

    def records(self) -> list[SubmitRecord]:
        return [record for asic in self.asics for record in asic.records]

    def latencies(self) -> list[float]:
        return [latency for asic in self.asics for latency in asic.latencies]

    @property
    def elapsed(self) -> float:
        """Seconds from start to the end of mining (or to now while running)."""
        if self.started_at is None:
            return 0.0
        end = self.finished_at if self.finished_at is not None else asyncio.get_running_loop().time()
        return end - self.started_at

    def summary(self) -> dict[str, float]:
        """Totals, throughput (replied shares/s) and latency quantiles (seconds)."""
        latencies = self.latencies()
        elapsed = self.elapsed
        return {
            "asics": float(len(self.asics)),
            "failed": float(len(self.failed)),
            "submitted": float(self.submitted),
            "accepted": float(self.accepted),
            "rejected": float(self.rejected),
            "lost": float(self.lost),
            "accepted_difficulty": self.accepted_difficulty,
            "elapsed": elapsed,
            "shares_per_second": len(latencies) / elapsed if elapsed > 0 else 0.0,
            "latency_p50": quantile(latencies, 0.50),
            "latency_p99": quantile(latencies, 0.99),
        }
