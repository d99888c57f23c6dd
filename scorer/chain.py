"""The Bittensor chain behind a small interface, and the weight submission with retries.

:class:`Chain` is all the scorer needs from the chain: the metagraph (uid ↔ hotkey, the subnet
owner's hotkey), the current block and the tempo, whether commit-reveal is on, and setting or
committing weights. :class:`BittensorChain` implements it with the bittensor SDK 11.x (imported only
when that class is first used: the import takes a couple of seconds); tests use a fake.

:func:`submit_weights` picks the path (a timelocked commit when the subnet has commit-reveal on,
a plain set otherwise) and retries with exponential backoff; a failure is reported with the chain's
reason, never raised, so a loop goes on to the next tempo.
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


class Chain(Protocol):
    async def metagraph(self, netuid: int) -> MetagraphView: ...

    async def current_block(self) -> int: ...

    async def tempo(self, netuid: int) -> int: ...

    async def commit_reveal_enabled(self, netuid: int) -> bool: ...

    async def set_weights(self, netuid: int, uids: list[int], weights: list[float]) -> SubmitResult:
        """Plain (visible) weights, for subnets without commit-reveal."""
        ...

    async def commit_weights(self, netuid: int, uids: list[int], weights: list[float]) -> SubmitResult:
        """A commit the chain reveals by itself later, for subnets with commit-reveal on."""
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
    """"commit" (commit-reveal) or "set"; "" when it never got as far as choosing."""
    message: str
    attempts: int
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "mode": self.mode or None, "message": self.message, "attempts": self.attempts}


async def submit_weights(
    chain: Chain,
    netuid: int,
    weights: Mapping[int, float],
    retry: Retry,
    sleep: Sleep,
    redact: Callable[[str], str] = lambda s: s,
) -> Submission:
    """Set (or commit, under commit-reveal) the weights; retry with backoff; never raise."""
    nonzero = {uid: w for uid, w in sorted(weights.items()) if w > 0}
    if not nonzero:
        log.warning("every weight is zero: nothing to set on chain")
        return Submission(False, "", "every weight is zero: nothing to set", 0)
    uids = list(nonzero)
    values = [nonzero[uid] for uid in uids]
    mode = ""
    message = ""
    attempts = max(1, retry.attempts)
    for attempt in range(attempts):
        try:
            commit = await chain.commit_reveal_enabled(netuid)
            mode = "commit" if commit else "set"
            if commit:
                result = await chain.commit_weights(netuid, uids, values)
            else:
                result = await chain.set_weights(netuid, uids, values)
            if result.ok:
                log.info("weights %s on netuid %d: %s", "committed" if commit else "set", netuid, result.message)
                return Submission(True, mode, redact(result.message), attempt + 1, dict(result.data))
            message = redact(result.message or "the chain refused the weights without a reason")
        except Exception as exc:
            message = redact(f"{type(exc).__name__}: {exc}")
        log.warning("setting weights failed (attempt %d/%d): %s", attempt + 1, attempts, message)
        if attempt + 1 < attempts:
            await sleep(retry.delay(attempt))
    return Submission(False, mode, message, attempts)


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
    commitments=False)`` (neurons' uid/hotkey, ``owner_hotkey``, ``tempo``, ``block``),
    ``client.block()``, ``client.subnets.subnet(netuid).tempo``,
    ``client.subnets.commit_reveal_enabled(netuid)``,
    ``client.query(storage.SubtensorModule.WeightsVersionKey, [netuid])`` (sent as ``version_key``), and
    ``client.execute(SetWeights(...) | CommitWeights(...), wallet, retries=…)`` with
    ``bittensor.Wallet(name, hotkey, path)``: the SDK conforms the weights to the subnet's limits,
    quantizes them to u16, preflights registration and the rate limit, signs with the hotkey, and
    ``CommitWeights`` timelock-encrypts the weights for the chain to reveal at the drand round.

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

    async def commit_reveal_enabled(self, netuid: int) -> bool:
        return bool(await self._read(lambda c: c.subnets.commit_reveal_enabled(netuid)))

    def weights_intent(
        self, netuid: int, uids: list[int], weights: list[float], commit: bool, version_key: int = 0
    ) -> Any:
        """The SDK intent for a weight vector: ``CommitWeights`` under commit-reveal, else ``SetWeights``."""
        bt = self._sdk()
        cls = bt.CommitWeights if commit else bt.SetWeights
        return cls(netuid=netuid, uids=list(uids), weights=[float(w) for w in weights], version_key=version_key)

    async def version_key(self, netuid: int) -> int:
        """The subnet's required weights version (``WeightsVersionKey``): sending it is never too old."""
        item = self._sdk().storage.SubtensorModule.WeightsVersionKey
        return int(await self._read(lambda c: c.query(item, [netuid])) or 0)

    async def _execute(self, netuid: int, uids: list[int], weights: list[float], commit: bool) -> SubmitResult:
        bt = self._sdk()
        try:
            intent = self.weights_intent(netuid, uids, weights, commit, await self.version_key(netuid))
            client = await self._connect()
            result = await client.execute(intent, self.wallet(), retries=self.sdk_retries)
        except bt.RpcConnectionError:
            await self._drop()  # reconnect on the next attempt
            raise
        except bt.BittensorError as exc:  # refusals caught before submitting: not registered, rate limit, …
            return SubmitResult(False, str(exc))
        if result.success:
            where = result.extrinsic_id or result.block_hash or ""
            return SubmitResult(True, f"{result.message or 'ok'} {where}".strip(), dict(result.data))
        reason = result.message or (str(result.error) if result.error is not None else "failed")
        return SubmitResult(False, reason)

    async def set_weights(self, netuid: int, uids: list[int], weights: list[float]) -> SubmitResult:
        return await self._execute(netuid, uids, weights, commit=False)

    async def commit_weights(self, netuid: int, uids: list[int], weights: list[float]) -> SubmitResult:
        return await self._execute(netuid, uids, weights, commit=True)

    async def _drop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                await client.close()
            except Exception as exc:
                log.debug("closing the chain client failed: %s", exc)

    async def close(self) -> None:
        await self._drop()
