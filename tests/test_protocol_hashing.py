"""The share check's two paths: protocol._sha256d (C, OpenSSL) and protocol.work's Python, each
against hashlib (the hashing) or a regex (the hex fields) and against each other, on random inputs
and on a real mainnet share; and the C one built wherever this machine can build it, so a failed
build cannot pass unseen (setup.py marks the extension optional, which turns a compile error into a
warning)."""

from __future__ import annotations

import hashlib
import re
import shutil
import sysconfig
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import work
from protocol.messages import parse_notify
from protocol.work import Job
from tests.vectors import fields, notify_01_params

Fold = Callable[[bytes, bytes, bytes, bytes], bytes]


def reference_sha256d(data: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()


def reference_root(prefix: bytes, extranonce2: bytes, coinb2: bytes, branches: list[bytes]) -> bytes:
    root = reference_sha256d(prefix + extranonce2 + coinb2)
    for branch in branches:
        root = reference_sha256d(root + branch)
    return root


def implementations() -> Iterator[tuple[str, Callable[[bytes], bytes], Fold]]:
    yield "python", work.py_sha256d, work.py_coinbase_merkle_root
    if work.native is not None:
        yield "native", work.native.sha256d, work.native.coinbase_merkle_root


def can_build_native() -> bool:
    include = Path(sysconfig.get_paths()["include"])
    return bool(shutil.which("cc")) and (include / "Python.h").exists() and Path("/usr/include/openssl/sha.h").exists()


def test_the_native_hashing_is_built_where_this_machine_can_build_it() -> None:
    if not can_build_native():
        pytest.skip("no C compiler, Python headers or OpenSSL headers here: protocol.work hashes in Python")
    assert work.native is not None, "setup.py could have built protocol/_sha256d.c: see the build's warnings"
    assert work.sha256d is work.native.sha256d
    assert work.coinbase_merkle_root is work.native.coinbase_merkle_root
    assert work.hex_bytes is work.native.hex_bytes and work.hex_uint32 is work.native.hex_uint32


@settings(max_examples=300, deadline=None)
@given(
    prefix=st.binary(max_size=300),
    extranonce2=st.binary(max_size=16),
    coinb2=st.binary(max_size=300),
    branches=st.lists(st.binary(min_size=32, max_size=32), max_size=16),
)
def test_every_implementation_folds_the_merkle_branches_as_hashlib_does(
    prefix: bytes, extranonce2: bytes, coinb2: bytes, branches: list[bytes]
) -> None:
    expected = reference_root(prefix, extranonce2, coinb2, branches)
    for name, sha256d, fold in implementations():
        assert fold(prefix, extranonce2, coinb2, b"".join(branches)) == expected, name
        assert sha256d(prefix + coinb2) == reference_sha256d(prefix + coinb2), name
    assert work.merkle_root(reference_sha256d(prefix), branches) == reference_root(prefix, b"", b"", branches)


def test_the_native_functions_take_any_bytes_like_and_refuse_what_is_not() -> None:
    if work.native is None:
        pytest.skip("protocol._sha256d is not built here")
    fold, sha256d = work.native.coinbase_merkle_root, work.native.sha256d
    branches = bytes(range(64))
    expected = reference_root(b"ab", b"cd", b"ef", [branches[:32], branches[32:]])
    assert fold(bytearray(b"ab"), memoryview(b"cd"), b"ef", bytearray(branches)) == expected
    assert sha256d(memoryview(b"x" * 100)) == reference_sha256d(b"x" * 100)
    with pytest.raises(ValueError, match="32-byte"):
        fold(b"", b"", b"", bytes(33))
    with pytest.raises(TypeError):
        fold(b"", b"", b"")  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        fold("ab", b"", b"", b"")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        sha256d("ab")  # type: ignore[arg-type]


def reference_hex(value: str, digits: int) -> bytes | None:
    """What a share's hex field must be: `digits` (even, at least 2) hex digits in either case."""
    ok = digits > 0 and digits % 2 == 0 and re.fullmatch(f"[0-9a-fA-F]{{{digits}}}", value)
    return bytes.fromhex(value) if ok else None


def hex_readers() -> Iterator[tuple[str, Callable[[str, int], bytes | None], Callable[[str], int | None]]]:
    yield "python", work.py_hex_bytes, work.py_hex_uint32
    if work.native is not None:
        yield "native", work.native.hex_bytes, work.native.hex_uint32


# What a hostile submit puts in a hex field: the look-alikes int() and fromhex() would forgive.
_TRICKS = ["0x", "0X", " ", "\t", "\n", "_", "+", "-", "g", "G", "\x00", "١", "ａ", "é", "\ud800", "ff", "AB", "09"]


@settings(max_examples=600, deadline=None)
@given(
    value=st.one_of(
        st.text(alphabet="0123456789abcdefABCDEF", max_size=18),
        st.lists(st.sampled_from(_TRICKS + list("0123456789abcdefABCDEF")), max_size=10).map("".join),
        st.text(max_size=10),
    ),
    digits=st.sampled_from([0, 1, 2, 7, 8, 9, 16]),
)
def test_every_implementation_reads_a_hex_field_exactly_as_the_regex_does(value: str, digits: int) -> None:
    expected = reference_hex(value, digits)
    for name, hex_bytes, hex_uint32 in hex_readers():
        assert hex_bytes(value, digits) == expected, (name, value, digits)
        eight = reference_hex(value, 8)
        assert hex_uint32(value) == (None if eight is None else int.from_bytes(eight, "big")), (name, value)


def test_the_native_hex_readers_refuse_what_is_not_text() -> None:
    if work.native is None:
        pytest.skip("protocol._sha256d is not built here")
    native = work.native
    assert native.hex_uint32("FFFFFFFF") == 0xFFFFFFFF and native.hex_uint32("00000000") == 0
    assert native.hex_bytes("", 0) is None and native.hex_bytes("ab", -2) is None
    for wrong in (b"00000000", None, 12345678):
        with pytest.raises(TypeError):
            native.hex_uint32(wrong)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            native.hex_bytes(wrong, 8)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        native.hex_bytes("00")  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        native.hex_bytes("00", "2")  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["python", "native"])
def test_a_real_mainnet_share_hashes_the_same_through_either_implementation(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    chosen = {impl[0]: impl for impl in implementations()}
    if name not in chosen:
        pytest.skip("protocol._sha256d is not built here")
    _, sha256d, fold = chosen[name]
    _, hex_bytes, hex_uint32 = {reader[0]: reader for reader in hex_readers()}[name]
    monkeypatch.setattr(work, "sha256d", sha256d)
    monkeypatch.setattr(work, "coinbase_merkle_root", fold)
    monkeypatch.setattr(work, "hex_bytes", hex_bytes)
    monkeypatch.setattr(work, "hex_uint32", hex_uint32)
    v = fields("01")
    job = Job(parse_notify(notify_01_params("slush-683")), v["extranonce1"], len(v["extranonce2"]) // 2, 1.0)
    share = job.check_share(v["extranonce2"], v["ntime"], v["nonce"], v["version_bits"], work.BIP320_MASK)
    assert job.merkle_root(bytes.fromhex(v["extranonce2"])).hex() == v["merkle_root(header byte order)"]
    assert share.header.hex() == v["header(80B hex)"]
    assert share.hex_hash == v["hash (display)"]
    assert int(share.difficulty) == 683
