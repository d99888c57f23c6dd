"""Share math edge cases: version rolling, difficulty, nbits, block candidates, hex fields, duplicates,
low difficulty, the ntime window, and the merkle cache against an independent re-implementation."""

from __future__ import annotations

import hashlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import work
from protocol.errors import ErrorCode, InvalidMessage, RejectReason
from protocol.messages import Notify, decode_server_message, encode_notification, parse_notify
from protocol.work import (
    DIFF1,
    Job,
    Share,
    ShareRejected,
    block_header,
    difficulty_from_target,
    display_hash,
    hash_value,
    merkle_root,
    prevhash_to_header,
    roll_version,
    share_difficulty,
    target_from_nbits,
)

U32 = st.integers(0, 0xFFFFFFFF)
PREVHASH = "171592f223740e92d223f6e68bff25279af7ac4f2246451e0000000200000000"
EN1 = "57a6f098"
NTIME = 0x64B3F3EC


def sha256d(data: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()


def make_notify(
    *, nbits: str = "1d00ffff", version: str = "20000000", branches: int = 3, coinb1: str = "aa01", coinb2: str = "bb02"
) -> Notify:
    return parse_notify(
        [
            "job-1",
            PREVHASH,
            coinb1,
            coinb2,
            [sha256d(bytes([i])).hex() for i in range(branches)],
            version,
            nbits,
            f"{NTIME:08x}",
            True,
        ]
    )


def make_job(*, difficulty: float = 1e-12, extranonce2_size: int = 4, **notify: str | int) -> Job:
    return Job(make_notify(**notify), EN1, extranonce2_size, difficulty)  # type: ignore[arg-type]


def reference_header(notify: Notify, extranonce1: str, extranonce2: str, ntime: str, nonce: str, version: int) -> bytes:
    """The 80-byte header built from scratch, field by field, as the Stratum docs describe it."""
    coinbase = bytes.fromhex(notify.coinb1 + extranonce1 + extranonce2 + notify.coinb2)
    root = sha256d(coinbase)
    for branch in notify.merkle_branch:
        root = sha256d(root + bytes.fromhex(branch))
    prev = bytes.fromhex(notify.prevhash)
    prev = b"".join(prev[i : i + 4][::-1] for i in range(0, 32, 4))
    return (
        struct.pack("<I", version)
        + prev
        + root
        + struct.pack("<III", int(ntime, 16), int(notify.nbits, 16), int(nonce, 16))
    )


def rejected(job: Job, *share: str | None, mask: int = 0) -> ShareRejected:
    """The ShareRejected that check_share(extranonce2, ntime, nonce, version_bits, mask) raises."""
    extranonce2, ntime, nonce, version_bits = share
    assert extranonce2 is not None and ntime is not None and nonce is not None
    with pytest.raises(ShareRejected) as refused:
        job.check_share(extranonce2, ntime, nonce, version_bits, mask)
    return refused.value


# --- version rolling ------------------------------------------------------------------------------------


@given(job_version=U32, bits=U32, mask=U32)
def test_roll_version_takes_masked_bits_from_the_miner(job_version: int, bits: int, mask: int) -> None:
    rolled = roll_version(job_version, bits, mask)
    assert rolled == (job_version & ~mask) | (bits & mask)
    assert rolled & ~mask == job_version & ~mask
    assert rolled & mask == bits & mask


@settings(deadline=None)
@given(job_version=U32, bits=U32, mask=U32)
def test_share_version_is_rolled_inside_the_mask_and_refused_outside(job_version: int, bits: int, mask: int) -> None:
    job = make_job(version=f"{job_version:08x}")
    if bits & ~mask:
        refused = rejected(job, "00000000", f"{NTIME:08x}", "00000001", f"{bits:08x}", mask=mask)
        assert (refused.code, refused.reason) == (ErrorCode.OTHER, "version-mask")
    else:
        share = job.check_share("00000000", f"{NTIME:08x}", "00000001", f"{bits:08x}", mask)
        assert share.version == (job_version & ~mask) | (bits & mask)
        assert share.header[:4] == struct.pack("<I", share.version)


def test_mask_zero_accepts_version_bits_zero_and_nothing_else() -> None:
    job = make_job(version="20000004")
    share = job.check_share("00000000", f"{NTIME:08x}", "00000001", "00000000", 0)
    assert share.version == 0x20000004
    for bits in ("00002000", "40000000", "80000000"):  # old bmminer firmware rolled 40000000/80000000
        assert rejected(job, "00000000", f"{NTIME:08x}", "00000002", bits, mask=0).reason == "version-mask"


# --- difficulty and targets -----------------------------------------------------------------------------


def test_share_difficulty_is_diff1_over_the_little_endian_hash_value() -> None:
    assert DIFF1 == 0xFFFF << 208
    at_diff1 = DIFF1.to_bytes(32, "little")
    assert hash_value(at_diff1) == DIFF1
    assert share_difficulty(at_diff1) == 1.0
    assert display_hash(at_diff1) == "00000000ffff" + "0" * 52  # as explorers show it
    assert share_difficulty((DIFF1 // 1024).to_bytes(32, "little")) == 1024.0
    assert share_difficulty((DIFF1 * 2).to_bytes(32, "little")) == 0.5
    # byte order matters: the same bytes read big-endian are a vastly different number
    assert share_difficulty(at_diff1[::-1]) > 1e50
    assert share_difficulty(bytes(32)) == float("inf")


@pytest.mark.parametrize(
    ("nbits", "target"),
    [
        (0x1D00FFFF, 0xFFFF << 208),  # genesis / difficulty 1
        (0x1705AE3A, 0x05AE3A << 160),  # mainnet, May 2023
        (0x192495F8, 0x2495F8 << 176),  # testnet job of vector 02
        (0x207FFFFF, 0x7FFFFF << 232),  # regtest
        (0x2100FFFF, 0xFFFF << 240),
        (0x03123456, 0x123456),
        (0x02123456, 0x1234),
        (0x01123456, 0x12),
    ],
)
def test_target_from_nbits(nbits: int, target: int) -> None:
    assert target_from_nbits(nbits) == target


def test_network_difficulty_from_nbits() -> None:
    assert difficulty_from_target(target_from_nbits(0x1D00FFFF)) == 1.0
    assert make_job(nbits="1d00ffff").network_difficulty == 1.0
    assert round(make_job(nbits="1705ae3a").network_difficulty) == 49_549_703_178_593
    assert make_job(nbits="207fffff").network_difficulty < 1e-9


@pytest.mark.parametrize("nbits", ["2100ffff", "207fffff"])
def test_block_candidate_flag_follows_the_network_target(nbits: str) -> None:
    job = make_job(nbits=nbits)
    target = target_from_nbits(int(nbits, 16))
    flags = []
    for nonce in range(64):
        share = job.check_share("00000000", f"{NTIME:08x}", f"{nonce:08x}", None, 0)
        # independent reading: the explorer's (big-endian) hex against the target
        assert share.is_block == (int(share.hex_hash, 16) <= target)
        flags.append(share.is_block)
    assert any(flags)  # with a target this easy some (2100ffff: nearly all) shares are blocks
    if nbits == "207fffff":
        assert not all(flags)  # regtest's limit is ~2^255: about half the hashes


def test_mainnet_difficulty_share_is_not_a_block() -> None:
    job = make_job(nbits="1705ae3a")
    shares = [job.check_share("00000000", f"{NTIME:08x}", f"{nonce:08x}", None, 0) for nonce in range(16)]
    assert not any(share.is_block for share in shares)


# --- hex fields -----------------------------------------------------------------------------------------

BAD_HEX8 = [
    "0x12345",
    "0x123456",  # right length, but a prefix int(..., 16) would accept
    " 1234567",
    "1234567 ",
    "+1234567",
    "-1234567",
    "1_234567",
    "１２３４５６７８",  # full-width digits: int(..., 16) accepts them
    "1234567\n",
    "123456",
    "1234567",
    "123456789",
    "1234567g",
    "",
]


@pytest.mark.parametrize("bad", BAD_HEX8)
@pytest.mark.parametrize("field", ["ntime", "nonce", "version_bits"])
def test_eight_digit_hex_fields_refuse_anything_but_eight_hex_digits(field: str, bad: str) -> None:
    job = make_job()
    share = {"extranonce2": "00000000", "ntime": f"{NTIME:08x}", "nonce": "00000001", "version_bits": "00000000"}
    share[field] = bad
    refused = rejected(job, *share.values(), mask=0xFFFFFFFF)
    assert (refused.code, refused.reason) == (ErrorCode.OTHER, "malformed")
    assert not job.seen


@pytest.mark.parametrize(
    "bad", ["0000000", "000000000", "0000000000", "00 00000", "0x000000", "+0000000", "０００００００0", "0000000g", ""]
)
def test_extranonce2_must_be_hex_of_the_subscribed_size(bad: str) -> None:
    job = make_job(extranonce2_size=4)
    refused = rejected(job, bad, f"{NTIME:08x}", "00000001", None)
    assert (refused.code, refused.reason) == (ErrorCode.OTHER, "malformed")
    wide = make_job(extranonce2_size=8)
    assert rejected(wide, "00000000", f"{NTIME:08x}", "00000001", None).reason == "malformed"
    assert wide.check_share("0000000000000000", f"{NTIME:08x}", "00000001", None, 0)


@pytest.mark.parametrize("field", ["version", "nbits", "ntime"])
@pytest.mark.parametrize("bad", ["+1234567", " 1234567", "0x12345", "１２３４５６７８", "1234567", "123456789"])
def test_notify_refuses_malformed_eight_digit_fields(field: str, bad: str) -> None:
    good = {"version": "20000000", "nbits": "1d00ffff", "ntime": "64b3f3ec"}

    def notify_params(fields: dict[str, str]) -> list[object]:
        return ["j", PREVHASH, "aa", "bb", [], fields["version"], fields["nbits"], fields["ntime"], True]

    assert isinstance(decode_server_message(encode_notification("mining.notify", notify_params(good))), Notify)
    with pytest.raises(ValueError):
        parse_notify(notify_params({**good, field: bad}))
    refused = decode_server_message(encode_notification("mining.notify", notify_params({**good, field: bad})))
    assert isinstance(refused, InvalidMessage) and refused.method == "mining.notify"


def test_letter_case_does_not_change_the_share_and_the_second_spelling_is_a_duplicate() -> None:
    job = make_job()
    mask = 0x1FFFE000
    lower = job.check_share("abcdef01", f"{NTIME:08x}".lower(), "deadbeef", "1fffe000", mask)
    refused = rejected(job, "ABCDEF01", f"{NTIME:08x}".upper(), "DEADBEEF", "1FFFE000", mask=mask)
    assert (refused.code, refused.reason) == (ErrorCode.DUPLICATE, "duplicate")
    upper = make_job().hash_share("ABCDEF01", f"{NTIME:08X}", "DEADBEEF", "1FFFE000", mask)
    assert upper.hash == lower.hash and upper.header == lower.header


def test_duplicate_key_covers_version_bits() -> None:
    job = make_job()
    job.check_share("00000000", f"{NTIME:08x}", "00000001", "00002000", 0x1FFFE000)
    # same nonce, other version bits: a different header, so not a duplicate
    job.check_share("00000000", f"{NTIME:08x}", "00000001", "00004000", 0x1FFFE000)
    assert rejected(job, "00000000", f"{NTIME:08x}", "00000001", "00004000", mask=0x1FFFE000).reason == "duplicate"


# --- low difficulty and the ntime window ----------------------------------------------------------------


def test_low_difficulty_share_is_refused_and_not_remembered() -> None:
    job = make_job(difficulty=1e12)  # no share of ours reaches this
    share = ("00000000", f"{NTIME:08x}", "00000001", None)
    first = rejected(job, *share)
    assert (first.code, first.reason) == (ErrorCode.LOW_DIFFICULTY, "low-difficulty") == (23, "low-difficulty")
    again = rejected(job, *share)
    assert again.reason == "low-difficulty"  # not "duplicate": a refused share is not remembered
    assert not job.seen
    job.difficulty = 1e-12
    accepted = job.check_share(*share, 0)
    assert accepted.difficulty >= job.difficulty
    assert rejected(job, *share).reason == "duplicate"


def test_share_exactly_at_job_difficulty_is_accepted() -> None:
    probe = make_job().hash_share("00000000", f"{NTIME:08x}", "00000001", None, 0)
    job = make_job(difficulty=probe.difficulty)
    assert job.check_share("00000000", f"{NTIME:08x}", "00000001", None, 0).hash == probe.hash


@pytest.mark.parametrize(
    ("offset", "accepted"), [(-1, False), (-3600, False), (0, True), (1, True), (7200, True), (7201, False)]
)
def test_ntime_window(offset: int, accepted: bool) -> None:
    job = make_job()
    ntime = f"{NTIME + offset:08x}"
    if accepted:
        share = job.check_share("00000000", ntime, "00000001", None, 0)
        assert share.header[68:72] == struct.pack("<I", NTIME + offset)
    else:
        refused = rejected(job, "00000000", ntime, "00000001", None)
        assert (refused.code, refused.reason) == (ErrorCode.OTHER, "ntime")


# --- the merkle cache and the whole header, against a from-scratch implementation ----------------------

HEX_BYTES = st.binary(min_size=0, max_size=40).map(bytes.hex)


@settings(deadline=None, max_examples=60)
@given(
    coinb1=HEX_BYTES,
    coinb2=HEX_BYTES,
    branches=st.integers(0, 14),
    extranonce2s=st.lists(st.binary(min_size=4, max_size=4), min_size=1, max_size=150),
)
def test_merkle_cache_matches_the_uncached_computation(
    coinb1: str, coinb2: str, branches: int, extranonce2s: list[bytes]
) -> None:
    notify = make_notify(coinb1=coinb1, coinb2=coinb2, branches=branches)
    job = Job(notify, EN1, 4, 1e-12)
    branch_bytes = [bytes.fromhex(b) for b in notify.merkle_branch]
    for extranonce2 in extranonce2s + extranonce2s[::-1]:  # repeats, and more distinct values than the cache holds
        coinbase = bytes.fromhex(coinb1 + EN1) + extranonce2 + bytes.fromhex(coinb2)
        expected = merkle_root(sha256d(coinbase), branch_bytes)
        root = sha256d(coinbase)
        for branch in branch_bytes:
            root = sha256d(root + branch)
        assert expected == root
        assert job.merkle_root(extranonce2) == expected


@settings(deadline=None, max_examples=100)
@given(
    version=U32,
    bits=U32,
    mask=U32,
    extranonce2=st.binary(min_size=4, max_size=4).map(bytes.hex),
    ahead=st.integers(0, 7200),
    nonce=U32,
    upper=st.booleans(),
)
def test_share_header_matches_a_from_scratch_header(
    version: int, bits: int, mask: int, extranonce2: str, ahead: int, nonce: int, upper: bool
) -> None:
    notify = make_notify(version=f"{version:08x}", branches=5)
    job = Job(notify, EN1, 4, 1e-12)
    bits &= mask
    extranonce2, ntime, nonce_hex, bits_hex = (
        f.upper() if upper else f for f in (extranonce2, f"{NTIME + ahead:08x}", f"{nonce:08x}", f"{bits:08x}")
    )
    share: Share = job.check_share(extranonce2, ntime, nonce_hex, bits_hex, mask)
    header = reference_header(notify, EN1, extranonce2, ntime, nonce_hex, version=(version & ~mask) | bits)
    assert share.header == header
    assert share.hash == sha256d(header)
    assert share.hex_hash == sha256d(header)[::-1].hex()
    assert share.difficulty == DIFF1 / int(share.hex_hash, 16)
    assert prevhash_to_header(notify.prevhash) == header[4:36]


# --- one formula: Job.hash_share is the exported helpers composed ------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    extranonce2=st.binary(min_size=4, max_size=4),
    ntime_ahead=st.integers(0, 7200),
    nonce=U32,
    bits=U32,
    mask=st.sampled_from([0, 0x1FFFE000, 0xFFFFFFFF]),
    branches=st.integers(0, 12),
)
def test_hash_share_is_the_exported_helpers_composed(
    extranonce2: bytes, ntime_ahead: int, nonce: int, bits: int, mask: int, branches: int
) -> None:
    """hash_share must agree with sha256d/merkle_root/block_header/share_difficulty applied by hand
    (the proxy, the simulated pool and `python -m protocol share` all rely on one formula)."""
    notify = make_notify(branches=branches)
    job = Job(notify, EN1, 4, 1e-12)
    bits &= mask
    ntime = NTIME + ntime_ahead
    share = job.hash_share(extranonce2.hex(), f"{ntime:08x}", f"{nonce:08x}", f"{bits:08x}", mask)
    coinbase_hash = work.sha256d(bytes.fromhex(notify.coinb1 + EN1) + extranonce2 + bytes.fromhex(notify.coinb2))
    root = work.merkle_root(coinbase_hash, [bytes.fromhex(b) for b in notify.merkle_branch])
    version = roll_version(int(notify.version, 16), bits, mask)
    header = block_header(version, prevhash_to_header(notify.prevhash), root, ntime, int(notify.nbits, 16), nonce)
    assert header == reference_header(notify, EN1, extranonce2.hex(), f"{ntime:08x}", f"{nonce:08x}", version)
    assert share.header == header and share.hash == work.sha256d(header) and share.version == version
    assert share.difficulty == share_difficulty(share.hash)
    assert share.is_block == (hash_value(share.hash) <= target_from_nbits(int(notify.nbits, 16)))


def test_hash_share_builds_headers_with_block_header() -> None:
    """The header layout exists once: block_header is the packer hash_share uses."""
    job = make_job()
    share = job.hash_share("00000000", f"{NTIME:08x}", "00000001", None, 0)
    assert share.header == block_header(share.version, job.prevhash, job.merkle_root(bytes(4)), NTIME, job.nbits, 1)
    assert len(share.header) == 80


def test_reject_reasons_are_the_ledger_strings() -> None:
    assert [r.value for r in RejectReason] == [
        "malformed",
        "ntime",
        "version-mask",
        "duplicate",
        "low-difficulty",
        "stale",
        "unauthorized",
        "not-subscribed",
        "timeout",
    ]
    assert RejectReason.LOW_DIFFICULTY == "low-difficulty" and f"{RejectReason.STALE}" == "stale"
    refused = rejected(make_job(), "00", f"{NTIME:08x}", "00000001", None)
    assert isinstance(refused.reason, RejectReason) and refused.reason == "malformed"


@given(st.binary(max_size=300), st.binary(max_size=100))
@settings(max_examples=200, deadline=None)
def test_the_share_path_sha256_is_hashlibs(prefix: bytes, rest: bytes) -> None:
    # protocol.work may hash with CPython's own SHA-256 (faster on short inputs); it must agree with
    # hashlib on every length and through copy() + update(), which Job uses for the coinbase midstate.
    state = work.sha256(prefix)
    clone = state.copy()
    clone.update(rest)
    assert clone.digest() == hashlib.sha256(prefix + rest).digest()
    assert state.digest() == hashlib.sha256(prefix).digest()
    assert work.sha256d(prefix) == hashlib.sha256(hashlib.sha256(prefix).digest()).digest()


# --- one notify line, many sessions: decoded and parsed once ------------------------------------------


def test_an_identical_notify_line_decodes_to_one_shared_notify_and_a_different_one_does_not() -> None:
    line = encode_notification("mining.notify", make_notify().params()).rstrip(b"\n")
    first, again = decode_server_message(line), decode_server_message(bytes(line))  # a new bytes object
    assert isinstance(first, Notify) and again is first
    other = decode_server_message(line.replace(b'"job-1"', b'"job-2"'))
    assert isinstance(other, Notify) and other is not first and other.job_id == "job-2"
    # A malformed notify is never remembered: it comes back as the same error every time.
    bad = line.replace(PREVHASH.encode(), b"zz")
    assert not isinstance(decode_server_message(bad), Notify)
    assert not isinstance(decode_server_message(bad), Notify)


def test_the_notify_memory_is_bounded() -> None:
    from protocol import messages

    line = encode_notification("mining.notify", make_notify().params()).rstrip(b"\n")
    for i in range(3 * messages._NOTIFIES_KEPT):
        assert isinstance(decode_server_message(line.replace(b'"job-1"', b'"job-%d"' % i)), Notify)
    assert len(messages._notifies) <= messages._NOTIFIES_KEPT
    assert len(work.job_template) <= work.job_template.kept


def test_sessions_sharing_a_notify_share_its_template_and_keep_their_own_coinbase() -> None:
    notify = make_notify(branches=12)
    mine, theirs = Job(notify, EN1, 4, 1e-12), Job(notify, "00000001", 4, 1e-12)
    assert mine.branches is theirs.branches  # parsed once
    assert work.job_template(notify) is work.job_template(notify)
    # Each session's shares still hash with its own extranonce1, and equal a Job built from an equal
    # Notify that is not the shared object (no memo hit): the template changes nothing but the cost.
    twin = parse_notify(notify.params())
    assert twin is not notify and work.job_template(twin) is not work.job_template(notify)
    for job, en1 in ((mine, EN1), (theirs, "00000001")):
        share = job.hash_share("0000002a", f"{NTIME:08x}", "00000007", None, 0)
        assert share.header == reference_header(notify, en1, "0000002a", f"{NTIME:08x}", "00000007", 0x20000000)
        fresh = Job(twin, en1, 4, 1e-12).hash_share("0000002a", f"{NTIME:08x}", "00000007", None, 0)
        assert fresh.hash == share.hash
    assert (
        mine.hash_share("0000002a", f"{NTIME:08x}", "00000007", None, 0).hash
        != theirs.hash_share("0000002a", f"{NTIME:08x}", "00000007", None, 0).hash
    )
