"""``ih-scorer`` / ``python -m scorer``: one scoring pass (default) or one per tempo (``--loop``).

A pass: read hashrate per hotkey over the window (ledger or proxy API) → read the metagraph (chain,
or ``--metagraph-file``) → apply the weight policy (:mod:`scorer.policy`) → optionally cross-check
with Luxor → read the subnet's mechanism count → set the weights on every mechanism (the same
vector, unless ``--skip-mechanisms``/``--burn-mechanisms`` say otherwise), each after waiting out the
weights rate limit (unless ``--dry-run``) → print the table, and with ``--json`` one JSON object as
the last line of stdout. Logs go to stderr.

Exit status: 0 done; 1 the pass failed (source or chain unreadable); 2 bad settings; 3 the weights
could not be set on some mechanism (after the retries).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TextIO

from ledger.logs import UsageError, parse_format, parse_level, parse_quietly, setup_logging

from .audit import AuditRefused, require_clean_sample
from .audit import main as audit_main
from .chain import (
    BittensorChain,
    Chain,
    ChainUnavailable,
    MetagraphView,
    Retry,
    Sleep,
    Submission,
    load_metagraph_file,
    submit_weights,
    with_retries,
)
from .config import Settings, load_settings
from .coverage import CoverageGate, CoverageTooLow
from .hashrate import Window
from .luxor import LuxorClient, LuxorError, discrepancies, ours_by_hotkey
from .policy import PolicyError, compute_weights, invert_metagraph
from .report import MechanismOutcome, PassReport, json_line, render_table
from .sources import ClickHouseSource, HashrateSource, ProxyApiSource, SourceError

log = logging.getLogger("scorer")

EXIT_OK, EXIT_PASS_FAILED, EXIT_CONFIG, EXIT_WEIGHTS_NOT_SET = 0, 1, 2, 3
BLOCK_SECONDS = 12.0
DEFAULT_TEMPO = 360
MAX_WAIT = 600.0


class Redactor:
    """Replaces every known secret by ``***``."""

    def __init__(self, secrets: Sequence[str]) -> None:
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text


class PassFailed(RuntimeError):
    """A pass could not produce weights (its message is already redacted)."""


@dataclass
class Scorer:
    settings: Settings
    source: HashrateSource
    chain: Chain | None
    metagraph_file: MetagraphView | None = None
    luxor: LuxorClient | None = None
    sleep: Sleep = asyncio.sleep
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    redact: Callable[[str], str] = lambda s: s
    coverage: CoverageGate | None = None

    @property
    def retry(self) -> Retry:
        return Retry(attempts=self.settings.retries, base_delay=self.settings.retry_delay)

    async def _metagraph(self) -> MetagraphView:
        if self.metagraph_file is not None:
            return self.metagraph_file
        if self.chain is None:
            raise PassFailed("no metagraph: give --metagraph-file or a chain")
        chain = self.chain
        return await with_retries(
            "reading the metagraph",
            lambda: chain.metagraph(self.settings.netuid),
            self.retry,
            self.sleep,
            self.redact,
        )

    async def run_pass(self, end: datetime | None = None) -> PassReport:
        s = self.settings
        window = Window.ending(end or s.end or self.clock(), s.window_seconds)
        try:
            stats = await self.source.fetch(window)
            if self.coverage is not None:
                await self.coverage.check(window)
        except (SourceError, CoverageTooLow) as exc:
            raise PassFailed(self.redact(str(exc))) from None
        try:
            metagraph = await self._metagraph()
        except Exception as exc:
            raise PassFailed(self.redact(str(exc))) from None

        burn_uid = s.burn_uid
        if burn_uid is None:
            burn_uid = metagraph.owner_uid
            if burn_uid is None and self.metagraph_file is None:
                log.warning("the subnet owner's hotkey %s has no uid: no burn uid", metagraph.owner_hotkey)
        try:
            uid_of = invert_metagraph(metagraph.uids)
            weights = compute_weights({st.hotkey: st.hashrate for st in stats}, metagraph.uids, s.policy, burn_uid)
        except PolicyError as exc:
            raise PassFailed(str(exc)) from None
        if weights.unregistered:
            log.info("hotkeys with shares that are not registered: %s", ", ".join(weights.unregistered))

        luxor_report = None
        luxor_error = None
        if self.luxor is not None:
            try:
                theirs = await self.luxor.hashrates(window)
                luxor_report = discrepancies(ours_by_hotkey(stats), theirs, s.luxor_threshold)
                for d in luxor_report:
                    if d.flagged:
                        log.warning("Luxor disagrees on %s: ours %.4g H/s, Luxor %.4g H/s", d.hotkey, d.ours, d.luxor)
            except LuxorError as exc:
                luxor_error = self.redact(str(exc))
                log.warning("Luxor cross-check failed: %s", luxor_error)

        if s.audit_sample is not None:  # the ledger must re-hash before it earns weights
            try:
                audited = await require_clean_sample(s.clickhouse, s.proxy_api, window, s.audit_sample)
                log.info("audit sample clean: %d shares re-hashed", audited.report.checked)
            except AuditRefused as exc:
                raise PassFailed(self.redact(str(exc))) from None

        mechanism_count = await self._mechanism_count()
        mechanisms = self.plan_mechanisms(mechanism_count or 1, weights.weights, burn_uid)
        if not s.dry_run:
            if self.chain is None:
                raise PassFailed("no chain to set weights on")
            mechanisms = await self.set_on_mechanisms(self.chain, mechanisms)
        return PassReport(
            window=window,
            source=self.source.describe(),
            shares_known=not isinstance(self.source, ProxyApiSource),
            stats=stats,
            uid_of={st.hotkey: uid_of[st.hotkey] for st in stats if st.hotkey in uid_of},
            weights=weights,
            netuid=s.netuid,
            luxor=luxor_report,
            luxor_error=luxor_error,
            mechanisms=mechanisms,
            mechanism_count=mechanism_count,
            dry_run=s.dry_run,
        )

    async def _mechanism_count(self) -> int | None:
        """Read each pass (a subnet owner can change it); None without a chain."""
        chain = self.chain
        if chain is None:
            return None
        netuid = self.settings.netuid
        try:
            return await with_retries(
                "reading the mechanism count",
                lambda: chain.mechanism_count(netuid),
                self.retry,
                self.sleep,
                self.redact,
            )
        except Exception as exc:
            raise PassFailed(self.redact(str(exc))) from None

    def plan_mechanisms(self, count: int, vector: dict[int, float], burn_uid: int | None) -> list[MechanismOutcome]:
        """The same vector on every mechanism, except those configured to be skipped or burned."""
        s = self.settings
        out: list[MechanismOutcome] = []
        for mechid in range(count):
            if mechid in s.skip_mechanisms:
                out.append(MechanismOutcome(mechid, "skip", {}, note="--skip-mechanisms"))
            elif mechid in s.burn_mechanisms:
                if burn_uid is None or burn_uid not in vector:
                    log.warning("mechanism %d is a burn mechanism but there is no burn uid: skipped", mechid)
                    out.append(MechanismOutcome(mechid, "skip", {}, note="burn mechanism without a burn uid"))
                else:
                    out.append(MechanismOutcome(mechid, "burn", {uid: float(uid == burn_uid) for uid in vector}))
            else:
                out.append(MechanismOutcome(mechid, "hashrate", dict(vector)))
        unknown = sorted((s.skip_mechanisms | s.burn_mechanisms) - set(range(count)))
        if unknown:
            log.warning("configured mechanisms %s do not exist (the subnet has %d)", unknown, count)
        return out

    async def set_on_mechanisms(self, chain: Chain, plan: list[MechanismOutcome]) -> list[MechanismOutcome]:
        """Set the weights on each planned mechanism in turn, waiting out the rate limit first."""
        netuid = self.settings.netuid
        rate_limit: int | None
        try:
            rate_limit = await with_retries(
                "reading the weights rate limit",
                lambda: chain.weights_rate_limit(netuid),
                self.retry,
                self.sleep,
                self.redact,
            )
        except ChainUnavailable as exc:
            # The SDK preflights the rate limit itself before signing: it still never submits early.
            log.warning("%s; leaving the rate limit check to the SDK", self.redact(str(exc)))
            rate_limit = None
        out: list[MechanismOutcome] = []
        for m in plan:
            if m.rule == "skip":
                out.append(m)
                continue
            waited, blocked = (0, "") if rate_limit is None else await self.wait_rate_limit(chain, m.mechid, rate_limit)
            if blocked:
                submission = Submission(False, "", blocked, 0, mechid=m.mechid)
            else:
                submission = await submit_weights(
                    chain, netuid, m.weights, self.retry, self.sleep, self.redact, mechid=m.mechid
                )
            out.append(replace(m, submission=submission, waited_blocks=waited))
        return out

    async def wait_rate_limit(self, chain: Chain, mechid: int, rate_limit: int) -> tuple[int, str]:
        """Sleep until ``rate_limit`` blocks have passed since our last weights on ``mechid``.

        Returns the blocks waited and, when it could not get there, why (then nothing is sent).
        Bounded: each round sleeps at most ``MAX_WAIT`` and the rounds are enough for the whole
        limit at the nominal block time plus a few spare, so a stalled chain costs a bounded wait.
        """
        netuid = self.settings.netuid
        waited = 0
        rounds = math.ceil(rate_limit * BLOCK_SECONDS / MAX_WAIT) + 3
        first: int | None = None
        for round_ in range(rounds + 1):
            try:
                last = await chain.last_weights_block(netuid, mechid)
                current = await chain.current_block()
            except Exception as exc:
                reason = self.redact(f"{type(exc).__name__}: {exc}")
                log.warning("reading the last weights block failed: %s; leaving the check to the SDK", reason)
                return waited, ""
            if first is None:
                first = current
            waited = current - first
            since = None if last is None else current - last
            if since is None or since >= rate_limit:  # the chain's own rule: allowed once since >= limit
                return waited, ""
            remaining = rate_limit - since
            if round_ == rounds:
                break
            log.info(
                "mechanism %d: weights were set %d blocks ago, the rate limit is %d blocks: waiting %d blocks",
                mechid,
                since,
                rate_limit,
                remaining,
            )
            await self.sleep(min(MAX_WAIT, remaining * BLOCK_SECONDS))
        return waited, f"still inside the weights rate limit ({rate_limit} blocks) after waiting {waited} blocks"

    def print_report(self, report: PassReport, out: TextIO) -> None:
        print(render_table(report, show_workers=self.settings.workers), file=out)
        if self.settings.json:
            print(json_line(report), file=out)
        out.flush()

    async def wait_next_tempo(self, start_block: int | None) -> None:
        """Sleep until ``tempo`` blocks after ``start_block`` (or a tempo of wall time without a chain)."""
        chain = self.chain
        if chain is None or start_block is None:
            await self.sleep(DEFAULT_TEMPO * BLOCK_SECONDS)
            return
        netuid = self.settings.netuid
        try:
            tempo = await with_retries(
                "reading the tempo", lambda: chain.tempo(netuid), self.retry, self.sleep, self.redact
            )
        except Exception as exc:
            log.warning("%s; assuming %d blocks", self.redact(str(exc)), DEFAULT_TEMPO)
            tempo = DEFAULT_TEMPO
        target = start_block + max(1, tempo)
        # Bounded: each round sleeps at least one block; a chain that stops answering costs a tempo.
        for _ in range(max(1, tempo) + 1):
            try:
                current = await chain.current_block()
            except Exception as exc:
                log.warning("reading the block failed: %s", self.redact(f"{type(exc).__name__}: {exc}"))
                await self.sleep(min(MAX_WAIT, tempo * BLOCK_SECONDS))
                return
            remaining = target - current
            if remaining <= 0:
                return
            await self.sleep(min(MAX_WAIT, max(1, remaining) * BLOCK_SECONDS))

    async def _block(self) -> int | None:
        if self.chain is None:
            return None
        try:
            return await self.chain.current_block()
        except Exception as exc:
            log.warning("reading the block failed: %s", self.redact(f"{type(exc).__name__}: {exc}"))
            return None

    async def run_loop(self, out: TextIO, passes: int | None = None) -> int:
        """One pass per tempo; a failed pass is logged and the loop goes on. Returns the passes run."""
        done = 0
        while passes is None or done < passes:
            start_block = await self._block()
            try:
                report = await self.run_pass(end=self.clock())
                self.print_report(report, out)
            except PassFailed as exc:
                log.error("scoring pass failed: %s", exc)
            except Exception as exc:  # never let one pass kill the validator
                log.exception("scoring pass crashed: %s", self.redact(f"{type(exc).__name__}: {exc}"))
            done += 1
            if passes is not None and done >= passes:
                break
            await self.wait_next_tempo(start_block)
        return done


def build_scorer(settings: Settings, redact: Callable[[str], str]) -> Scorer:
    source: HashrateSource
    if settings.proxy_api is not None:
        source = ProxyApiSource(settings.proxy_api, pattern=settings.pattern)
    else:
        assert settings.clickhouse is not None
        source = ClickHouseSource(settings.clickhouse)
    metagraph_file = load_metagraph_file(settings.metagraph_file) if settings.metagraph_file else None
    chain: Chain | None = None
    if metagraph_file is None or not settings.dry_run:
        chain = BittensorChain(
            settings.network,
            settings.wallet_name,
            settings.wallet_hotkey,
            settings.wallet_path,
        )
    luxor = None
    if settings.luxor_api_key:
        luxor = LuxorClient(settings.luxor_api_key, settings.luxor_subaccount, settings.luxor_url)
    coverage = None
    if settings.min_coverage > 0:
        coverage = CoverageGate(
            settings.min_coverage,
            settings.clickhouse,
            settings.proxy_api,
            source._connect if isinstance(source, ClickHouseSource) else None,
        )
    return Scorer(settings, source, chain, metagraph_file, luxor, redact=redact, coverage=coverage)


def _setup_logging(level: int, fmt: str, redact: Redactor) -> None:
    # Libraries stay at WARNING; --log-level is for the scorer's own lines.
    setup_logging(level, fmt, redact=redact, root_level=logging.WARNING, own=("scorer",))


async def _run(settings: Settings, redact: Redactor) -> int:
    try:
        scorer = build_scorer(settings, redact)
    except ValueError as exc:
        print(f"ih-scorer: {redact(str(exc))}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        if settings.loop:
            await scorer.run_loop(sys.stdout, settings.passes)
            return EXIT_OK
        try:
            report = await scorer.run_pass()
        except PassFailed as exc:
            print(f"ih-scorer: {exc}", file=sys.stderr)
            return EXIT_PASS_FAILED
        scorer.print_report(report, sys.stdout)
        if report.weights_not_set:
            return EXIT_WEIGHTS_NOT_SET
        return EXIT_OK
    finally:
        if scorer.chain is not None:
            with contextlib.suppress(Exception):
                await scorer.chain.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] == ["audit"]:  # ih-scorer audit …: scorer/audit.py
        return audit_main(args[1:])
    try:
        settings = parse_quietly(lambda: load_settings(args))
        level = parse_level(settings.log_level)
        parse_format(settings.log_format)
    except UsageError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    except ValueError as exc:  # ConfigError, and the log options
        print(f"ih-scorer: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    redact = Redactor(settings.secrets())
    _setup_logging(level, settings.log_format, redact)
    try:
        return asyncio.run(_run(settings, redact))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
