"""Deterministic, valid SS58 hotkeys for tests and the demo, and deliberately broken ones.

Hotkeys come from seeds (sha256 of a namespace and an index) through bittensor-wallet, so a test
that asks for `hotkey(3)` always gets the same address, and every one passes
`bittensor_wallet.utils.is_valid_ss58_address`. `bad_checksum()` flips the last character of a
valid address to another base58 character: same length and alphabet, wrong checksum.
"""

from __future__ import annotations

import functools
import hashlib

from bittensor_wallet import Keypair
from bittensor_wallet.utils import is_valid_ss58_address

__all__ = [
    "BASE58_ALPHABET",
    "DEFAULT_NAMESPACE",
    "bad_checksum",
    "dev_hotkey",
    "hotkey",
    "hotkeys",
    "is_valid_hotkey",
    "keypair",
    "worker_name",
]

BASE58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
DEFAULT_NAMESPACE = "infinitehash-simulation"


@functools.lru_cache(maxsize=4096)
def keypair(index: int, namespace: str = DEFAULT_NAMESPACE) -> Keypair:
    """The keypair number `index` of a namespace (sr25519, from a 32-byte seed)."""
    seed = hashlib.sha256(f"{namespace}/{index}".encode()).hexdigest()
    # The stub says bytes; the Rust binding wants the seed as hex text (bytes raise TypeError).
    return Keypair.create_from_seed(seed)  # type: ignore[arg-type]


def hotkey(index: int, namespace: str = DEFAULT_NAMESPACE) -> str:
    """A valid SS58 hotkey (substrate prefix 42, "5..."), the same for the same index and namespace."""
    address: str = keypair(index, namespace).ss58_address
    return address


def hotkeys(count: int, namespace: str = DEFAULT_NAMESPACE, *, start: int = 0) -> list[str]:
    """`count` distinct valid hotkeys."""
    return [hotkey(i, namespace) for i in range(start, start + count)]


@functools.lru_cache(maxsize=64)
def dev_hotkey(name: str = "Alice") -> str:
    """A well-known development hotkey (`//Alice`, `//Bob`, ...)."""
    address: str = Keypair.create_from_uri(f"//{name}").ss58_address
    return address


def is_valid_hotkey(address: str) -> bool:
    """SS58 checksum and format check, as the proxy does it."""
    return bool(is_valid_ss58_address(address))


def bad_checksum(address: str) -> str:
    """The valid `address` with its last character changed to another base58 character, so that
    only the checksum is wrong. Raises ValueError if `address` is not valid to begin with."""
    if not is_valid_hotkey(address):
        raise ValueError(f"{address!r} is not a valid SS58 address")
    last = address[-1]
    start = BASE58_ALPHABET.index(last)
    for step in range(1, len(BASE58_ALPHABET)):
        candidate = address[:-1] + BASE58_ALPHABET[(start + step) % len(BASE58_ALPHABET)]
        if not is_valid_hotkey(candidate):
            assert candidate != address and len(candidate) == len(address)
            return candidate
    raise AssertionError("no base58 character breaks the checksum")  # cannot happen: 2 checksum bytes


def worker_name(hotkey: str, worker: str = "worker0", account: str = "infinite") -> str:
    """`account.hotkey.worker`, the worker name miners configure."""
    return f"{account}.{hotkey}.{worker}"
