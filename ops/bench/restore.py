"""The restore measurement, run in a child process of its own for a clean memory reading.

1,000,000 (by default) changelog records of realistic idle chat states are produced to a
fresh compacted topic, then restored with the service's own code (`consumer.engine.restorer`
into `consumer.store` partition stores); the time and the memory held per state are printed
as one `BENCH_RESULT` JSON line for the parent (`ops.bench.run`).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import random
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from confluent_kafka.admin import AdminClient

from consumer.core.events import ChatEvent
from consumer.demo.workload import chat_script
from ops.bench.processes import log
from ops.bench.workload import (
    CONNECTOR,
    LINE,
    PARTITIONS,
    PORTAL,
    create_topics,
    fast_producer,
    produce_all,
)


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def trim_heap() -> None:
    """Give freed C heap back to the OS so RSS shows what is still held."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


PLACEHOLDER = "chat-#######"  # as long as the real chat ids, chat-0000000


def idle_state_templates(count: int, seed: int) -> list[bytes]:
    """Changelog values of real idle chats: chat scripts folded to the end, calls succeeded."""
    from consumer.core.fold import FoldConfig, new_call, on_event, on_success
    from consumer.core.ordering import Lane
    from consumer.core.state import ChatState
    from consumer.store.encoding import encode_chat

    rng = random.Random(seed)
    now_ms = int(time.time() * 1000)
    out = []
    for _ in range(count):
        script = chat_script(
            rng,
            PORTAL,
            CONNECTOR,
            LINE,
            PLACEHOLDER,
            rng.randint(1, 40),
            start_ms=now_ms - rng.randint(0, 7 * 86_400_000),
        )
        state = ChatState()
        lane: Lane[ChatEvent] = Lane(1000, 64, lambda e: e)
        for event in script:
            for item, admission in lane.offer(state, event, now_ms).ready:
                if admission == "duplicate":
                    continue
                on_event(state, item, new_call(item, state, ("t", 0, 0)), now_ms, FoldConfig())
                while state.outbox:
                    on_success(state, state.outbox[0], None, now_ms)
        assert state.is_idle()
        state.last_activity_ms = now_ms - rng.randint(0, 7 * 86_400_000)
        out.append(encode_chat(state))
    return out


def restore_worker(args: argparse.Namespace) -> int:
    from consumer.core.state import ChatState
    from consumer.engine.restorer import Restorer
    from consumer.settings import KafkaSettings, Settings
    from consumer.store.changelog import Dormant, PartitionStore
    from consumer.store.encoding import chat_doc, decode_chat

    topic = f"{args.run_id}-restore-source"
    group = f"{args.run_id}-restore"
    settings = Settings(
        kafka=KafkaSettings(bootstrap_servers=args.bootstrap),
        source_topics=[topic],
        group_id=group,
        instance_id="restore",
        http_port=0,
    )
    changelog = settings.changelog_topic(topic)
    admin = AdminClient({"bootstrap.servers": args.bootstrap})
    create_topics(admin, [changelog], {"cleanup.policy": "compact", "min.compaction.lag.ms": "0"})
    templates = idle_state_templates(2000, args.seed)
    placeholder = PLACEHOLDER.encode()
    n = args.states

    def records() -> Iterator[tuple[bytes, bytes]]:
        for i in range(n):
            chat_id = f"chat-{i:07d}".encode()
            key = f"{PORTAL}|{CONNECTOR}|{LINE}|".encode() + chat_id
            yield key, templates[i % len(templates)].replace(placeholder, chat_id)

    log(f"restore: producing {n:,} idle chat states to {changelog}")
    started = time.monotonic()
    produce_all(
        fast_producer(args.bootstrap), changelog, records(), (i % PARTITIONS for i in range(n))
    )
    produce_s = time.monotonic() - started
    value_sizes = [len(t) for t in templates]

    stores = [PartitionStore("bench") for _ in range(PARTITIONS)]
    restorer = Restorer(settings)
    trim_heap()
    rss_before = rss_bytes()
    log("restore: restoring with consumer.engine.restorer into consumer.store PartitionStores")
    started = time.monotonic()
    pending = {p for p, store in enumerate(stores) if not restorer.add(changelog, p, store)}
    while pending:
        for _, p in restorer.step(1.0):
            pending.discard(p)
    for store in stores:
        store.finish_load()
    restorer.close()
    restore_s = time.monotonic() - started
    trim_heap()
    rss_after = rss_bytes()
    held = [store.chats for store in stores]
    count = sum(len(chats) for chats in held)
    as_bytes = sum(1 for chats in held for v in chats.values() if isinstance(v, Dormant))
    deep = sum(
        sys.getsizeof(chats)
        + sum(
            sys.getsizeof(k)
            + sys.getsizeof(v)
            + (sys.getsizeof(v.record) if isinstance(v, Dormant) else 0)
            for k, v in chats.items()
        )
        for chats in held
    )
    sample = next(iter(held[0].values()))
    decoded = decode_chat(chat_doc(sample.record), {})[0] if isinstance(sample, Dormant) else sample
    assert isinstance(decoded, ChatState)
    result = {
        "states": n,
        "restored": count,
        "held_as_bytes": as_bytes,
        "produce_s": produce_s,
        "restore_s": restore_s,
        "states_per_s": count / restore_s if restore_s else 0.0,
        "deep_bytes_per_state": deep / count if count else 0.0,
        "rss_bytes_per_state": (rss_after - rss_before) / count if count else 0.0,
        "value_bytes_mean": sum(value_sizes) / len(value_sizes),
        "sample_idle": decoded.is_idle(),
    }
    log(
        f"restore: {count:,} states in {restore_s:.1f}s; {result['deep_bytes_per_state']:.0f} B"
        f"/state held (RSS delta {result['rss_bytes_per_state']:.0f} B/state)"
    )
    print("BENCH_RESULT " + json.dumps(result), flush=True)
    return 0
