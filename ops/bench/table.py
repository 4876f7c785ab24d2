"""The benchmark's table and the details printed below it, from the results of the phases.

Every figure says what it counts: *records* are Kafka records (events and duplicate copies),
*events* the distinct events, *requests* HTTP requests to the portal.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import TYPE_CHECKING, Any

from consumer.core.mapping import BATCHABLE, RENAME, SEND
from ops.bench.measure import burst_ratio

if TYPE_CHECKING:
    from ops.bench.run import Bench
    from ops.bench.workload import Workload

# Targets (2-core machine).
TARGET_EPS = 5_000
QUIET_RATE = 20.0  # events/s of the low-rate latency run: most portals, most of the day
AIM_EPS = 20_000
TARGET_SPEEDUP = 20.0
TARGET_BURST = 1.1
TARGET_RESTORE_S = 30.0
TARGET_STATE_BYTES = 500.0


def verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("PASS" if ok else "FAIL")


def render(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for index, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def fmt_rate(result: dict[str, Any] | None) -> str:
    if not result:
        return "n/a"
    text = f"{result['eps']:,.0f}" if result["eps"] >= 100 else f"{result['eps']:,.1f}"
    return text if result.get("complete") else f"{text} (budget)"


def build_table(bench: Bench) -> str:
    r = bench.results
    e0, e50 = r.get("engine_0"), r.get("engine_50")
    n0, n50 = r.get("naive_0"), r.get("naive_50")
    lat_e, lat_n, rest = r.get("latency_engine"), r.get("latency_naive"), r.get("restore")
    rows = [["metric", "target", "service", "naive", "result"]]

    ok0 = e0["eps"] >= TARGET_EPS and e0["complete"] if e0 else None
    rows.append(
        [
            "events/s end to end, 0 ms API latency",
            f">= {TARGET_EPS:,} (aim {AIM_EPS:,})",
            fmt_rate(e0),
            fmt_rate(n0),
            verdict(ok0) + (" (aim met)" if e0 and e0["eps"] >= AIM_EPS else ""),
        ]
    )
    rep = r.get("replicas_0")
    if rep:
        ok = rep["eps"] >= TARGET_EPS and not rep["rebalanced"]
        rows.append(
            [
                f"events/s end to end, 0 ms, {rep['replicas']} replicas (one per core)",
                f">= {TARGET_EPS:,} (aim {AIM_EPS:,})",
                fmt_rate(rep) + (" REBALANCED" if rep["rebalanced"] else ""),
                "n/a",
                verdict(ok) + (" (aim met)" if rep["eps"] >= AIM_EPS else ""),
            ]
        )
    speedup = e50["eps"] / n50["eps"] if e50 and n50 and n50["eps"] else None
    rows.append(
        [
            "events/s end to end, 50 ms API latency",
            f">= {TARGET_SPEEDUP:.0f}x naive",
            fmt_rate(e50) + (f" ({speedup:,.0f}x)" if speedup else ""),
            fmt_rate(n50),
            verdict(None if speedup is None else speedup >= TARGET_SPEEDUP),
        ]
    )

    def per_1000(res: dict[str, Any] | None) -> str:
        if not res or not res["done"]:
            return "n/a"
        return f"{res['calls']['total_requests'] * 1000 / res['done']:,.1f}"

    rows.append(["API requests per 1,000 events (0 ms run)", "-", per_1000(e0), per_1000(n0), "-"])
    if e0:
        for label, methods in (
            ("send.messages", [SEND]),
            ("all MESSAGES methods", sorted(BATCHABLE)),
        ):
            ratio, requests, bound = burst_ratio(e0["calls"], bench.batch_size, methods)
            rows.append(
                [
                    f"burst: {label} requests / ceil(elements/{bench.batch_size})",
                    f"<= {TARGET_BURST:.2f}",
                    f"{ratio:.2f} ({requests:,}/{bound:,})",
                    "n/a",
                    verdict(ratio <= TARGET_BURST),
                ]
            )
        # Renames take no array; they share requests through REST `batch` (no target: they
        # trickle in behind each chat's first send, so their batches are rarely full).
        ratio, requests, bound = burst_ratio(e0["calls"], bench.batch_size, [RENAME])
        rows.append(
            [
                f"chat.name.set requests / ceil(renames/{bench.batch_size})",
                "-",
                f"{ratio:.2f} ({requests:,}/{bound:,})",
                "n/a",
                "-",
            ]
        )

    if e0:
        gaps = [r[k]["internals"]["sequence_gaps"] for k in ("engine_0", "engine_50") if r.get(k)]
        rows.append(
            [
                "sequence gaps given up (no real gaps)",
                "0",
                " / ".join(f"{g:,.0f}" for g in gaps) + " (0 / 50 ms)",
                "n/a",
                verdict(not any(gaps)),
            ]
        )

    def lat(res: dict[str, Any] | None, key: str) -> str:
        if not res or key not in res:
            return "n/a"
        return f"{res[key] * 1000:,.1f} ms"

    for key in ("p50", "p99"):
        rows.append(
            [
                f"latency {key}, record ts -> call done (paced)",
                "-",
                lat(lat_e, key),
                lat(lat_n, key),
                "-",
            ]
        )
    quiet_e, quiet_n = r.get("latency_quiet_engine"), r.get("latency_quiet_naive")
    if quiet_e or quiet_n:
        rows.append(
            [
                f"latency p50 / p99 at {QUIET_RATE:.0f} events/s (a quiet portal)",
                "-",
                f"{lat(quiet_e, 'p50')} / {lat(quiet_e, 'p99')}",
                f"{lat(quiet_n, 'p50')} / {lat(quiet_n, 'p99')}",
                "-",
            ]
        )
    if rest:
        rows.append(
            [
                f"restore {rest['states']:,} chat states",
                f"< {TARGET_RESTORE_S:.0f} s",
                f"{rest['restore_s']:.1f} s",
                "n/a",
                verdict(
                    rest["restore_s"] < TARGET_RESTORE_S and rest["restored"] == rest["states"]
                ),
            ]
        )
        rows.append(
            [
                "memory per idle chat state",
                f"< {TARGET_STATE_BYTES:.0f} B",
                f"{rest['deep_bytes_per_state']:.0f} B (RSS {rest['rss_bytes_per_state']:.0f} B)",
                "n/a",
                verdict(
                    rest["deep_bytes_per_state"] < TARGET_STATE_BYTES
                    and rest["rss_bytes_per_state"] < TARGET_STATE_BYTES
                ),
            ]
        )
    return render(rows)


def build_details(bench: Bench, workload: Workload) -> str:
    r = bench.results
    kinds = Counter(e.kind for e in workload.events)
    lines = [
        f"workload: {len(workload.records):,} records = {workload.unique:,} events + "
        f"{workload.duplicates:,} duplicates, {workload.chats:,} chats, 10% out of order, "
        f"seed {bench.args.seed}; kinds {dict(kinds.most_common())}",
        f"service: python -m consumer run, batch_size {bench.batch_size}, engine defaults "
        f"{bench.extra_env or ''}; simulator in its own process, rate limits off",
    ]
    warm = bench.warmup
    if warm is not None:
        lines.append(
            f"warm-up before the measured runs (not in the table): {warm['done']:,}/"
            f"{warm['records']:,} records of {bench.args.warmup_events:,} events at 0 ms, "
            f"{warm['eps']:,.0f} events/s"
        )
    for key, label in (
        ("engine_0", "service 0 ms"),
        ("engine_50", "service 50 ms"),
        ("naive_0", "naive 0 ms"),
        ("naive_50", "naive 50 ms"),
    ):
        res = r.get(key)
        if not res:
            continue
        line = (
            f"{label}: {res['done']:,}/{res['records']:,} records in {res['elapsed_s']:.1f} s"
            f"; requests {res['calls']['requests']}; HTTP {res['calls']['statuses']}"
        )
        if "outcomes" in res:
            inside = res["internals"]
            line += (
                f"; outcomes {res['outcomes']}; start-up {res['startup_s']:.1f} s; CPU "
                f"service {res['cpu_engine']:.2f} / simulator {res['cpu_sim']:.2f} cores, "
                f"{res.get('steal', 0.0):.2f} stolen by the hypervisor; "
                f"{inside['transactions']:,.0f} transactions of {inside['transaction_ms']:.1f} ms"
                f" mean; requests take {inside['request_ms']:.1f} ms mean as the service sees "
                f"them; {inside['batch_mean']:.1f} elements per request"
            )
        lines.append(line)
    for key, label in (
        ("latency_engine", "service"),
        ("latency_naive", "naive"),
        ("latency_quiet_engine", "service, quiet"),
        ("latency_quiet_naive", "naive, quiet"),
    ):
        res = r.get(key)
        if res:
            extra = f", max {res['max'] * 1000:,.0f} ms" if "max" in res else ""
            lines.append(
                f"latency {label}: paced {res['rate']:,.0f}/s, {res['records']:,} "
                f"records, {res['matched']:,}/{res['expected']:,} events matched to "
                f"calls{extra}"
            )
    rest = r.get("restore")
    if rest:
        lines.append(
            f"restore: produced in {rest['produce_s']:.1f} s; restored "
            f"{rest['restored']:,} ({rest['states_per_s']:,.0f}/s), "
            f"{rest['held_as_bytes']:,} held as bytes, mean value "
            f"{rest['value_bytes_mean']:.0f} B"
        )
    for key in ("engine_0", "engine_50"):
        res = r.get(key)
        if not res:
            continue
        dead = res["outcomes"].get("dead_lettered", 0)
        if dead:
            lines.append(
                f"WARNING ({key}): the service dead-lettered {dead:,} records of a clean "
                "workload; its numbers are not valid"
            )
        gaps = res["internals"]["sequence_gaps"]
        if gaps:
            lines.append(
                f"WARNING ({key}): the service gave up on {gaps:,.0f} sequence gaps, but the "
                "workload has none (every swapped event arrives later in the same partition): "
                "each such event is skipped as a duplicate when it arrives; "
                f"{res['internals']['paused_partitions']:.0f} partitions paused at the end"
            )
        for problem in res.get("log_problems", []):
            lines.append(f"service log ({key}): {problem}")
    lines.append(
        "machine load average (1 min) at start / end: "
        f"{bench.load[0]:.2f} / {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs "
        "(other processes on the machine skew every number)"
    )
    for phase, error in bench.errors.items():
        lines.append(f"ERROR in {phase}: {error}")
    return "\n".join(lines)
