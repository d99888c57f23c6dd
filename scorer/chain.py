"""The Bittensor chain behind a small interface, and the weight submission with retries.

:class:`Chain` is all the scorer needs from the chain: the metagraph (uid ↔ hotkey, the subnet
owner's hotkey), the current block and the tempo, the subnet's mechanism count, the weights rate
limit and the block our hotkey last set weights on a mechanism, and setting weights on one
mechanism. :class:`BittensorChain` implements it with the bittensor SDK 11.x (imported only when
that class is first used: the import takes a couple of seconds); tests use a fake.

Commit-reveal is the SDK's business: its ``SetWeights`` reads the subnet's setting and sends either
a plain set or a timelocked commit whose drand reveal round it computes itself, so no epoch
arithmetic lives here. :func:`submit_weights` retries with exponential backoff; a failure is
reported with the chain's reason, never raised, so a loop goes on to the next tempo.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

log = logging.getLogger("scorer.chain")

T = TypeVar("T")
Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True)
class MetagraphView:
    """What the scorer reads from a metagraph."""

    uids: dict[int, str]
    """uid → hotkey, every uid of the subnet."""
    owner_hotkey: str | None = None
    block: int | None = None

    def uid_of(self, hotkey: str | None) -> int | None:
        if hotkey is None:
            return None
        for uid, hk in self.uids.items():
            if hk == hotkey:
                return uid
        return None

    @property
    def owner_uid(self) -> int | None:
        return self.uid_of(self.owner_hotkey)


@dataclass(frozen=True)
class SubmitResult:
    ok: bool
    message: str = ""
    """The chain's reason when not ok; a short status otherwise."""
    data: dict[str, Any] = field(default_factory=dict)
    committed: bool = False
    """The SDK sent a timelocked commit (the subnet has commit-reveal on) rather than a plain set."""


# Subtensor keys per-mechanism storage (weights, LastUpdate) by this index; mechanism 0 is the netuid.
MECHANISM_STRIDE = 4096


def mechanism_storage_index(netuid: int, mechid: int) -> int:
    return mechid * MECHANISM_STRIDE + netuid


class Chain(Protocol):
    async def metagraph(self, netuid: int) -> MetagraphView: ...

    async def current_block(self) -> int: ...

    async def tempo(self, netuid: int) -> int: ...

    async def mechanism_count(self, netuid: int) -> int:
        """How many mechanisms (independent incentive markets, mechids ``0..n-1``) the subnet runs."""
        ...

    async def weights_rate_limit(self, netuid: int) -> int:
        """Blocks a hotkey must wait between two weight submissions on the same mechanism."""
        ...

    async def last_weights_block(self, netuid: int, mechid: int) -> int | None:
        """The block our hotkey last set (or committed) weights on ``mechid``; None when never or unregistered."""
        ...

    async def set_weights(self, netuid: int, mechid: int, uids: list[int], weights: list[float]) -> SubmitResult:
        """Weights on one mechanism: a plain set, or a timelocked commit under commit-reveal (the SDK picks)."""
        ...

    async def close(self) -> None: ...


class ChainUnavailable(RuntimeError):
    """Reading from the chain failed after all retries."""


@dataclass(frozen=True)
class Retry:
    attempts: int = 3
    base_delay: float = 2.0
    max_delay: float = 60.0

    def delay(self, attempt: int) -> float:
        """Backoff before the retry after failed attempt ``attempt`` (0-based)."""
        return float(min(self.max_delay, self.base_delay * 2**attempt))


async def with_retries(
    what: str, call: Callable[[], Awaitable[T]], retry: Retry, sleep: Sleep, redact: Callable[[str], str]
) -> T:
    """Run ``call`` up to ``retry.attempts`` times, sleeping with backoff between failures."""
    last = ""
    for attempt in range(max(1, retry.attempts)):
        try:
            return await call()
        except Exception as exc:
            last = redact(f"{type(exc).__name__}: {exc}")
            log.warning("%s failed (attempt %d/%d): %s", what, attempt + 1, retry.attempts, last)
        if attempt + 1 < retry.attempts:
            await sleep(retry.delay(attempt))
    raise ChainUnavailable(f"{what} failed after {retry.attempts} attempts: {last}")


@dataclass(frozen=True)
class Submission:
    ok: bool
    mode: str
    """"commit" (timelocked, commit-reveal on) or "set"; "" when nothing reached the chain."""
    message: str
    attempts: int
    data: dict[str, Any] = field(default_factory=dict)
    mechid: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "mechid": self.mechid,
            "ok": self.ok,
            "mode": self.mode or None,
            "message": self.message,
            "attempts": self.attempts,
        }


async def submit_weights(
    chain: Chain,
    netuid: int,
    weights: Mapping[int, float],
    retry: Retry,
    sleep: Sleep,
    redact: Callable[[str], str] = lambda s: s,
    mechid: int = 0,
) -> Submission:
    """Set the weights on one mechanism (the SDK commits instead under commit-reveal); retry; never raise."""
    nonzero = {uid: w for uid, w in sorted(weights.items()) if w > 0}
    if not nonzero:
        log.warning("every weight is zero: nothing to set on mechanism %d", mechid)
        return Submission(False, "", "every weight is zero: nothing to set", 0, mechid=mechid)
    uids = list(nonzero)
    values = [nonzero[uid] for uid in uids]
    message = ""
    attempts = max(1, retry.attempts)
    for attempt in range(attempts):
        try:
            result = await chain.set_weights(netuid, mechid, uids, values)
            if result.ok:
                mode = "commit" if result.committed else "set"
                log.info(
                    "weights %s on netuid %d mechanism %d: %s",
                    "committed" if result.committed else "set",
                    netuid,
                    mechid,
                    result.message,
                )
                return Submission(True, mode, redact(result.message), attempt + 1, dict(result.data), mechid)
            message = redact(result.message or "the chain refused the weights without a reason")
        except Exception as exc:
            message = redact(f"{type(exc).__name__}: {exc}")
        log.warning(
            "setting weights on mechanism %d failed (attempt %d/%d): %s", mechid, attempt + 1, attempts, message
        )
        if attempt + 1 < attempts:
            await sleep(retry.delay(attempt))
    return Submission(False, "", message, attempts, mechid=mechid)


def load_metagraph_file(path: str | Path) -> MetagraphView:
    """``{"0": "5F…", "1": "5G…"}`` (uid → hotkey) from a JSON file."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read metagraph file {path}: {exc}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"metagraph file {path} must hold a JSON object uid → hotkey")
    uids: dict[int, str] = {}
    for key, hotkey in raw.items():
        try:
            uid = int(key)
        except ValueError:
            raise ValueError(f"metagraph file {path}: {key!r} is not a uid") from None
        if uid < 0 or uid > 65535 or not isinstance(hotkey, str) or not hotkey:
            raise ValueError(f"metagraph file {path}: bad entry {key!r}")
        uids[uid] = hotkey
    return MetagraphView(uids=uids)


class BittensorChain:
    """:class:`Chain` over the bittensor SDK 11.x (async client on the caller's loop).

    SDK calls: ``await bittensor.Subtensor(network)`` (an async ``Client``; the ``network`` is
    ``finney``, ``test``, ``local`` or a ``ws(s)://`` URL), ``client.subnets.metagraph(netuid,
    commitments=False)`` (neurons' uid/hotkey, ``owner_hotkey``, ``block``), ``client.block()``,
    ``client.subnets.subnet(netuid).tempo``, ``client.subnets.mechanism_count(netuid)``
    (``MechanismCountCurrent``), ``client.hyperparameters.weights_rate_limit(netuid)``
    (``WeightsSetRateLimit``), ``client.query(storage.SubtensorModule.Uids | LastUpdate, …)`` (our
    hotkey's last weights block, ``LastUpdate`` keyed by ``mechid * 4096 + netuid``),
    ``WeightsVersionKey`` (sent as ``version_key``), and ``client.execute(SetWeights(netuid, uids,
    weights, mechid=…, version_key=…), wallet, retries=…)`` with ``bittensor.Wallet(name, hotkey,
    path)``: the SDK conforms the weights to the subnet's limits, quantizes them to u16, preflights
    registration and the rate limit, signs with the hotkey, and — when the subnet has commit-reveal
    on — timelock-encrypts the weights for the chain to reveal at the drand round it computes.

    ``client_factory`` replaces how the client is opened (a test hands in an SDK client built on a
    fake substrate); by default ``await bittensor.Subtensor(network)``.
    """

    def __init__(
        self,
        network: str,
        wallet_name: str = "default",
        wallet_hotkey: str = "default",
        wallet_path: str | None = None,
        *,
        client_factory: Callable[[], Awaitable[Any]] | None = None,
        sdk_retries: int = 2,
    ) -> None:
        self.network = network
        self.wallet_name = wallet_name
        self.wallet_hotkey = wallet_hotkey
        self.wallet_path = wallet_path
        self.sdk_retries = sdk_retries
        self._client_factory = client_factory
        self._client: Any = None
        self._wallet: Any = None

    @staticmethod
    def _sdk() -> Any:
        import bittensor

        return bittensor

    async def _connect(self) -> Any:
        if self._client is None:
            if self._client_factory is not None:
                self._client = await self._client_factory()
            else:
                self._client = await self._sdk().Subtensor(self.network)
        return self._client

    def wallet(self) -> Any:
        if self._wallet is None:
            bt = self._sdk()
            if self.wallet_path:
                self._wallet = bt.Wallet(self.wallet_name, self.wallet_hotkey, self.wallet_path)
            else:
                self._wallet = bt.Wallet(self.wallet_name, self.wallet_hotkey)
        return self._wallet

    async def _read(self, read: Callable[[Any], Awaitable[T]]) -> T:
        """Run a read; on failure drop the connection so the next call (next pass) opens a fresh one."""
        client = await self._connect()
        try:
            return await read(client)
        except Exception:
            await self._drop()
            raise

    async def metagraph(self, netuid: int) -> MetagraphView:
        graph = await self._read(lambda c: c.subnets.metagraph(netuid, commitments=False))
        if graph is None:
            raise RuntimeError(f"subnet {netuid} does not exist on {self.network}")
        return MetagraphView(
            uids={int(n.uid): str(n.hotkey) for n in graph.neurons},
            owner_hotkey=str(graph.owner_hotkey) if graph.owner_hotkey else None,
            block=int(graph.block),
        )

    async def current_block(self) -> int:
        return int(await self._read(lambda c: c.block()))

    async def tempo(self, netuid: int) -> int:
        info = await self._read(lambda c: c.subnets.subnet(netuid))
        return int(info.tempo)

    async def mechanism_count(self, netuid: int) -> int:
        count = int(await self._read(lambda c: c.subnets.mechanism_count(netuid)))
        return max(1, count)  # a runtime without mechanisms has exactly mechanism 0

    async def weights_rate_limit(self, netuid: int) -> int:
        return int(await self._read(lambda c: c.hyperparameters.weights_rate_limit(netuid)))

    def hotkey_address(self) -> str:
        return str(self.wallet().hotkeypub.ss58_address)

    async def last_weights_block(self, netuid: int, mechid: int) -> int | None:
        storage = self._sdk().storage.SubtensorModule
        hotkey = self.hotkey_address()
        uid = await self._read(lambda c: c.query(storage.Uids, [netuid, hotkey]))
        if uid is None:
            return None
        index = mechanism_storage_index(netuid, mechid)
        last = await self._read(lambda c: c.query(storage.LastUpdate, [index]))
        if not isinstance(last, (list, tuple)) or int(uid) >= len(last) or not int(last[int(uid)]):
            return None  # the chain skips the rate limit for a hotkey that never set weights here
        return int(last[int(uid)])

    def weights_intent(
        self, netuid: int, mechid: int, uids: list[int], weights: list[float], version_key: int = 0
    ) -> Any:
        """The SDK intent for a weight vector on one mechanism (it picks set or timelocked commit)."""
        return self._sdk().SetWeights(
            netuid=netuid,
            uids=list(uids),
            weights=[float(w) for w in weights],
            mechid=mechid,
            version_key=version_key,
        )

    async def version_key(self, netuid: int) -> int:
        """The subnet's required weights version (``WeightsVersionKey``): sending it is never too old."""
        item = self._sdk().storage.SubtensorModule.WeightsVersionKey
        return int(await self._read(lambda c: c.query(item, [netuid])) or 0)

    async def set_weights(self, netuid: int, mechid: int, uids: list[int], weights: list[float]) -> SubmitResult:
        bt = self._sdk()
        try:
            intent = self.weights_intent(netuid, mechid, uids, weights, await self.version_key(netuid))
            client = await self._connect()
            result = await client.execute(intent, self.wallet(), retries=self.sdk_retries)
        except bt.RpcConnectionError:
            await self._drop()  # reconnect on the next attempt
            raise
        except bt.BittensorError as exc:  # refusals caught before submitting: not registered, rate limit, …
            return SubmitResult(False, str(exc))
        if result.success:
            where = result.extrinsic_id or result.block_hash or ""
            data = dict(result.data)
            return SubmitResult(True, f"{result.message or 'ok'} {where}".strip(), data, "reveal_round" in data)
        reason = result.message or (str(result.error) if result.error is not None else "failed")
        return SubmitResult(False, reason)

    async def _drop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                await client.close()
            except Exception as exc:
                log.debug("closing the chain client failed: %s", exc)

    async def close(self) -> None:
        await self._drop()
