"""Helpers for integration tests: run the engine against the real broker and the simulator."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from prometheus_client import CollectorRegistry

from consumer.bitrix.oauth import TokenStore
from consumer.codec import ChatEventEncoder
from consumer.core.events import ChatEvent, ExternalUser, Payload
from consumer.core.fold import FoldConfig, new_call, on_event, on_success
from consumer.core.mapping import RENAME, SEND, element_for
from consumer.core.ordering import Lane
from consumer.demo.workload import chat_script, interleave
from consumer.engine.engine import Engine
from consumer.errors import TransactionStuck
from consumer.observability.metrics import Metrics
from consumer.service import build_engine
from consumer.settings import Settings
from consumer.simulator import SimulatorConfig, SimulatorServer

CONNECTOR = "test_connector"
LINE = 7
PORTAL = "portal-a"
FINAL = {"applied", "dead_lettered", "moot", "superseded", "skipped"}


def chat_event(
    chat: str, seq: int, payload: Payload, user: ExternalUser | None = None
) -> ChatEvent:
    """Event `seq` of `chat` on the test portal, connector and line."""
    return ChatEvent(
        event_id=str(uuid.uuid4()),
        portal=PORTAL,
        connector=CONNECTOR,
        line=LINE,
        chat_id=chat,
        occurred_at=1_764_000_000_000 + seq * 1000,
        payload=payload,
        sequence=seq,
        user=user
        or ExternalUser(
            id=f"user-{chat}", name="Anna", last_name="Ivanova", email="anna@example.com"
        ),
    )


def shuffled_workload(
    seed: int, chats: int, lo: int, hi: int
) -> tuple[list[list[ChatEvent]], list[ChatEvent]]:
    """Chat scripts of lo..hi events and their delivery: interleaved, 10 % duplicated,
    10 % out of order (deterministic for a seed)."""
    rng = random.Random(seed)
    scripts = [
        chat_script(
            rng,
            PORTAL,
            CONNECTOR,
            LINE,
            f"chat-{i}",
            rng.randint(lo, hi),
            start_ms=1_764_000_000_000,
        )
        for i in range(chats)
    ]
    return scripts, interleave(scripts, rng, duplicate_rate=0.1, reorder_rate=0.1)


def wait_until(
    predicate: Callable[[], Any],
    timeout: float = 60.0,
    what: str = "condition",
    interval: float = 0.05,
) -> Any:
    """Poll `predicate` until truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def portal_settings(
    sim: SimulatorServer, tokens: dict[str, Any] | None = None, **extra: Any
) -> dict[str, Any]:
    """Settings of one portal backed by `sim` (tokens freshly issued unless given)."""
    tokens = tokens or sim.issue_tokens()
    return {
        "rest_url": f"{sim.url}/rest/",
        "oauth_url": f"{sim.url}/oauth/token/",
        "client_id": sim.config.client_id,
        "client_secret": sim.config.client_secret,
        "access_token": tokens["access_token"],
        "refresh_token": tokens["refresh_token"],
        "rate_drain": 1000.0,
        "rate_burst": 1000,
        **extra,
    }


@contextmanager
def line_simulator(**config: Any) -> Iterator[SimulatorServer]:
    """A started simulator with the tests' connector line open and rate limits off."""
    with SimulatorServer(
        SimulatorConfig(preset_lines=[(CONNECTOR, LINE)], rate_limit_enabled=False, **config)
    ) as server:
        server.start()
        yield server


def make_settings(
    bootstrap: str,
    topic: str,
    group: str,
    sim: SimulatorServer,
    portals: dict[str, Any] | None = None,
    **overrides: Any,
) -> Settings:
    """Settings for one test: its own topic, group and topics derived from them."""
    engine = {
        "commit_interval_ms": 20,
        "gap_timeout_s": 10.0,
        "batch_size": 50,
        # A send of unknown outcome is looked up after this; the simulator answers at once.
        "reconcile_settle_s": 0.3,
        **overrides.pop("engine", {}),
    }
    return Settings(
        kafka={"bootstrap_servers": bootstrap, "statistics_interval_ms": 1000},
        source_topics=[topic],
        group_id=group,
        instance_id=overrides.pop("instance_id", "i1"),
        schema_registry_url=f"{sim.url}/registry",
        outcomes_topic=f"{topic}.outcomes",
        tokens_topic=f"{topic}.tokens",
        portals=portals or {PORTAL: portal_settings(sim)},
        engine=engine,
        retry=overrides.pop("retry", {"base_delay_s": 0.01, "max_delay_s": 0.2}),
        http_port=0,
        shutdown_grace_s=overrides.pop("shutdown_grace_s", 5.0),
        **overrides,
    )


class EngineThread:
    """An engine running in a background thread with its own metrics registry."""

    def __init__(
        self,
        settings: Settings,
        token_store: TokenStore | None = None,
        build: Callable[[Settings, Metrics], Engine] | None = None,
    ) -> None:
        self.metrics = Metrics(CollectorRegistry())
        self.engine: Engine = (
            build(settings, self.metrics)
            if build is not None
            else build_engine(
                settings, self.metrics, token_store=token_store, memory_tokens=token_store is None
            )
        )
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.engine.run()
        except BaseException as exc:  # noqa: BLE001 - surfaced by stop()
            self.error = exc

    def __enter__(self) -> EngineThread:
        self.thread.start()
        wait_until(self.engine.started.is_set, 60, "engine start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self.engine.stop()
        self.thread.join(60)
        assert not self.thread.is_alive(), "engine did not stop"
        if self.error is not None:
            raise AssertionError(f"engine crashed: {self.error!r}") from self.error

    def outcome(self, name: str) -> float:
        return (
            self.metrics.registry.get_sample_value(
                "imconnector_event_outcomes_total", {"outcome": name}
            )
            or 0.0
        )

    def outcomes_total(self) -> float:
        return sum(
            self.outcome(n)
            for n in ("applied", "duplicate", "superseded", "moot", "skipped", "dead_lettered")
        )


def produce(
    bootstrap: str,
    topic: str,
    events: Iterable[ChatEvent],
    encoders: list[ChatEventEncoder],
    headers: list[tuple[str, bytes]] | None = None,
) -> int:
    """Publish `events` keyed by chat, cycling through `encoders`; returns the count."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    count = 0
    for index, event in enumerate(events):
        value = encoders[index % len(encoders)].encode(event)
        producer.produce(topic, key=event.key.encode(), value=value, headers=headers or [])
        producer.poll(0)
        count += 1
    assert producer.flush(30) == 0
    return count


def produce_raw(bootstrap: str, topic: str, key: bytes, value: bytes) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    producer.produce(topic, key=key, value=value, headers=[("trace", b"abc")])
    assert producer.flush(30) == 0


def read_all(
    bootstrap: str, topic: str, expect: int | None = None, timeout: float = 30.0
) -> list[Any]:
    """Every committed record of `topic`: up to the end of every partition, or, with `expect`,
    until that many records are there (fewer when `timeout` passes first)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{time.time_ns()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": "read_committed",
        }
    )
    meta = consumer.list_topics(topic, timeout=10).topics[topic]
    consumer.assign([TopicPartition(topic, p, 0) for p in meta.partitions])
    out: list[Any] = []
    at_end: set[int] = set()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            for msg in consumer.consume(500, timeout=0.2):
                error = msg.error()
                if error is None:
                    out.append(msg)
                    at_end.discard(msg.partition())
                elif error.code() == KafkaError._PARTITION_EOF:
                    at_end.add(msg.partition())
            if expect is None and at_end >= set(meta.partitions):
                return out
            if expect is not None and len(out) >= expect:
                return out
    finally:
        consumer.close()
    if expect is None:
        missing = sorted(set(meta.partitions) - at_end)
        raise AssertionError(f"{topic}: partitions {missing} not read to the end in {timeout} s")
    return out


def applied_call_list(sim: SimulatorServer) -> dict[str, list[tuple[str, str]]]:
    """Per external chat id, the (method, identity) of every element the portal applied."""
    per_chat: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for record in sim.portal.call_records():
        if not record.applied:  # a fault after the call (500, hang) still applied it
            continue
        params = {k.upper(): v for k, v in record.params.items()}
        if record.method == RENAME:
            per_chat[str(params["CHAT_ID"])].append((record.method, str(params["NAME"])))
            continue
        for element in params.get("MESSAGES", []):
            per_chat[str(element["chat"]["id"])].append((record.method, identity(element)))
    return per_chat


def identity(element: dict[str, Any]) -> str:
    message = element["message"]
    message_id = message["id"]
    ident = ",".join(message_id) if isinstance(message_id, list) else str(message_id)
    return f"{ident}:{message['text']}" if "text" in message else ident


def expected_calls(script: list[ChatEvent]) -> list[tuple[str, str]]:
    """What the portal must see for one chat's script delivered in order (pure fold)."""
    state_calls: list[tuple[str, str]] = []
    from consumer.core.state import ChatState

    state = ChatState()
    lane: Lane[ChatEvent] = Lane(1000, 1000, lambda e: e)
    for now, event in enumerate(script):
        for item, admission in lane.offer(state, event, now).ready:
            if admission == "duplicate":
                continue
            on_event(state, item, new_call(item, state, ("t", 0, 0)), now, FoldConfig())
            while state.outbox:
                head = state.outbox[0]
                ident = (
                    str(head.element["NAME"]) if head.method == RENAME else identity(head.element)
                )
                state_calls.append((head.method, ident))
                on_success(state, head, None, now)
    return state_calls


def final_outcomes(bootstrap: str, topic: str) -> tuple[dict[str, str], Counter[str]]:
    """event id -> final outcome (committed records only), and ambiguous resends by id."""
    final: dict[str, str] = {}
    ambiguous: Counter[str] = Counter()
    for msg in read_all(bootstrap, topic):
        doc = json.loads(msg.value())
        if doc["outcome"] == "ambiguous_resent":
            ambiguous[doc["event_id"]] += 1
        elif doc["outcome"] in FINAL:
            assert doc["event_id"] not in final, f"two final outcomes for {doc['event_id']}"
            final[doc["event_id"]] = doc["outcome"]
    return final, ambiguous


def side_records(bootstrap: str, topic: str) -> Counter[str]:
    """The records written beside final outcomes, counted: `ambiguous_resent` by method and
    reason (`...:<reason>`, `dispatcher` for a blind resend), `reconciled_present`,
    `reconciled_resent`."""
    counts: Counter[str] = Counter()
    for msg in read_all(bootstrap, topic):
        doc = json.loads(msg.value())
        outcome = doc["outcome"]
        if outcome == "ambiguous_resent":
            method = doc["method"].removeprefix("imconnector.")
            reason = doc.get("reason") or doc.get("code", "").lower()
            counts[f"ambiguous_resent:{method}:{reason}"] += 1
        elif outcome.startswith("reconciled_"):
            counts[outcome] += 1
    return counts


class OutcomeWatcher:
    """Follows an outcomes topic (committed records only) and collects final outcomes.

    Per-engine metric counts cannot tell when a multi-consumer run is done: a round a
    revoked owner counted may be replayed by the next owner. The committed topic can."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"watcher-{time.time_ns()}",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
            }
        )
        self._topic = topic
        self._assigned = False
        self.final: dict[str, str] = {}

    def __enter__(self) -> OutcomeWatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self._consumer.close()

    def finished(self, event_ids: Iterable[str]) -> bool:
        """Read what is committed so far; True once every id has a final outcome."""
        if not self._assigned:
            topics = self._consumer.list_topics(self._topic, timeout=10).topics
            meta = topics.get(self._topic)
            if meta is None or meta.error is not None:
                return False  # the engine creates the topic on start
            self._consumer.assign([TopicPartition(self._topic, p, 0) for p in meta.partitions])
            self._assigned = True
        for msg in self._consumer.consume(1000, timeout=0.2):
            if msg.error() is None:
                doc = json.loads(msg.value())
                if doc["outcome"] in FINAL:
                    self.final[doc["event_id"]] = doc["outcome"]
        return all(e in self.final for e in event_ids)


def check_calls(
    sim: SimulatorServer, scripts: list[list[ChatEvent]], ambiguous: Counter[str]
) -> int:
    """Per chat: the applied calls are the expected ones in order; a call may repeat right
    after itself, a send only if its event was recorded as ambiguous. Returns the repeated
    sends (the doubles a customer would see)."""
    ident_to_event: dict[tuple[str, str, str], list[str]] = {}
    for script in scripts:
        for event in script:
            method, element = element_for(event, None)
            ident = str(element["NAME"]) if method == RENAME else identity(element)
            ident_to_event.setdefault((event.chat_id, method, ident), []).append(event.event_id)
    seen = applied_call_list(sim)
    repeats = 0
    for script in scripts:
        chat = script[0].chat_id
        expected = expected_calls(script)
        matched = 0
        for call in seen.get(chat, []):
            if matched < len(expected) and call == expected[matched]:
                matched += 1
                continue
            # Anything else must be a repeat of the call just made: of a send, recorded as
            # ambiguous; an idempotent call (edit, delete, status, rename) may be repeated
            # after an answer that never came, and changes nothing the second time.
            assert matched and call == expected[matched - 1], (
                f"{chat}: unexpected {call} after {matched} expected calls; "
                f"seen {seen.get(chat)}, expected {expected}"
            )
            if call[0] == SEND:
                events = ident_to_event[(chat, call[0], call[1])]
                assert any(ambiguous[e] for e in events), f"{chat}: {call} twice, not ambiguous"
                repeats += 1
        assert matched == len(expected), f"{chat}: {expected[matched:]} never applied"
    return repeats


class Replica:
    """`python -m consumer run` as one member of the group, restartable."""

    def __init__(self, name: str, env: dict[str, str], logs: Path) -> None:
        self.name = name
        self.env = {**env, "IMCONNECTOR_INSTANCE_ID": name}
        self.logs = logs
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.stuck_exits = 0

    def start(self) -> None:
        self.starts += 1
        log = (self.logs / f"{self.name}-{self.starts}.log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "consumer", "run"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

    def log(self) -> str:
        return (self.logs / f"{self.name}-{self.starts}.log").read_text(errors="replace")

    def alive(self) -> bool:
        """Running; restarted first, as Kubernetes would, if it exited because a Kafka
        commit was stuck (exit status 3, `TransactionStuck`: the documented way out of a
        librdkafka call that blocks past its timeout)."""
        if self.proc is not None and self.proc.poll() == TransactionStuck.exit_code:
            self.stuck_exits += 1
            self.start()
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
