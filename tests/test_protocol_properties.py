"""Property tests: encode/decode round trips, decoders and framer on arbitrary bytes, framing rules."""

from __future__ import annotations

import itertools
import json
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.errors import InvalidJSON, LineTooLong, ProtocolError, StratumError
from protocol.framing import LineFramer
from protocol.messages import (
    Authorize,
    AuthorizeParams,
    ClientMessage,
    Configure,
    ConfigureOptions,
    ConfigureParams,
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
    SubmitParams,
    Subscribe,
    SubscribeParams,
    SubscribeResult,
    SuggestDifficulty,
    SuggestDifficultyParams,
    configure_options,
    decode_client_message,
    decode_server_message,
    encode_message,
    encode_notify,
    encode_reply,
    encode_request,
    subscribe_result,
)

CLIENT_TYPES = (Subscribe, Authorize, Configure, ExtranonceSubscribe, SuggestDifficulty, Submit, Request)
SERVER_TYPES = (
    Reply,
    SetDifficulty,
    Notify,
    SetExtranonce,
    SetVersionMask,
    Reconnect,
    ShowMessage,
    ServerRequest,
)
CLIENT_METHODS = [str(t.__struct_config__.tag) for t in CLIENT_TYPES[:-1]]
SERVER_METHODS = [
    "mining.notify",
    "mining.set_difficulty",
    "mining.set_extranonce",
    "mining.set_version_mask",
    "client.reconnect",
    "client.show_message",
    "client.get_version",
    "mining.ping",
]
PROPERTY = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- strategies -----------------------------------------------------------------------------------------

HEX_DIGITS = "0123456789abcdefABCDEF"
ints64 = st.integers(-(2**63), 2**63 - 1)
finite = st.floats(allow_nan=False, allow_infinity=False)
json_values = st.recursive(
    st.none() | st.booleans() | ints64 | finite | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
request_ids = st.none() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=16)
opt_text = st.none() | st.text(max_size=24)


def hex_of(digits: int) -> st.SearchStrategy[str]:
    return st.text(alphabet=HEX_DIGITS, min_size=digits, max_size=digits)


hex_bytes = st.integers(0, 48).flatmap(lambda n: hex_of(2 * n))
hex8 = hex_of(8)

subscribes = st.builds(
    Subscribe,
    id=request_ids,
    params=st.builds(
        SubscribeParams,
        user_agent=opt_text,
        session_id=opt_text,
        host=opt_text,
        port=st.none() | st.integers(0, 65535) | st.text(max_size=6),
    ),
)
authorizes = st.builds(
    Authorize, params=st.builds(AuthorizeParams, worker=st.text(max_size=80), password=opt_text), id=request_ids
)
configures = st.builds(
    Configure,
    params=st.builds(
        ConfigureParams,
        extensions=st.lists(
            st.sampled_from(["version-rolling", "minimum-difficulty", "subscribe-extranonce"]) | st.text(max_size=12),
            max_size=4,
        ),
        options=st.dictionaries(st.text(max_size=30), json_values, max_size=4),
    ),
    id=request_ids,
)
extranonce_subscribes = st.builds(ExtranonceSubscribe, id=request_ids, params=st.lists(json_values, max_size=3))
suggests = st.builds(
    SuggestDifficulty,
    params=st.builds(SuggestDifficultyParams, difficulty=finite, extra=json_values),
    id=request_ids,
)
submits = st.builds(
    Submit,
    params=st.builds(
        SubmitParams,
        worker=st.text(max_size=80),
        job_id=st.text(max_size=20),
        extranonce2=hex_bytes,
        ntime=hex8,
        nonce=hex8,
        version_bits=st.none() | hex8,
    ),
    id=request_ids,
)
unknown_requests = st.builds(
    Request,
    method=st.text(max_size=30).filter(lambda m: m not in CLIENT_METHODS),
    params=st.lists(json_values, max_size=5),
    id=request_ids,
)
client_messages = subscribes | authorizes | configures | extranonce_subscribes | suggests | submits | unknown_requests

notifies = st.builds(
    Notify,
    job_id=st.text(min_size=1, max_size=24),
    prevhash=hex_of(64),
    coinb1=hex_bytes,
    coinb2=hex_bytes,
    merkle_branch=st.lists(hex_of(64), max_size=16),
    version=hex8,
    nbits=hex8,
    ntime=hex8,
    clean_jobs=st.booleans(),
)


def messy_json(value: Any) -> st.SearchStrategy[str]:
    """`value` as JSON text with arbitrary (valid) spacing and escaping, as different pools format it."""
    return st.builds(
        lambda item, comma, colon, ascii_only: json.dumps(item, separators=(comma, colon), ensure_ascii=ascii_only),
        st.just(value),
        st.sampled_from([",", ", ", " ,  "]),
        st.sampled_from([":", ": ", " : "]),
        st.booleans(),
    )


any_method = st.sampled_from(CLIENT_METHODS + SERVER_METHODS) | st.text(max_size=12)
json_objects = st.fixed_dictionaries(
    {},
    optional={
        "id": json_values,
        "method": any_method | json_values,
        "params": st.lists(json_values | hex8 | hex_of(64), max_size=11) | json_values,
        "result": json_values,
        "error": json_values,
        "reject-reason": json_values,
        "jsonrpc": st.just("2.0"),
    },
)


@st.composite
def junk_lines(draw: st.DrawFn) -> bytes:
    """JSON-RPC-looking lines, sometimes truncated or with a byte changed."""
    data = json.dumps(draw(json_objects)).encode()
    mutation = draw(st.sampled_from(["none", "truncate", "replace", "insert"]))
    if data and mutation != "none":
        at = draw(st.integers(0, len(data) - 1))
        if mutation == "truncate":
            data = data[:at]
        else:
            byte = bytes([draw(st.integers(0, 255))])
            data = data[:at] + byte + data[at + (mutation == "replace") :]
    return data


# --- round trips ----------------------------------------------------------------------------------------


@PROPERTY
@given(client_messages)
def test_client_messages_round_trip(message: ClientMessage) -> None:
    assert decode_client_message(encode_message(message)) == message
    method = message.method if isinstance(message, Request) else str(message.__struct_config__.tag)
    params = msgspec.to_builtins(message.params)
    assert decode_client_message(encode_request(message.id, method, params)) == message


@PROPERTY
@given(notifies)
def test_notify_round_trips(notify: Notify) -> None:
    line = encode_notify(notify)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert decode_server_message(line) == notify


@PROPERTY
@given(
    reply_id=request_ids,
    new_id=request_ids,
    result=json_values.flatmap(messy_json),
    error=json_values.flatmap(messy_json),
    reason=st.none() | st.text(max_size=20),
)
def test_encode_reply_relays_result_and_error_bytes_unchanged(
    reply_id: Any, new_id: Any, result: str, error: str, reason: str | None
) -> None:
    line = f'{{"id": {json.dumps(reply_id)}, "result": {result} , "error":{error}'
    line += f', "reject-reason": {json.dumps(reason)}}}' if reason is not None else "}"
    reply = decode_server_message(line.encode())
    assert isinstance(reply, Reply)
    assert (bytes(reply.result), bytes(reply.error)) == (result.encode(), error.encode())

    relayed_line = encode_reply(new_id, reply)
    assert result.encode() in relayed_line and error.encode() in relayed_line
    relayed = decode_server_message(relayed_line)
    assert isinstance(relayed, Reply)
    assert relayed.id == new_id
    assert (bytes(relayed.result), bytes(relayed.error)) == (result.encode(), error.encode())
    assert relayed.reject_reason == reason
    assert relayed.failure() == reply.failure()


# --- decoders and framer never raise --------------------------------------------------------------------


def check_client(line: bytes) -> None:
    message = decode_client_message(line)
    assert isinstance(message, (*CLIENT_TYPES, ProtocolError)), message
    if isinstance(message, Configure):
        assert isinstance(configure_options(message), ConfigureOptions | ProtocolError)


def check_server(line: bytes) -> None:
    message = decode_server_message(line)
    assert isinstance(message, (*SERVER_TYPES, ProtocolError)), message
    if isinstance(message, Reply):
        assert isinstance(message.failure(), StratumError | None)
        assert isinstance(subscribe_result(message.value()), SubscribeResult | None)


@PROPERTY
@given(st.binary(max_size=600))
def test_decoders_on_arbitrary_bytes_return_values_or_typed_errors(line: bytes) -> None:
    check_client(line)
    check_server(line)


@PROPERTY
@given(junk_lines())
def test_decoders_on_json_rpc_lookalikes_return_values_or_typed_errors(line: bytes) -> None:
    check_client(line)
    check_server(line)


@pytest.mark.parametrize("depth", [50, 999, 1000, 5000])
@pytest.mark.parametrize(
    "template",
    [
        b'{"id":%s}',
        b'{"id":1,"method":"mining.submit","params":%s}',
        b'{"id":1,"method":"mining.submit","params":["w","j",%s]}',
        b'{"id":1,"method":"x.unknown","params":[%s]}',
        b'{"id":1,"result":%s,"error":null}',
        b'{"id":1,"error":%s}',
        b'{"junk":%s,"method":"mining.subscribe"}',
        b'{"method":"mining.notify","params":%s}',
    ],
)
def test_deeply_nested_json_is_a_typed_error_not_an_exception(template: bytes, depth: int) -> None:
    """A 2-10 KB line of `[[[[...` fits under the line cap; it must cost only a typed error."""
    line = template % (b"[" * depth + b"]" * depth)
    check_client(line)
    check_server(line)


@PROPERTY
@given(st.binary(max_size=400), st.lists(st.integers(0, 400), max_size=12), st.integers(0, 64))
def test_framer_on_arbitrary_bytes_yields_lines_or_line_too_long(data: bytes, cuts: list[int], max_line: int) -> None:
    framer = LineFramer(max_line)
    for chunk in split(data, cuts):
        for item in framer.feed(chunk):
            if isinstance(item, LineTooLong):
                assert item.length > max_line
            else:
                assert isinstance(item, bytes) and b"\n" not in item and len(item) <= max_line and item.strip()
                check_client(item)
                check_server(item)
        assert framer.buffered <= max_line


# --- framing rules --------------------------------------------------------------------------------------


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


def feed_all(framer: LineFramer, chunks: list[bytes]) -> list[bytes | LineTooLong]:
    out: list[bytes | LineTooLong] = []
    for chunk in chunks:
        out += framer.feed(chunk)
        assert framer.buffered <= framer.max_line
    return out


TOO_LONG = "too long"


def kinds(items: list[bytes | LineTooLong]) -> list[bytes | str]:
    return [TOO_LONG if isinstance(item, LineTooLong) else item for item in items]


line_bodies = st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"").replace(b"\r", b"")) | st.sampled_from(
    [b"", b" ", b"{}", b"x" * 16, b"y" * 17]
)


@st.composite
def streams(draw: st.DrawFn) -> tuple[int, list[bytes], list[bytes], bytes]:
    """(max_line, line bodies, their terminators, trailing partial line)."""
    max_line = draw(st.integers(1, 24))
    bodies = draw(st.lists(line_bodies, max_size=12))
    ends = [draw(st.sampled_from([b"\n", b"\r\n"])) for _ in bodies]
    tail = draw(line_bodies)
    return max_line, bodies, ends, tail


def expected_lines(max_line: int, bodies: list[bytes]) -> list[bytes | str]:
    """The framing contract: a line over max_line is one LineTooLong, a blank line is dropped."""
    return [TOO_LONG if len(b) > max_line else b for b in bodies if len(b) > max_line or b.strip()]


@PROPERTY
@given(streams(), st.lists(st.integers(0, 600), max_size=30))
def test_framer_matches_the_line_contract_under_any_split(
    stream: tuple[int, list[bytes], list[bytes], bytes], cuts: list[int]
) -> None:
    max_line, bodies, ends, tail = stream
    data = b"".join(b + e for b, e in zip(bodies, ends, strict=True)) + tail
    whole = kinds(feed_all(LineFramer(max_line), [data]))
    # An unterminated tail over the cap is reported at once, not at a newline that may never come.
    assert whole == expected_lines(max_line, bodies) + ([TOO_LONG] if len(tail) > max_line else [])
    # Where a LineTooLong is detected (so the length it reports) depends on the reads; what is framed does not.
    assert kinds(feed_all(LineFramer(max_line), split(data, cuts))) == whole
    assert kinds(feed_all(LineFramer(max_line), [data[i : i + 1] for i in range(len(data))])) == whole


@PROPERTY
@given(streams(), st.lists(st.integers(0, 600), max_size=30), st.lists(st.integers(0, 600), max_size=30))
def test_crlf_and_lf_frame_alike(
    stream: tuple[int, list[bytes], list[bytes], bytes], cuts_lf: list[int], cuts_crlf: list[int]
) -> None:
    max_line, bodies, _, _ = stream
    lf = b"".join(b + b"\n" for b in bodies)
    crlf = b"".join(b + b"\r\n" for b in bodies)
    assert kinds(feed_all(LineFramer(max_line), split(lf, cuts_lf))) == kinds(
        feed_all(LineFramer(max_line), split(crlf, cuts_crlf))
    )


@pytest.mark.parametrize("end", [b"\n", b"\r\n"])
def test_line_of_exactly_max_line_is_kept_whichever_terminator(end: bytes) -> None:
    split_end = [b"12345678\r", b"\n"] if end == b"\r\n" else [b"1234", b"5678\n"]
    for chunks in ([b"12345678" + end], [b"12345678", end], split_end):
        framer = LineFramer(8)
        assert feed_all(framer, chunks) == [b"12345678"]
        assert framer.buffered == 0
    assert kinds(feed_all(LineFramer(8), [b"123456789" + end])) == [TOO_LONG]
    assert kinds(feed_all(LineFramer(8), [b"12345678\r", b"9" + end])) == [TOO_LONG]


def test_over_long_line_is_one_error_and_framing_resumes_after_its_newline() -> None:
    framer = LineFramer(8)
    out = feed_all(framer, [b"ok1\n", *[b"x" * 7] * 15, b"\nok2\r\n{}", b"\n"])
    # Reported as soon as 14 bytes (> 8) are held, not 105 bytes later at the newline.
    assert out == [b"ok1", LineTooLong("line too long", 14), b"ok2", b"{}"]
    # the cap holds however the peer sends it: a megabyte without a newline buffers nothing beyond max_line
    framer = LineFramer(1024)
    assert framer.feed(b"z" * 16384) == [LineTooLong("line too long", 16384)]
    for _ in range(63):
        assert framer.feed(b"z" * 16384) == []  # the rest of the same line: reported once
        assert framer.buffered <= 1024
    assert framer.feed(b"\n") == []
    assert framer.feed(b'{"id":1}\n') == [b'{"id":1}']


def test_blank_keepalive_lines_are_dropped() -> None:
    assert LineFramer().feed(b"\n\r\n  \n{}\n") == [b"{}"]


def test_typed_error_for_invalid_utf8() -> None:
    assert isinstance(decode_client_message(b'{"id":1,"method":"mining.subscribe","params":["\xff"]}'), InvalidJSON)
    assert isinstance(decode_server_message(b'{"id":1,"result":"\xc3"}'), InvalidJSON)


@pytest.mark.parametrize(
    "params",
    [
        b'"mining.set_extranonce","params":["deadbeef",true]',  # a bool is not a size
        b'"mining.set_extranonce","params":["deadbeef",0]',
        b'"mining.set_extranonce","params":["deadbeef",33]',
        b'"mining.set_extranonce","params":["deadbeef","8"]',
        b'"mining.set_extranonce","params":["deadbee",8]',
        b'"mining.set_extranonce","params":["deadbeef"]',
        b'"mining.set_difficulty","params":[0]',
        b'"mining.set_difficulty","params":[-1]',
        b'"mining.set_difficulty","params":["1"]',
        b'"mining.set_difficulty","params":[true]',
        b'"mining.set_difficulty","params":[]',
        b'"mining.set_version_mask","params":["1fffe0000"]',
        b'"mining.set_version_mask","params":[""]',
        b'"mining.set_version_mask","params":[536862720]',
    ],
)
def test_server_notifications_with_bad_params_are_typed_errors(params: bytes) -> None:
    refused = decode_server_message(b'{"id":null,"method":' + params + b"}")
    assert isinstance(refused, ProtocolError) and refused.reason.startswith("malformed"), refused
