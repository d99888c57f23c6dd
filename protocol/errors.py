"""Stratum error codes, the one error type every pool's error shape is normalised into, and the
typed errors the decoders return for bad input (values, never exceptions that escape)."""

from __future__ import annotations

from enum import IntEnum, StrEnum
from typing import Any

import msgspec


class ErrorCode(IntEnum):
    """The de-facto Stratum V1 error codes (slush/ckpool/ESP-Miner agree on these)."""

    OTHER = 20
    JOB_NOT_FOUND = 21  # stale
    DUPLICATE = 22
    LOW_DIFFICULTY = 23
    UNAUTHORIZED = 24
    NOT_SUBSCRIBED = 25


class RejectReason(StrEnum):
    """Why a share was refused before it reached the pool: the ledger's `reject_reason` column.

    The values are the strings the ledger has always stored, so rows and string comparisons keep
    working (a StrEnum member equals its value).
    """

    MALFORMED = "malformed"  # fields of the wrong shape or length
    NTIME = "ntime"  # ntime outside the job's window
    VERSION_MASK = "version-mask"  # version bits outside the negotiated mask
    DUPLICATE = "duplicate"
    LOW_DIFFICULTY = "low-difficulty"
    STALE = "stale"  # a job the session does not hold (ended by clean_jobs, or never sent)
    UNAUTHORIZED = "unauthorized"  # a worker this connection never authorized
    NOT_SUBSCRIBED = "not-subscribed"
    TIMEOUT = "timeout"  # the pool never answered


class StratumError(msgspec.Struct, frozen=True):
    """An error answer from either side, whatever shape it arrived in."""

    code: int
    message: str
    data: Any = None

    def as_list(self) -> list[Any]:
        """The classic `[code, message, data]` shape that every miner understands."""
        return [self.code, self.message, self.data]


def normalize_error(result: Any, error: Any, reject_reason: str | None = None) -> StratumError | None:
    """One StratumError for every reply shape real pools send, or None when the reply is a success.

    Shapes: `[code, msg, data]`; a bare string; a JSON-RPC 2.0 `{"code","message","data"}` object;
    `result: false` with no error (ckpool's `reject-reason`). A success is `error` null and `result`
    not false.
    """
    if error is None:
        if result is False:
            return StratumError(ErrorCode.OTHER, reject_reason or "rejected")
        return None
    if isinstance(error, list):
        code = error[0] if error and _is_int(error[0]) else ErrorCode.OTHER
        message = error[1] if len(error) > 1 and isinstance(error[1], str) else _text(error)
        data = error[2] if len(error) > 2 else None
        return StratumError(int(code), message, data)
    if isinstance(error, dict):
        number: Any = error.get("code")
        text: Any = error.get("message")
        return StratumError(
            number if _is_int(number) else ErrorCode.OTHER,
            text if isinstance(text, str) else _text(error),
            error.get("data"),
        )
    if isinstance(error, str):
        return StratumError(ErrorCode.OTHER, error)
    return StratumError(ErrorCode.OTHER, _text(error))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _text(value: Any) -> str:
    return msgspec.json.encode(value).decode()


# --- typed errors for bad input -------------------------------------------------------------------


class ProtocolError(msgspec.Struct, frozen=True):
    """Bad input from a peer. Returned as a value so one bad line costs only the peer that sent it."""

    reason: str

    @property
    def id(self) -> Any:
        return None


class LineTooLong(ProtocolError, frozen=True):
    """A line exceeded the framer's cap; the rest of it up to the next newline was discarded."""

    length: int = 0


class InvalidJSON(ProtocolError, frozen=True):
    """Not UTF-8 JSON, or JSON that is not an object."""


class InvalidMessage(ProtocolError, frozen=True):
    """Valid JSON of the wrong shape, e.g. a submit with numbers where hex strings belong.

    `request_id` and `method` are kept when they could be read, so the peer can still be answered.
    """

    request_id: Any = None
    method: str | None = None

    @property
    def id(self) -> Any:
        return self.request_id
