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
TARGET_RECORDS_PER_S = 5_000
AIM_RECORDS_PER_S = 20_000
QUIET_RATE = 20.0  # events/s of the low-rate latency run: most portals, most of the day
ADDED_LATENCY_RATE = 1_000.0  # events/s of the run that judges the latency the service adds
# A process started just before the paced traffic pays for its first transactions and
# connections in the first second of it: judged from then on, shown whole beside it.
WARM_UP_S = 1.0
TARGET_ADDED_P99_S = 0.100
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
    rate = result["records_per_s"]
    text = f"{rate:,.0f}" if rate >= 100 else f"{rate:,.1f}"
    return text if result.get("complete") else f"{text} (budget)"


def build_table(bench: Bench) -> str:
    r = bench.results
    e0, e50 = r.get("engine_0"), r.get("engine_50")
    n0, n50 = r.get("naive_0"), r.get("naive_50")
    rest = r.get("restore")
    rows = [["metric", "target", "service", "naive", "result"]]

    ok0 = e0["records_per_s"] >= TARGET_RECORDS_PER_S and e0["complete"] if e0 else None
    rows.append(
        [
            "records/s end to end, 0 ms API latency",
            f">= {TARGET_RECORDS_PER_S:,} (aim {AIM_RECORDS_PER_S:,})",
            fmt_rate(e0),
            fmt_rate(n0),
            verdict(ok0)
            + (" (aim met)" if e0 and e0["records_per_s"] >= AIM_RECORDS_PER_S else ""),
        ]
    )
    rep = r.get("replicas_0")
    if rep:
        ok = rep["records_per_s"] >= TARGET_RECORDS_PER_S and not rep["rebalanced"]
        rows.append(
            [
                f"records/s end to end, 0 ms, {rep['replicas']} replicas (one per core)",
                f">= {TARGET_RECORDS_PER_S:,} (aim {AIM_RECORDS_PER_S:,})",
                fmt_rate(rep) + (" REBALANCED" if rep["rebalanced"] else ""),
                "n/a",
                verdict(ok) + (" (aim met)" if rep["records_per_s"] >= AIM_RECORDS_PER_S else ""),
            ]
        )
    speedup = (
        e50["records_per_s"] / n50["records_per_s"]
        if e50 and n50 and n50["records_per_s"]
        else None
    )
    rows.append(
        [
            "records/s end to end, 50 ms API latency",
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

    rows.append(["API requests per 1,000 records (0 ms run)", "-", per_1000(e0), per_1000(n0), "-"])
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

    rows.extend(latency_rows(r))
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


def ms(res: dict[str, Any] | None, key: str) -> str:
    """`res[key]` (seconds) in milliseconds, or n/a."""
    if not res or key not in res:
        return "n/a"
    return f"{res[key] * 1000:,.1f} ms"


def p50_p99(res: dict[str, Any] | None, prefix: str = "") -> str:
    """The `p50 / p99` cell of a latency run, marked when not every record was done in time
    (the events still waiting have no sample, so the percentiles would flatter it)."""
    text = f"{ms(res, prefix + 'p50')} / {ms(res, prefix + 'p99')}"
    if res and not res["complete"]:
        text += f" (unfinished: {res['done']:,}/{res['records']:,} records)"
    return text


def added_latency_ok(res: dict[str, Any] | None) -> bool | None:
    """The goal: every record done, and p99 of the latency the service adds under 100 ms."""
    if not res or "warm_p99" not in res:
        return None if not res else False
    return bool(res["complete"] and res["warm_p99"] < TARGET_ADDED_P99_S)


def latency_rows(r: dict[str, Any]) -> list[list[str]]:
    """The paced runs: record ts -> call done at half each contender's 0 ms rate and at a
    quiet rate, and the latency the service adds at `ADDED_LATENCY_RATE` (judged)."""
    rows = []
    half_e, half_n = r.get("latency_engine"), r.get("latency_naive")
    if half_e or half_n:
        rows.append(
            [
                "latency p50 / p99, record ts -> call done, paced at half the 0 ms rate",
                "-",
                p50_p99(half_e),
                p50_p99(half_n),
                "-",
            ]
        )
    quiet_e, quiet_n = r.get("latency_quiet_engine"), r.get("latency_quiet_naive")
    if quiet_e or quiet_n:
        rows.append(
            [
                f"latency p50 / p99, record ts -> call done, {QUIET_RATE:.0f} events/s (quiet)",
                "-",
                p50_p99(quiet_e),
                p50_p99(quiet_n),
                "-",
            ]
        )
    added_e, added_n = r.get("added_engine"), r.get("added_naive")
    if added_e or added_n:
        rows.append(
            [
                f"added latency p50 / p99 at {ADDED_LATENCY_RATE:,.0f} events/s, after the first "
                f"{WARM_UP_S:.0f} s",
                f"p99 < {TARGET_ADDED_P99_S * 1000:.0f} ms",
                p50_p99(added_e, "warm_"),
                p50_p99(added_n, "warm_"),
                verdict(added_latency_ok(added_e)),
            ]
        )
        rows.append(
            [
                f"added latency p50 / p99 at {ADDED_LATENCY_RATE:,.0f} events/s, whole run "
                "(fresh process)",
                "-",
                p50_p99(added_e, "added_"),
                p50_p99(added_n, "added_"),
                "-",
            ]
        )
    return rows


def latency_details(label: str, res: dict[str, Any]) -> str:
    """One paced run in a line: its rates, what was done and matched, both latencies."""
    line = (
        f"latency {label}: paced {res['events_per_s']:,.1f} events/s = "
        f"{res['records_per_s']:,.1f} records/s; {res['done']:,}/{res['records']:,} records "
        f"done; {res['matched']:,}/{res['expected']:,} events matched to calls (the rest "
        "make none: duplicates, superseded, moot)"
    )
    if "max" in res:
        line += f"; record ts -> call done p50/p99/max {ms(res, 'p50')} / {ms(res, 'p99')} / "
        line += ms(res, "max")
    if "added_max" in res:
        line += f"; added p50/p99/max {ms(res, 'added_p50')} / {ms(res, 'added_p99')} / "
        line += ms(res, "added_max")
    return line


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
            f"{warm['records_per_s']:,.0f} records/s"
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
        ("latency_engine", "service, half rate"),
        ("latency_naive", "naive, half rate"),
        ("latency_quiet_engine", "service, quiet"),
        ("latency_quiet_naive", "naive, quiet"),
        ("added_engine", f"service, {ADDED_LATENCY_RATE:,.0f} events/s"),
        ("added_naive", f"naive, {ADDED_LATENCY_RATE:,.0f} events/s"),
    ):
        res = r.get(key)
        if res:
            lines.append(latency_details(label, res))
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
