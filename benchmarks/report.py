"""Turn a benchmark run into its table, its target verdicts and its files (JSON, markdown, PNG)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from benchmarks import failover
from benchmarks.common import bucket_upper

KIB = 1024.0

# Targets of issue 11, on this machine, in one run against the direct path: reported, never asserted.
TARGET_CPU_US = 30.0
TARGET_ADDED_P99_MS = 1.0
TARGET_STALL_MS = 10.0
SATURATED_PERCENT = 85.0  # proxy CPU % in the fixed-rate window above which its latency is mostly queueing
NOISY_STEAL_PERCENT = 5.0  # steal (% of one core) in a window above which it measures a neighbour too
TARGET_CONNECT_S = 2.0
TARGET_CONNECT_SESSIONS = 9000
TARGET_RSS_KIB = 20.0
TARGET_LAG_P99_S = 2.0

PROXY_PHASES = (
    ("embedded", "embedded"),
    ("clickhouse_http", "ClickHouse HTTP"),
    ("gc_freeze", "embedded, gc.freeze"),
    ("farm", "embedded, farm mode"),
)
PATHS = {"farm": "proxy, farm mode"}  # the table's "path" of a proxy phase (default: "proxy")
BASELINE = "embedded"  # farm mode is read against passthrough with the same ledger, in the same run


def _fmt(value: float | None, spec: str = ",.0f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return format(value, spec)


def rss_kib(rss_bytes_per_session: float) -> float | None:
    """KiB per session, or None when the reading is not one: RSS fell while sessions were added
    because the allocator (embedded: the engine too) gave an earlier window's memory back meanwhile."""
    return rss_bytes_per_session / KIB if rss_bytes_per_session > 0 else None


def connect_cpu(many: dict[str, Any]) -> dict[str, float] | None:
    """CPU µs per session over a connect, the proxy's apart from the load side's (generators and
    pool, on the other core): which of them bounds the time to connect."""
    cpu, connected = many.get("cpu_seconds"), many.get("connected")
    if not cpu or not connected:
        return None
    load = sum(v for k, v in cpu.items() if k == "pool" or k.startswith("loadgen"))
    out = {"load": load / connected * 1e6}
    between = cpu.get("proxy", cpu.get("relay"))  # what sat between them, on the proxy's core
    if between is not None:
        out["proxy"] = between / connected * 1e6
    return out


def _calls(per_share: dict[str, float] | None) -> str:
    return f"{per_share['read']:.2f} + {per_share['write']:.2f}" if per_share else "–"


def _connect_cpu_text(per_session: dict[str, float] | None, between: str = "proxy") -> str:
    if not per_session:
        return ""
    proxy = f"{between} {per_session['proxy']:.0f} µs, " if "proxy" in per_session else ""
    return f" (CPU per session: {proxy}generators and pool {per_session['load']:.0f} µs)"


def _relay_text(direct: dict[str, Any]) -> str:
    relayed = direct.get("connect_many_relay")
    if not relayed:
        return ""
    return (
        f"; through a bare byte relay on the proxy's core (a pool connection per session, nothing parsed: "
        f"passthrough's floor) in {relayed['seconds']:.2f} s"
        + ("" if relayed["connected"] == relayed["sessions"] else f", {relayed['connected']:,} connected")
        + _connect_cpu_text(connect_cpu(relayed), "relay")
    )


RSS_UNREADABLE = "RSS per session unreadable (the allocator returned an earlier window's memory meanwhile)"


def _lag_p99(r: dict[str, Any]) -> float | None:
    value: float | None = r.get("ingest_lag", {}).get("oldest", {}).get("p99_s")
    return value


def direct_rate(phases: dict[str, Any]) -> dict[str, Any] | None:
    """The direct path's fixed-rate window every "added" figure is taken against: the quieter (lower
    p99) of the run's two, at the start and at the end, so a noisy minute on the box never makes the
    proxy look cheaper than it is."""
    windows = [phases[k]["rate"] for k in ("direct", "direct_after") if k in phases and "rate" in phases[k]]
    return min(windows, key=lambda w: w["p99_ms"]) if windows else None


def rows(results: dict[str, Any]) -> list[dict[str, str]]:
    phases = results["phases"]
    direct = phases.get("direct")
    base = direct_rate(phases)
    out: list[dict[str, str]] = []
    for key, label, path in (
        ("direct", "–", "direct"),
        *((k, lab.removesuffix(", farm mode"), PATHS.get(k, "proxy")) for k, lab in PROXY_PHASES),
        ("direct_after", "–", "direct (again, at the end)"),
    ):
        phase = phases.get(key)
        if phase is None:
            continue
        for mode in ("closed", "rate"):
            r = phase.get(mode)
            if r is None:
                continue
            d = (direct or {}).get(mode)
            proxy = path.startswith("proxy")
            loop = r.get("loop", {})
            out.append(
                {
                    "path": path,
                    "ledger": label,
                    "load": "closed loop"
                    if mode == "closed"
                    else f"{r['offered_rate']:,.0f}/s for {r['seconds']:.0f} s",
                    "shares/s": _fmt(r["shares_per_s"]),
                    "× direct": _fmt(r["shares_per_s"] / d["shares_per_s"], ".2f") if proxy and d else "",
                    "p50 ms": _fmt(r["p50_ms"], ".2f"),
                    "p99 ms": _fmt(r["p99_ms"], ".2f"),
                    "max ms": _fmt(r["max_ms"], ".1f"),
                    "p99 added ms": (
                        _fmt(r["p99_ms"] - base["p99_ms"], "+.2f") if proxy and base and mode == "rate" else ""
                    ),
                    "proxy CPU µs/share": _fmt(r["cpu_us_per_share"].get("proxy"), ".1f") if proxy else "",
                    "proxy CPU %": _fmt(r["cpu_percent"].get("proxy"), ".0f") if proxy else "",
                    # direct: the stall floor, a bare loop on the proxy's core meanwhile
                    "longest loop stall ms": _fmt(loop.get("max_lag_ms"), ".1f") if loop.get("seconds") else "",
                    "ingest lag p99 s": _fmt(_lag_p99(r), ".2f") if proxy else "",
                    "gen. late p99 ms": _fmt(r.get("generator_lateness_p99_ms"), ".2f") if mode == "rate" else "",
                    "pool conns": _fmt(phase.get("pool_connections"), ",") if proxy else "",
                    "other CPU %": _fmt(r.get("foreign_cpu_percent"), ".0f"),
                    "steal %": _fmt(r.get("steal_percent"), ".0f"),
                }
            )
    return out


def _table(table: list[dict[str, str]], markdown: bool) -> str:
    if not table:
        return "(no results)"
    heads = list(table[0])
    widths = {h: max(len(h), *(len(r[h]) for r in table)) for h in heads}
    if markdown:
        lines = [
            "| " + " | ".join(heads) + " |",
            "|" + "|".join("---:" if h not in ("path", "ledger", "load") else "---" for h in heads) + "|",
        ]
        lines += ["| " + " | ".join(r[h] for h in heads) + " |" for r in table]
        return "\n".join(lines)
    lines = ["  ".join(h.rjust(widths[h]) for h in heads)]
    lines += ["  ".join(r[h].rjust(widths[h]) for h in heads) for r in table]
    return "\n".join(lines)


def text_table(results: dict[str, Any]) -> str:
    return _table(rows(results), markdown=False)


# --- targets ---------------------------------------------------------------------------------------


def targets(results: dict[str, Any]) -> dict[str, Any]:
    phases = results["phases"]
    direct = phases.get("direct", {})
    base = direct_rate(phases)
    out: dict[str, Any] = {}
    for key, _ in PROXY_PHASES:
        p = phases.get(key)
        if p is None:
            continue
        closed, rate = p["closed"], p["rate"]
        entry: dict[str, Any] = {
            "cpu_us_per_share_closed": closed["cpu_us_per_share"].get("proxy"),
            "cpu_us_per_share_rate": rate["cpu_us_per_share"].get("proxy"),
            "cpu_percent_rate": rate["cpu_percent"].get("proxy"),
            "idle_cpu_percent": p.get("idle_cpu_percent"),
            "stall_dumps": p.get("stall_dumps", 0),
            "closed_shares_per_s": closed["shares_per_s"],
            "closed_vs_direct": closed["shares_per_s"] / direct["closed"]["shares_per_s"] if direct else None,
            "p99_added_ms": rate["p99_ms"] - base["p99_ms"] if base else None,
            "p50_added_ms": rate["p50_ms"] - base["p50_ms"] if base else None,
            "p99_ratio": rate["p99_ms"] / base["p99_ms"] if base else None,
            "longest_stall_ms": rate["loop"]["max_lag_ms"],
            "stall_window_s": rate["loop"]["seconds"],
            "stalls_over_10ms": rate["loop"]["over_10ms"],
            "gc_max_ms": max((g["max_ms"] for g in rate["loop"]["gc"].values()), default=0.0),
            "rss_kib_per_session": rss_kib(p["rss_per_session"]),
            "ingest_lag_p99_s_closed": _lag_p99(closed),
            "ingest_lag_p99_s_rate": _lag_p99(rate),
            "write_bytes_per_share_rate": rate.get("proxy_write_bytes_per_share"),
            "syscalls_per_share_closed": closed.get("proxy_syscalls_per_share"),
            "syscalls_per_share_rate": rate.get("proxy_syscalls_per_share"),
            "rss_growth_bytes_per_share": p.get("rss_growth_per_closed_loop_share"),
            "sessions": p["connect"]["connected"],
            "pool_connections": p.get("pool_connections"),
        }
        many = p.get("connect_many")
        if many:
            entry["connect_many"] = {
                "sessions": many["sessions"],
                "connected": many["connected"],
                "seconds": many["seconds"],
                "rss_kib_per_session": rss_kib(many["rss_per_session"]),
                "cpu_us_per_session": connect_cpu(many),
            }
        out[key] = entry
    base, farm = out.get(BASELINE), out.get("farm")
    if base and farm:
        farm["vs_passthrough"] = {
            k: (farm[k] / base[k] if farm.get(k) and base.get(k) else None)
            for k in ("cpu_us_per_share_closed", "cpu_us_per_share_rate", "closed_shares_per_s", "rss_kib_per_session")
        }
        farm["vs_passthrough"]["p99_ms_rate"] = (
            phases["farm"]["rate"]["p99_ms"] / phases[BASELINE]["rate"]["p99_ms"]
            if phases[BASELINE]["rate"]["p99_ms"]
            else None
        )
    floor = (direct.get("rate") or {}).get("loop")
    if floor and floor.get("seconds"):
        # The machine's own stalls: a loop running only the lag probe, on the proxy's core, while the
        # direct path carried the fixed rate (benchmarks/probe.py --bare).
        out["stall_floor"] = {
            "longest_stall_ms": floor["max_lag_ms"],
            "stalls_over_10ms": floor["over_10ms"],
            "stalls_over_5ms": floor["over_5ms"],
            "window_s": floor["seconds"],
        }
    f = phases.get("failover")
    if f:
        out["failover"] = (
            {"error": f["error"]} if "error" in f else {**f["new_work"], "met": failover.met(f["new_work"])}
        )
    return out


def _worst_steal(phase: dict[str, Any]) -> float:
    """The highest steal of a phase's windows (runs before steal was recorded: 0)."""
    return max((phase.get(w) or {}).get("steal_percent", 0.0) or 0.0 for w in ("closed", "rate"))


def targets_text(results: dict[str, Any]) -> str:
    t = results.get("targets") or targets(results)
    phases = results["phases"]
    direct = phases.get("direct", {})
    micro = results.get("micro", {})
    s = results["settings"]

    def verdict(ok: bool | None) -> str:
        return "–" if ok is None else ("met" if ok else "NOT met")

    lines = [f"targets (reported, not asserted), {s['sessions']:,} sessions, against the direct path in this run:"]
    if direct:
        lines.append(
            f"  direct path: closed loop {direct['closed']['shares_per_s']:,.0f}/s; at {s['rate']:,.0f}/s p50 "
            f"{direct['rate']['p50_ms']:.2f} / p99 {direct['rate']['p99_ms']:.2f} / "
            f"max {direct['rate']['max_ms']:.1f} ms"
            + (
                f" (again at the end: p99 {phases['direct_after']['rate']['p99_ms']:.2f} ms)"
                if "direct_after" in phases
                else ""
            )
            + (
                f"; the machine's stall floor (a loop running only the lag probe, on the proxy's core, "
                f"meanwhile): longest {floor['longest_stall_ms']:.1f} ms in {floor['window_s']} s, "
                f"{floor['stalls_over_10ms']} over 10 ms"
                if (floor := t.get("stall_floor"))
                else ""
            )
            + (
                f"; {direct['connect_many']['connected']:,} sessions connected straight to the pool in "
                f"{direct['connect_many']['seconds']:.2f} s"
                + _connect_cpu_text(connect_cpu(direct["connect_many"]))
                + _relay_text(direct)
                if direct.get("connect_many")
                else ""
            )
        )
    for key, label in PROXY_PHASES:
        e = t.get(key)
        if e is None:
            continue
        cpu, added, stall = e["cpu_us_per_share_closed"], e["p99_added_ms"], e["longest_stall_ms"]
        lag = e["ingest_lag_p99_s_rate"]
        overloaded = e["closed_shares_per_s"] < s["rate"] * 1.25
        busy = e.get("cpu_percent_rate") or 0.0
        lines += [
            f"  [{label}]"
            + (
                f" OVERLOADED: {s['rate']:,.0f}/s offered, {e['closed_shares_per_s']:,.0f}/s closed-loop capacity "
                "in this run: its fixed-rate latency, stalls and lag measure a growing queue, not the proxy"
                if overloaded
                else ""
            )
            + (
                f" SATURATED: the proxy used {busy:.0f} % of its core at {s['rate']:,.0f}/s: its tail and "
                "stalls there are mostly shares queued behind a busy loop"
                if not overloaded and busy >= SATURATED_PERCENT
                else ""
            )
            + (
                f" NOISY: the hypervisor's other guests took {steal:.0f} % of a core in its windows: they "
                "slowed every process here, the proxy's CPU/share and tails included"
                if (steal := _worst_steal(phases.get(key, {}))) >= NOISY_STEAL_PERCENT
                else ""
            ),
            f"    proxy CPU/share   <= {TARGET_CPU_US:g} µs: {cpu:.1f} µs closed loop "
            f"({e['closed_shares_per_s']:,.0f}/s, "
            f"{e['closed_vs_direct']:.2f}× direct), {e['cpu_us_per_share_rate']:.1f} µs at {s['rate']:,.0f}/s"
            + (
                f" (idle, no session: {e['idle_cpu_percent']:.1f} % of a core, mostly the lag probe's wake-ups)"
                if e.get("idle_cpu_percent") is not None
                else ""
            )
            + f" — {verdict(cpu <= TARGET_CPU_US)}",
            f"    p99 added         <= {TARGET_ADDED_P99_MS:g} ms: {added:+.2f} ms ({e['p99_ratio']:.1f}× direct p99; "
            f"p50 {e['p50_added_ms']:+.2f} ms) — {verdict(added <= TARGET_ADDED_P99_MS)}",
            f"    loop stall        <= {TARGET_STALL_MS:g} ms: longest {stall:.1f} ms in {e['stall_window_s']} s "
            f"({e['stalls_over_10ms']} over 10 ms; longest GC pause {e['gc_max_ms']:.1f} ms"
            + (f"; stacks of {e['stall_dumps']} stalls in stalls-*.txt" if e.get("stall_dumps") else "")
            + (f"; the machine's floor {t['stall_floor']['longest_stall_ms']:.1f} ms" if t.get("stall_floor") else "")
            + ") — "
            f"{verdict(stall <= TARGET_STALL_MS)}",
            f"    ingest lag p99    <= {TARGET_LAG_P99_S:g} s: {_fmt(lag, '.2f')} s at {s['rate']:,.0f}/s, "
            f"{_fmt(e['ingest_lag_p99_s_closed'], '.2f')} s closed loop — "
            f"{verdict(None if lag is None else lag <= TARGET_LAG_P99_S)}",
            f"    RSS/session       <= {TARGET_RSS_KIB:g} KiB: "
            + (
                f"{rss:.1f} KiB at {s['sessions']:,} sessions — {verdict(rss <= TARGET_RSS_KIB)}"
                if (rss := e["rss_kib_per_session"]) is not None
                else f"{RSS_UNREADABLE} — {verdict(None)}"
            ),
            f"    pool connections: {_fmt(e['pool_connections'], ',')} for {e['sessions']:,} sessions",
            f"    disk writes: {_fmt(e['write_bytes_per_share_rate'], '.0f')} bytes per share (the process's "
            f"write() bytes: the journal, and the embedded engine's parts); RSS growth over the closed loop "
            f"{_fmt(e['rss_growth_bytes_per_share'], '.0f')} bytes per accepted share",
        ]
        if e.get("syscalls_per_share_closed") or e.get("syscalls_per_share_rate"):
            lines.append(
                "    read()/write() calls per share (sockets, the journal, the engine's files): "
                f"{_calls(e.get('syscalls_per_share_closed'))} closed loop, "
                f"{_calls(e.get('syscalls_per_share_rate'))} at {s['rate']:,.0f}/s"
            )
        many = e.get("connect_many")
        if many:
            ok = many["connected"] == many["sessions"] and many["seconds"] <= TARGET_CONNECT_S
            lines.append(
                f"    {many['sessions']:,} sessions   <= {TARGET_CONNECT_S:g} s: {many['connected']:,} connected and "
                f"authorized in {many['seconds']:.2f} s, "
                + (
                    f"{many['rss_kib_per_session']:.1f} KiB RSS each"
                    if many["rss_kib_per_session"] is not None
                    else RSS_UNREADABLE
                )
                + f" — {verdict(ok)}"
                + _connect_cpu_text(many.get("cpu_us_per_session"))
            )
        vs = e.get("vs_passthrough")
        if vs:
            lines.append(
                "    against passthrough (embedded) in this run: CPU/share "
                f"{_fmt(vs['cpu_us_per_share_closed'], '.2f')}× closed loop, "
                f"{_fmt(vs['cpu_us_per_share_rate'], '.2f')}× at {s['rate']:,.0f}/s; closed-loop shares/s "
                f"{_fmt(vs['closed_shares_per_s'], '.2f')}×; p99 at {s['rate']:,.0f}/s "
                f"{_fmt(vs['p99_ms_rate'], '.2f')}×; "
                f"RSS/session {_fmt(vs['rss_kib_per_session'], '.2f')}×"
            )
    fo = t.get("failover")
    if fo and "error" in fo:
        lines.append(f"  [farm mode failover] not measured: {fo['error']}")
    elif fo:
        p = phases["failover"]

        def ms(v: float | None) -> str:
            return "–" if v is None else f"{v * 1e3:.0f} ms"

        lines += [
            f"  [farm mode failover] {fo['sessions']:,} sessions mining at {p['rate']:,.0f}/s on "
            f"{p['pool_a_connections']} connections to pool A; A SIGKILLed, B the second --upstream",
            f"    new work <= {failover.TARGET_NEW_WORK_S:g} s, no reconnect: A's death → first new mining.notify "
            f"p50 {ms(fo['p50_s'])} / p99 {ms(fo['p99_s'])} / max {ms(fo['max_s'])}; "
            f"{fo['within_target']:,}/{fo['sessions']:,} within {failover.TARGET_NEW_WORK_S:g} s "
            f"({fo['without_new_work']} without new work); reconnects {fo['reconnects']} "
            f"({fo['closed_sessions']} connections closed, {fo['reconnect_requests']} client.reconnect) — "
            f"{verdict(fo['met'])}",
            f"    pool B: {p['pool_b_connections']} connections, {p['pool_b_accepted']:,} shares accepted after the "
            f"failover; answered with an error around it: {p['rejected']:,} "
            f"({', '.join(f'{k}: {v:,}' for k, v in sorted(p['rejected_by_code'].items())) or 'none'})",
        ]
    if micro:
        lines.append(
            f"  micro: duplicate set {micro['duplicate_set_bytes_per_share']:.0f} bytes per accepted share (kept for "
            f"the block and the last); crash journal {micro['journal_ns_per_share'] / 1000:.2f} µs and "
            f"{micro['journal_bytes_per_share']:.0f} bytes per share"
            + (
                f"; a full collection with 1M hashes remembered {micro['full_collection_ms_dict']:.1f} ms "
                f"(in a set, as before: {micro['full_collection_ms_set']:.1f} ms)"
                if "full_collection_ms_dict" in micro
                else ""
            )
        )
    return "\n".join(lines)


def checks_text(results: dict[str, Any]) -> str:
    lines = ["checks:"]
    for key, label in (("direct", "direct"), *PROXY_PHASES, ("direct_after", "direct again")):
        p = results["phases"].get(key)
        if p is None:
            continue
        windows = [p[m] for m in ("closed", "rate") if m in p]
        rejected = sum(w["rejected"] for w in windows)
        lost = sum(w["lost"] for w in windows)
        c = p["connect"]
        parts = [
            f"{c['connected']:,}/{c['sessions']:,} connected in {c['seconds']:.2f} s",
            f"rejected {rejected}, lost {lost}",
        ]
        ok = c["connected"] == c["sessions"] and rejected == 0 and lost == 0
        if p.get("pinned") is not None:
            closed = p.get("closed", {})
            busy, took = closed.get("proxy_core_busy_percent"), closed.get("cpu_percent", {}).get("proxy")
            parts.append(
                ("proxy pinned to its core" if p["pinned"] else "proxy NOT on its own core")
                + (f" (closed loop: core {busy:.0f} % busy, proxy {took:.0f} %)" if busy is not None and took else "")
            )
            ok = ok and bool(p["pinned"])
        if "exit_code" in p:
            parts.append(f"ledger rows {p['ledger_rows_accepted']:,} = shares accepted {p['shares_accepted']:,}")
            parts.append(f"proxy exit {p['exit_code']}")
            ok = ok and p["ledger_rows_accepted"] == p["shares_accepted"] and p["exit_code"] == 0
        lines.append(f"  {label:>20}: " + "; ".join(parts) + (" — ok" if ok else " — CHECK"))
    f = results["phases"].get("failover")
    if f and "error" in f:
        asked = f["error"].startswith("skipped")  # --failover-sessions 0: nothing went wrong
        lines.append(f"  {'farm failover':>20}: {f['error']}" + ("" if asked else " — CHECK"))
    elif f:
        c = f["connect"]
        ok = (
            c["connected"] == c["sessions"]
            and f["lost"] == 0
            and f["ledger_rows_accepted"] == f["shares_accepted"]
            and f["exit_code"] == 0
        )
        lines.append(
            f"  {'farm failover':>20}: {c['connected']:,}/{c['sessions']:,} connected in {c['seconds']:.2f} s; "
            f"lost {f['lost']} (errors answered around the failover: {f['rejected']:,}, expected); ledger rows "
            f"{f['ledger_rows_accepted']:,} = shares accepted {f['shares_accepted']:,}; proxy exit {f['exit_code']}"
            + (" — ok" if ok else " — CHECK")
        )
    return "\n".join(lines)


# --- files -----------------------------------------------------------------------------------------


def _sans_io(refs: dict[str, Any]) -> str:
    """The share path's Python without sockets (benchmarks.sharepath): the floor under the figures above."""
    session, farm = refs.get("sans_io_session_share_ns"), refs.get("sans_io_farm_share_ns")
    if session is None:
        return ""
    text = f"the share path without sockets (benchmarks.sharepath): a passthrough session {session / 1000:.1f} µs"
    if farm is not None:
        text += f", farm mode's hub {farm / 1000:.1f} µs"
    return text + " per share; "


def write(results: dict[str, Any], out: Path) -> None:
    (out / "results.json").write_text(json.dumps(results, indent=1, default=_json_default) + "\n")
    env = results["environment"]
    refs = results["reference"]
    ref_line = (
        f"Reference (same run): sha256d of a header: hashlib {refs['sha256d_header_ns']:.0f} ns, the share "
        f"check's {refs.get('sha256d_header_share_path_ns', float('nan')):.0f} ns ({env.get('share_hashing', '?')}), "
        f"its Python fallback {refs.get('sha256d_header_python_ns', float('nan')):.0f} ns; "
        f"the proxy's share check (12 branches, fresh extranonce2) {refs['share_check_fresh_en2_ns'] / 1000:.1f} µs; "
        f"{_sans_io(refs)}"
        f"a bare uvloop echo round trip {refs['uvloop_echo_round_trip_us']:.1f} µs in one process, "
        f"{refs['uvloop_echo_two_processes_us']:.1f} µs between two."
        if "sha256d_header_ns" in refs
        else f"Reference: {refs}"
    )
    md = [
        "# Proxy benchmark results",
        "",
        f"`{results['command']}` — {env['date']}, {env['cpu']}, {env['cores']} cores, Python {env['python']}, "
        f"uvloop {env['uvloop']}, proxy pinned to CPU {env['pinning']['proxy']}, load on CPU "
        f"{env['pinning']['load']}; {results['runtime_s']:.0f} s. See `benchmarks/README.md` for what each "
        "figure means.",
        "",
        ref_line,
        "",
        _table(rows(results), markdown=True),
        "",
        "```",
        targets_text(results),
        "",
        checks_text(results),
        "```",
        "",
        "![latency](latency.png) ![stalls](stalls.png) ![cost](cost.png)",
        "",
    ]
    (out / "results.md").write_text("\n".join(md))
    plot(results, out)


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    return str(value)


def _cdf(hist: dict[Any, int]) -> tuple[list[float], list[float]]:
    counts = {int(k): v for k, v in hist.items()}
    total = sum(counts.values())
    xs, ys, seen = [], [], 0
    for b in sorted(counts):
        seen += counts[b]
        xs.append(bucket_upper(b) * 1e3)
        ys.append(1 - seen / total if seen < total else 1 / total)
    return xs, ys


def plot(results: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    phases = results["phases"]
    rate = results["settings"]["rate"]
    series = [("direct", "direct")] + [(k, f"proxy, {lab}") for k, lab in PROXY_PHASES]

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key, label in series:
        p = phases.get(key)
        if p is None or not p["rate"].get("latency_hist"):
            continue
        xs, ys = _cdf(p["rate"]["latency_hist"])
        ax.step(xs, ys, where="post", label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.axhline(0.01, color="grey", ls=":", lw=1)
    ax.text(ax.get_xlim()[0], 0.011, " p99", fontsize=8, color="grey")
    ax.set_xlabel("submit → reply, ms")
    ax.set_ylabel("fraction of shares slower")
    ax.set_title(f"Latency at {rate:,.0f} shares/s, {results['settings']['sessions']:,} sessions")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=80)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label in series[1:]:
        p = phases.get(key)
        if p is None:
            continue
        per_second = p["rate"]["loop"]["per_second_max_lag_ms"]
        ax.plot(range(len(per_second)), per_second, lw=1, label=label)
    floor = ((phases.get("direct") or {}).get("rate") or {}).get("loop", {}).get("per_second_max_lag_ms")
    if floor:
        ax.plot(range(len(floor)), floor, lw=1, color="grey", label="floor: the probe alone on that core (direct)")
    ax.axhline(TARGET_STALL_MS, color="grey", ls="--", lw=1, label=f"target {TARGET_STALL_MS:g} ms")
    ax.set_yscale("log")
    ax.set_xlabel(f"second of the {rate:,.0f}/s window")
    ax.set_ylabel("longest event-loop stall in the second, ms")
    ax.set_title("Event-loop stalls (lag probe inside the proxy; the machine's floor in grey)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "stalls.png", dpi=80)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    names, closed, paced = [], [], []
    for key, label in PROXY_PHASES:
        p = phases.get(key)
        if p is None:
            continue
        names.append(label)
        closed.append(p["closed"]["cpu_us_per_share"].get("proxy", 0.0))
        paced.append(p["rate"]["cpu_us_per_share"].get("proxy", 0.0))
    at = list(range(len(names)))
    ax.bar([x - 0.2 for x in at], closed, width=0.4, label="closed loop")
    ax.bar([x + 0.2 for x in at], paced, width=0.4, label=f"{rate:,.0f}/s")
    ax.axhline(TARGET_CPU_US, color="grey", ls="--", lw=1, label=f"target {TARGET_CPU_US:g} µs")
    ax.set_xticks(at, [name.replace(", ", ",\n") for name in names])  # two lines: the long names overlap
    ax.set_ylabel("proxy CPU µs per share")
    ax.set_title("Proxy CPU per verified, ledgered share")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "cost.png", dpi=80)
    plt.close(fig)
