"""What a scoring pass prints: a readable table, and the one-line JSON document (``--json``)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from .chain import Submission
from .hashrate import HotkeyStat, Window, format_hashrate, iso
from .luxor import Discrepancy
from .policy import Weights


@dataclass(frozen=True)
class MechanismOutcome:
    """What one mechanism of the subnet gets in a pass, and what the chain said."""

    mechid: int
    rule: str
    """"hashrate" (the policy's vector), "burn" (everything to the burn uid) or "skip" (nothing set)."""
    weights: dict[int, float]
    """uid → weight sent (or, with --dry-run, that would be sent); empty for "skip"."""
    submission: Submission | None = None
    """None with --dry-run, for "skip", and when nothing could be sent."""
    waited_blocks: int = 0
    """Blocks waited for the weights rate limit before submitting."""
    note: str = ""

    @property
    def failed(self) -> bool:
        return self.submission is not None and not self.submission.ok

    def to_json(self) -> dict[str, Any]:
        return {
            "mechid": self.mechid,
            "rule": self.rule,
            "weights": {str(uid): weight for uid, weight in sorted(self.weights.items())},
            "submitted": self.submission.to_json() if self.submission is not None else None,
            "waited_blocks": self.waited_blocks,
            "note": self.note or None,
        }


@dataclass(frozen=True)
class PassReport:
    window: Window
    source: str
    shares_known: bool
    stats: list[HotkeyStat]
    uid_of: dict[str, int]
    weights: Weights
    netuid: int
    luxor: list[Discrepancy] | None = None
    luxor_error: str | None = None
    mechanisms: list[MechanismOutcome] = field(default_factory=list)
    mechanism_count: int | None = None
    """Read from the chain; None when there is no chain (then mechanism 0 alone is shown)."""
    dry_run: bool = True

    @property
    def weights_not_set(self) -> bool:
        """Some mechanism's weights could not be set (after the retries)."""
        return any(m.failed for m in self.mechanisms)


def _shares(value: int | None) -> str:
    return "n/a" if value is None else str(value)


def render_table(report: PassReport, show_workers: bool = False) -> str:
    w = report.weights
    lines = [
        f"netuid {report.netuid}  window {iso(report.window.start)} → {iso(report.window.end)}"
        f" ({report.window.seconds} s)  source: {report.source}",
    ]
    header = f"{'hotkey':<48}  {'uid':>5}  {'hashrate':>13}  {'shares':>9}  {'weight':>8}"
    lines += [header, "-" * len(header)]
    for stat in report.stats:
        uid = report.uid_of.get(stat.hotkey)
        weight = w.hotkey_weights.get(stat.hotkey, 0.0)
        lines.append(
            f"{stat.hotkey:<48}  {'-' if uid is None else uid:>5}  {format_hashrate(stat.hashrate):>13}"
            f"  {_shares(stat.shares):>9}  {weight:>8.4f}"
        )
        if show_workers:
            for worker in stat.workers:
                lines.append(
                    f"  {worker.worker:<46}  {'':>5}  {format_hashrate(worker.hashrate):>13}"
                    f"  {_shares(worker.shares):>9}"
                )
    if not report.stats:
        lines.append("(no shares in the window)")
    if w.burn_uid is not None:
        lines.append(f"{'(burn)':<48}  {w.burn_uid:>5}  {'':>13}  {'':>9}  {w.burned:>8.4f}")
    total = sum(s.hashrate for s in report.stats)
    lines.append(f"total {format_hashrate(total)} over {len(report.stats)} hotkeys")
    if not report.shares_known:
        lines.append("note: the proxy API does not report share counts (shares: n/a)")
    if w.unregistered:
        lines.append(f"unregistered hotkeys (earn nothing): {', '.join(w.unregistered)}")
    if w.burn_uid is None and w.earned == 0:
        lines.append("nothing was earned and there is no burn uid: every weight is zero")
    if report.luxor is not None:
        lines.append("Luxor cross-check (report only, not used for weights):")
        lines.append(f"  {'hotkey':<48}  {'ours':>13}  {'luxor':>13}  {'ratio':>7}")
        for d in report.luxor:
            ratio = "-" if d.ratio is None else f"{d.ratio:.3f}"
            flag = "  FLAG" if d.flagged else ""
            lines.append(
                f"  {d.hotkey:<48}  {format_hashrate(d.ours):>13}  {format_hashrate(d.luxor):>13}  {ratio:>7}{flag}"
            )
    if report.luxor_error:
        lines.append(f"Luxor cross-check failed: {report.luxor_error}")
    lines += render_mechanisms(report)
    return "\n".join(lines)


def _vector(weights: dict[int, float]) -> str:
    nonzero = [f"{uid}:{w:.4f}" for uid, w in sorted(weights.items()) if w > 0]
    return " ".join(nonzero) if nonzero else "(all zero)"


def render_mechanisms(report: PassReport) -> list[str]:
    """One line per mechanism: the rule, the nonzero weights, and the chain's answer (or "dry run")."""
    count = "not read (no chain)" if report.mechanism_count is None else str(report.mechanism_count)
    lines = [f"mechanisms: {count}{'  (dry run: nothing is set)' if report.dry_run else ''}"]
    lines.append(f"  {'mech':>4}  {'rule':<8}  {'status':<24}  weights (uid:weight, nonzero)")
    for m in report.mechanisms:
        s = m.submission
        if m.rule == "skip":
            status = "skipped"
        elif report.dry_run:
            status = "would set"
        elif s is None:
            status = "not sent"
        else:
            status = f"{s.mode or '-'} {'ok' if s.ok else 'FAILED'} ({s.attempts} att.)"
        lines.append(f"  {m.mechid:>4}  {m.rule:<8}  {status:<24}  {_vector(m.weights) if m.rule != 'skip' else '-'}")
        detail = []
        if m.waited_blocks:
            detail.append(f"waited {m.waited_blocks} blocks for the weights rate limit")
        if s is not None and s.message:
            detail.append(s.message)
        if m.note:
            detail.append(m.note)
        if detail:
            lines.append(f"        {'; '.join(detail)}")
    return lines


def to_json(report: PassReport) -> dict[str, Any]:
    w = report.weights
    doc: dict[str, Any] = {
        "window": {
            "start": iso(report.window.start),
            "end": iso(report.window.end),
            "seconds": report.window.seconds,
        },
        "netuid": report.netuid,
        "source": report.source,
        "shares_known": report.shares_known,
        "miners": [
            {
                "hotkey": s.hotkey,
                "uid": report.uid_of.get(s.hotkey),
                "hashrate": s.hashrate,
                "shares": s.shares,
                "weight": w.hotkey_weights.get(s.hotkey, 0.0),
                "workers": [{"worker": x.worker, "hashrate": x.hashrate, "shares": x.shares} for x in s.workers],
            }
            for s in report.stats
        ],
        "weights": {str(uid): weight for uid, weight in sorted(w.weights.items())},
        "unregistered": list(w.unregistered),
        "burn_uid": w.burn_uid,
        "burned": w.burned,
    }
    if report.luxor is not None or report.luxor_error is not None:
        doc["luxor"] = {
            "hotkeys": [d.to_json() for d in report.luxor or []],
            "error": report.luxor_error,
        }
    doc["mechanism_count"] = report.mechanism_count
    doc["mechanisms"] = [m.to_json() for m in report.mechanisms]
    if report.dry_run:
        doc["submitted"] = None
    else:
        sent = [m for m in report.mechanisms if m.rule != "skip"]
        doc["submitted"] = {
            "ok": bool(sent) and not report.weights_not_set and all(m.submission is not None for m in sent),
            "failed": [m.mechid for m in sent if m.submission is None or not m.submission.ok],
        }
    return doc


def json_line(report: PassReport) -> str:
    return json.dumps(to_json(report), separators=(",", ":"), allow_nan=False)
