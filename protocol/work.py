"""Share math for Bitcoin (sha256d): coinbase, merkle root, header, hash, difficulty.

Byte order, once, because one mistake here credits miners for work they never did:
- coinbase = coinb1 ‖ extranonce1 ‖ extranonce2 ‖ coinb2 (hex decoded, in that order);
- merkle root = fold of `sha256d(root ‖ branch)` over the branches, starting at sha256d(coinbase);
  all in internal (little-endian) byte order, as the branches arrive;
- prevhash arrives with each 4-byte word byte-swapped relative to the header;
- version, nbits, ntime and nonce arrive as big-endian hex of little-endian header fields;
- version rolling (BIP310): nVersion = (job_version & ~mask) | (version_bits & mask);
- the hash as explorers show it is the reversed sha256d; its value is int(hash, little-endian);
- share difficulty = DIFF1 / value, DIFF1 = 0xFFFF · 2^208 (pool difficulty 1).

`Job` precomputes everything that does not depend on the share, so a check is one coinbase hash,
the merkle fold (cached per extranonce2, which real ASICs reuse across many shares), and one
header hash. Those hashes, and the reading of the share's hex fields, run in `protocol._sha256d` (C,
OpenSSL's SHA-256) where setup.py could build it, and in the Python below otherwise: the same
results, ~9 µs more per fresh extranonce2 and ~2 µs more per share for the fields.
"""

from __future__ import annotations

import hashlib
import importlib
import struct
from collections.abc import Callable, Sequence
from types import ModuleType

from protocol.errors import ErrorCode, RejectReason
from protocol.memo import ByIdentity
from protocol.messages import Notify

DIFF1 = 0xFFFF << 208
BIP320_MASK = 0x1FFFE000  # the version bits BIP320 leaves to miners
# How far ntime may run ahead of the job's ntime (Bitcoin Core accepts blocks up to 2 h in the future).
NTIME_MAX_AHEAD = 7200


def _fastest_sha256() -> Callable[[bytes], hashlib._Hash]:
    """CPython's own SHA-256 where it has one: on 32- to 80-byte inputs, all a share check hashes,
    it is ~30% faster per call than OpenSSL 3's (whose per-object setup dominates; measured 1.39 vs
    1.97 µs per sha256d here, benchmarks/reference.py). Checked against hashlib before it is used."""
    for module in ("_sha2", "_sha256"):  # 3.12+, 3.11
        try:
            candidate = importlib.import_module(module).sha256
        except (ImportError, AttributeError):
            continue
        probe = bytes(range(80))
        if candidate(probe).digest() == hashlib.sha256(probe).digest():
            return candidate  # type: ignore[no-any-return]
    return hashlib.sha256


sha256 = _sha256 = _fastest_sha256()  # the constructor every Python hash here uses
_HEADER = struct.Struct("<I32s32sIII")
HASH_SIZE = 32
_MERKLE_CACHE_SIZE = 64


__all__ = [
    "BIP320_MASK",
    "DIFF1",
    "NTIME_MAX_AHEAD",
    "Job",
    "JobTemplate",
    "RejectReason",
    "Share",
    "ShareRejected",
    "block_header",
    "coinbase_merkle_root",
    "difficulty_from_target",
    "display_hash",
    "hash_value",
    "hex_bytes",
    "hex_uint32",
    "job_template",
    "merkle_root",
    "native",
    "prevhash_to_header",
    "roll_version",
    "sha256",
    "sha256d",
    "share_difficulty",
    "target_from_nbits",
]


def py_sha256d(data: bytes) -> bytes:
    return _sha256(_sha256(data).digest()).digest()


def py_coinbase_merkle_root(coinbase_prefix: bytes, extranonce2: bytes, coinb2: bytes, branches: bytes) -> bytes:
    """The merkle root of coinbase_prefix ‖ extranonce2 ‖ coinb2 over `branches`, the 32-byte branches
    joined in order. `protocol._sha256d.coinbase_merkle_root` is this in C."""
    root = py_sha256d(coinbase_prefix + extranonce2 + coinb2)
    for at in range(0, len(branches), HASH_SIZE):
        root = _sha256(_sha256(root + branches[at : at + HASH_SIZE]).digest()).digest()
    return root


def py_hex_bytes(value: str, digits: int) -> bytes | None:
    """`value` decoded when it is exactly `digits` (even) hex digits in either case, else None.

    The share fields' check in Python (`protocol._sha256d.hex_bytes` is this in C), cheaper than a
    regex: on ASCII, isalnum leaves only [0-9A-Za-z] (no spaces, signs, underscores or "0x" that
    int() and fromhex() would forgive), and fromhex refuses the letters past f.
    """
    if len(value) != digits or not value.isascii() or not value.isalnum():
        return None
    try:
        return bytes.fromhex(value)
    except ValueError:
        return None


def py_hex_uint32(value: str) -> int | None:
    """`value` as a big-endian number when it is exactly 8 hex digits in either case, else None."""
    raw = py_hex_bytes(value, 8)
    return None if raw is None else int.from_bytes(raw, "big")


native: ModuleType | None
try:  # built by setup.py where a C compiler and OpenSSL's headers were
    from protocol import _sha256d as native
except ImportError:
    native = None

sha256d: Callable[[bytes], bytes] = native.sha256d if native else py_sha256d
coinbase_merkle_root: Callable[[bytes, bytes, bytes, bytes], bytes] = (
    native.coinbase_merkle_root if native else py_coinbase_merkle_root
)
hex_bytes: Callable[[str, int], bytes | None] = native.hex_bytes if native else py_hex_bytes
hex_uint32: Callable[[str], int | None] = native.hex_uint32 if native else py_hex_uint32


# block_header(version, prevhash, merkle_root, ntime, nbits, nonce) -> the 80-byte header, with
# `prevhash` in header order (`prevhash_to_header`) and the merkle root in internal order. The Struct's
# own pack, not a wrapper: Job.hash_share builds every header with it at no extra call.
block_header = _HEADER.pack


def merkle_root(coinbase_hash: bytes, branches: Sequence[bytes]) -> bytes:
    root = coinbase_hash
    for branch in branches:
        root = sha256d(root + branch)
    return root


def prevhash_to_header(prevhash_hex: str) -> bytes:
    """Stratum's prevhash (word-swapped) → the 32 bytes that go into the header."""
    raw = bytes.fromhex(prevhash_hex)
    return b"".join(raw[i : i + 4][::-1] for i in range(0, 32, 4))


def target_from_nbits(nbits: int) -> int:
    """The compact target encoding of the header's nBits field."""
    exponent = nbits >> 24
    mantissa = nbits & 0x007FFFFF
    if exponent <= 3:
        return mantissa >> (8 * (3 - exponent))
    return mantissa << (8 * (exponent - 3))


def difficulty_from_target(target: int) -> float:
    return DIFF1 / target if target else float("inf")


def hash_value(header_hash: bytes) -> int:
    return int.from_bytes(header_hash, "little")


def share_difficulty(header_hash: bytes) -> float:
    """A hash's difficulty: its value read as the target it met."""
    return difficulty_from_target(hash_value(header_hash))


def display_hash(header_hash: bytes) -> str:
    """The hash as block explorers show it."""
    return header_hash[::-1].hex()


def roll_version(job_version: int, version_bits: int, mask: int) -> int:
    return (job_version & ~mask) | (version_bits & mask)


class ShareRejected(Exception):
    """A share that must not reach the pool, with the Stratum code to answer and a ledger reason."""

    def __init__(self, code: ErrorCode, reason: RejectReason, message: str, share: Share | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason  # the ledger's reject_reason (a StrEnum: equal to its string)
        self.message = message  # for the miner
        self.share = share  # set when the share hashed (duplicate, low difficulty)


class Share:
    """A share that hashed: its header, hash and difficulty, and the submitted fields as numbers and
    the version mask it was checked under (what the ledger keeps to re-hash it)."""

    __slots__ = (
        "difficulty",
        "hash",
        "header",
        "is_block",
        "nonce",
        "ntime",
        "version",
        "version_bits",
        "version_mask",
    )

    def __init__(
        self,
        header: bytes,
        header_hash: bytes,
        difficulty: float,
        version: int,
        is_block: bool,
        ntime: int = 0,
        nonce: int = 0,
        version_bits: int | None = None,
        version_mask: int = 0,
    ):
        self.header = header
        self.hash = header_hash  # internal byte order; display_hash() for explorers
        self.difficulty = difficulty
        self.version = version
        self.is_block = is_block
        self.ntime = ntime
        self.nonce = nonce
        self.version_bits = version_bits  # None: the miner submitted none
        # The session's mask may change before the pool's verdict (a set_version_mask, a new pool):
        # the row must keep the one this share was rolled under, or it would not re-hash.
        self.version_mask = version_mask

    @property
    def hex_hash(self) -> str:
        return display_hash(self.hash)


class JobTemplate:
    """What a share check needs from a mining.notify whatever the session: its fields as numbers and
    bytes. Every session of one pool account gets the same notify at once (a new job, a new block),
    so `job_template` parses it once for all of them (Job adds the session's own extranonce1)."""

    __slots__ = (
        "branches",
        "branches_joined",
        "coinb1",
        "coinb2",
        "nbits",
        "network_target",
        "ntime",
        "prevhash",
        "version",
    )

    def __init__(self, notify: Notify) -> None:
        self.version = int(notify.version, 16)
        self.nbits = int(notify.nbits, 16)
        self.ntime = int(notify.ntime, 16)
        self.prevhash = prevhash_to_header(notify.prevhash)
        self.branches = [bytes.fromhex(b) for b in notify.merkle_branch]
        self.branches_joined = b"".join(self.branches)  # as coinbase_merkle_root takes them
        self.network_target = target_from_nbits(self.nbits)
        self.coinb1 = bytes.fromhex(notify.coinb1)
        self.coinb2 = bytes.fromhex(notify.coinb2)


# Every session's Job of one notify line shares its template: the notifies of the last minutes,
# over every pool connection.
job_template: ByIdentity[Notify, JobTemplate] = ByIdentity(JobTemplate, 64)


class Job:
    """One mining.notify as a miner with a given extranonce1 sees it, precomputed for share checks.

    `difficulty` is the pool difficulty in force when the notify arrived: a later set_difficulty
    applies only to jobs notified after it.
    """

    __slots__ = (
        "_branches_joined",
        "_coinb2",
        "_coinbase_prefix",
        "_merkle_cache",
        "branches",
        "difficulty",
        "extranonce2_size",
        "job_id",
        "nbits",
        "network_target",
        "ntime",
        "prevhash",
        "seen",
        "version",
    )

    def __init__(self, notify: Notify, extranonce1: str, extranonce2_size: int, difficulty: float) -> None:
        template = job_template(notify)
        self.job_id = notify.job_id
        self.difficulty = difficulty
        self.extranonce2_size = extranonce2_size
        self.version = template.version
        self.nbits = template.nbits
        self.ntime = template.ntime
        self.prevhash = template.prevhash
        self.branches = template.branches  # shared, never modified
        self._branches_joined = template.branches_joined
        self.network_target = template.network_target
        self._coinbase_prefix = template.coinb1 + bytes.fromhex(extranonce1)  # the coinbase up to extranonce2
        self._coinb2 = template.coinb2
        self._merkle_cache: dict[bytes, bytes] = {}
        # Header hashes already submitted for this job: dict keys, since the collector never tracks a
        # dict of bytes but walks every entry of a set at each full collection.
        self.seen: dict[bytes, None] = {}

    @property
    def network_difficulty(self) -> float:
        return difficulty_from_target(self.network_target)

    def merkle_root(self, extranonce2: bytes) -> bytes:
        root = self._merkle_cache.get(extranonce2)
        if root is None:
            root = coinbase_merkle_root(self._coinbase_prefix, extranonce2, self._coinb2, self._branches_joined)
            if len(self._merkle_cache) >= _MERKLE_CACHE_SIZE:
                self._merkle_cache.clear()
            self._merkle_cache[extranonce2] = root
        return root

    def hash_share(
        self, extranonce2: str, ntime: str, nonce: str, version_bits: str | None, version_mask: int
    ) -> Share:
        """Check the share's fields and hash it. Raises ShareRejected for malformed fields.

        Does not judge difficulty or duplicates: that is `check_share`, which the proxy calls.
        """
        en2 = hex_bytes(extranonce2, 2 * self.extranonce2_size)
        if en2 is None:
            raise ShareRejected(
                ErrorCode.OTHER, RejectReason.MALFORMED, f"extranonce2 must be {2 * self.extranonce2_size} hex digits"
            )
        ntime_value = hex_uint32(ntime)
        nonce_value = hex_uint32(nonce)
        if ntime_value is None or nonce_value is None:
            raise ShareRejected(ErrorCode.OTHER, RejectReason.MALFORMED, "ntime and nonce must be 8 hex digits")
        if not self.ntime <= ntime_value <= self.ntime + NTIME_MAX_AHEAD:
            raise ShareRejected(ErrorCode.OTHER, RejectReason.NTIME, "ntime out of range")
        version = self.version
        bits: int | None = None
        if version_bits is not None:
            bits = hex_uint32(version_bits)
            if bits is None:
                raise ShareRejected(ErrorCode.OTHER, RejectReason.MALFORMED, "version bits must be 8 hex digits")
            if bits & ~version_mask:
                raise ShareRejected(
                    ErrorCode.OTHER, RejectReason.VERSION_MASK, "version bits outside the negotiated mask"
                )
            version = (version & ~version_mask) | bits  # roll_version
        header = block_header(version, self.prevhash, self.merkle_root(en2), ntime_value, self.nbits, nonce_value)
        # hash_value and share_difficulty written out: two Python calls cost ~4% of a check.
        # test_hash_share_is_the_exported_helpers_composed proves this equals the helpers composed.
        header_hash = sha256d(header)
        value = int.from_bytes(header_hash, "little")
        difficulty = DIFF1 / value if value else float("inf")
        return Share(
            header,
            header_hash,
            difficulty,
            version,
            value <= self.network_target,
            ntime_value,
            nonce_value,
            bits,
            version_mask,
        )

    def check_share(
        self, extranonce2: str, ntime: str, nonce: str, version_bits: str | None, version_mask: int
    ) -> Share:
        """hash_share, then refuse duplicates and shares below the job's difficulty.

        A share is remembered as seen only once it passed, so a low-difficulty retry is not a
        duplicate. The duplicate key is the header hash: it covers every field, version bits
        included, and letter case cannot make two spellings of one share differ.
        """
        share = self.hash_share(extranonce2, ntime, nonce, version_bits, version_mask)
        if share.hash in self.seen:
            raise ShareRejected(ErrorCode.DUPLICATE, RejectReason.DUPLICATE, "Duplicate share", share)
        if share.difficulty < self.difficulty:
            raise ShareRejected(
                ErrorCode.LOW_DIFFICULTY,
                RejectReason.LOW_DIFFICULTY,
                f"Low difficulty share ({share.difficulty:.6g} < {self.difficulty:.6g})",
                share,
            )
        self.seen[share.hash] = None
        return share
