"""`python -m ops.bench.run` (`make bench`): the service vs a naive consumer, one table.

Both contenders consume the same pre-produced workload (consumer.demo.workload: 10k chats,
mixed event kinds, 10% duplicates, 10% out of order, fixed seed) from a fresh 6-partition
topic and call a Bitrix24 simulator running in its own process (rate limits off). The
service runs as its own process too (`python -m consumer run`, configured through
IMCONNECTOR_* variables) and is watched through its /metrics endpoint; the naive consumer
(ops/bench/naive.py) runs in this process. See ops/bench/README.md for what each number
means and how it is measured.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from consumer.settings import EngineSettings
from ops.bench.measure import added_latencies, call_summary, internals, latencies, percentile
from ops.bench.naive import NaiveConsumer, NaiveResult
from ops.bench.processes import (
    ASSIGNED,
    OUTCOMES,
    REBALANCES,
    ROOT,
    EngineProcess,
    Simulator,
    cpu_seconds,
    log,
    stolen_seconds,
)
from ops.bench.restore import restore_worker
from ops.bench.table import (
    ADDED_LATENCY_RATE,
    QUIET_RATE,
    TARGET_RECORDS_PER_S,
    WARM_UP_S,
    build_details,
    build_table,
)
from ops.bench.workload import (
    DUPLICATE_RATE,
    PARTITIONS,
    Workload,
    create_topics,
    delete_run_topics,
    fast_producer,
    make_workload,
    paced_produce,
    produce_all,
)


# -- phases ------------------------------------------------------------------------------------
@dataclass
class Bench:
    args: argparse.Namespace
    run_id: str
    workdir: Path
    admin: AdminClient
    sim: Simulator
    extra_env: dict[str, str]
    batch_size: int
    results: dict[str, Any] = field(default_factory=dict)
    load: tuple[float, float, float] = field(default_factory=os.getloadavg)
    errors: dict[str, str] = field(default_factory=dict)
    warmup: dict[str, Any] | None = None
    _groups: int = 0

    def name(self, what: str) -> str:
        self._groups += 1
        return f"{self.run_id}-{what}-{self._groups}"

    def engine(self, topic: str, group: str, profile_to: Path | None = None) -> EngineProcess:
        return EngineProcess(
            self.args.bootstrap, topic, group, self.sim, self.workdir, self.extra_env, profile_to
        )

    def engine_throughput(
        self,
        label: str,
        topic: str,
        workload: Workload,
        latency_ms: float,
        timeout: float,
        profile_to: Path | None = None,
    ) -> dict[str, Any]:
        """Start the service on the pre-produced topic; time until every record has an outcome."""
        self.sim.reset(latency_ms)
        records = len(workload.records)
        engine = self.engine(topic, self.name(label), profile_to)
        try:
            ready_at = engine.wait_ready()
            startup = ready_at - engine.spawned_at
            cpu0 = (cpu_seconds(engine.proc.pid), cpu_seconds(self.sim.proc.pid))
            steal0 = stolen_seconds()
            done, done_at = engine.wait_outcomes(records, ready_at + timeout)
            cpu1 = (cpu_seconds(engine.proc.pid), cpu_seconds(self.sim.proc.pid))
            steal1 = stolen_seconds()
            samples = engine.samples()
        finally:
            engine.stop()
        problems = engine.log_problems()
        outcomes = {s.labels["outcome"]: s.value for s in samples if s.name == OUTCOMES}
        elapsed = done_at - ready_at
        calls = self.sim.calls()
        result = {
            "records": records,
            "done": int(done),
            "complete": done >= records,
            "elapsed_s": elapsed,
            "records_per_s": done / elapsed if elapsed > 0 else 0.0,
            "startup_s": startup,
            "outcomes": {k: int(v) for k, v in outcomes.items()},
            "calls": call_summary(calls),
            "cpu_engine": (cpu1[0] - cpu0[0]) / elapsed if elapsed > 0 else 0.0,
            "cpu_sim": (cpu1[1] - cpu0[1]) / elapsed if elapsed > 0 else 0.0,
            "steal": (steal1 - steal0) / elapsed if elapsed > 0 else 0.0,
            "log_problems": problems,
            "internals": internals(samples),
        }
        log(
            f"{label}: {int(done)}/{records} records in {elapsed:.1f}s = "
            f"{result['records_per_s']:,.0f} records/s (start-up {startup:.1f}s, service CPU "
            f"{result['cpu_engine']:.2f} cores, "
            f"simulator {result['cpu_sim']:.2f}, stolen by the hypervisor {result['steal']:.2f})"
        )
        return result

    def replicas_throughput(
        self, label: str, topic: str, workload: Workload, replicas: int, timeout: float
    ) -> dict[str, Any]:
        """`replicas` service processes in one group (how the service scales: one per core
        or pod), 0 ms latency. Timed from the moment all are ready (joined, restored) and
        each owns partitions (a cooperative rebalance takes two rounds, and a member that
        owns nothing yet is ready), over the records finished after that moment; a
        rebalance after it voids the run."""
        self.sim.reset(0.0)
        records = len(workload.records)
        group = self.name(label)
        engines = [
            EngineProcess(
                self.args.bootstrap,
                topic,
                group,
                self.sim,
                self.workdir,
                self.extra_env,
                instance=f"{group}-r{i}",
            )
            for i in range(replicas)
        ]

        def totals() -> tuple[float, float]:
            done = revokes = 0.0
            for engine in engines:
                for sample in engine.samples():
                    if sample.name == OUTCOMES:
                        done += sample.value
                    elif sample.name == REBALANCES and sample.labels.get("type") == "revoke":
                        revokes += sample.value
            return done, revokes

        def settled() -> bool:
            owned = [
                sum(s.value for s in engine.samples() if s.name == ASSIGNED) for engine in engines
            ]
            return all(owned) and sum(owned) == PARTITIONS

        try:
            for engine in engines:
                engine.wait_ready()
            deadline = time.monotonic() + 60
            while not settled() and time.monotonic() < deadline:
                time.sleep(0.1)
            start_done, start_revokes = totals()
            started = time.monotonic()
            cpu0 = sum(cpu_seconds(e.proc.pid) for e in engines), cpu_seconds(self.sim.proc.pid)
            steal0 = stolen_seconds()
            while True:
                done, revokes = totals()
                now = time.monotonic()
                if done >= records or now >= started + timeout:
                    break
                time.sleep(0.25)
            cpu1 = sum(cpu_seconds(e.proc.pid) for e in engines), cpu_seconds(self.sim.proc.pid)
            steal1 = stolen_seconds()
        finally:
            for engine in engines:
                engine.stop()
        elapsed = now - started
        measured = done - start_done
        result = {
            "records": records,
            "replicas": replicas,
            "done": int(done),
            "measured": int(measured),
            "complete": done >= records,
            "rebalanced": revokes > start_revokes,
            "elapsed_s": elapsed,
            "records_per_s": measured / elapsed if elapsed > 0 else 0.0,
            "calls": call_summary(self.sim.calls()),
            "cpu_engine": (cpu1[0] - cpu0[0]) / elapsed if elapsed > 0 else 0.0,
            "cpu_sim": (cpu1[1] - cpu0[1]) / elapsed if elapsed > 0 else 0.0,
            "steal": (steal1 - steal0) / elapsed if elapsed > 0 else 0.0,
        }
        log(
            f"{label}: {int(measured)} records in {elapsed:.1f}s after all {replicas} were "
            f"ready = {result['records_per_s']:,.0f} records/s (service CPU "
            f"{result['cpu_engine']:.2f} cores, "
            f"simulator {result['cpu_sim']:.2f}, stolen by the hypervisor {result['steal']:.2f}"
            f"{', REBALANCED' if result['rebalanced'] else ''})"
        )
        return result

    def naive_throughput(
        self, label: str, topic: str, latency_ms: float, budget: float, max_records: int
    ) -> dict[str, Any]:
        """The naive consumer on the same topic, on a time budget (it is slow)."""
        self.sim.reset(latency_ms)
        naive = NaiveConsumer(
            self.args.bootstrap,
            topic,
            self.name(label),
            self.sim.rest_url,
            self.sim.tokens["access_token"],
        )
        result = naive.run(max_records=max_records, budget_s=budget)
        calls = self.sim.calls()
        log(
            f"{label}: {result.processed} records in {result.elapsed:.1f}s = "
            f"{result.rate:,.1f} records/s (HTTP {dict(result.statuses)})"
        )
        return {
            "records": max_records,
            "done": result.processed,
            "elapsed_s": result.elapsed,
            "records_per_s": result.rate,
            "complete": result.processed >= max_records,
            "calls": call_summary(calls),
            "statuses": dict(result.statuses),
        }

    def paced_workload(self, events_per_s: float, seconds: float) -> tuple[Workload, float]:
        """A fresh workload of the benchmark's shape for `seconds` at `events_per_s`, and the
        records/s to produce it at (its duplicate copies come on top of the events)."""
        count = max(50, int(events_per_s * seconds))
        workload = make_workload(
            count, min(self.args.chats, max(1, count // 4)), self.args.seed + 1, "lat"
        )
        return workload, events_per_s * len(workload.records) / workload.unique

    def engine_latency(
        self, events_per_s: float, seconds: float, tag: str = "latency-engine"
    ) -> dict[str, Any]:
        """Records produced at a steady `events_per_s` while the service runs; latency per
        event."""
        self.sim.reset(0.0)
        workload, records_per_s = self.paced_workload(events_per_s, seconds)
        topic = self.name(tag)
        create_topics(self.admin, [topic])
        engine = self.engine(topic, self.name(tag))
        try:
            engine.wait_ready()
            stamps = paced_produce(self.args.bootstrap, topic, workload.records, records_per_s)
            done, _ = engine.wait_outcomes(len(workload.records), time.monotonic() + 60)
        finally:
            engine.stop()
        return self._latency_result("service", workload, stamps, events_per_s, int(done))

    def naive_latency(
        self, events_per_s: float, seconds: float, tag: str = "latency-naive"
    ) -> dict[str, Any]:
        """The same for the naive consumer (in a thread of this process)."""
        self.sim.reset(0.0)
        workload, records_per_s = self.paced_workload(events_per_s, seconds)
        topic = self.name(tag)
        create_topics(self.admin, [topic])
        naive = NaiveConsumer(
            self.args.bootstrap,
            topic,
            self.name(tag),
            self.sim.rest_url,
            self.sim.tokens["access_token"],
        )
        holder: dict[str, NaiveResult] = {}
        thread = threading.Thread(
            target=lambda: holder.update(r=naive.run(max_records=len(workload.records))),
            daemon=True,
        )
        thread.start()
        if not naive.assigned.wait(60):  # the topic is empty until we produce
            raise RuntimeError("the naive consumer got no partitions within 60 s")
        stamps = paced_produce(self.args.bootstrap, topic, workload.records, records_per_s)
        thread.join(120)
        naive.stop_event.set()
        thread.join(10)
        done = holder["r"].processed if "r" in holder else naive.result.processed
        return self._latency_result("naive", workload, stamps, events_per_s, done)

    def _latency_result(
        self,
        label: str,
        workload: Workload,
        stamps: list[float],
        events_per_s: float,
        done: int,
    ) -> dict[str, Any]:
        produced = list(zip(workload.events, stamps, strict=True))
        calls = self.sim.calls()
        values, expected = latencies(produced, calls)
        added, _ = added_latencies(produced, calls)
        warm, _ = added_latencies(produced, calls, counted_from=stamps[0] + WARM_UP_S)
        result: dict[str, Any] = {
            "events_per_s": events_per_s,
            "records_per_s": events_per_s * len(workload.records) / workload.unique,
            "events": workload.unique,
            "records": len(workload.records),
            "done": done,
            "complete": done >= len(workload.records),
            "matched": len(values),
            "expected": expected,
        }
        if values:
            result.update(p50=percentile(values, 50), p99=percentile(values, 99), max=max(values))
        if added:
            result.update(
                added_p50=percentile(added, 50),
                added_p99=percentile(added, 99),
                added_max=max(added),
            )
        if warm:
            result.update(warm_p50=percentile(warm, 50), warm_p99=percentile(warm, 99))
        if values and added:
            log(
                f"latency {label}: {len(values)} calls matched of {expected} events at "
                f"{events_per_s:,.0f} events/s: record ts -> call done p50 "
                f"{result['p50'] * 1000:.1f} ms, p99 {result['p99'] * 1000:.1f} ms; added "
                f"p50 {result['added_p50'] * 1000:.1f} ms, p99 {result['added_p99'] * 1000:.1f} ms"
                f"; {done}/{len(workload.records)} records done"
            )
        return result

    def restore(self, states: int) -> dict[str, Any]:
        """1M (by default) idle chat states: produce, then restore with the engine's own code."""
        command = [
            sys.executable,
            "-m",
            "ops.bench.run",
            "--restore-worker",
            "--bootstrap",
            self.args.bootstrap,
            "--run-id",
            self.run_id,
            "--states",
            str(states),
            "--seed",
            str(self.args.seed),
        ]
        proc = subprocess.run(
            command, cwd=ROOT, capture_output=True, text=True, timeout=900, check=False
        )
        sys.stderr.write(proc.stderr)
        for line in proc.stdout.splitlines():
            if line.startswith("BENCH_RESULT "):
                return dict(json.loads(line[len("BENCH_RESULT ") :]))
        raise RuntimeError(f"the restore worker failed ({proc.returncode}): {proc.stderr[-2000:]}")


def warm_up(bench: Bench, args: argparse.Namespace) -> None:
    """One service run at 0 ms on a small workload of its own chats, before the measured
    runs: the broker's JIT compiles its hot paths then. Logged, kept out of the table."""
    workload = make_workload(
        args.warmup_events, max(1, args.warmup_events // 11), args.seed + 1, "warm-up"
    )
    topic = f"{bench.run_id}-warmup"
    create_topics(bench.admin, [topic])
    produce_all(fast_producer(args.bootstrap), topic, workload.records)
    try:
        bench.warmup = bench.engine_throughput(
            "warm-up", topic, workload, 0.0, max(60.0, args.engine_budget)
        )
    except Exception as exc:  # noqa: BLE001 - a warm-up that fails only warms up less
        log(f"warm-up failed: {type(exc).__name__}: {exc}")


# -- main --------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m ops.bench.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--events",
        type=int,
        default=None,
        help="events in the throughput workload (default 300000; quick 4000)",
    )
    parser.add_argument("--chats", type=int, default=None, help="chats (default 10000)")
    parser.add_argument(
        "--warmup-events",
        type=int,
        default=None,
        help="events of a warm-up run before the measured ones, not in the table (default "
        "30000, quick 1000; 0 skips it): a broker started a minute ago still runs its "
        "JVM's interpreter and the first run pays for it",
    )
    parser.add_argument("--seed", type=int, default=20240917)
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--skip-restore", action="store_true")
    parser.add_argument(
        "--states",
        type=int,
        default=None,
        help="chat states for the restore test (default 1000000)",
    )
    parser.add_argument(
        "--naive-budget",
        type=float,
        default=None,
        help="seconds the naive consumer runs per latency setting (default 20)",
    )
    parser.add_argument(
        "--latency-seconds",
        type=float,
        default=None,
        help="seconds of paced production for the latency test (default 10)",
    )
    parser.add_argument(
        "--engine-budget",
        type=float,
        default=None,
        help="seconds a service throughput run may take at most; its rate is then computed "
        "from the records it finished (default: long enough for the whole workload at 80 %% "
        "of the target rate, at least 60; quick 30)",
    )
    parser.add_argument(
        "--bootstrap",
        # the broker `ops/kafka/local-kafka.sh start` runs (LOCAL_KAFKA_PORT moves it)
        default=f"127.0.0.1:{os.environ.get('LOCAL_KAFKA_PORT', '9092')}",
    )
    parser.add_argument(
        "--engine-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra IMCONNECTOR_* setting for the service (repeatable)",
    )
    parser.add_argument(
        "--profile-engine",
        type=Path,
        default=None,
        metavar="FILE",
        help="run the 0 ms service run under cProfile (poll thread), stats to FILE",
    )
    parser.add_argument(
        "--replicas",
        type=int,
        default=2,
        help="also run this many service processes in one group at 0 ms (default 2: one "
        "per core here; 1 skips that run)",
    )
    parser.add_argument("--keep-topics", action="store_true")
    parser.add_argument("--restore-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--run-id", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    quick = args.quick
    args.events = args.events or (4_000 if quick else 300_000)
    args.chats = args.chats or (400 if quick else 10_000)
    if args.warmup_events is None:
        args.warmup_events = 1_000 if quick else 30_000
    args.states = args.states or (20_000 if quick else 1_000_000)
    args.naive_budget = args.naive_budget or (3.0 if quick else 20.0)
    args.latency_seconds = args.latency_seconds or (3.0 if quick else 10.0)
    # The 0 ms row passes only on a finished run, so the budget must let a service at the
    # target rate finish: a fixed 60 s asked 5,487 records/s of the 329,244-record default
    # workload (events + 10 % duplicates).
    records = args.events * (1 + DUPLICATE_RATE)
    args.engine_budget = args.engine_budget or (
        30.0 if quick else max(60.0, records / TARGET_RECORDS_PER_S / 0.8)
    )
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.restore_worker:
        return restore_worker(args)
    run_id = args.run_id or f"bench-{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:6]}"
    extra_env = dict(item.split("=", 1) for item in args.engine_env)
    batch_size = int(extra_env.get("IMCONNECTOR_ENGINE__BATCH_SIZE", EngineSettings().batch_size))
    admin = AdminClient({"bootstrap.servers": args.bootstrap})
    try:
        admin.list_topics(timeout=10)
    except KafkaException as exc:
        log(
            f"Kafka at {args.bootstrap} does not answer ({exc}); run ops/kafka/local-kafka.sh start"
        )
        return 2
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="imconnector-bench-") as tmp:
        workdir = Path(tmp)
        sim = Simulator(workdir)
        bench = Bench(args, run_id, workdir, admin, sim, extra_env, batch_size)
        try:
            log(f"run {run_id}: generating {args.events:,} events over {args.chats:,} chats")
            workload = make_workload(args.events, args.chats, args.seed)
            topic = f"{run_id}-workload"
            create_topics(admin, [topic])
            t0 = time.monotonic()
            produce_all(fast_producer(args.bootstrap), topic, workload.records)
            log(
                f"pre-produced {len(workload.records):,} records to {topic} in "
                f"{time.monotonic() - t0:.1f}s"
            )
            records = len(workload.records)

            def half_rate(key: str) -> float:
                """Events/s at half the records/s a contender reached at 0 ms."""
                return float(0.5 * bench.results[key]["records_per_s"] * workload.unique / records)

            if args.warmup_events > 0:
                warm_up(bench, args)
            phases: list[tuple[str, Any]] = [
                (
                    "engine_0",
                    lambda: bench.engine_throughput(
                        "service-0ms",
                        topic,
                        workload,
                        0.0,
                        args.engine_budget,
                        args.profile_engine,
                    ),
                ),
                (
                    "engine_50",
                    lambda: bench.engine_throughput(
                        "service-50ms", topic, workload, 50.0, args.engine_budget
                    ),
                ),
                (
                    "naive_0",
                    lambda: bench.naive_throughput(
                        "naive-0ms", topic, 0.0, args.naive_budget, records
                    ),
                ),
                (
                    "naive_50",
                    lambda: bench.naive_throughput(
                        "naive-50ms", topic, 50.0, args.naive_budget, records
                    ),
                ),
                (
                    "latency_engine",
                    lambda: bench.engine_latency(
                        half_rate("engine_0"), args.latency_seconds, "latency-half-engine"
                    ),
                ),
                (
                    "latency_naive",
                    lambda: bench.naive_latency(
                        half_rate("naive_0"), args.latency_seconds, "latency-half-naive"
                    ),
                ),
                (
                    "latency_quiet_engine",
                    lambda: bench.engine_latency(
                        QUIET_RATE, args.latency_seconds, "latency-quiet-engine"
                    ),
                ),
                (
                    "latency_quiet_naive",
                    lambda: bench.naive_latency(
                        QUIET_RATE, args.latency_seconds, "latency-quiet-naive"
                    ),
                ),
                (
                    "added_engine",
                    lambda: bench.engine_latency(
                        ADDED_LATENCY_RATE, args.latency_seconds, "latency-1000-engine"
                    ),
                ),
                (
                    "added_naive",
                    lambda: bench.naive_latency(
                        ADDED_LATENCY_RATE, args.latency_seconds, "latency-1000-naive"
                    ),
                ),
            ]
            if args.replicas > 1:
                phases.insert(
                    2,
                    (
                        "replicas_0",
                        lambda: bench.replicas_throughput(
                            f"service-{args.replicas}x-0ms",
                            topic,
                            workload,
                            args.replicas,
                            args.engine_budget,
                        ),
                    ),
                )
            if not args.skip_restore:
                phases.append(("restore", lambda: bench.restore(args.states)))
            for key, phase in phases:
                try:
                    bench.results[key] = phase()
                except Exception as exc:  # noqa: BLE001 - one failed phase must not hide the rest
                    log(f"{key} failed: {type(exc).__name__}: {exc}")
                    bench.errors[key] = f"{type(exc).__name__}: {str(exc)[:500]}"
        finally:
            sim.stop()
            if not args.keep_topics:
                delete_run_topics(admin, run_id)
        print()
        print(
            f"imconnector-consumer benchmark ({os.cpu_count()} CPUs, run {run_id}, "
            f"{time.monotonic() - started:.0f} s)"
        )
        print()
        print(build_table(bench))
        print()
        print(build_details(bench, workload))
        if args.profile_engine is not None and args.profile_engine.exists():
            import pstats

            print()
            print(f"cProfile of the service's poll thread (0 ms run): {args.profile_engine}")
            pstats.Stats(str(args.profile_engine)).sort_stats("tottime").print_stats(25)
    return 1 if bench.errors else 0


if __name__ == "__main__":
    sys.exit(main())
