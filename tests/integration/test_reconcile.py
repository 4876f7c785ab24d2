"""Sends of unknown outcome are looked up on the portal before anything is sent again
(issue 20), on the real broker and the simulator: found there, a send is not repeated;
missing, it is sent once more; its chat's later calls wait meanwhile and other chats flow;
a lookup cut short by a stop is done again after the restore, with many chats' reads in one
REST `batch`; and when a lookup cannot tell, `unknown_outcome_policy` decides, logged and
counted.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterator
from typing import Any

import pytest

from consumer.bitrix.readback import DIALOG, HISTORY
from consumer.codec import ChatEventEncoder
from consumer.core.events import ExternalUser, MessageSent
from consumer.simulator import ManualClock, SimulatorConfig, SimulatorServer
from tests.integration.harness import (
    CONNECTOR,
    LINE,
    EngineThread,
    chat_event,
    make_settings,
    produce,
    read_all,
    wait_until,
)

pytestmark = pytest.mark.kafka
ENCODER = [ChatEventEncoder("single-object")]
SEND = "imconnector.send.messages"
# At rate 0.5 with seed 37 the portal's fault draws for sends go: no fault, fault, no
# fault, no fault, ... (the first send passes, the second is hit, the rest pass).
SECOND_SEND_HIT = {"error_rate": 0.5, "seed": 37, "fault_methods": [SEND]}


def simulator(clock: ManualClock | None = None, **config: Any) -> SimulatorServer:
    settings = SimulatorConfig(preset_lines=[(CONNECTOR, LINE)], rate_limit_enabled=False, **config)
    return SimulatorServer(settings, clock=clock).start()


@pytest.fixture
def sim() -> Iterator[SimulatorServer]:
    server = simulator()
    try:
        yield server
    finally:
        server.stop()


def sends(chat: str, *seqs: int) -> list[Any]:
    user = ExternalUser(f"user-{chat}", name="Ann")
    return [
        chat_event(chat, seq, MessageSent(f"{chat}-m{seq}", f"text {seq}"), user) for seq in seqs
    ]


def on_portal(sim: SimulatorServer) -> dict[str, list[str]]:
    """Per external chat, the external ids of its inbound messages, in portal order."""
    out: dict[str, list[str]] = defaultdict(list)
    for chat in sim.portal.state()["chats"].values():
        for item in chat["messages"]:
            if item["direction"] == "in":
                out[chat["external_chat_id"]].extend(item["external_ids"])
    return out


def outcomes_of(bootstrap: str, topic: str) -> dict[str, list[dict[str, Any]]]:
    """Outcome records by event id (committed ones)."""
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for msg in read_all(bootstrap, topic):
        doc = json.loads(msg.value())
        out[doc["event_id"]].append(doc)
    return out


def counter(running: EngineThread, name: str, labels: dict[str, str]) -> float:
    return running.metrics.registry.get_sample_value(name, labels) or 0.0


def faulted_sends(sim: SimulatorServer) -> int:
    return sum(1 for r in sim.portal.call_records(method=SEND) if r.http_status == 500)


def test_a_send_applied_then_answered_500_is_found_and_its_chat_waits_meanwhile(
    kafka_bootstrap, topic_factory, unique, sim
) -> None:
    topic = topic_factory(1)
    settings = make_settings(
        kafka_bootstrap, topic, unique("g"), sim, engine={"reconcile_settle_s": 2.0}
    )
    a1, a2, a3 = sends("a", 1, 2, 3)
    b1, b2 = sends("b", 1, 2)
    with EngineThread(settings) as running:
        produce(kafka_bootstrap, topic, [a1], ENCODER)
        wait_until(lambda: running.outcome("applied") >= 1, 30, "the chat's first send")
        sim.portal.update_faults({"error_rate": 1.0, "fault_phase": "after", "methods": [SEND]})
        produce(kafka_bootstrap, topic, [a2], ENCODER)
        wait_until(lambda: faulted_sends(sim) == 1, 30, "a send applied, then answered 500")
        sim.portal.update_faults({"error_rate": 0.0})
        produce(kafka_bootstrap, topic, [a3, b1, b2], ENCODER)
        wait_until(lambda: len(on_portal(sim)["b"]) == 2, 30, "the other chat's sends")
        # The other chat flowed; this one's next send waits behind the lookup.
        assert on_portal(sim)["a"] == ["a-m1", "a-m2"]
        wait_until(lambda: running.outcome("applied") >= 5, 30, "all applied")
        found = counter(running, "imconnector_send_reconciliations_total", {"result": "present"})
        in_doubt = counter(running, "imconnector_ambiguous_sends_total", {"policy": "reconcile"})
    assert (found, in_doubt) == (1, 1)
    assert on_portal(sim) == {"a": ["a-m1", "a-m2", "a-m3"], "b": ["b-m1", "b-m2"]}
    records = outcomes_of(kafka_bootstrap, settings.outcomes_topic)
    reconciled, applied = records[a2.event_id]
    assert (reconciled["outcome"], reconciled["cause"], applied["outcome"]) == (
        "reconciled_present",
        "answer",
        "applied",
    )
    first = sim.portal.state()["chats"]
    (chat_a,) = [c for c in first.values() if c["external_chat_id"] == "a"]
    assert reconciled["result"]["session_id"] == int(chat_a["session_id"])
    reads = sim.portal.call_records(method=HISTORY)
    assert [r.params["SESSION_ID"] for r in reads] == [int(chat_a["session_id"])]
    assert not any(d["outcome"] == "ambiguous_resent" for docs in records.values() for d in docs)


def test_a_send_that_never_reached_the_portal_is_found_missing_and_sent_once_more(
    kafka_bootstrap, topic_factory, unique
) -> None:
    sim = simulator(**SECOND_SEND_HIT)  # the 500 comes before anything is applied
    try:
        topic = topic_factory(1)
        settings = make_settings(kafka_bootstrap, topic, unique("g"), sim)
        events = sends("a", 1, 2, 3)
        with EngineThread(settings) as running:
            produce(kafka_bootstrap, topic, events, ENCODER)
            wait_until(lambda: running.outcome("applied") >= 3, 30, "all applied")
            resent = counter(
                running, "imconnector_send_reconciliations_total", {"result": "resent"}
            )
        assert resent == 1 and faulted_sends(sim) == 1
        assert on_portal(sim) == {"a": ["a-m1", "a-m2", "a-m3"]}
        records = outcomes_of(kafka_bootstrap, settings.outcomes_topic)
        assert [d["outcome"] for d in records[events[1].event_id]] == [
            "reconciled_resent",
            "applied",
        ]
    finally:
        sim.stop()


def test_a_lookup_cut_short_by_a_stop_is_done_again_after_the_restore_in_one_batch(
    kafka_bootstrap, topic_factory, unique, sim
) -> None:
    topic = topic_factory(2)
    group = unique("g")
    chats = [f"c{i}" for i in range(20)]
    firsts = [e for chat in chats for e in sends(chat, 1)]
    seconds = [e for chat in chats for e in sends(chat, 2)]
    # The first owner waits far longer than the test: it stops while every lookup waits.
    slow = make_settings(kafka_bootstrap, topic, group, sim, engine={"reconcile_settle_s": 600})
    with EngineThread(slow) as first:
        produce(kafka_bootstrap, topic, firsts, ENCODER)
        wait_until(lambda: first.outcome("applied") >= 20, 30, "the first sends")
        sim.portal.update_faults({"error_rate": 1.0, "fault_phase": "after", "methods": [SEND]})
        produce(kafka_bootstrap, topic, seconds, ENCODER)
        wait_until(
            lambda: sum(len(on_portal(sim)[chat]) for chat in chats) == 40,
            30,
            "the second sends applied (and answered 500)",
        )
        wait_until(
            lambda: (
                counter(first, "imconnector_ambiguous_sends_total", {"policy": "reconcile"}) >= 20
            ),
            30,
            "every second send in doubt",
        )
    sim.portal.update_faults({"error_rate": 0.0})
    assert sim.portal.call_records(method=HISTORY) == []  # nothing was read yet
    settings = make_settings(kafka_bootstrap, topic, group, sim, instance_id="i2")
    with EngineThread(settings) as second:
        wait_until(lambda: second.outcome("applied") >= 20, 60, "the restored sends looked up")
        found = counter(second, "imconnector_send_reconciliations_total", {"result": "present"})
    assert found == 20
    assert on_portal(sim) == {chat: [f"{chat}-m1", f"{chat}-m2"] for chat in chats}
    # Each partition's chats were restored together: their reads share one `batch` each.
    reads = sim.portal.call_records(method=HISTORY)
    assert len(reads) == 20 and all(r.batch is not None for r in reads)
    assert len({r.batch for r in reads}) <= 2
    records = outcomes_of(kafka_bootstrap, settings.outcomes_topic)
    causes = Counter(
        d["cause"]
        for e in seconds
        for d in records[e.event_id]
        if d["outcome"] == "reconciled_present"
    )
    assert causes == {"restart": 20}


def test_a_chat_that_moved_to_a_new_session_is_read_there(
    kafka_bootstrap, topic_factory, unique
) -> None:
    clock = ManualClock()
    sim = simulator(clock, session_idle_close_s=600)
    try:
        topic = topic_factory(1)
        settings = make_settings(kafka_bootstrap, topic, unique("g"), sim)
        a1, a2 = sends("a", 1, 2)
        with EngineThread(settings) as running:
            produce(kafka_bootstrap, topic, [a1], ENCODER)
            wait_until(lambda: running.outcome("applied") >= 1, 30, "the first send")
            clock.advance(601)  # the session closes; the next message opens another
            sim.portal.update_faults({"error_rate": 1.0, "fault_phase": "after", "methods": [SEND]})
            produce(kafka_bootstrap, topic, [a2], ENCODER)
            wait_until(lambda: faulted_sends(sim) == 1, 30, "a send applied, then answered 500")
            sim.portal.update_faults({"error_rate": 0.0})
            wait_until(lambda: running.outcome("applied") >= 2, 30, "the send looked up")
        (chat,) = sim.portal.state()["chats"].values()
        assert [m["external_id"] for m in chat["messages"]] == ["a-m1", "a-m2"]
        sessions = [r.params["SESSION_ID"] for r in sim.portal.call_records(method=HISTORY)]
        assert len(sessions) == 2 and sessions[1] == int(chat["session_id"]) > sessions[0]
    finally:
        sim.stop()


@pytest.mark.parametrize("policy", ["resend", "dead-letter"])
def test_a_chats_first_send_in_doubt_has_nothing_to_look_up_and_the_policy_decides(
    kafka_bootstrap, topic_factory, unique, policy: str
) -> None:
    # Seed 1 at rate 0.5: the first send is applied, then answered 500; the next is not hit.
    sim = simulator(error_rate=0.5, fault_phase="after", fault_methods=[SEND], seed=1)
    try:
        topic = topic_factory(1)
        engine = {"unknown_outcome_policy": policy}
        settings = make_settings(kafka_bootstrap, topic, unique("g"), sim, engine=engine)
        (a1,) = sends("a", 1)
        with EngineThread(settings) as running:
            produce(kafka_bootstrap, topic, [a1], ENCODER)
            final = "applied" if policy == "resend" else "dead_lettered"
            wait_until(lambda: running.outcome(final) >= 1, 30, final)
            no_user = counter(
                running, "imconnector_send_reconcile_fallbacks_total", {"reason": "no_user"}
            )
        assert no_user == 1
        assert sim.portal.call_records(method=HISTORY) == []
        assert sim.portal.call_records(method=DIALOG) == []
        outcomes = [
            d["outcome"] for d in outcomes_of(kafka_bootstrap, settings.outcomes_topic)[a1.event_id]
        ]
        if policy == "resend":
            assert on_portal(sim) == {"a": ["a-m1", "a-m1"]}
            assert outcomes == ["ambiguous_resent", "applied"]
        else:
            assert on_portal(sim) == {"a": ["a-m1"]}
            assert outcomes == ["dead_lettered"]
    finally:
        sim.stop()


@pytest.mark.parametrize(
    ("portal", "reason", "policy"),
    [
        ({"openlines_access": "none"}, "access_denied", "resend"),
        ({"readback_methods": False}, "method_missing", "dead-letter"),
    ],
)
def test_a_lookup_the_portal_refuses_falls_back_to_the_policy(
    kafka_bootstrap, topic_factory, unique, portal: dict[str, Any], reason: str, policy: str
) -> None:
    sim = simulator(fault_phase="after", **SECOND_SEND_HIT, **portal)
    try:
        topic = topic_factory(1)
        engine = {"unknown_outcome_policy": policy}
        settings = make_settings(kafka_bootstrap, topic, unique("g"), sim, engine=engine)
        events = sends("a", 1, 2, 3)
        with EngineThread(settings) as running:
            produce(kafka_bootstrap, topic, events, ENCODER)
            wait_until(lambda: running.outcomes_total() >= 3, 30, "every event's outcome")
            fallbacks = counter(
                running, "imconnector_send_reconcile_fallbacks_total", {"reason": reason}
            )
        assert fallbacks == 1
        records = outcomes_of(kafka_bootstrap, settings.outcomes_topic)
        second = records[events[1].event_id]
        if policy == "resend":
            assert on_portal(sim) == {"a": ["a-m1", "a-m2", "a-m2", "a-m3"]}
            assert [(d["outcome"], d.get("reason")) for d in second] == [
                ("ambiguous_resent", reason),
                ("applied", None),
            ]
        else:
            assert on_portal(sim) == {"a": ["a-m1", "a-m2", "a-m3"]}
            (dead,) = read_all(kafka_bootstrap, settings.dlq_topic(topic), expect=1)
            headers = dict(dead.headers())
            assert headers["imconnector.error.class"] == b"ambiguous"
            assert reason.encode() in headers["__connect.errors.exception.message"]
            assert [d["outcome"] for d in second] == ["dead_lettered"]
    finally:
        sim.stop()


def test_a_send_missing_every_time_it_went_out_is_exhausted_and_parks_its_chat(
    kafka_bootstrap, topic_factory, unique, sim
) -> None:
    topic = topic_factory(1)
    engine = {"reconcile_max_sends": 3}
    settings = make_settings(kafka_bootstrap, topic, unique("g"), sim, engine=engine)
    a1, a2, a3 = sends("a", 1, 2, 3)
    with EngineThread(settings) as running:
        produce(kafka_bootstrap, topic, [a1], ENCODER)
        wait_until(lambda: running.outcome("applied") >= 1, 30, "the first send")
        sim.portal.update_faults({"error_rate": 1.0, "methods": [SEND]})  # never applied
        produce(kafka_bootstrap, topic, [a2, a3], ENCODER)
        wait_until(lambda: running.outcome("dead_lettered") >= 2, 60, "exhausted, then parked")
        exhausted = counter(
            running, "imconnector_send_reconciliations_total", {"result": "exhausted"}
        )
        resent = counter(running, "imconnector_send_reconciliations_total", {"result": "resent"})
    assert (exhausted, resent) == (1, 2)  # looked up after each of its 3 sends
    assert faulted_sends(sim) == 3 and len(sim.portal.call_records(method=HISTORY)) == 3
    assert on_portal(sim) == {"a": ["a-m1"]}
    records = outcomes_of(kafka_bootstrap, settings.outcomes_topic)
    assert [d["outcome"] for d in records[a2.event_id]] == [
        "reconciled_resent",
        "reconciled_resent",
        "dead_lettered",
    ]
    assert [d["outcome"] for d in records[a3.event_id]] == ["dead_lettered"]
    letters = read_all(kafka_bootstrap, settings.dlq_topic(topic), expect=2)
    classes = [dict(m.headers())["imconnector.error.class"] for m in letters]
    assert classes == [b"exhausted", b"parked"]
    assert dict(letters[0].headers())["imconnector.error.code"] == b"INTERNAL_SERVER_ERROR"
