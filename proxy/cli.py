"""`ih-proxy` / `python -m proxy`.

Every start-up failure is one line on stderr and exit status 2: a bad option or value, a data or
spool directory another proxy holds, a listen or metrics port in use, a cluster schema that cannot
be applied. Once the proxy runs, a ClickHouse outage is not a start-up failure: shares are spooled.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from ledger.logs import UsageError, parse_format, parse_level, parse_quietly, setup_logging
from ledger.target import LedgerTarget
from proxy.app import run
from proxy.config import ConfigError, ProxyConfig, load_config, parse_host_port

EXIT_STARTUP = 2
LOCK_NAME = ".ih-proxy.lock"

log = logging.getLogger("proxy")

# errno values of a bind that cannot succeed: the address is taken, not ours, or needs privileges.
_BIND_ERRORS = {errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES}
_BIND_ADDRESS = re.compile(r"\('([^']*)', (\d+)")  # asyncio's "... on address ('127.0.0.1', 3333): ..."


class StartupError(Exception):
    """The proxy cannot start; the message is the whole story, for one stderr line."""


class DirectoryLock:
    """An exclusive flock on `<directory>/.ih-proxy.lock`, held while the process lives.

    Two proxies on one spool would replay and delete each other's batches, and chdb takes one
    process per directory. The kernel drops the lock when the process dies, however it dies, so a
    stale file never blocks a restart; the PID in it is only for the message."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory.absolute()
        self.path = self.directory / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StartupError(f"cannot use directory {self.directory}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_pid(fd)
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise StartupError(f"cannot lock {self.path}: {exc.strerror}") from None
            by = f"another ih-proxy (pid {holder})" if holder else "another ih-proxy"
            raise StartupError(
                f"directory {self.directory} is in use by {by}; stop it, or give this proxy its own "
                "--data-dir / --spool-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def directories_to_lock(config: ProxyConfig, target: LedgerTarget) -> list[Path]:
    """The spool directory always; the data directory when the spool or the embedded ledger is in it;
    an embedded ledger directory elsewhere on its own."""
    data_dir = config.data_dir.absolute()
    spool = config.ledger_spool_dir.absolute()
    found = [spool]
    inside_data = spool.is_relative_to(data_dir)
    if target.kind == "chdb" and target.path is not None:
        if target.path.is_relative_to(data_dir):
            inside_data = True
        else:
            found.append(target.path)
    if inside_data:
        found.insert(0, data_dir)  # the operator named --data-dir: the message names it first
    return list(dict.fromkeys(found))


def check_ports(config: ProxyConfig) -> None:
    """Bind (and close) the listen and metrics addresses once before anything starts, so a port in
    use is reported before the ledger opens. The same error from the real bind is caught too."""
    for option, value in (("listen", config.listen), ("metrics", config.metrics)):
        host, port = parse_host_port(value, option)
        if port == 0:
            continue  # the kernel picks a free port
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        except OSError as exc:
            raise StartupError(f"--{option} {value}: cannot resolve {host!r}: {exc.strerror}") from None
        for family, kind, proto, _, address in infos:
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio's listener does
                try:
                    probe.bind(address)
                except OSError as exc:
                    raise StartupError(f"--{option} {value}: {_strerror(exc)}") from None


def _strerror(exc: OSError) -> str:
    # asyncio puts the address into strerror ("error while attempting to bind on address ..."): the
    # line already names it, so say only what the errno means.
    return (os.strerror(exc.errno) if exc.errno else str(exc)).lower()


def _bind_failure(exc: OSError, config: ProxyConfig) -> str:
    """One line for an OSError the app's listeners raised at start."""
    match = _BIND_ADDRESS.search(str(exc))
    port = int(match.group(2)) if match else None
    for option, value in (("listen", config.listen), ("metrics", config.metrics)):
        if port is not None and parse_host_port(value, option)[1] == port:
            return f"--{option} {value}: {_strerror(exc)}"
    return f"cannot listen: {_strerror(exc)}"


def prepare_cluster(config: ProxyConfig, target: LedgerTarget) -> None:
    """Apply the migrations ON CLUSTER once, before the proxy starts (it refuses to start otherwise).

    The writer re-checks the schema on every connect and recognises the cluster layout from the
    tables themselves (ledger.schema.detect_cluster), so it never creates single-node tables there."""
    from ledger.schema import apply_migrations

    assert config.clickhouse_cluster is not None
    try:
        client = target.connect()
    except ConnectionError as exc:
        raise StartupError(f"--clickhouse-cluster {config.clickhouse_cluster}: {exc}") from None
    try:
        applied = apply_migrations(client, target.database, config.ttl_days, cluster=config.clickhouse_cluster)
    except Exception as exc:
        raise StartupError(
            f"--clickhouse-cluster {config.clickhouse_cluster}: cannot apply the schema: {target.scrub(exc)[:300]}"
        ) from None
    finally:
        client.close()
    log.info("ledger: cluster %s schema up to date (applied now: %s)", config.clickhouse_cluster, applied or "none")


def _checked(config: ProxyConfig) -> tuple[int, LedgerTarget]:
    """What load_config leaves to the command line: the log options and the cluster option."""
    from ledger.schema import check_cluster_name

    try:
        level = parse_level(config.log_level)
        parse_format(config.log_format)
        target = LedgerTarget.parse(config.clickhouse_url, data_dir=config.data_dir)
        if config.clickhouse_cluster is not None:
            check_cluster_name(config.clickhouse_cluster)
            if target.kind == "chdb":
                raise ValueError("--clickhouse-cluster needs an http(s):// --clickhouse-url, not an embedded ledger")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return level, target


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = parse_quietly(lambda: load_config(argv))
        level, target = _checked(config)
    except (UsageError, ConfigError) as exc:
        text = str(exc)
        print(text if text.startswith("ih-proxy: ") else f"ih-proxy: {text}", file=sys.stderr)
        return EXIT_STARTUP
    setup_logging(level, config.log_format)
    locks = [DirectoryLock(path) for path in directories_to_lock(config, target)]
    try:
        for lock in locks:
            lock.acquire()
        if config.workers > 1:
            from proxy.supervisor import Supervisor

            return Supervisor(config, target).run()
        check_ports(config)
        if config.clickhouse_cluster is not None:
            prepare_cluster(config, target)
        if any(config.ledger_spool_dir.glob("worker-*")):
            from proxy.supervisor import write_leftovers

            write_leftovers(config, target, own_spool=False)  # a --workers run's spools: nobody else reads them
        run(config)
    except StartupError as exc:
        print(f"ih-proxy: {exc}", file=sys.stderr)
        return EXIT_STARTUP
    except OSError as exc:
        if exc.errno not in _BIND_ERRORS:
            raise
        # Someone took the port between check_ports and the app's own bind.
        print(f"ih-proxy: {_bind_failure(exc, config)}", file=sys.stderr)
        return EXIT_STARTUP
    finally:
        for lock in locks:
            lock.release()
    return 0
