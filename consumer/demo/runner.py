"""The embedded default: local Kafka + Bitrix24 simulator + demo traffic + the consumer.

`imconnector-consumer demo` produces realistic chat traffic (both wire formats, a few
duplicates, late events and poison records) and prints what flows where until stopped.
The other direction runs too: simulated operators answer, their events reach Kafka, and
the demo's upstream confirms each delivery (`consumer.demo.upstream`).
"""

from __future__ import annotations

import json
import logging
import random
import signal
import sys
import threading
import time
from collections import Counter
from typing import Any

from confluent_kafka import Producer

from consumer import __version__
from consumer.bitrix.oauth import MemoryTokenStore
from consumer.codec import ChatEventEncoder, SchemaRegistryClient
from consumer.demo.upstream import ANSWERS, DemoUpstream, bind_offline, delivered_on_portal
from consumer.demo.workload import chat_script, interleave
from consumer.engine.engine import Engine
from consumer.observability.health import OpsServer
from consumer.observability.metrics import Metrics
from consumer.service import build_engine, process_metrics
from consumer.settings import Settings

logger = logging.getLogger(__name__)
CONNECTOR = "demo_connector"
LINE = 1
PORTAL = "demo-portal"


def _sample(values: dict[str, Any] | None) -> str:
    text = json.dumps(values, ensure_ascii=False)
    return text if len(text) < 160 else text[:157] + "..."


def run_demo(bootstrap: str, duration: float, chats: int, rate: float, http_port: int) -> int:
    """Run everything in one process for `duration` seconds (0 = until Ctrl-C)."""
    from consumer.simulator import SimulatorConfig, SimulatorServer

    run_id = time.strftime("%Y%m%d%H%M%S")
    topic = f"demo.{run_id}.chat-events"
    # Enterprise-plan limits (5 req/s, burst 250): the demo shows batching under a real limit.
    sim = SimulatorServer(
        SimulatorConfig(
            preset_lines=[(CONNECTOR, LINE)], rate_limit_drain=5.0, rate_limit_burst=250
        )
    ).start()
    tokens = sim.issue_tokens()
    settings = Settings.model_validate(
        {
            "kafka": {"bootstrap_servers": bootstrap},
            "source_topics": [topic],
            "group_id": f"imconnector-demo-{run_id}",
            "instance_id": "demo",
            "schema_registry_url": f"{sim.url}/registry",
            "portals": {
                PORTAL: {
                    "rest_url": f"{sim.url}/rest/",
                    "oauth_url": f"{sim.url}/oauth/token/",
                    "client_id": sim.config.client_id,
                    "client_secret": sim.config.client_secret,
                    "access_token": tokens["access_token"],
                    "refresh_token": tokens["refresh_token"],
                    "rate_drain": 5.0,
                    "rate_burst": 250,
                }
            },
            "http_port": http_port,
            "inbound": {"topic": f"demo.{run_id}.operator-events", "pull_interval_s": 0.5},
        }
    )
    metrics = process_metrics()
    store = MemoryTokenStore()  # one rotation chain for the engine and the pull loop
    engine = build_engine(settings, metrics, token_store=store, create_sources=True)
    ops = OpsServer(metrics, lambda: engine.ready, host="127.0.0.1", port=http_port).start()
    from consumer.simulator.events import OperatorDesk

    bind_offline(f"{sim.url}/rest/", tokens["access_token"])
    rng_answers = random.Random(11)
    operators = OperatorDesk(
        lambda: sim.portal.operator_answer(None, rng_answers.choice(ANSWERS)), interval=0.5
    )
    upstream = DemoUpstream(settings, metrics, store, topic)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(f"imconnector-consumer {__version__} demo")
    print(f"  Kafka          {bootstrap}  topic {topic}")
    print(
        f"  Bitrix24 sim   {sim.url}/rest/  (calls: {sim.url}/_sim/calls, state: "
        f"{sim.url}/_sim/state)"
    )
    print(f"  registry       {sim.url}/registry")
    print(f"  metrics        http://127.0.0.1:{ops.port}/metrics  (/healthz, /readyz)")
    print(f"  operator side  offline events -> {settings.inbound.topic} -> DeliveryConfirmed")
    failure: list[BaseException] = []

    def run_engine() -> None:
        try:
            engine.run()
        except Exception as exc:  # noqa: BLE001 - shown at the end; the demo stops at once
            failure.append(exc)
            stop.set()

    engine_thread = threading.Thread(target=run_engine, name="engine", daemon=True)
    engine_thread.start()
    produced: Counter[str] = Counter()
    producer_thread = threading.Thread(
        target=_produce_traffic,
        args=(bootstrap, topic, settings, chats, rate, stop, produced),
        name="demo-producer",
        daemon=True,
    )
    deadline = time.monotonic() + 60
    while not (engine.started.wait(0.1) or failure or time.monotonic() > deadline):
        pass  # the engine joins the group, or fails (shown at the end)
    producer_thread.start()
    upstream.start()
    operators.start()
    started = time.monotonic()
    shown = 0
    try:
        while not stop.is_set():
            stop.wait(2.0)
            shown = _report(sim, metrics, produced, started, shown)
            _report_operator_side(sim, upstream)
            if duration and time.monotonic() - started >= duration:
                break
    finally:
        stop.set()
        operators.stop()
        producer_thread.join(10)
        if not failure:
            _settle(engine, metrics, produced, 20.0)
        _report(sim, metrics, produced, started, shown, final=True)
        _report_operator_side(sim, upstream, final=True)
        upstream.stop()
        engine.stop()
        engine_thread.join(30)
        ops.stop()
        sim.stop()
    if failure:
        print(f"the consumer stopped: {type(failure[0]).__name__}: {failure[0]}", file=sys.stderr)
        return 1
    return 0


def _produce_traffic(
    bootstrap: str,
    topic: str,
    settings: Settings,
    chats: int,
    rate: float,
    stop: threading.Event,
    produced: Counter[str],
) -> None:
    rng = random.Random(7)
    assert settings.schema_registry_url is not None
    registry = SchemaRegistryClient(settings.schema_registry_url)
    encoders = [
        ChatEventEncoder("single-object"),
        ChatEventEncoder("confluent", registry, subject=f"{topic}-value"),
    ]
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
    next_sequence = {f"chat-{i:04d}": 1 for i in range(chats)}
    while not stop.is_set():
        scripts = []
        for chat_id, first in next_sequence.items():
            script = chat_script(
                rng,
                PORTAL,
                CONNECTOR,
                LINE,
                chat_id,
                rng.randint(2, 6),
                start_ms=int(time.time() * 1000),
                first_sequence=first,
            )
            next_sequence[chat_id] = first + len(script)
            scripts.append(script)
        events = interleave(scripts, rng, duplicate_rate=0.05, reorder_rate=0.05)
        for event in events:
            if stop.is_set():
                break
            value = rng.choice(encoders).encode(event)
            producer.produce(topic, key=event.key.encode(), value=value)
            produced[event.kind] += 1
            if rng.random() < 0.003:
                producer.produce(topic, key=event.key.encode(), value=b"\x00garbage")
                produced["poison"] += 1
            producer.poll(0)
            time.sleep(1.0 / rate)
    producer.flush(10)
    registry.close()


def _settle(engine: Engine, metrics: Metrics, produced: Counter[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    total = sum(produced.values())
    while time.monotonic() < deadline:
        done = sum(s.value for s in _samples(metrics, "imconnector_event_outcomes_total"))
        if done >= total and not engine.dispatcher.in_flight:
            return
        time.sleep(0.2)


def _samples(metrics: Metrics, name: str) -> list[Any]:
    out = []
    for family in metrics.registry.collect():
        for sample in family.samples:
            if sample.name == name:
                out.append(sample)
    return out


def _report(
    sim: Any,
    metrics: Metrics,
    produced: Counter[str],
    started: float,
    shown: int,
    final: bool = False,
) -> int:
    calls = [record.as_dict() for record in sim.portal.call_records()]
    # HTTP requests: a REST `batch` counts once; its sub-calls are logged after it.
    by_method = Counter(c["method"] for c in calls if c["batch"] is None)
    batched = Counter(c["method"] for c in calls if c["batch"] is not None)
    outcomes = {
        s.labels["outcome"]: int(s.value)
        for s in _samples(metrics, "imconnector_event_outcomes_total")
    }
    dead = {
        s.labels["error_class"]: int(s.value)
        for s in _samples(metrics, "imconnector_dead_letters_total")
    }
    elapsed = time.monotonic() - started
    head = "final" if final else f"{elapsed:5.0f}s"
    print(f"[{head}] produced {dict(produced)}")
    print(f"        outcomes {outcomes}  dead-lettered {dead}")
    print(f"        Bitrix24 requests {dict(by_method)}")
    if batched:
        print(f"        calls inside batch requests {dict(batched)}")
    for call in calls[shown : shown + 2]:
        print(
            f"        e.g. {call['method']} -> HTTP {call.get('http_status')} "
            f"{_sample(call.get('params'))}"
        )
    return len(calls)


def _report_operator_side(sim: Any, upstream: DemoUpstream, final: bool = False) -> None:
    """The other direction: operator answers -> Kafka -> DeliveryConfirmed -> the portal."""
    print(
        f"        operator events in Kafka {dict(upstream.received)}  DeliveryConfirmed "
        f"sent {upstream.confirmed}  delivered on the portal {delivered_on_portal(sim)}"
    )
    shown = upstream.samples[-3:] if final else upstream.samples[-1:]
    for line in shown:
        print(f"        e.g. {line}")
