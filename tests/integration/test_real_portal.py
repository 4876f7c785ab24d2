"""The service against a simulator that behaves like a real portal's server code (issue 16,
issue 15 item 11): customers keep their names, the portal's error texts become codes, a
moved portal is followed, and a 5xx after a send was applied is ambiguous."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from consumer.admin.redrive import RedriveFilter
from consumer.codec import ChatEventEncoder
from consumer.core.events import (
    ChatEvent,
    ChatRenamed,
    ExternalUser,
    MessageDeleted,
    MessageEdited,
    MessageSent,
    Payload,
)
from consumer.simulator import SimulatorConfig, SimulatorServer
from tests.integration.harness import (
    CONNECTOR,
    LINE,
    PORTAL,
    EngineThread,
    make_settings,
    produce,
    read_all,
    wait_until,
)

pytestmark = pytest.mark.kafka
ENCODER = [ChatEventEncoder("single-object")]
SEND = "imconnector.send.messages"


@pytest.fixture
def sim() -> Iterator[SimulatorServer]:
    with simulator() as server:
        yield server


def simulator(**config: Any) -> SimulatorServer:
    return SimulatorServer(
        SimulatorConfig(preset_lines=[(CONNECTOR, LINE)], rate_limit_enabled=False, **config)
    ).start()


def event(chat: str, seq: int, payload: Payload, user: ExternalUser | None) -> ChatEvent:
    return ChatEvent(
        str(uuid.uuid4()),
        PORTAL,
        CONNECTOR,
        LINE,
        chat,
        1_764_000_000_000 + seq,
        payload,
        seq,
        user,
    )


def profiles(sim: SimulatorServer) -> dict[str, dict[str, str]]:
    return {key: user["profile"] for key, user in sim.portal.state()["users"].items()}


def test_every_customer_keeps_their_name(kafka_bootstrap, topic_factory, unique, sim) -> None:
    customers = {
        "c-anna": ExternalUser(
            "u-anna", name="Anna", last_name="Ivanova", url="https://x.example/a", gender="female"
        ),
        "c-r2": ExternalUser("u-r2", name="R2D2", last_name="Droid #1", email="r2@droids"),
        "c-long": ExternalUser("u-long", name="Maximilian-Alexander Christopher"),
    }
    events: list[ChatEvent] = []
    for chat, user in customers.items():
        events += [
            event(chat, 1, MessageSent(f"{chat}-1", "hello"), user),
            # What producers send for edits and deletes: no user block.
            event(chat, 2, MessageEdited(f"{chat}-1", "hello again"), None),
            event(chat, 3, ChatRenamed("VIP"), None),
            event(chat, 4, MessageSent(f"{chat}-2", "more"), None),
            event(chat, 5, MessageDeleted(f"{chat}-2"), None),
        ]
    topic = topic_factory(2)
    settings = make_settings(kafka_bootstrap, topic, unique("g"), sim)
    with EngineThread(settings) as running:
        produce(kafka_bootstrap, topic, events, ENCODER)
        wait_until(lambda: running.outcome("applied") >= len(events), 60, "all applied")
        cleaned = running.metrics.registry.get_sample_value
        # "R2D2" -> "RD"; the 32-character name cut to 25.
        assert cleaned("imconnector_display_fields_cleaned_total", {"field": "name"}) == 2
        assert cleaned("imconnector_display_fields_cleaned_total", {"field": "last_name"}) == 1
        assert cleaned("imconnector_display_fields_cleaned_total", {"field": "email"}) == 1
    assert running.outcome("dead_lettered") == 0
    state = sim.portal.state()
    assert state["profiles"] == {"updates": 0, "guest_overwrites": 0}
    users = profiles(sim)
    assert users[f"{CONNECTOR}|u-anna"] == {
        "NAME": "Anna",
        "LAST_NAME": "Ivanova",
        "PERSONAL_WWW": "https://x.example/a",
        "PERSONAL_GENDER": "F",
    }
    assert (users[f"{CONNECTOR}|u-r2"]["NAME"], users[f"{CONNECTOR}|u-r2"]["LAST_NAME"]) == (
        "RD",
        "Droid",
    )
    long_name = users[f"{CONNECTOR}|u-long"]
    assert (long_name["NAME"], long_name["LAST_NAME"]) == ("Maximilian-Alexander", "Chri")
    assert sorted(chat["name"] for chat in state["chats"].values()) == ["VIP"] * 3


def test_the_portals_error_texts_become_codes_and_an_empty_edit_is_not_sent(
    kafka_bootstrap, topic_factory, unique
) -> None:
    with simulator(language="ru") as sim:
        topic = topic_factory(1)
        settings = make_settings(kafka_bootstrap, topic, unique("g"), sim)
        user = ExternalUser("u1", name="Anna")
        refused = event("c1", 2, MessageSent("m2"), None)  # neither text nor files
        empty = event("c1", 3, MessageEdited("m1"), None)
        events = [
            event("c1", 1, MessageSent("m1", "hi"), user),
            refused,
            empty,
            event("c1", 4, MessageSent("m3", "still here"), None),
        ]
        with EngineThread(settings) as running:
            produce(kafka_bootstrap, topic, events, ENCODER)
            wait_until(
                lambda: running.outcome("applied") + running.outcome("dead_lettered") >= 4,
                60,
                "outcomes",
            )
            assert running.outcome("applied") == 2
        dead = {
            dict(m.headers())["imconnector.event_id"].decode(): dict(m.headers())
            for m in read_all(kafka_bootstrap, settings.dlq_topic(topic), expect=2)
        }
        text = dead[refused.event_id]
        assert text["imconnector.error.code"] == b"IMCONNECTOR_NOT_ALL_THE_REQUIRED_DATA"
        assert text["__connect.errors.exception.message"].decode() == (
            "Переданы не все необходимые данные"
        )
        assert dead[empty.event_id]["imconnector.error.code"] == b"EMPTY_UPDATE"
        assert dead[empty.event_id]["imconnector.error.class"] == b"permanent"
        updates = [r for r in sim.portal.call_records() if r.method.endswith("update.messages")]
        assert updates == []  # the empty edit never reached the portal
        # `dlq redrive --code` selects by these codes.
        assert RedriveFilter(codes=frozenset({"EMPTY_UPDATE"})).matches(dead[empty.event_id], None)
        assert not RedriveFilter(codes=frozenset({"EMPTY_UPDATE"})).matches(text, None)


def test_a_portal_that_moved_is_followed(kafka_bootstrap, topic_factory, unique, sim) -> None:
    sim.portal.set_move({"to": f"{sim.url}/moved", "status": 302})
    topic = topic_factory(1)
    settings = make_settings(kafka_bootstrap, topic, unique("g"), sim)
    events = [
        event("c1", seq, MessageSent(f"m{seq}", "hi"), ExternalUser("u1", name="Ann"))
        for seq in (1, 2, 3)
    ]
    with EngineThread(settings) as running:
        produce(kafka_bootstrap, topic, events, ENCODER)
        wait_until(lambda: running.outcome("applied") >= 3, 60, "applied at the new address")
        moves = running.metrics.registry.get_sample_value(
            "imconnector_portal_moves_total", {"portal": PORTAL}
        )
    assert moves == 1
    statuses = [r.http_status for r in sim.portal.call_records()]
    assert statuses[0] == 302 and statuses.count(302) == 1
    assert running.outcome("dead_lettered") == 0


@pytest.mark.parametrize("policy", ["resend", "dead-letter"])
def test_a_5xx_after_the_portal_applied_a_send_is_ambiguous(
    kafka_bootstrap, topic_factory, unique, policy: str
) -> None:
    # Seed 1 at rate 0.5: the first send is applied, then answered 500; the next one is not.
    # Reconciliation off: the policy alone decides (test_reconcile.py looks sends up).
    with simulator(error_rate=0.5, fault_phase="after", fault_methods=[SEND], seed=1) as sim:
        topic = topic_factory(1)
        settings = make_settings(
            kafka_bootstrap,
            topic,
            unique("g"),
            sim,
            engine={"unknown_outcome_policy": policy, "reconcile_sends": False},
        )
        sent = event("c1", 1, MessageSent("m1", "hi"), ExternalUser("u1", name="Ann"))
        with EngineThread(settings) as running:
            produce(kafka_bootstrap, topic, [sent], ENCODER)
            final = "applied" if policy == "resend" else "dead_lettered"
            wait_until(lambda: running.outcome(final) >= 1, 60, final)
            ambiguous = running.metrics.registry.get_sample_value(
                "imconnector_ambiguous_sends_total", {"policy": policy}
            )
        assert ambiguous == 1
        copies = Counter(
            m["external_id"] for c in sim.portal.state()["chats"].values() for m in c["messages"]
        )
        outcomes = [
            json.loads(m.value())["outcome"]
            for m in read_all(kafka_bootstrap, settings.outcomes_topic)
        ]
        if policy == "resend":
            # Resent: the portal holds two copies, and the outcomes say so.
            assert copies == {"m1": 2}
            assert sorted(outcomes) == ["ambiguous_resent", "applied"]
        else:
            # Handed to a human: one copy (applied before the 500), one dead letter.
            assert copies == {"m1": 1}
            assert outcomes == ["dead_lettered"]
            (dead,) = read_all(kafka_bootstrap, settings.dlq_topic(topic), expect=1)
            headers = dict(dead.headers())
            assert headers["imconnector.error.class"] == b"ambiguous"
            assert headers["imconnector.error.http_status"] == b"500"
