"""`--workers N`: N proxy processes on one Stratum port, under a small supervisor (the parent).

Why processes: one proxy is one event loop on one core; hashing every share and parsing every line
is CPU work. With a ClickHouse server as the ledger the processes share nothing but the port:

* Each worker binds the listen port with SO_REUSEPORT and the kernel spreads new connections over
  them (by a hash of the 4-tuple), so an ASIC stays with one worker for its whole session.
* Worker k is proxy `<proxy-id>-k` in the ledger (shares, jobs and coverage rows never collide),
  spools to `<spool-dir>/worker-k` (its crash journal is `<spool-dir>/worker-k/journal`, replayed
  by the same k when it restarts), and serves /metrics, /healthz, /readyz and the API on the metrics
  port + k (port 0: each its own free port, logged). Every worker answers the API alike: the API
  reads the shared ledger. Prometheus scrapes N targets, one per worker; no multiprocess mode.
* The parent binds nothing but a placeholder on the port (bound, never listening: it keeps the
  port ours while a worker restarts, and fixes the port when 0 was asked for), applies the schema
  migrations once before the workers start, and writes to ClickHouse what spools and journals of
  an earlier layout left (a one-process run, or workers k >= N).

Lifecycle, as uvicorn's multiprocess supervisor: SIGTERM or SIGINT to the parent is forwarded to
every worker (each then shuts down gracefully, waiting `shutdown_grace` for in-flight shares) and
the parent waits for them. A worker that dies is restarted after a backoff; one that dies
`MAX_START_FAILURES` times in a row before it was ready makes the parent stop the others and exit 2.
A worker whose parent is gone (SIGKILLed) shuts itself down within a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import multiprocessing
import os
import signal
import socket
import sys
import time
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType

from ledger.logs import parse_level, setup_logging
from ledger.target import LedgerTarget
from proxy.app import ProxyApp, run
from proxy.cli import EXIT_STARTUP, DirectoryLock, StartupError, check_ports, prepare_cluster
from proxy.config import ProxyConfig, parse_host_port

log = logging.getLogger("proxy.supervisor")

MAX_START_FAILURES = 5  # deaths in a row before ready: the parent gives up (exit 2)
RESTART_DELAY = 0.25  # seconds before the first restart; doubles per death in a row
MAX_RESTART_DELAY = 10.0
STABLE_AFTER = 60.0  # seconds a worker must live for its next death to restart without backoff
STOP_MARGIN = 30.0  # seconds past shutdown_grace a worker gets to flush its ledger before SIGKILL


def worker_dir(config: ProxyConfig, index: int) -> Path:
    return config.ledger_spool_dir / f"worker-{index}"


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def worker_config(config: ProxyConfig, index: int, listen_port: int) -> ProxyConfig:
    """Worker `index`'s config: its proxy id, spool and metrics port; the listen port the parent fixed."""
    host, _ = parse_host_port(config.listen, "listen")
    metrics_host, metrics_port = parse_host_port(config.metrics, "metrics")
    return dataclasses.replace(
        config,
        proxy_id=f"{config.proxy_id}-{index}",
        spool_dir=worker_dir(config, index),
        listen=_address(host, listen_port),
        metrics=_address(metrics_host, metrics_port + index if metrics_port else 0),
    )


# -- the worker process ---------------------------------------------------------------------------


class _WorkerName(logging.Filter):
    """`worker-1/proxy.ledger: ...`: the logger name says which worker wrote the line."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.prefix = f"worker-{index}/"

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self.prefix):
            record.name = self.prefix + record.name
        return True


def worker_main(config: ProxyConfig, index: int, parent_pid: int, ready: Connection) -> None:
    """A worker's whole life (the target of the spawned process)."""
    handler = setup_logging(parse_level(config.log_level), config.log_format)
    handler.addFilter(_WorkerName(index))

    def started(app: ProxyApp) -> None:
        ready.send((app.port, app.http_port))
        ready.close()

    lock = DirectoryLock(config.ledger_spool_dir)
    try:
        lock.acquire()
        run(config, started=started, parent_pid=parent_pid)
    except (StartupError, OSError) as exc:  # its directory, its bind: the supervisor counts it and retries
        log.error("cannot start: %s", exc)
        sys.exit(EXIT_STARTUP)
    finally:
        lock.release()


# -- the parent -----------------------------------------------------------------------------------


@dataclasses.dataclass
class _Slot:
    index: int
    config: ProxyConfig
    process: BaseProcess | None = None
    ready: Connection | None = None  # the worker sends (listen port, metrics port) once it serves
    is_ready: bool = False
    started_at: float = 0.0
    start_failures: int = 0  # deaths in a row before it was ready
    deaths: int = 0  # deaths in a row, each within STABLE_AFTER of its start: the backoff
    restart_at: float | None = None


class Supervisor:
    """Starts `config.workers` workers and keeps them running until SIGTERM/SIGINT; `run()` → exit status."""

    def __init__(self, config: ProxyConfig, target: LedgerTarget) -> None:
        self.config = config
        self.target = target
        self._context = multiprocessing.get_context("spawn")  # a fresh interpreter: no inherited loop or locks
        self._slots: list[_Slot] = []
        self._placeholders: list[socket.socket] = []
        self._signals: list[int] = []
        self._stopping = False
        self._gave_up: str | None = None
        self._unclean = False  # a worker did not exit 0 while stopping

    # -- start-up ---------------------------------------------------------------------------------

    def _check_ports(self) -> None:
        """The listen port and every worker's metrics port are free (as a one-process proxy checks)."""
        host, port = parse_host_port(self.config.metrics, "metrics")
        for index in range(self.config.workers if port else 1):
            metrics = _address(host, port + index if port else 0)
            check_ports(dataclasses.replace(self.config, metrics=metrics))

    def _hold_port(self) -> int:
        """Bind (never listen) an SO_REUSEPORT placeholder on the listen address: the port stays ours
        between worker restarts, and a port 0 becomes one port for every worker."""
        host, port = parse_host_port(self.config.listen, "listen")
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        for family, kind, proto, _, address in infos:
            holder = socket.socket(family, kind, proto)
            holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            try:
                holder.bind((address[0], port, *address[2:]))
            except OSError as exc:
                holder.close()
                raise StartupError(f"--listen {self.config.listen}: {os.strerror(exc.errno or 0).lower()}") from None
            self._placeholders.append(holder)
            port = holder.getsockname()[1]
        return port

    def _prepare_ledger(self) -> None:
        """Migrations once, here, rather than N workers racing through them; then what an earlier
        layout left in spools and journals. ClickHouse down: the workers migrate when it is back."""
        if self.config.clickhouse_cluster is not None:
            prepare_cluster(self.config, self.target)
        from ledger.schema import apply_migrations

        try:
            client = self.target.connect()
            try:
                applied = apply_migrations(client, self.target.database, self.config.ttl_days)
            finally:
                client.close()
        except Exception as exc:
            log.warning(
                "ledger: ClickHouse not ready at start (%s); the workers apply the schema and spool meanwhile",
                self.target.scrub(exc)[:300],
            )
            return
        log.info("ledger: schema up to date in database %s (applied now: %s)", self.target.database, applied or "none")
        write_leftovers(self.config, self.target, own_spool=True)

    # -- the loop ---------------------------------------------------------------------------------

    def _spawn(self, slot: _Slot) -> None:
        receive, send = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=worker_main,
            args=(slot.config, slot.index, os.getpid(), send),
            name=f"ih-proxy-worker-{slot.index}",
            daemon=False,  # a worker shuts down on its own when the parent is gone (app._parent_gone)
        )
        process.start()
        send.close()  # the worker holds the only write end: EOF when it dies
        slot.process, slot.ready, slot.is_ready = process, receive, False
        slot.started_at, slot.restart_at = time.monotonic(), None
        log.info("worker %d started (pid %s, proxy id %s)", slot.index, process.pid, slot.config.proxy_id)

    def _on_ready(self, slot: _Slot) -> None:
        assert slot.ready is not None
        try:
            listen_port, metrics_port = slot.ready.recv()
        except (EOFError, OSError):  # died before it served: its sentinel tells the rest
            pass
        else:
            slot.is_ready, slot.start_failures = True, 0
            host, _ = parse_host_port(slot.config.metrics, "metrics")
            log.info(
                "worker %d ready (pid %s, proxy id %s): ASICs on port %d, metrics and API on %s",
                slot.index,
                slot.process.pid if slot.process else "?",
                slot.config.proxy_id,
                listen_port,
                _address(host, metrics_port),
            )
        slot.ready.close()
        slot.ready = None

    def _on_exit(self, slot: _Slot) -> None:
        process = slot.process
        assert process is not None
        process.join()
        code = process.exitcode
        slot.process = None
        if slot.ready is not None:
            slot.ready.close()
            slot.ready = None
        if self._stopping:
            # SIGTERM before its handlers were up: it had served nobody yet, and its journal has the rest.
            clean = code == 0 or (code == -signal.SIGTERM and not slot.is_ready)
            log.log(logging.INFO if clean else logging.WARNING, "worker %d stopped (exit status %s)", slot.index, code)
            self._unclean = self._unclean or not clean
            return
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit status {code}"
        lived = time.monotonic() - slot.started_at
        slot.deaths = slot.deaths + 1 if lived < STABLE_AFTER else 1
        if not slot.is_ready:
            slot.start_failures += 1
            if slot.start_failures >= MAX_START_FAILURES:
                self._gave_up = (
                    f"worker {slot.index} died {slot.start_failures} times in a row before it was ready "
                    f"(last: {how}); giving up"
                )
                log.error("%s", self._gave_up)
                self._begin_stop()
                return
        delay = min(RESTART_DELAY * 2 ** (slot.deaths - 1), MAX_RESTART_DELAY)
        slot.restart_at = time.monotonic() + delay
        log.warning(
            "worker %d (proxy id %s) died (%s) after %.1fs%s; restarting in %.2fs",
            slot.index,
            slot.config.proxy_id,
            how,
            lived,
            "" if slot.is_ready else ", before it was ready",
            delay,
        )

    def _signalled(self, signum: int, frame: FrameType | None) -> None:
        self._signals.append(signum)  # the wakeup fd wakes the loop; the loop acts on it

    def _begin_stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        for slot in self._slots:
            slot.restart_at = None
            if slot.process is not None and slot.process.pid is not None:
                with contextlib.suppress(ProcessLookupError):  # already dead: its sentinel is ready
                    os.kill(slot.process.pid, signal.SIGTERM)

    def _loop(self, wakeup: socket.socket) -> None:
        deadline: float | None = None
        while True:
            now = time.monotonic()
            if self._signals and not self._stopping:
                log.info(
                    "%s: stopping %d workers (each waits up to %.0fs for in-flight shares)",
                    signal.Signals(self._signals[-1]).name,
                    sum(1 for s in self._slots if s.process is not None),
                    self.config.shutdown_grace,
                )
                self._begin_stop()
            if self._stopping:
                if all(slot.process is None for slot in self._slots):
                    return
                if deadline is None:
                    deadline = now + self.config.shutdown_grace + STOP_MARGIN
                elif now >= deadline:
                    for slot in self._slots:
                        if slot.process is not None:
                            log.error(
                                "worker %d did not stop in time; killing it (its journal keeps its rows)", slot.index
                            )
                            slot.process.kill()
                    deadline = now + STOP_MARGIN
            else:
                for slot in self._slots:
                    if slot.process is None and slot.restart_at is not None and slot.restart_at <= now:
                        self._spawn(slot)
            waits: list[float] = [s.restart_at - now for s in self._slots if s.restart_at is not None]
            if deadline is not None:
                waits.append(deadline - now)
            timeout = max(0.0, min(waits)) if waits else None
            watched: dict[object, tuple[str, _Slot | None]] = {wakeup: ("signal", None)}
            for slot in self._slots:
                if slot.process is not None:
                    watched[slot.process.sentinel] = ("exit", slot)
                if slot.ready is not None:
                    watched[slot.ready] = ("ready", slot)
            for item in wait(list(watched), timeout):  # type: ignore[arg-type]
                what, which = watched[item]
                if what == "signal":
                    with contextlib.suppress(BlockingIOError):
                        wakeup.recv(512)
                elif which is not None and what == "ready" and which.ready is not None:
                    self._on_ready(which)
                elif which is not None and what == "exit" and which.process is not None:
                    if which.ready is not None and which.ready.poll():
                        self._on_ready(which)  # it got ready, then died: count it as ready
                    self._on_exit(which)

    def run(self) -> int:
        self._check_ports()
        listen_port = self._hold_port()
        self._prepare_ledger()
        self._slots = [_Slot(k, worker_config(self.config, k, listen_port)) for k in range(self.config.workers)]
        wakeup, wakeup_w = socket.socketpair()
        wakeup.setblocking(False)
        wakeup_w.setblocking(False)
        previous_fd = signal.set_wakeup_fd(wakeup_w.fileno())
        handlers = {sig: signal.signal(sig, self._signalled) for sig in (signal.SIGTERM, signal.SIGINT)}
        log.info(
            "supervisor (pid %d): %d workers on port %d, proxy ids %s-0..%d",
            os.getpid(),
            self.config.workers,
            listen_port,
            self.config.proxy_id,
            self.config.workers - 1,
        )
        try:
            for slot in self._slots:
                self._spawn(slot)
            self._loop(wakeup)
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
            signal.set_wakeup_fd(previous_fd)
            wakeup.close()
            wakeup_w.close()
            for holder in self._placeholders:
                holder.close()
        if self._gave_up is not None:
            raise StartupError(self._gave_up)
        log.info("supervisor: every worker stopped%s", "; not all cleanly" if self._unclean else "")
        return 1 if self._unclean else 0


def write_leftovers(config: ProxyConfig, target: LedgerTarget, *, own_spool: bool) -> None:
    """Write to ClickHouse the spools and journals nobody else will read: with `own_spool` (the
    supervisor) the one-process proxy's `<spool-dir>`, and those of workers k >= `config.workers`
    (a one-process proxy: every worker's). The caller holds the lock on `<spool-dir>`."""
    spool = config.ledger_spool_dir
    workers = config.workers if config.workers > 1 else 0
    stale = sorted(
        (p for p in spool.glob("worker-*") if p.is_dir() and not _is_worker_of(p.name, workers)), key=lambda p: p.name
    )
    for directory in [spool, *stale] if own_spool else stale:
        if not _has_rows(directory):
            continue
        lock = DirectoryLock(directory)
        if directory != spool:
            lock.acquire()  # an orphan worker of an earlier supervisor may still be flushing it
        try:
            asyncio.run(_write_spool(config, target, directory))
        finally:
            lock.release()


def _is_worker_of(name: str, workers: int) -> bool:
    number = name.removeprefix("worker-")
    return number.isdigit() and int(number) < workers


def _has_rows(directory: Path) -> bool:
    batches = any(p.name.endswith(".batch") for p in directory.iterdir()) if directory.is_dir() else False
    journal = directory / "journal"
    return batches or (journal.is_dir() and any(p.name.endswith(".journal") for p in journal.iterdir()))


async def _write_spool(config: ProxyConfig, target: LedgerTarget, directory: Path) -> None:
    """Write one spool (and its journal) to ClickHouse, under the batches' own dedup tokens."""
    from proxy.ledger import LedgerWriter

    writer = LedgerWriter(
        target.connect,
        spool_dir=directory,
        database=target.database,
        ttl_days=config.ttl_days,
        budget=config.ledger_budget,
    )
    await writer.start()
    try:
        await writer.flush()
    finally:
        await writer.stop()
    left = writer.spooled_rows
    log.info(
        "ledger: %d rows left by an earlier run in %s written%s",
        writer.rows_written,
        directory,
        f"; {left} rows stay spooled for the next start" if left else "",
    )
