"""`python -m protocol share ...`: hash one share the way the proxy does, for an operator asking
"why was this share rejected?". Prints one JSON line; bad input → a message on stderr, exit 2."""

from __future__ import annotations

import argparse
import sys
from typing import Any, NoReturn

import msgspec

from protocol.messages import is_hex
from protocol.messages import parse_notify as parse_notify_params
from protocol.work import BIP320_MASK, Job, ShareRejected


class _Args(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def _fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _json_array(text: str, what: str) -> list[Any]:
    try:
        value = msgspec.json.decode(text)
    except msgspec.DecodeError as exc:
        _fail(f"{what} is not JSON: {exc}")
    if not isinstance(value, list):
        _fail(f"{what} must be a JSON array of params")
    return value


def share_report(
    notify_params: list[Any], extranonce1: str, submit_params: list[Any], version_mask: int | None
) -> dict[str, Any]:
    """The share check as a dict; raises ValueError with a readable message on bad input."""
    try:
        notify = parse_notify_params(notify_params)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"--notify: {exc}") from None
    if not is_hex(extranonce1) or not extranonce1:
        raise ValueError("--extranonce1 must be hex")
    if not 5 <= len(submit_params) <= 6 or not all(isinstance(p, str) for p in submit_params):
        raise ValueError(
            "--submit must be [worker, job_id, extranonce2, ntime, nonce] or with version bits as a 6th string"
        )
    _, job_id, extranonce2, ntime, nonce, *rest = submit_params
    if job_id != notify.job_id:
        raise ValueError(f"--submit job id {job_id!r} is not the notify's job id {notify.job_id!r}")
    version_bits = rest[0] if rest else None
    mask = version_mask if version_mask is not None else (BIP320_MASK if version_bits is not None else 0)
    if len(extranonce2) % 2 or not extranonce2:
        raise ValueError("extranonce2 must be whole bytes of hex")
    job = Job(notify, extranonce1, len(extranonce2) // 2, difficulty=0.0)
    try:
        share = job.hash_share(extranonce2, ntime, nonce, version_bits, mask)
    except ShareRejected as exc:
        raise ValueError(f"share refused ({exc.reason}): {exc.message}") from None
    return {
        "hash": share.hex_hash,
        "difficulty": share.difficulty,
        "version": f"{share.version:08x}",
        "network_difficulty": job.network_difficulty,
        "block": share.is_block,
    }


def main(argv: list[str] | None = None) -> int:
    parser = _Args(prog="python -m protocol", description="Stratum V1 tools.")
    commands = parser.add_subparsers(dest="command", required=True)
    share = commands.add_parser(
        "share",
        help="hash one share and print its hash, difficulty and header version as JSON",
        description="Hash one share exactly as the proxy does and print one JSON line.",
    )
    share.error = parser.error  # type: ignore[method-assign]
    share.add_argument("--notify", required=True, help="mining.notify params as a JSON array")
    share.add_argument("--extranonce1", required=True, help="the session's extranonce1 (hex)")
    share.add_argument("--submit", required=True, help="mining.submit params as a JSON array")
    share.add_argument(
        "--version-mask",
        help="negotiated version-rolling mask (hex); default 1fffe000 when the submit has version bits",
    )
    args = parser.parse_args(argv)

    mask = None
    if args.version_mask is not None:
        if not args.version_mask or not is_hex(args.version_mask.zfill(8), 8):
            _fail("--version-mask must be up to 8 hex digits")
        mask = int(args.version_mask, 16)
    try:
        report = share_report(
            _json_array(args.notify, "--notify"),
            args.extranonce1,
            _json_array(args.submit, "--submit"),
            mask,
        )
    except ValueError as exc:
        _fail(str(exc))
    print(msgspec.json.encode(report).decode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
