"""Worker names and hotkeys: who gets credit for a share.

A miner configures `<account>.<hotkey>.<workerID>`; a bare `<hotkey>.<workerID>` is accepted and the
account prefixed. The hotkey must be a valid SS58 address (checksum checked) and, when the operator
asks for it, registered on the subnet. The registry comes through a small chain interface, cached and
refreshed in the background; a chain outage keeps the last good set.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
from typing import Protocol

import msgspec
from bittensor_wallet.utils import is_valid_ss58_address

log = logging.getLogger("proxy.hotkeys")

_WORKER_ID = re.compile(r"[A-Za-z0-9_-]{1,32}")


class Worker(msgspec.Struct, frozen=True):
    full_name: str  # what the pool sees: <account>.<hotkey>.<workerID>
    hotkey: str
    worker_id: str


class WorkerRefused(Exception):
    """A worker name the proxy will not forward; the message is for the miner to read."""


def parse_worker(name: str, account: str) -> Worker:
    """Check a worker name from mining.authorize and return what to forward. Raises WorkerRefused."""
    parts = name.split(".")
    if len(parts) == 3:
        if parts[0] != account:
            raise WorkerRefused(f"worker name must start with '{account}.' (got account '{parts[0][:32]}')")
        hotkey, worker_id = parts[1], parts[2]
    elif len(parts) == 2:
        hotkey, worker_id = parts
    else:
        raise WorkerRefused(f"worker name must be '{account}.<hotkey>.<workerID>'")
    if not is_valid_ss58_address(hotkey):
        raise WorkerRefused(f"'{hotkey[:64]}' is not a valid SS58 hotkey (bad characters or checksum)")
    if _WORKER_ID.fullmatch(worker_id) is None:
        raise WorkerRefused("workerID must be 1-32 characters of A-Z a-z 0-9 _ -")
    return Worker(f"{account}.{hotkey}.{worker_id}", hotkey, worker_id)


class HotkeyRegistry(Protocol):
    """The chain, as far as the proxy cares: which hotkeys are registered on the subnet."""

    async def registered_hotkeys(self) -> set[str]: ...


class BittensorRegistry:
    """The real chain, through the bittensor SDK (imported lazily: it is slow to import)."""

    def __init__(self, netuid: int, network: str) -> None:
        self.netuid = netuid
        self.network = network

    async def registered_hotkeys(self) -> set[str]:
        import bittensor

        async with bittensor.Subtensor(self.network) as client:
            metagraph = await client.subnets.metagraph(self.netuid, commitments=False)
        if metagraph is None:
            raise LookupError(f"subnet {self.netuid} does not exist on {self.network}")
        return {str(hotkey) for hotkey in metagraph.hotkeys}


class RegisteredHotkeys:
    """The cached set of registered hotkeys, refreshed in the background.

    Until the first successful read nothing is registered (authorize answers "registry not loaded
    yet"); after that, a failed refresh keeps the last good set.
    """

    def __init__(self, registry: HotkeyRegistry, refresh_interval: float = 300.0) -> None:
        self._registry = registry
        self._interval = refresh_interval
        self._hotkeys: frozenset[str] | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def loaded(self) -> bool:
        return self._hotkeys is not None

    def __contains__(self, hotkey: str) -> bool:
        return self._hotkeys is not None and hotkey in self._hotkeys

    async def refresh(self) -> bool:
        try:
            hotkeys = await self._registry.registered_hotkeys()
        except Exception as exc:
            log.warning("metagraph refresh failed, keeping the last good set: %s", exc)
            return False
        self._hotkeys = frozenset(hotkeys)
        log.info("metagraph refreshed: %d registered hotkeys", len(self._hotkeys))
        return True

    async def start(self) -> None:
        await self.refresh()
        self._task = asyncio.create_task(self._run(), name="metagraph-refresh")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            # Retry sooner while nothing is loaded; jitter so a fleet of proxies does not sync up.
            delay = self._interval if self.loaded else min(self._interval, 15.0)
            await asyncio.sleep(delay * random.uniform(0.9, 1.1))
            await self.refresh()
