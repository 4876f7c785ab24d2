"""Rounds and requests: full batches from a backlog, and the ledger for every method."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import pytest

from consumer.codec import ChatEventEncoder
from consumer.dispatch import Batch
from consumer.mapping import BATCHABLE, SEND
from consumer.simulator import SimulatorConfig, SimulatorServer
from tests.integration.harness import (
    CONNECTOR,
    LINE,
    EngineThread,
    OutcomeWatcher,
    applied_call_list,
    expected_calls,
    make_settings,
    produce,
    shuffled_workload,
    wait_until,
)

pytestmark = pytest.mark.kafka


@pytest.fixture
def sim():
    with SimulatorServer(
        SimulatorConfig(preset_lines=[(CONNECTOR, LINE)], rate_limit_enabled=False)
    ) as server:
        server.start()
        yield server


def test_a_backlog_of_mixed_methods_goes_out_in_full_batches(
    kafka_bootstrap, topic_factory, unique, sim
):
    """Each method has its own queue: a backlog fills whole requests per method instead of
    spreading every round over all methods (which made sends average half a batch)."""
    topic = topic_factory(3)
    scripts, events = shuffled_workload(5, 1500, 2, 8)
    produce(kafka_bootstrap, topic, events, [ChatEventEncoder("single-object")])
    settings = make_settings(
        kafka_bootstrap, topic, unique("g"), sim, engine={"linger_ms": 20, "batch_size": 50}
    )
    with (
        EngineThread(settings),
        OutcomeWatcher(kafka_bootstrap, f"{topic}.outcomes") as outcomes,
    ):
        ids = {e.event_id for e in events}
        wait_until(lambda: outcomes.finished(ids), 180, "a committed outcome per event")
    requests: Counter[str] = Counter()
    elements: Counter[str] = Counter()
    for record in sim.portal.call_records():
        if record.http_status == 200 and record.method in BATCHABLE:
            requests[record.method] += 1
            elements[record.method] += len(record.params["MESSAGES"])
    sends = requests[SEND] / math.ceil(elements[SEND] / 50)
    print(f"batching: {dict(requests)} requests for {dict(elements)} elements ({sends:.2f})")
    assert elements[SEND] >= 1500
    # The old planner gave 1.5 here. The 1.1 target is the benchmark's, over a 10k-chat
    # burst; this 1,500-chat one ends in a proportionally longer tail of partial batches.
    assert sends <= 1.15, f"{requests[SEND]} send requests for {elements[SEND]} messages"
    seen = applied_call_list(sim)
    for script in scripts:
        assert seen[script[0].chat_id] == expected_calls(script), script[0].chat_id


def test_no_request_leaves_before_its_in_flight_mark_is_committed(
    kafka_bootstrap, topic_factory, unique, sim
):
    """The send ledger covers every method: when a batch is handed to the dispatcher, the
    state of each of its chats (with the call marked in flight) is already committed, so a
    crash can never replay a call the portal took without recording it as ambiguous."""
    topic = topic_factory(2)
    _, events = shuffled_workload(8, 120, 3, 10)
    settings = make_settings(kafka_bootstrap, topic, unique("g"), sim)
    running = EngineThread(settings)
    engine = running.engine
    submit = engine.dispatcher.submit
    submitted: Counter[str] = Counter()
    uncommitted: list[tuple[str, str]] = []

    def checked_submit(batch: Batch) -> None:
        pending = {(id(work), chat) for work, chat in engine._txn_chats}
        for (chat, call), (part_topic, partition, _) in zip(batch.calls, batch.routes, strict=True):
            work = engine.parts[(part_topic, partition)]
            if chat in work.dirty or (id(work), chat) in pending:
                uncommitted.append((batch.method, call.event_id))
        submitted[batch.method] += 1
        submit(batch)

    engine.dispatcher.submit = checked_submit  # type: ignore[method-assign]
    with running, OutcomeWatcher(kafka_bootstrap, f"{topic}.outcomes") as outcomes:
        produce(kafka_bootstrap, topic, events, [ChatEventEncoder("single-object")])
        ids = {e.event_id for e in events}
        wait_until(lambda: outcomes.finished(ids), 120, "a committed outcome per event")
    others: dict[str, Any] = {m: n for m, n in submitted.items() if m != SEND}
    assert len(others) >= 4, f"the workload must exercise the other methods: {submitted}"
    assert uncommitted == [], f"{len(uncommitted)} calls left before their mark was committed"
