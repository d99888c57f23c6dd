"""Typed Stratum V1 messages and the two decoders (one per direction), plus encoders.

Client → server (what a pool or proxy receives from a miner) are requests; they decode through one
msgspec tagged union keyed on `method`, so the hot path (`mining.submit`) is a single C-level decode.
An unknown method decodes to `Request` so the caller can still answer it; a known method with a
wrong shape becomes `InvalidMessage` carrying the id, so the caller can answer that too.

Server → client (what a miner or proxy receives from a pool) are replies and notifications; they
decode to `Reply` (with the raw result/error bytes kept, so a proxy can relay them unchanged) or to a
typed notification.

Hex fields are checked here for charset and length where the length is fixed by the protocol;
lengths that a session negotiates (extranonce2) are checked by the share check in `work.py`.
"""

from __future__ import annotations

import re
from collections.abc import Hashable
from typing import Any, TypeAlias

import msgspec

from protocol.errors import InvalidJSON, InvalidMessage, ProtocolError, StratumError, normalize_error
from protocol.memo import remember

RequestId: TypeAlias = int | str | None

_HEX = re.compile(r"(?:[0-9a-fA-F]{2})*")
_HEX8 = re.compile(r"[0-9a-fA-F]{8}")
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")


def is_hex(value: str, length: int | None = None) -> bool:
    """True when `value` is hex digits only (either case), of exactly `length` digits if given."""
    if length is not None and len(value) != length:
        return False
    return _HEX.fullmatch(value) is not None


# --- client → server requests ---------------------------------------------------------------------


class SubscribeParams(msgspec.Struct, array_like=True):
    user_agent: str | None = None
    # A resume hint (previous extranonce1 / session id) or null (bosminer sends null).
    session_id: str | None = None
    host: str | None = None
    port: int | str | None = None


class Subscribe(msgspec.Struct, tag_field="method", tag="mining.subscribe"):
    id: RequestId = None
    params: SubscribeParams = msgspec.field(default_factory=SubscribeParams)


class AuthorizeParams(msgspec.Struct, array_like=True):
    worker: str
    password: str | None = None


class Authorize(msgspec.Struct, tag_field="method", tag="mining.authorize"):
    params: AuthorizeParams
    id: RequestId = None


class ConfigureParams(msgspec.Struct, array_like=True):
    extensions: list[str]
    options: dict[str, Any] = msgspec.field(default_factory=dict)


class Configure(msgspec.Struct, tag_field="method", tag="mining.configure"):
    """BIP310. Options are checked by `configure_options`, since miners disagree on their types."""

    params: ConfigureParams
    id: RequestId = None


class ExtranonceSubscribe(msgspec.Struct, tag_field="method", tag="mining.extranonce.subscribe"):
    id: RequestId = None
    params: list[Any] = msgspec.field(default_factory=list)


class SuggestDifficultyParams(msgspec.Struct, array_like=True):
    difficulty: float
    extra: Any = None


class SuggestDifficulty(msgspec.Struct, tag_field="method", tag="mining.suggest_difficulty"):
    params: SuggestDifficultyParams
    id: RequestId = None


class SubmitParams(msgspec.Struct, array_like=True):
    worker: str
    job_id: str
    extranonce2: str
    ntime: str
    nonce: str
    version_bits: str | None = None


class Submit(msgspec.Struct, tag_field="method", tag="mining.submit"):
    params: SubmitParams
    id: RequestId = None


class Request(msgspec.Struct):
    """Any request by method name, for methods this library has no type for (and for encoding)."""

    method: str
    params: list[Any] = msgspec.field(default_factory=list)
    id: RequestId = None


ClientMessage: TypeAlias = (
    Subscribe | Authorize | Configure | ExtranonceSubscribe | SuggestDifficulty | Submit | Request
)
_KNOWN_CLIENT_METHODS = frozenset(
    t.__struct_config__.tag  # type: ignore[attr-defined]
    for t in (Subscribe, Authorize, Configure, ExtranonceSubscribe, SuggestDifficulty, Submit)
)

_client_decoder = msgspec.json.Decoder(
    Subscribe | Authorize | Configure | ExtranonceSubscribe | SuggestDifficulty | Submit
)
_request_decoder = msgspec.json.Decoder(Request)


class _Probe(msgspec.Struct):
    """Reads just enough of a bad line to answer it: its id and method, if present."""

    id: Any = None
    method: Any = None


_probe_decoder = msgspec.json.Decoder(_Probe)
# msgspec raises these, not DecodeError, for invalid UTF-8 inside a string and for nesting past its limit.
_UNREADABLE = (UnicodeDecodeError, RecursionError)


def decode_client_message(line: bytes) -> ClientMessage | ProtocolError:
    """Decode one line from a miner. Never raises: bad input comes back as a ProtocolError."""
    try:
        message: ClientMessage = _client_decoder.decode(line)
        return message
    except msgspec.ValidationError as exc:
        failure = str(exc)
    except msgspec.DecodeError as exc:
        return InvalidJSON(f"invalid JSON: {exc}")
    except _UNREADABLE as exc:
        return InvalidJSON(f"invalid JSON: {exc}")
    # Slow path: an unknown method (answer it generically) or a known one with a wrong shape.
    try:
        probe = _probe_decoder.decode(line)
    except msgspec.MsgspecError:
        return InvalidJSON("not a JSON object")
    except _UNREADABLE as exc:
        return InvalidJSON(f"invalid JSON: {exc}")
    method = probe.method if isinstance(probe.method, str) else None
    request_id = probe.id if isinstance(probe.id, int | str) and not isinstance(probe.id, bool) else None
    if method is not None and method not in _KNOWN_CLIENT_METHODS:
        try:
            return _request_decoder.decode(line)
        except msgspec.ValidationError as exc:
            failure = str(exc)
        except _UNREADABLE as exc:
            return InvalidJSON(f"invalid JSON: {exc}")
    return InvalidMessage(f"malformed {method or 'message'}: {failure}", request_id, method)


class ConfigureOptions(msgspec.Struct, frozen=True):
    """What a miner asked for in mining.configure, checked."""

    version_rolling: bool = False
    version_rolling_mask: int = 0
    version_rolling_min_bit_count: int = 0
    minimum_difficulty: float | None = None
    subscribe_extranonce: bool = False


def configure_options(message: Configure) -> ConfigureOptions | InvalidMessage:
    """Check a configure request's options. min-bit-count comes as a number (S9/S19) or a string
    (cpuminer); WhatsMiner and Bitaxe omit it."""
    ext = set(message.params.extensions)
    opts = message.params.options
    mask = 0
    min_bits = 0
    if "version-rolling" in ext:
        raw_mask = opts.get("version-rolling.mask", "ffffffff")
        if not isinstance(raw_mask, str) or not is_hex(raw_mask) or not 0 < len(raw_mask) <= 8:
            return InvalidMessage("version-rolling.mask must be up to 8 hex digits", message.id, "mining.configure")
        mask = int(raw_mask, 16)
        raw_bits = opts.get("version-rolling.min-bit-count", 0)
        if isinstance(raw_bits, str) and raw_bits.isdigit():
            raw_bits = int(raw_bits)
        if isinstance(raw_bits, bool) or not isinstance(raw_bits, int) or not 0 <= raw_bits <= 32:
            return InvalidMessage("version-rolling.min-bit-count must be 0..32", message.id, "mining.configure")
        min_bits = raw_bits
    min_diff = None
    if "minimum-difficulty" in ext:
        value = opts.get("minimum-difficulty.value")
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            return InvalidMessage("minimum-difficulty.value must be a number >= 0", message.id, "mining.configure")
        min_diff = float(value)
    return ConfigureOptions(
        version_rolling="version-rolling" in ext,
        version_rolling_mask=mask,
        version_rolling_min_bit_count=min_bits,
        minimum_difficulty=min_diff,
        subscribe_extranonce="subscribe-extranonce" in ext,
    )


# --- server → client replies and notifications ----------------------------------------------------

_NULL = msgspec.Raw(b"null")


class Reply(msgspec.Struct):
    """A reply to a request. `result`/`error` stay raw JSON so a proxy relays them byte for byte."""

    id: Any = None
    result: msgspec.Raw = _NULL
    error: msgspec.Raw = _NULL
    reject_reason: str | None = msgspec.field(default=None, name="reject-reason")

    def value(self) -> Any:
        return msgspec.json.decode(self.result) if self.result else None

    def failure(self) -> StratumError | None:
        """The error, normalised from whichever shape the pool used; None on success."""
        result = msgspec.json.decode(self.result) if self.result else None
        error = msgspec.json.decode(self.error) if self.error else None
        return normalize_error(result, error, self.reject_reason)


class SetDifficulty(msgspec.Struct, frozen=True):
    difficulty: float


class Notify(msgspec.Struct, frozen=True):
    """mining.notify: a job. Hex fields are as the pool sent them (validated, case preserved)."""

    job_id: str
    prevhash: str  # each 4-byte word byte-swapped relative to the header
    coinb1: str
    coinb2: str
    merkle_branch: list[str]
    version: str
    nbits: str
    ntime: str
    clean_jobs: bool

    def params(self) -> list[Any]:
        return [
            self.job_id,
            self.prevhash,
            self.coinb1,
            self.coinb2,
            self.merkle_branch,
            self.version,
            self.nbits,
            self.ntime,
            self.clean_jobs,
        ]


class SetExtranonce(msgspec.Struct, frozen=True):
    extranonce1: str
    extranonce2_size: int


class SetVersionMask(msgspec.Struct, frozen=True):
    mask: int


class Reconnect(msgspec.Struct, frozen=True):
    host: str | None = None
    port: int | None = None
    wait: int = 0


class ShowMessage(msgspec.Struct, frozen=True):
    message: str


class ServerRequest(msgspec.Struct, frozen=True):
    """A request from the pool that expects an answer (client.get_version, mining.ping) or any
    method this library has no type for."""

    method: str
    params: list[Any]
    id: Any = None


ServerMessage: TypeAlias = (
    Reply | SetDifficulty | Notify | SetExtranonce | SetVersionMask | Reconnect | ShowMessage | ServerRequest
)


class _ServerEnvelope(msgspec.Struct):
    id: Any = None
    method: str | None = None
    params: Any = None
    result: msgspec.Raw = _NULL
    error: msgspec.Raw = _NULL
    reject_reason: str | None = msgspec.field(default=None, name="reject-reason")


_server_decoder = msgspec.json.Decoder(_ServerEnvelope)

# Every session of one pool account gets the same mining.notify line at once (each new job, each
# new block): decoding and checking one costs ~30 µs, so 1,000 sessions stalled the loop ~30 ms.
# Identical bytes decode to an identical (frozen) Notify: decoded once, shared by all. Bounded: the
# lines of the last few jobs over every pool connection.
_NOTIFY_METHOD = b'"mining.notify"'
_NOTIFIES_KEPT = 64
_notifies: dict[Hashable, Notify] = {}


def decode_server_message(line: bytes) -> ServerMessage | ProtocolError:
    """Decode one line from a pool. Never raises: bad input comes back as a ProtocolError."""
    notify_line = _NOTIFY_METHOD in line
    if notify_line:
        seen = _notifies.get(line)
        if seen is not None:
            return seen
    try:
        env = _server_decoder.decode(line)
    except msgspec.ValidationError as exc:
        return InvalidMessage(f"malformed message: {exc}")
    except msgspec.DecodeError as exc:
        return InvalidJSON(f"invalid JSON: {exc}")
    except _UNREADABLE as exc:
        return InvalidJSON(f"invalid JSON: {exc}")
    if env.method is None:
        if not line.isascii():  # msgspec does not check UTF-8 inside Raw: refuse it before it is relayed
            try:
                line.decode()
            except UnicodeDecodeError as exc:
                return InvalidJSON(f"invalid JSON: {exc}")
        return Reply(env.id, env.result, env.error, env.reject_reason)
    params = env.params if isinstance(env.params, list) else []
    try:
        message = _notification(env.method, params, env.id)
    except (ValueError, TypeError, IndexError) as exc:
        return InvalidMessage(f"malformed {env.method}: {exc}", env.id, env.method)
    if notify_line and type(message) is Notify:
        remember(_notifies, line, message, _NOTIFIES_KEPT)
    return message


def _notification(method: str, params: list[Any], request_id: Any) -> ServerMessage:
    if method == "mining.notify":
        return parse_notify(params)
    if method == "mining.set_difficulty":
        value = params[0]
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise ValueError("difficulty must be a number > 0")
        return SetDifficulty(float(value))
    if method == "mining.set_extranonce":
        en1, size = params[0], params[1]
        if (
            not isinstance(en1, str)
            or not is_hex(en1)
            or isinstance(size, bool)
            or not isinstance(size, int)
            or not 0 < size <= 32
        ):
            raise ValueError("expected [extranonce1 hex, extranonce2_size]")
        return SetExtranonce(en1.lower(), size)
    if method == "mining.set_version_mask":
        mask = params[0]
        if not isinstance(mask, str) or not is_hex(mask) or not 0 < len(mask) <= 8:
            raise ValueError("mask must be up to 8 hex digits")
        return SetVersionMask(int(mask, 16))
    if method == "client.reconnect":
        host = params[0] if params and isinstance(params[0], str) and params[0] else None
        port = int(params[1]) if len(params) > 1 and params[1] not in (None, "") else None
        wait = int(params[2]) if len(params) > 2 and params[2] not in (None, "") else 0
        return Reconnect(host, port, wait)
    if method == "client.show_message":
        return ShowMessage(str(params[0]) if params else "")
    return ServerRequest(method, params, request_id)


def parse_notify(params: list[Any]) -> Notify:
    """Check mining.notify params and build a Notify; raises ValueError with a readable reason."""
    # Nine params; some pools send a tenth before clean_jobs (ESP-Miner accepts it): clean_jobs is last.
    if len(params) not in (9, 10):
        raise ValueError(f"expected 9 params, got {len(params)}")
    job_id, prevhash, coinb1, coinb2, branches, version, nbits, ntime = params[:8]
    clean = params[-1]
    if not isinstance(job_id, str) or not job_id:
        raise ValueError("job_id must be a non-empty string")
    if not isinstance(prevhash, str) or _HEX64.fullmatch(prevhash) is None:
        raise ValueError("prevhash must be 64 hex digits")
    for name, value in (("coinb1", coinb1), ("coinb2", coinb2)):
        if not isinstance(value, str) or not is_hex(value):
            raise ValueError(f"{name} must be hex")
    if not isinstance(branches, list) or not all(
        isinstance(b, str) and _HEX64.fullmatch(b) is not None for b in branches
    ):
        raise ValueError("merkle_branch must be a list of 64-hex-digit hashes")
    for name, value in (("version", version), ("nbits", nbits), ("ntime", ntime)):
        if not isinstance(value, str) or _HEX8.fullmatch(value) is None:
            raise ValueError(f"{name} must be 8 hex digits")
    if not isinstance(clean, bool):
        raise ValueError("clean_jobs must be true or false")
    return Notify(job_id, prevhash, coinb1, coinb2, branches, version, nbits, ntime, clean)


class SubscribeResult(msgspec.Struct, frozen=True):
    """The parts of a subscribe reply a share check needs."""

    extranonce1: str
    extranonce2_size: int


def subscribe_result(result: Any) -> SubscribeResult | None:
    """Read `[subscriptions, extranonce1, extranonce2_size]` from a subscribe reply's result.

    Subscriptions come double-nested (ckpool, most pools) or flat (some servers); only the last two
    items matter here. None when the shape is not a subscribe result.
    """
    if not isinstance(result, list) or len(result) < 3:
        return None
    en1, size = result[1], result[2]
    if not isinstance(en1, str) or not is_hex(en1):
        return None
    if isinstance(size, bool) or not isinstance(size, int) or not 0 < size <= 32:
        return None
    return SubscribeResult(en1.lower(), size)


# --- encoders --------------------------------------------------------------------------------------

_encoder = msgspec.json.Encoder()


class _Result(msgspec.Struct):
    id: Any
    result: Any
    error: Any


class _RawReply(msgspec.Struct, omit_defaults=True):
    id: Any
    result: msgspec.Raw
    error: msgspec.Raw
    reject_reason: str | None = msgspec.field(default=None, name="reject-reason")


class _Notification(msgspec.Struct):
    id: None
    method: str
    params: Any


def encode_request(request_id: RequestId, method: str, params: list[Any]) -> bytes:
    return _encoder.encode(Request(method, params, request_id)) + b"\n"


def encode_notification(method: str, params: Any) -> bytes:
    return _encoder.encode(_Notification(None, method, params)) + b"\n"


def encode_notify(notify: Notify) -> bytes:
    return encode_notification("mining.notify", notify.params())


def encode_result(request_id: Any, result: Any) -> bytes:
    return _encoder.encode(_Result(request_id, result, None)) + b"\n"


def encode_error(request_id: Any, error: StratumError) -> bytes:
    return _encoder.encode(_Result(request_id, None, error.as_list())) + b"\n"


_ACCEPTED = b'{"id":%d,"result":true,"error":null}\n'
_RAW_TRUE = msgspec.Raw(b"true")


def encode_reply(request_id: Any, reply: Reply) -> bytes:
    """Re-address a pool's reply to another id, its result and error bytes unchanged."""
    if type(request_id) is int and reply.result == _RAW_TRUE and reply.error == _NULL and reply.reject_reason is None:
        return _ACCEPTED % request_id  # an accepted share, the common reply: the bytes msgspec would write
    return _encoder.encode(_RawReply(request_id, reply.result, reply.error, reply.reject_reason)) + b"\n"


def encode_message(message: msgspec.Struct) -> bytes:
    """Encode any request Struct of this module as one line."""
    return _encoder.encode(message) + b"\n"
