"""Which hotkeys are registered on the subnet (the worker-name rule itself is `ledger/workers.py`).

The registry comes through a small chain interface, cached and
refreshed in the background; a chain outage keeps the last good set.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Protocol

log = logging.getLogger("proxy.hotkeys")


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
