"""The protocol library against the real Stratum data in tests/vectors/ (values read from the files)."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from typing import Any

import pytest

from protocol.errors import ErrorCode, InvalidJSON, InvalidMessage, ProtocolError, StratumError
from protocol.messages import (
    Authorize,
    Configure,
    ConfigureOptions,
    ExtranonceSubscribe,
    Notify,
    Reconnect,
    Reply,
    Request,
    ServerRequest,
    SetDifficulty,
    SetExtranonce,
    SetVersionMask,
    ShowMessage,
    Submit,
    Subscribe,
    SubscribeResult,
    SuggestDifficulty,
    configure_options,
    decode_client_message,
    decode_server_message,
    encode_error,
    parse_notify,
    subscribe_result,
)
from protocol.work import Job, ShareRejected, display_hash
from tests.vectors import (
    CLIENT_PREFIXES,
    SERVER_PREFIXES,
    TRUNCATION_MARK,
    VectorLine,
    all_json_lines,
    fields,
    json_lines,
    notify_01_params,
    vector_file,
)

ALL_LINES = all_json_lines()


def only(number: str, predicate: Callable[[VectorLine], bool]) -> VectorLine:
    found = [line for line in json_lines(number) if not line.truncated and predicate(line)]
    assert len(found) == 1, f"expected one matching line in vector {number}, found {[str(f) for f in found]}"
    return found[0]


def params(line: VectorLine) -> list[Any]:
    value: list[Any] = line.value["params"]
    return value


def assert_printed(value: float, printed: str) -> None:
    """`value` rounds to the figure the vector prints (to the decimals it prints)."""
    decimals = len(printed.partition(".")[2])
    assert round(value, decimals) == float(printed), (value, printed)


def sha256d(data: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()


# --- 01: a real mainnet share ------------------------------------------------------------------------


def vector01_job(difficulty: float) -> tuple[Job, dict[str, str]]:
    v = fields("01")
    notify = parse_notify(notify_01_params("slush-683"))
    return Job(notify, v["extranonce1"], len(v["extranonce2"]) // 2, difficulty), v


def test_vector01_mainnet_share_hashes_exactly() -> None:
    job, v = vector01_job(difficulty=1.0)
    assert len(job.branches) == 13

    share = job.hash_share(v["extranonce2"], v["ntime"], v["nonce"], v["version_bits"], 0)

    assert job.merkle_root(bytes.fromhex(v["extranonce2"])).hex() == v["merkle_root(header byte order)"]
    assert share.header.hex() == v["header(80B hex)"]
    assert share.hex_hash == display_hash(share.hash) == v["hash (display)"]
    assert sha256d(bytes.fromhex(v["header(80B hex)"]))[::-1].hex() == v["hash (display)"]
    assert_printed(share.difficulty, v["share difficulty"])
    assert int(share.difficulty) == 683  # what the upstream ESP-Miner test asserts
    assert f"{share.version:08x}" == v["job_version"]
    assert share.is_block is False
    # A share without version bits hashes the same header as one with bits 00000000.
    assert job.hash_share(v["extranonce2"], v["ntime"], v["nonce"], None, 0).header == share.header


def test_vector01_network_target_and_difficulty() -> None:
    job, _ = vector01_job(difficulty=1.0)
    # Target for nbits 1705ae3a as block explorers and learnmeabitcoin print it.
    assert job.network_target == int("00000000000000000005ae3a" + "0" * 40, 16)
    assert round(job.network_difficulty / 1e12, 2) == 49.55  # mainnet difficulty, May 2023 (49.55 T)


def test_vector01_share_at_683_passes_pool_difficulty_683_and_fails_684() -> None:
    job, v = vector01_job(difficulty=684.0)
    with pytest.raises(ShareRejected) as refused:
        job.check_share(v["extranonce2"], v["ntime"], v["nonce"], v["version_bits"], 0)
    assert (refused.value.code, refused.value.reason) == (ErrorCode.LOW_DIFFICULTY, "low-difficulty")

    job, v = vector01_job(difficulty=683.0)
    share = job.check_share(v["extranonce2"], v["ntime"], v["nonce"], v["version_bits"], 0)
    assert share.hex_hash == v["hash (display)"]


# --- 02: a recorded Bitaxe session with a version-rolled share -------------------------------------------


def test_vector02_recorded_session_replays_to_the_exact_share() -> None:
    lines = json_lines("02")
    sent = {line.value["id"]: decode_client_message(line.data) for line in lines if line.from_client}
    received = [decode_server_message(line.data) for line in lines if not line.from_client]
    assert not [m for m in [*sent.values(), *received] if isinstance(m, ProtocolError)]
    replies = {m.id: m for m in received if isinstance(m, Reply)}

    subscribed = subscribe_result(replies[1].value())
    assert subscribed == SubscribeResult("57a6f098", 4)
    configure = sent[2]
    assert isinstance(configure, Configure)
    asked = configure_options(configure)
    assert asked == ConfigureOptions(version_rolling=True, version_rolling_mask=0xFFFFFFFF)
    granted = int(replies[2].value()["version-rolling.mask"], 16)
    mask = asked.version_rolling_mask & granted
    assert isinstance(sent[3], Authorize) and sent[3].params.password == "x"
    assert isinstance(sent[4], SuggestDifficulty) and sent[4].params.difficulty == 512
    (difficulty,) = [m.difficulty for m in received if isinstance(m, SetDifficulty)]
    (notify,) = [m for m in received if isinstance(m, Notify)]
    submit = sent[5]
    assert isinstance(submit, Submit) and submit.params.job_id == notify.job_id

    job = Job(notify, subscribed.extranonce1, subscribed.extranonce2_size, difficulty)
    p = submit.params
    share = job.check_share(p.extranonce2, p.ntime, p.nonce, p.version_bits, mask)

    v = fields("02")
    rolled = re.search(r"^# Reproduced: version = .*= 0x([0-9a-f]{8})\s*$", vector_file("02").read_text(), re.M)
    assert rolled is not None
    assert f"{share.version:08x}" == rolled.group(1) == "20002000"
    assert share.header.hex() == v["header(80B hex)"]
    assert share.hex_hash == v["hash (display)"]
    assert_printed(share.difficulty, v["share difficulty"])
    assert share.difficulty >= difficulty == 512
    assert share.is_block is False
    # The pool accepted it.
    assert replies[5].failure() is None and replies[5].value() is True


def test_vector02_version_bits_outside_the_granted_mask_are_refused() -> None:
    lines = json_lines("02")
    (notify,) = [m for m in map(decode_server_message, (x.data for x in lines)) if isinstance(m, Notify)]
    submit = decode_client_message(only("02", lambda x: x.method == "mining.submit").data)
    assert isinstance(submit, Submit)
    p = submit.params
    job = Job(notify, "57a6f098", 4, 512.0)
    with pytest.raises(ShareRejected) as refused:
        job.check_share(p.extranonce2, p.ntime, p.nonce, p.version_bits, 0x1FFF0000)  # bit 13 not granted
    assert refused.value.reason == "version-mask"


# --- 06 and 07: every line parses, or is refused with a typed error as the notes say -------------------


@pytest.mark.parametrize("line", ALL_LINES, ids=str)
def test_every_vector_line_parses_or_is_refused_with_a_typed_error(line: VectorLine) -> None:
    if line.truncated:
        cut = line.text.partition(TRUNCATION_MARK)[0].rstrip().encode()
        for decode in (decode_client_message, decode_server_message):
            assert isinstance(decode(line.data), InvalidJSON)
            assert isinstance(decode(cut), InvalidJSON)
        return
    if line.prefix:
        assert line.prefix in (CLIENT_PREFIXES if line.from_client else SERVER_PREFIXES)
    result: Any
    if line.from_client:
        result = request = decode_client_message(line.data)
        if isinstance(request, Configure):
            result = configure_options(request)
        elif not isinstance(request, ProtocolError):
            assert not isinstance(request, Request), "a known method decoded to the generic Request"
    else:
        result = answer = decode_server_message(line.data)
        if isinstance(answer, Reply):
            assert answer.failure() is None or isinstance(answer.failure(), StratumError)
        elif isinstance(answer, ServerRequest):
            assert answer.method == "client.get_version"
    if line.must_be_rejected:
        assert isinstance(result, ProtocolError), result
        assert result.id == line.value["id"]  # so the peer can still be answered
    else:
        assert not isinstance(result, ProtocolError), result


def test_submit_with_numbers_is_refused_carrying_its_id() -> None:
    line = only("06", lambda x: x.method == "mining.submit" and x.must_be_rejected)
    refused = decode_client_message(line.data)
    assert isinstance(refused, InvalidMessage)
    assert (refused.request_id, refused.id, refused.method) == (1, 1, "mining.submit")


def test_configure_min_bit_count_negative_is_refused() -> None:
    line = only("06", lambda x: x.method == "mining.configure" and x.must_be_rejected)
    configure = decode_client_message(line.data)
    assert isinstance(configure, Configure)
    refused = configure_options(configure)
    assert isinstance(refused, InvalidMessage)
    assert (refused.id, refused.method) == (0, "mining.configure")


def test_configure_min_bit_count_as_string_or_number_is_accepted_alike() -> None:
    lines = [
        x
        for x in json_lines("06")
        if x.method == "mining.configure"
        and "version-rolling.min-bit-count" in params(x)[1]
        and not x.must_be_rejected
        and x.value["id"] == 0
    ]
    assert [type(params(x)[1]["version-rolling.min-bit-count"]) for x in lines] == [str, int]
    options = []
    for line in lines:
        configure = decode_client_message(line.data)
        assert isinstance(configure, Configure)
        options.append(configure_options(configure))
    assert (
        options[0]
        == options[1]
        == ConfigureOptions(version_rolling=True, version_rolling_mask=0x1FFFFFE0, version_rolling_min_bit_count=16)
    )


def test_configure_bip310_example_and_devices_without_min_bit_count() -> None:
    def options(number: str, predicate: Callable[[VectorLine], bool]) -> ConfigureOptions | InvalidMessage:
        configure = decode_client_message(only(number, lambda x: x.method == "mining.configure" and predicate(x)).data)
        assert isinstance(configure, Configure)
        return configure_options(configure)

    assert options("06", lambda x: x.value["id"] == 1) == ConfigureOptions(  # BIP310's own example
        version_rolling=True,
        version_rolling_mask=0x1FFFE000,
        version_rolling_min_bit_count=2,
        minimum_difficulty=2048.0,
    )
    assert options("06", lambda x: x.value["id"] == 2) == ConfigureOptions(  # Bitaxe: no min-bit-count
        version_rolling=True, version_rolling_mask=0xFFFFFFFF
    )
    assert options("07", lambda x: x.prefix == "ASIC") == ConfigureOptions(  # Antminer, before subscribe
        version_rolling=True, version_rolling_mask=0x00C00000, version_rolling_min_bit_count=2
    )


def test_subscribe_forms() -> None:
    one = decode_client_message(only("06", lambda x: x.method == "mining.subscribe" and len(params(x)) == 1).data)
    assert isinstance(one, Subscribe) and one.params.user_agent == "bitaxe v2.2" and one.params.session_id is None
    two = decode_client_message(only("06", lambda x: x.method == "mining.subscribe" and len(params(x)) == 2).data)
    assert isinstance(two, Subscribe)
    assert (two.id, two.params.user_agent, two.params.session_id) == (1, "test-agent", "abc")
    bosminer_line = only("07", lambda x: x.method == "mining.subscribe" and params(x)[1:] == [None])
    bosminer = decode_client_message(bosminer_line.data)
    assert isinstance(bosminer, Subscribe)
    assert bosminer.params.user_agent == params(bosminer_line)[0] and bosminer.params.session_id is None


def test_subscribe_results_double_nested_and_flat() -> None:
    def result_of(line: VectorLine) -> Any:
        reply = decode_server_message(line.data)
        assert isinstance(reply, Reply) and reply.failure() is None
        return reply.value()

    nested = only("06", lambda x: x.method is None and x.value["id"] == 2 and isinstance(x.value["result"], list))
    assert subscribe_result(result_of(nested)) == SubscribeResult("4de05269", 8)

    flat = only("06", lambda x: x.method is None and x.value["id"] == 0)
    result = result_of(flat)
    assert isinstance(result[0][0], str)  # subscriptions not double-nested
    assert subscribe_result(result) is None  # "<en1>" is a placeholder in the source, not hex
    result[1] = "4DE05269"
    assert subscribe_result(result) == SubscribeResult("4de05269", 4)

    # Every real pool's subscribe reply in the transcripts: ckpool-style nesting, one or two subscriptions.
    transcripts = {
        line.lineno: subscribe_result(result_of(line))
        for line in json_lines("07")
        if not line.truncated and line.method is None and isinstance(line.value.get("result"), list)
    }
    readable = {k: v for k, v in transcripts.items() if v is not None}
    assert sorted((v.extranonce1, v.extranonce2_size) for v in readable.values()) == sorted(
        [("7d7d0000", 4), ("1e0a0000", 8), ("7004ca01", 4), ("e97aecf9", 4)]
    )
    # ...and the one whose extranonce1 the issue redacted to "..." is not mistaken for one.
    assert len(transcripts) - len(readable) == 1


def test_error_reply_shapes_normalise_to_one_stratum_error() -> None:
    replies = [decode_server_message(x.data) for x in json_lines("06") if not x.from_client and x.method is None]
    assert all(isinstance(r, Reply) for r in replies)
    failures = [(r.id, f.code, f.message, f.data) for r in replies if isinstance(r, Reply) and (f := r.failure())]
    assert failures == [
        (4, ErrorCode.JOB_NOT_FOUND, "Job not found", ""),
        (8, ErrorCode.OTHER, "Above target 2", None),  # ckpool: result false + reject-reason
        (618, ErrorCode.OTHER, "Stale", None),  # bare string, result false
        (618, ErrorCode.OTHER, "Stale", None),  # bare string, result null
        (42, ErrorCode.DUPLICATE, "duplicate share", None),  # JSON-RPC 2.0 object
    ]
    succeeded = [r.id for r in replies if isinstance(r, Reply) and r.failure() is None]
    assert succeeded == [1, 2, 0, 32769]

    authorize = decode_server_message(only("07", lambda x: x.prefix == "<" and x.value["id"] == 2).data)
    assert isinstance(authorize, Reply)
    assert authorize.failure() == StratumError(20, "Authorization validation error", ", ")


def test_normalised_errors_reencode_in_the_classic_shape() -> None:
    for line in json_lines("06"):
        reply = decode_server_message(line.data)
        if not isinstance(reply, Reply) or (failure := reply.failure()) is None:
            continue
        encoded = encode_error(reply.id, failure)
        again = decode_server_message(encoded)
        assert isinstance(again, Reply) and again.id == reply.id
        assert again.failure() == failure
        assert again.value() is None
        assert json.loads(encoded)["error"] == [failure.code, failure.message, failure.data]


def test_big_request_ids_survive() -> None:
    reply = decode_server_message(only("06", lambda x: x.value.get("id") == 32769).data)
    assert isinstance(reply, Reply)
    assert reply.id == 32769 and reply.value() is True and reply.failure() is None
    spotbtc = b'{"params": ["spotbtc1.m30s40x16", "2", "147a3f0000000000", "6436eddf", "41d5deb0", "00000000"], '
    submit = decode_client_message(spotbtc + b'"id": 2196, "method": "mining.submit"}')  # quoted in 06's notes
    assert isinstance(submit, Submit) and submit.id == 2196 and submit.params.version_bits == "00000000"


def test_server_notifications() -> None:
    decoded = {
        x: decode_server_message(x.data)
        for x in json_lines("06") + json_lines("07")
        if not x.truncated and not x.from_client and x.method
    }
    for line, message in decoded.items():
        if line.method == "mining.set_difficulty":
            assert message == SetDifficulty(float(params(line)[0]))
    difficulties = [m.difficulty for m in decoded.values() if isinstance(m, SetDifficulty)]
    assert 100.5 in difficulties and 16383.75 in difficulties  # fractional, kept exactly
    masks = sorted(m.mask for m in decoded.values() if isinstance(m, SetVersionMask))
    assert masks == [0x00003000, 0x1FFFE000]
    assert [m for m in decoded.values() if isinstance(m, SetExtranonce)] == [SetExtranonce("deadbeef", 8)]
    assert [m for m in decoded.values() if isinstance(m, Reconnect)] == [Reconnect(None, None, 0)]
    assert [m for m in decoded.values() if isinstance(m, ShowMessage)] == [ShowMessage("Welcome to the pool!")]
    assert [m for m in decoded.values() if isinstance(m, ServerRequest)] == [
        ServerRequest("client.get_version", [], 10)  # has an id: the miner must answer it
    ]


def test_notification_without_id_key_and_before_the_reply() -> None:
    antpool = only("07", lambda x: x.prefix == "AntPool" and x.method == "mining.set_difficulty")
    assert "id" not in antpool.value
    assert decode_server_message(antpool.data) == SetDifficulty(262144.0)
    ocean = only("07", lambda x: "BEFORE" in x.comment)
    assert decode_server_message(ocean.data) == SetDifficulty(16383.75)


def test_notify_with_a_tenth_param_before_clean_jobs() -> None:
    nine = params(only("02", lambda x: x.method == "mining.notify"))
    ten = [*nine[:-1], nine[7], nine[-1]]  # 06: [..., version, nbits, ntime, <extra>, clean_jobs]
    expected = decode_server_message(only("02", lambda x: x.method == "mining.notify").data)
    assert isinstance(expected, Notify)
    assert parse_notify(ten) == expected
    line = b'{"id":null,"method":"mining.notify","params":' + json.dumps(ten).encode() + b"}"
    assert decode_server_message(line) == expected
    for wrong in (nine[:-1], [*ten[:-1], "x", ten[-1]]):
        refused = decode_server_message(
            b'{"id":null,"method":"mining.notify","params":' + json.dumps(wrong).encode() + b"}"
        )
        assert isinstance(refused, InvalidMessage) and refused.method == "mining.notify"


def test_client_requests_from_device_transcripts() -> None:
    submit = decode_client_message(only("07", lambda x: x.prefix == "tx:" and x.method == "mining.submit").data)
    assert isinstance(submit, Submit)
    assert (len(submit.params.job_id), len(submit.params.extranonce2), submit.params.version_bits) == (
        16,
        16,
        "01660000",
    )
    nerdminer = decode_client_message(
        only("07", lambda x: x.method == "mining.suggest_difficulty" and params(x)[0] < 1).data
    )
    assert isinstance(nerdminer, SuggestDifficulty) and nerdminer.params.difficulty == 0.00015
    extranonce = decode_client_message(only("07", lambda x: x.method == "mining.extranonce.subscribe").data)
    assert extranonce == ExtranonceSubscribe(id=5, params=[])
