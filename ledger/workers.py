"""The worker-name rule: who gets credit for a share. The proxy, the scorer and the simulation all
use this one rule.

A miner configures `<account>.<hotkey>.<workerID>`:
- `account` is one of the operator's accounts (default `infinite`; IHP farms use `sn89auction`);
  a bare `<hotkey>.<workerID>` is accepted and the first account prefixed;
- `hotkey` is a Bittensor SS58 address: checksum checked and network prefix 42 only, so one key has
  one identity in the ledger (the same public key under prefix 0, 2 or 7 would otherwise be credited
  as three hotkeys that are not registered on the subnet);
- `workerID` is 1-32 characters of A-Z a-z 0-9 _ -.
`<account>.check` (configurable) is a health check: authorized and given work, never credited.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import msgspec
from bittensor_wallet.utils import get_ss58_format, is_valid_ss58_address

BITTENSOR_SS58_PREFIX = 42
WORKER_ID = re.compile(r"[A-Za-z0-9_-]{1,32}")
ACCOUNT = re.compile(r"[A-Za-z0-9_-]{1,64}")


class WorkerRefused(Exception):
    """A worker name the proxy will not forward; the message is for the miner to read."""


class WorkerName(msgspec.Struct, frozen=True):
    account: str
    hotkey: str
    worker_id: str
    # What the pool and the ledger see: derived from the three above, kept because every share reads
    # it twice (the upstream submit and the ledger row). Whatever is passed for it is replaced.
    full_name: str = ""

    def __post_init__(self) -> None:
        msgspec.structs.force_setattr(self, "full_name", f"{self.account}.{self.hotkey}.{self.worker_id}")

    @property
    def bare_name(self) -> str:
        return f"{self.hotkey}.{self.worker_id}"

    @classmethod
    def parse(cls, name: str, accounts: Iterable[str] | None = None) -> WorkerName:
        """Check a worker name; raises WorkerRefused with a reason the miner can read.

        `accounts`: the accepted accounts, the first one prefixed to a bare name; None accepts any
        well-formed account (readers of names the proxy already checked).
        """
        allowed = list(accounts) if accounts is not None else None
        parts = name.split(".")
        default = allowed[0] if allowed else "infinite"
        if len(parts) == 3:
            account, hotkey, worker_id = parts
            if allowed is not None and account not in allowed:
                raise WorkerRefused(
                    f"worker name must start with {' or '.join(repr(a + '.') for a in allowed)}"
                    f" (got account {account[:32]!r})"
                )
            if allowed is None and ACCOUNT.fullmatch(account) is None:
                raise WorkerRefused(f"bad account {account[:32]!r}")
        elif len(parts) == 2 and parts[0] in (allowed or [default]) and is_valid_ss58_address(parts[1]):
            raise WorkerRefused(f"worker name needs a workerID: '{parts[0]}.{parts[1][:48]}.<workerID>'")
        elif len(parts) == 2:
            account, (hotkey, worker_id) = default, parts
        else:
            raise WorkerRefused(f"worker name must be '{default}.<hotkey>.<workerID>'")
        check_hotkey(hotkey)
        if WORKER_ID.fullmatch(worker_id) is None:
            raise WorkerRefused("workerID must be 1-32 characters of A-Z a-z 0-9 _ -")
        return cls(account, hotkey, worker_id)


def check_hotkey(hotkey: str) -> None:
    """Raises WorkerRefused unless `hotkey` is a valid SS58 address with Bittensor's prefix (42)."""
    if not is_valid_ss58_address(hotkey):
        raise WorkerRefused(f"{hotkey[:64]!r} is not a valid SS58 hotkey (bad characters or checksum)")
    prefix = get_ss58_format(hotkey)
    if prefix != BITTENSOR_SS58_PREFIX:
        raise WorkerRefused(
            f"hotkey {hotkey[:64]} is SS58 for network prefix {prefix}; use its Bittensor form (prefix 42,"
            " starting with 5), as btcli shows it"
        )


def health_check_names(accounts: Iterable[str], names: Iterable[str] = ()) -> frozenset[str]:
    """The worker names that are health checks: `<account>.check` for every account, plus `names`."""
    return frozenset([*(f"{a}.check" for a in accounts), *names])


def hotkey_of(worker: str) -> str | None:
    """The hotkey of a full worker name the proxy already checked (None when it has none)."""
    try:
        return WorkerName.parse(worker).hotkey
    except WorkerRefused:
        return None
