"""The benchmark's load generator: N Stratum V1 sessions in one process, quiet enough to measure.

    python -m benchmarks.loadgen [--hotkeys 64] [--en2 fresh|reused] [--cpus 0]

Driven by JSON commands on stdin, one answer per line on stdout:
    {"op": "connect", "port": P, "sessions": N, "offset": K}  handshake N sessions (bounded concurrency)
    {"op": "run", "mode": "closed"|"rate", "duration": S, "rate": R[, "watch": true]}
        -> {"started": ...} at once, then the counts and a latency histogram; with "watch", also
           every session's mining.notify arrival times (time.monotonic(), the clock every process
           of the machine shares) and how many sessions closed or were told to reconnect
    {"op": "close"}                                            close every session
    {"op": "exit"} (or EOF)

Why not `simulation.SimulatedASIC`: it is a faithful device (it grinds, keeps work per job, follows
every protocol turn) and costs ~30 µs of Python per share, with timers and tasks per device; at
thousands of shares per second the generator then queued its own work and reported a direct-path
p99 of 15 ms where the pool answers in a fraction of a millisecond. Here a session is one
`asyncio.Protocol` and a share is one `bytes % tuple` of a line template built once per job:

- handshake as an Antminer does (mining.configure with version rolling, subscribe, authorize
  `infinite.<valid SS58 hotkey>.w<index>`), pipelined in one write;
- the pool difficulty is 2**-33, below the difficulty of the worst possible hash, so every header
  is a valid share: a session takes the next unused (extranonce2, nonce, version bits) of its
  cursor and submits it without hashing (--en2 fresh: a new extranonce2 per share, as a real ASIC
  at pool difficulty has; --en2 reused: the same extranonce2, the nonce moves);
- closed loop: each session keeps one submit in flight and sends the next one from the reply's
  `data_received`; fixed rate (open loop): one timer per process walks a schedule (share k is due
  at t0 + k / rate, so a late tick catches up instead of drifting) and sends the shares due,
  round-robin over the sessions, whatever is in flight; it sleeps at least 1 ms between ticks (a
  shorter sleep spins the loop and starves the pool on the shared core);
- latency: `time.perf_counter_ns()` just before the write and once per `data_received` (the
  moment the reply was read); the schedule's lateness (send − due) is reported on its own, so the
  generator's own delay is visible and never counted as the proxy's;
- farm mode (`--mode aggregate`) needs nothing else: the session mines what the proxy told it
  (its extranonce1 prefix, its smaller extranonce2 size, jobs whose coinbase already holds the
  pool's extranonce1), as any Stratum client does;
- `--cpus` pins the process (os.sched_setaffinity) so the orchestrator can keep the load off the
  proxy's core.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import time
from typing import Any, cast

import msgspec

from benchmarks.common import HOST, bucket_of, commands, pin_self, raise_fd_limit, reply
from simulation.hotkeys import hotkeys

CONNECT_TIMEOUT = 20.0  # per session handshake
_decode = msgspec.json.Decoder().decode
_SUBMIT_ID0 = 100  # submit ids start here; the handshake uses 1..4
VERSION_MASK = 0x1FFFE000
WATCHED_NOTIFIES = 32  # arrival times kept per session in a watched window
MIN_TICK = 0.001  # seconds: the shortest sleep of the fixed-rate schedule (libuv's timer resolution)


class Session(asyncio.Protocol):
    """One ASIC connection: handshake, then submits built from a per-job template."""

    def __init__(self, gen: Generator, worker: str, fresh_en2: bool) -> None:
        self.gen = gen
        self.worker = worker
        self.fresh_en2 = fresh_en2
        self.transport: asyncio.Transport | None = None
        self._buffer = b""
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.authorized = False
        self.en2_size = 4
        self.mask = 0
        self._shift = 0
        self.job_id: str | None = None
        self.template = b""
        self.cursor = 0
        self.next_id = _SUBMIT_ID0
        self.sent: dict[int, int] = {}  # submit id → perf_counter_ns at send
        self.accepted = 0
        self.rejected = 0
        self.closed = False
        self.notified: list[float] = []  # mining.notify arrivals (time.monotonic) in a watched window
        self.reconnect_requests = 0

    # -- the connection ----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses
        self.transport.write(
            b'{"id":1,"method":"mining.configure","params":[["version-rolling"],'
            b'{"version-rolling.mask":"1fffe000","version-rolling.min-bit-count":2}]}\n'
            b'{"id":2,"method":"mining.subscribe","params":["bench/1.0"]}\n'
            + b'{"id":3,"method":"mining.authorize","params":["%s","x"]}\n'
            % self.worker.encode()
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"closed during the handshake: {exc}"))
        self.gen.lost += len(self.sent)
        self.sent.clear()

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter_ns()
        if self._buffer:
            data = self._buffer + data
        lines = data.split(b"\n")
        self._buffer = lines.pop()
        gen = self.gen
        for line in lines:
            if not line:
                continue
            message = _decode(line)
            rid = message.get("id")
            if rid is not None and rid >= _SUBMIT_ID0 and "method" not in message:
                sent = self.sent.pop(rid, None)
                if sent is None:
                    continue
                gen.latencies.append(now - sent)
                if message.get("result") is True:
                    self.accepted += 1
                else:
                    self.rejected += 1
                    code = str((message.get("error") or ["?"])[0])
                    gen.rejected_by_code[code] = gen.rejected_by_code.get(code, 0) + 1
                if gen.closed_loop and gen.mining:
                    self.submit()
            else:
                self._control(message)

    def _control(self, message: dict[str, Any]) -> None:
        method = message.get("method")
        if method == "mining.notify":
            if self.gen.watching and len(self.notified) < WATCHED_NOTIFIES:
                self.notified.append(time.monotonic())
            params = message["params"]
            self.job_id = params[0]
            ntime = params[7]
            width = 2 * self.en2_size
            # The only per-share work left is `template % (id, extranonce2, nonce, version bits)`.
            self.template = (
                b'{"id":%%d,"method":"mining.submit","params":["%s","%s","%%0%dx","%s","%%08x","%%08x"]}\n'
                % (self.worker.encode(), str(self.job_id).encode(), width, str(ntime).encode())
            )
            if self.authorized and not self.ready.done():
                self.ready.set_result(None)
        elif method is None:
            rid = message.get("id")
            result = message.get("result")
            if rid == 1 and isinstance(result, dict):
                mask = result.get("version-rolling.mask")
                if result.get("version-rolling") and isinstance(mask, str):
                    self.mask = int(mask, 16)
                    self._shift = (self.mask & -self.mask).bit_length() - 1 if self.mask else 0
            elif rid == 2 and isinstance(result, list):
                self.en2_size = int(result[2])
            elif rid == 3:
                if result is not True:
                    if not self.ready.done():
                        self.ready.set_exception(ConnectionError(f"authorize refused: {message.get('error')}"))
                    return
                self.authorized = True
                if self.template and not self.ready.done():
                    self.ready.set_result(None)
        elif method == "client.reconnect":
            self.reconnect_requests += 1  # counted, not followed: a reconnect is what farm mode avoids
        elif method == "mining.set_extranonce":
            self.en2_size = int(message["params"][1])
        # mining.set_difficulty and the rest: every hash meets 2**-33, nothing to do

    # -- shares --------------------------------------------------------------------------------------

    def submit(self) -> None:
        transport = self.transport
        if transport is None or self.closed:
            return
        n = self.cursor
        self.cursor = n + 1
        if self.fresh_en2:
            en2 = n & ((1 << (8 * self.en2_size)) - 1)
            nonce = (n * 2654435761) & 0xFFFFFFFF
        else:
            en2, nonce = 0, n & 0xFFFFFFFF
        vbits = (n << self._shift) & self.mask
        rid = self.next_id
        self.next_id = rid + 1
        line = self.template % (rid, en2, nonce, vbits)
        self.sent[rid] = time.perf_counter_ns()
        transport.write(line)
        self.gen.submitted += 1


class Generator:
    def __init__(self, args: argparse.Namespace) -> None:
        self.keys = hotkeys(args.hotkeys, namespace="benchmark")
        self.fresh = args.en2 == "fresh"
        self.sessions: list[Session] = []
        self.latencies = array.array("q")
        self.lateness = array.array("q")
        self.rejected_by_code: dict[str, int] = {}
        self.submitted = 0
        self.lost = 0
        self.mining = False
        self.closed_loop = True
        self.watching = False

    async def connect(self, port: int, sessions: int, offset: int, concurrency: int, timeout: float) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        semaphore = asyncio.Semaphore(concurrency)
        errors: list[str] = []

        async def one(index: int) -> Session | None:
            async with semaphore:
                worker = f"infinite.{self.keys[index % len(self.keys)]}.w{index}"
                session: Session | None = None
                try:
                    _, made = await asyncio.wait_for(
                        loop.create_connection(lambda: Session(self, worker, self.fresh), HOST, port), CONNECT_TIMEOUT
                    )
                    session = made
                    await asyncio.wait_for(asyncio.shield(made.ready), CONNECT_TIMEOUT)
                except (OSError, Exception) as exc:  # counted and reported, never fatal here
                    if len(errors) < 5:
                        errors.append(f"{type(exc).__name__}: {exc}")
                    if session is not None and session.transport is not None:
                        session.transport.abort()
                    return None
                return session

        tasks = [asyncio.ensure_future(one(offset + i)) for i in range(sessions)]
        done, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        connected = [t.result() for t in done if not t.cancelled() and t.exception() is None]
        self.sessions = [s for s in connected if s is not None]
        return {
            "connected": len(self.sessions),
            "failed": sessions - len(self.sessions),
            "seconds": time.perf_counter() - started,
            "errors": errors,
        }

    async def run(self, mode: str, duration: float, rate: float, watch: bool = False) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        sessions = [s for s in self.sessions if not s.closed]
        for s in sessions:
            s.notified = []
        reconnects_before = sum(s.reconnect_requests for s in sessions)
        self.watching = watch
        self.latencies = array.array("q")
        self.lateness = array.array("q")
        self.rejected_by_code = {}
        before = (self.submitted, self.lost, sum(s.accepted for s in sessions), sum(s.rejected for s in sessions))
        self.closed_loop = mode == "closed"
        self.mining = True
        reply({"started": time.time()})
        started = time.perf_counter()
        deadline = loop.time() + duration
        if self.closed_loop:
            for s in sessions:
                s.submit()
            await asyncio.sleep(duration)
        elif sessions and rate > 0:
            await self._paced(sessions, rate, duration)
        self.mining = False
        self.watching = False
        mined = time.perf_counter() - started
        # Drain: the replies still owed (bounded).
        drain_until = loop.time() + 10.0
        while any(s.sent for s in sessions) and loop.time() < drain_until:
            await asyncio.sleep(0.01)
        elapsed = time.perf_counter() - started
        del deadline
        latencies = self.latencies
        counts: dict[int, int] = {}
        for value in latencies:
            b = bucket_of(value * 1e-9)
            counts[b] = counts.get(b, 0) + 1
        late: dict[int, int] = {}
        for value in self.lateness:
            b = bucket_of(max(value, 0) * 1e-9)
            late[b] = late.get(b, 0) + 1
        unanswered = sum(len(s.sent) for s in sessions)
        for s in sessions:
            s.sent.clear()  # answered after the drain: not this window's
        watched: dict[str, Any] = {}
        if watch:
            watched = {
                "notified": [s.notified for s in sessions],
                "closed_sessions": sum(s.closed for s in sessions),
                "reconnect_requests": sum(s.reconnect_requests for s in sessions) - reconnects_before,
            }
        return {
            **watched,
            "done": True,
            "elapsed": elapsed,
            "mined_s": mined,
            "submitted": self.submitted - before[0],
            "accepted": sum(s.accepted for s in sessions) - before[2],
            "rejected": sum(s.rejected for s in sessions) - before[3],
            "lost": self.lost - before[1] + unanswered,
            "replied": len(latencies),
            "unfinished": unanswered,
            "latency_hist": counts,
            "latency_max": (max(latencies) * 1e-9) if latencies else 0.0,
            "lateness_hist": late,
            "lateness_max": (max(self.lateness) * 1e-9) if self.lateness else 0.0,
            "rejected_by_code": self.rejected_by_code,
        }

    async def _paced(self, sessions: list[Session], rate: float, duration: float) -> None:
        """Open loop on a schedule: share k is due at t0 + k/rate; each tick sends every share due."""
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        total = int(rate * duration)
        period_ns = 1e9 / rate
        t0 = time.perf_counter_ns()
        state = {"k": 0, "i": 0}
        count = len(sessions)
        lateness = self.lateness

        def tick() -> None:
            now = time.perf_counter_ns()
            k, i = state["k"], state["i"]
            due = min(total, int((now - t0) / period_ns) + 1)
            while k < due:
                lateness.append(now - t0 - int(k * period_ns))
                sessions[i].submit()
                i = i + 1 if i + 1 < count else 0
                k += 1
            state["k"], state["i"] = k, i
            if k >= total:
                done.set_result(None)
                return
            # Sleep until the next share is due, but never less than libuv's 1 ms timer resolution:
            # a shorter delay rounds to 0 and the loop spins, taking the core the pool shares with
            # this process (that spin was the direct path's 3-5 ms p99). A tick sends all shares due.
            wait = (t0 + k * period_ns - time.perf_counter_ns()) * 1e-9
            loop.call_later(max(MIN_TICK, wait), tick)

        tick()
        await asyncio.wait_for(done, duration + 10.0)

    async def close(self) -> dict[str, Any]:
        started = time.perf_counter()
        for s in self.sessions:
            if s.transport is not None:
                s.transport.close()
        until = time.monotonic() + 30
        while any(not s.closed for s in self.sessions) and time.monotonic() < until:
            await asyncio.sleep(0.02)
        n, self.sessions = len(self.sessions), []
        return {"closed": n, "seconds": time.perf_counter() - started}


async def serve(args: argparse.Namespace) -> None:
    generator = Generator(args)
    inbox = await commands()
    reply({"ready": True, "fd_limit": raise_fd_limit()})
    while True:
        command = await inbox.get()
        op = command.get("op")
        try:
            if op == "exit":
                break
            if op == "connect":
                reply(
                    await generator.connect(
                        int(command["port"]),
                        int(command["sessions"]),
                        int(command.get("offset", 0)),
                        int(command.get("concurrency", 200)),
                        float(command.get("timeout", 120.0)),
                    )
                )
            elif op == "run":
                reply(
                    await generator.run(
                        str(command["mode"]),
                        float(command["duration"]),
                        float(command.get("rate", 1.0)),
                        bool(command.get("watch", False)),
                    )
                )
            elif op == "close":
                reply(await generator.close())
            else:
                reply({"error": f"unknown op {op!r}"})
        except Exception as exc:
            reply({"error": f"{op}: {type(exc).__name__}: {exc}"})
    if generator.sessions:
        await generator.close()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.loadgen", description=__doc__)
    parser.add_argument("--hotkeys", type=int, default=64, help="distinct hotkeys the workers use")
    parser.add_argument("--en2", choices=("fresh", "reused"), default="fresh")
    parser.add_argument("--cpus", default="", help="CPUs to pin to, comma-separated (default: not pinned)")
    args = parser.parse_args()
    pin_self(args.cpus)
    raise_fd_limit()
    import uvloop

    uvloop.run(serve(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
