"""``ih-scorer audit``: re-hash the credited shares of a window from the ledger alone, and the
``--audit-sample N`` gate of a scoring pass.

Sources: the ledger itself (``--clickhouse-url``, as for scoring) or a proxy's export
(``--from-url http://proxy:9464``: ``GET /api/v1/shares`` and ``/api/v1/jobs``, NDJSON, paged; an
optional bearer token with ``--api-token`` / ``IH_API_TOKEN``). The re-hash itself is
``ledger.audit`` (what each mismatch kind means is written there and in docs/LEDGER.md).

Exit status: 0 every checked share verified; 1 the audit could not run; 2 bad settings;
4 some checked share did not verify.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from ledger.audit import KINDS, AuditReport, audit, audit_clickhouse, choose_sample, facts_of
from ledger.export import BadRow, job_of, share_of
from ledger.rows import JobRow, ShareRow
from ledger.target import LedgerTarget

from .hashrate import Window, iso, parse_duration, parse_time
from .sources import DEFAULT_CLICKHOUSE_URL, parse_clickhouse_url

EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_MISMATCH = 0, 1, 2, 4
PAGE_ROWS = 50_000  # rows per export request
KEYS_PER_REQUEST = 200  # job keys per /api/v1/jobs?keys= request (32 hex digits each)
MAX_LINE = 1 << 20  # a longer NDJSON line is not a ledger row
MAX_PAGES = 100_000  # bounds the paging loop: 5 billion rows


class AuditFailed(RuntimeError):
    """The audit could not read its source (the message carries no secret)."""


class AuditRefused(RuntimeError):
    """``--audit-sample``: the sample did not verify, so no weights are set."""


# --- the export client -------------------------------------------------------------------------------


@dataclass
class ExportClient:
    """Reads a proxy's ``/api/v1/shares`` and ``/api/v1/jobs`` (NDJSON), page by page."""

    base_url: str
    token: str | None = None
    timeout: float = 120.0
    page_rows: int = PAGE_ROWS

    def __post_init__(self) -> None:
        parts = urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("--from-url must be an http(s):// URL")
        self.base_url = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"
        self.shown = f"{parts.scheme}://{parts.hostname}{':' + str(parts.port) if parts.port else ''}"

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    async def _lines(self, session: aiohttp.ClientSession, path: str, params: dict[str, str]) -> AsyncIterator[Any]:
        url = f"{self.base_url}{path}"
        try:
            async with session.get(url, params=params, headers=self._headers()) as response:
                if response.status != 200:
                    text = (await response.text())[:200].strip()
                    raise AuditFailed(f"{self.shown}{path} answered HTTP {response.status}: {text}")
                pending = b""
                async for chunk in response.content.iter_chunked(1 << 16):
                    pending += chunk
                    *lines, pending = pending.split(b"\n")
                    if len(pending) > MAX_LINE:
                        raise AuditFailed(f"{self.shown}{path}: a line longer than {MAX_LINE} bytes")
                    for line in lines:
                        if line.strip():
                            yield json.loads(line)
                if pending.strip():
                    yield json.loads(pending)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise AuditFailed(f"cannot read {self.shown}{path}: {type(exc).__name__}: {exc}") from None
        except ValueError as exc:
            raise AuditFailed(f"{self.shown}{path}: not NDJSON: {exc}") from None

    async def shares(self, window: Window, hotkey: str | None = None) -> list[ShareRow]:
        params = {"start_time": iso(window.start), "end_time": iso(window.end), "limit": str(self.page_rows)}
        if hotkey is not None:
            params["hotkey"] = hotkey
        out: list[ShareRow] = []
        async with self._session() as session:
            for page in range(MAX_PAGES):
                params["offset"] = str(page * self.page_rows)
                got = 0
                async for obj in self._lines(session, "/api/v1/shares", params):
                    out.append(self._row(share_of, obj))
                    got += 1
                if got < self.page_rows:
                    return out
        raise AuditFailed(f"{self.shown}: more than {MAX_PAGES} pages of shares")

    async def jobs(self, keys: Sequence[str]) -> dict[str, JobRow]:
        wanted = sorted(set(keys))
        out: dict[str, JobRow] = {}
        async with self._session() as session:
            for i in range(0, len(wanted), KEYS_PER_REQUEST):
                params = {"keys": ",".join(wanted[i : i + KEYS_PER_REQUEST])}
                async for obj in self._lines(session, "/api/v1/jobs", params):
                    row = self._row(job_of, obj)
                    out[row.job_key] = row
        return out

    def _session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_read=self.timeout))

    def _row(self, parse: Any, obj: Any) -> Any:
        try:
            return parse(obj)
        except BadRow as exc:
            raise AuditFailed(f"{self.shown}: the export sent a row that is not a ledger row: {exc}") from None


# --- running an audit ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditRun:
    window: Window
    source: str
    sample: int | None
    seed: int
    hotkey: str | None
    report: AuditReport


async def audit_from_clickhouse(
    url: LedgerTarget, window: Window, *, sample: int | None, seed: int, hotkey: str | None = None, examples: int = 20
) -> AuditRun:
    target = url

    def run() -> AuditReport:
        client = target.connect(create=False)
        try:
            return audit_clickhouse(
                client,
                target.database,
                window.start.timestamp(),
                window.end.timestamp(),
                hotkey=hotkey,
                sample=sample,
                seed=seed,
                examples=examples,
            )
        finally:
            client.close()

    try:
        report = await asyncio.to_thread(run)
    except ConnectionError as exc:
        raise AuditFailed(str(exc)) from None
    except Exception as exc:
        raise AuditFailed(f"ledger query failed on {url.redacted()}: {target.scrub(exc)}") from None
    return AuditRun(window, f"ledger {url.redacted()}", sample, seed, hotkey, report)


async def audit_from_export(
    client: ExportClient,
    window: Window,
    *,
    sample: int | None,
    seed: int,
    hotkey: str | None = None,
    examples: int = 20,
) -> AuditRun:
    # The whole window, every hotkey: duplicates and session conflicts are judged over all of it.
    shares = await client.shares(window)
    facts = facts_of(shares)
    credited = [s for s in shares if s.accepted == 1 and (hotkey is None or s.hotkey == hotkey)]
    chosen = credited if sample is None else choose_sample(credited, sample, seed)
    jobs = await client.jobs([s.job_key for s in chosen if s.job_key])
    report = audit(chosen, jobs, facts, examples=examples)
    return AuditRun(window, f"export {client.shown}", sample, seed, hotkey, report)


# --- reporting -----------------------------------------------------------------------------------------


def render(run: AuditRun) -> str:
    r = run.report
    what = "every credited share" if run.sample is None else f"a sample of {run.sample} (seed {run.seed})"
    lines = [
        f"audit of {iso(run.window.start)} → {iso(run.window.end)} from {run.source}: {what}",
        f"{'hotkey':<50} {'checked':>8} {'bad':>6} {'unverified diff':>16} {'credited diff':>16}  mismatches",
    ]
    for h in sorted(r.hotkeys.values(), key=lambda h: h.hotkey):
        kinds = ", ".join(f"{k} {h.mismatches[k]}" for k in KINDS if h.mismatches[k]) or "-"
        lines.append(
            f"{h.hotkey or '(none)':<50} {h.checked:>8} {h.mismatched:>6} "
            f"{h.unverified_difficulty:>16.6g} {h.credited_difficulty:>16.6g}  {kinds}"
        )
    rate = r.shares_per_second
    lines.append(
        f"checked {r.checked} shares, {r.mismatched} did not verify"
        + (f"; re-hashed {rate:,.0f} shares/s" if rate else "")
    )
    for m in r.examples:
        s = m.row
        lines.append(
            f"  {','.join(m.kinds)}: hotkey {s.hotkey} session {s.proxy_id}/{s.session} job {s.job_key or '?'} "
            f"hash {s.hash or '?'} credit {s.difficulty:.6g}{' (' + m.detail + ')' if m.detail else ''}"
        )
    if r.rollup is not None:
        differing = r.rollup.mismatches
        lines.append(
            "rollup: shares_per_minute (what the workers API and the scorer read) "
            + (
                f"differs from the shares in {len(differing)} minute rows of {r.rollup.minutes} whole minutes"
                if differing
                else f"equals the shares in all {r.rollup.minutes} whole minutes compared"
            )
        )
        for f in differing:
            lines.append(
                f"  {iso(datetime.fromtimestamp(f.minute, UTC))} {f.worker}: rollup {f.rollup[0]:.6g} difficulty, "
                f"{f.rollup[1]} accepted, {f.rollup[2]} other; shares {f.raw[0]:.6g}, {f.raw[1]}, {f.raw[2]}"
            )
    return "\n".join(lines)


def to_json(run: AuditRun) -> dict[str, Any]:
    r = run.report
    return {
        "window": {"start": iso(run.window.start), "end": iso(run.window.end), "seconds": run.window.seconds},
        "source": run.source,
        "sample": run.sample,
        "seed": run.seed,
        "hotkey": run.hotkey,
        "checked": r.checked,
        "mismatched": r.mismatched,
        "clean": r.clean,
        "mismatches": {k: r.totals()[k] for k in KINDS},
        "shares_per_second": r.shares_per_second,
        "hotkeys": [
            {
                "hotkey": h.hotkey,
                "checked": h.checked,
                "mismatched": h.mismatched,
                "mismatches": {k: h.mismatches[k] for k in KINDS},
                "credited_difficulty": h.credited_difficulty,
                "unverified_difficulty": h.unverified_difficulty,
            }
            for h in sorted(r.hotkeys.values(), key=lambda h: h.hotkey)
        ],
        "examples": [{"kinds": list(m.kinds), "detail": m.detail, "row": m.row._asdict()} for m in r.examples],
        "rollup": None
        if r.rollup is None
        else {
            "minutes": r.rollup.minutes,
            "mismatches": [
                {
                    "minute": iso(datetime.fromtimestamp(f.minute, UTC)),
                    "hotkey": f.hotkey,
                    "worker": f.worker,
                    "rollup": {"accepted_difficulty": f.rollup[0], "accepted": f.rollup[1], "other": f.rollup[2]},
                    "shares": {"accepted_difficulty": f.raw[0], "accepted": f.raw[1], "other": f.raw[2]},
                }
                for f in r.rollup.mismatches
            ],
        },
    }


# --- the scoring pass's gate ---------------------------------------------------------------------------


async def require_clean_sample(
    clickhouse: LedgerTarget | None, proxy_api: str | None, window: Window, sample: int, token: str | None = None
) -> AuditRun:
    """Audit a fresh random sample of the scoring window from the scoring source; AuditRefused unless clean."""
    seed = secrets.randbits(63)  # unpredictable to whoever runs the proxy; printed for reproducing it
    try:
        if proxy_api is not None:
            base = proxy_api.rstrip("/").removesuffix("/api/v1/workers")
            run = await audit_from_export(ExportClient(base, token), window, sample=sample, seed=seed)
        else:
            assert clickhouse is not None
            run = await audit_from_clickhouse(clickhouse, window, sample=sample, seed=seed)
    except AuditFailed as exc:
        raise AuditRefused(f"audit sample could not be read, so no weights: {exc}") from None
    r = run.report
    if r.rollup is not None and r.rollup.mismatches:
        f = r.rollup.mismatches[0]
        raise AuditRefused(
            f"refusing to set weights: shares_per_minute, which weights are computed from, is not what the ledger's "
            f"shares add up to in {len(r.rollup.mismatches)} minute rows of the audit's {r.rollup.minutes} sampled "
            f"minutes (seed {seed}; first: {iso(datetime.fromtimestamp(f.minute, UTC))} {f.worker}); reproduce "
            f"with: ih-scorer audit --end {iso(window.end)} --window {window.seconds // 60}m"
        )
    if not r.clean:
        kinds = ", ".join(f"{k} {n}" for k, n in r.totals().items() if n)
        hotkeys = ", ".join(sorted(h.hotkey for h in r.hotkeys.values() if h.mismatched))
        raise AuditRefused(
            f"refusing to set weights: the audit sample (seed {seed}) found {r.mismatched} of {r.checked} credited "
            f"shares that do not re-hash from the ledger ({kinds}; hotkeys {hotkeys}); "
            f"reproduce with: ih-scorer audit --sample {sample} --seed {seed} --end {iso(window.end)} "
            f"--window {window.seconds // 60}m"
        )
    return run


# --- the command ---------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ih-scorer audit",
        description="Re-hash the credited shares of a window from the ledger (or a proxy's export) alone.",
    )
    p.add_argument(
        "--clickhouse-url", metavar="URL", help=f"the ledger (default $IH_CLICKHOUSE_URL or {DEFAULT_CLICKHOUSE_URL})"
    )
    p.add_argument(
        "--from-url", metavar="URL", help="a proxy's HTTP port, e.g. http://proxy:9464 (its /api/v1/shares export)"
    )
    p.add_argument("--api-token", metavar="TOKEN", help="bearer token for --from-url (or $IH_API_TOKEN)")
    p.add_argument(
        "--window", default="6h", metavar="DURATION", help="window ending at --end: 90m, 6h, 1d (default 6h)"
    )
    p.add_argument(
        "--end", metavar="TIME", help="end of the window, ISO 8601 (default now; rounded down to the minute)"
    )
    p.add_argument("--hotkey", help="only this hotkey's shares")
    p.add_argument("--sample", type=int, metavar="N", help="re-hash a random sample of N credited shares (default all)")
    p.add_argument(
        "--seed", type=int, metavar="S", help="the sample's seed (default random, printed): same seed, same sample"
    )
    p.add_argument("--examples", type=int, default=20, metavar="K", help="list up to K mismatched shares (default 20)")
    p.add_argument("--json", action="store_true", help="also print one JSON object as the last line of stdout")
    return p


async def _run(args: argparse.Namespace, window: Window, seed: int) -> AuditRun:
    if args.from_url:
        client = ExportClient(args.from_url, args.api_token or os.environ.get("IH_API_TOKEN") or None)
        return await audit_from_export(
            client, window, sample=args.sample, seed=seed, hotkey=args.hotkey, examples=args.examples
        )
    url = parse_clickhouse_url(args.clickhouse_url or os.environ.get("IH_CLICKHOUSE_URL") or DEFAULT_CLICKHOUSE_URL)
    return await audit_from_clickhouse(
        url, window, sample=args.sample, seed=seed, hotkey=args.hotkey, examples=args.examples
    )


def main(argv: Sequence[str] | None = None, now: datetime | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.from_url and args.clickhouse_url:
            raise ValueError("give --clickhouse-url or --from-url, not both")
        if args.sample is not None and args.sample < 1:
            raise ValueError("--sample must be at least 1")
        window = Window.ending(
            parse_time(args.end) if args.end else (now or datetime.now().astimezone()), parse_duration(args.window)
        )
        seed = args.seed if args.seed is not None else secrets.randbits(63)
        if seed < 0:
            raise ValueError("--seed must not be negative")
        if args.from_url:
            ExportClient(args.from_url)  # checks the URL
        else:
            parse_clickhouse_url(args.clickhouse_url or os.environ.get("IH_CLICKHOUSE_URL") or DEFAULT_CLICKHOUSE_URL)
    except ValueError as exc:
        print(f"ih-scorer audit: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    started = time.monotonic()
    try:
        run = asyncio.run(_run(args, window, seed))
    except AuditFailed as exc:
        print(f"ih-scorer audit: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(render(run))
    if args.json:
        doc = to_json(run) | {"seconds": round(time.monotonic() - started, 3)}
        print(json.dumps(doc, separators=(",", ":")))
    sys.stdout.flush()
    return EXIT_OK if run.report.clean else EXIT_MISMATCH
