"""`python -m ops.bench.ab`: an A/B of the service on the benchmark's 0 ms workload.

Each variant is a source tree (a git worktree with the device removed, say) and extra
`IMCONNECTOR_*` settings. The workload is the benchmark's (`ops.bench.run.make_workload`,
same seed and sizes), pre-produced once; then the variants run in alternating rounds
(A B A B ...), each on a fresh consumer group against the same simulator process, after
one warm-up run of the first variant on a workload of its own. Each run reports records/s
(records with an outcome, duplicates included, over the time from `/readyz` to the last
outcome), the service's CPU and the CPU the hypervisor stole.

    python -m ops.bench.ab --variant base=. --variant nogc=/tmp/ab-nogc --rounds 3
    python -m ops.bench.ab --variant slots8=. \\
        --variant slots12=.:IMCONNECTOR_ENGINE__MAX_IN_FLIGHT_REQUESTS=12

See docs/benchmarks.md for the recorded results.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka.admin import AdminClient

from ops.bench.processes import ROOT, EngineProcess, Simulator, log
from ops.bench.run import Bench
from ops.bench.workload import (
    create_topics,
    delete_run_topics,
    fast_producer,
    make_workload,
    produce_all,
)


@dataclass
class Variant:
    """A source tree and the settings the service runs with."""

    name: str
    tree: Path
    env: dict[str, str]
    rates: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    steal: list[float] = field(default_factory=list)


def parse_variant(text: str) -> Variant:
    """`NAME=DIR[:KEY=VALUE,...]`."""
    name, _, rest = text.partition("=")
    tree, _, env = rest.partition(":")
    pairs = dict(item.split("=", 1) for item in env.split(",") if item)
    return Variant(name, (ROOT / tree).resolve(), pairs)


class VariantBench(Bench):
    """`Bench` whose service runs from the current variant's tree with its settings."""

    variant: Variant | None = None

    def engine(self, topic: str, group: str, profile_to: Path | None = None) -> EngineProcess:
        assert self.variant is not None
        return EngineProcess(
            self.args.bootstrap,
            topic,
            group,
            self.sim,
            self.workdir,
            {**self.extra_env, **self.variant.env},
            profile_to,
            cwd=self.variant.tree,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.bench.ab", description=__doc__)
    parser.add_argument("--variant", action="append", required=True, type=parse_variant)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--chats", type=int, default=10_000)
    parser.add_argument("--warmup-events", type=int, default=30_000)
    parser.add_argument("--seed", type=int, default=20240917)
    parser.add_argument("--budget", type=float, default=240.0)
    parser.add_argument(
        "--bootstrap", default=f"127.0.0.1:{os.environ.get('LOCAL_KAFKA_PORT', '9092')}"
    )
    args = parser.parse_args(argv)
    variants: list[Variant] = args.variant
    run_id = f"ab-{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:6]}"
    admin = AdminClient({"bootstrap.servers": args.bootstrap})
    with tempfile.TemporaryDirectory(prefix="imconnector-ab-") as tmp:
        workdir = Path(tmp)
        sim = Simulator(workdir)
        bench = VariantBench(args, run_id, workdir, admin, sim, {}, 50)
        try:
            workload = make_workload(args.events, args.chats, args.seed)
            topic = f"{run_id}-workload"
            create_topics(admin, [topic])
            produce_all(fast_producer(args.bootstrap), topic, workload.records)
            if args.warmup_events:
                warm = make_workload(args.warmup_events, 1000, args.seed + 1, "warm")
                warm_topic = f"{run_id}-warmup"
                create_topics(admin, [warm_topic])
                produce_all(fast_producer(args.bootstrap), warm_topic, warm.records)
                bench.variant = variants[0]
                bench.engine_throughput("warm-up", warm_topic, warm, 0.0, args.budget)
            for round_ in range(args.rounds):
                order = variants if round_ % 2 == 0 else variants[::-1]
                for variant in order:
                    bench.variant = variant
                    result = bench.engine_throughput(
                        f"r{round_ + 1}-{variant.name}", topic, workload, 0.0, args.budget
                    )
                    if not result["complete"]:
                        log(f"{variant.name}: did not finish within {args.budget:.0f}s")
                    variant.rates.append(result["records_per_s"])
                    variant.cpu.append(result["cpu_engine"])
                    variant.steal.append(result["steal"])
        finally:
            sim.stop()
            delete_run_topics(admin, run_id)
    print(f"records/s on {len(workload.records):,} records ({args.rounds} rounds, alternating)")
    print("| variant | records/s per round | mean | service CPU (cores) | stolen |")
    print("|---|---|---|---|---|")
    for v in variants:
        rates = " / ".join(f"{r:,.0f}" for r in v.rates)
        print(
            f"| {v.name} | {rates} | {statistics.mean(v.rates):,.0f} | "
            f"{statistics.mean(v.cpu):.2f} | {statistics.mean(v.steal):.2f} |"
        )
    base = statistics.mean(variants[0].rates)
    for v in variants[1:]:
        print(
            f"{variants[0].name} vs {v.name}: {100 * (base / statistics.mean(v.rates) - 1):+.1f} %"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
