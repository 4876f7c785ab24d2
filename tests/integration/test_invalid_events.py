"""Events whose routing fields are unusable are dead-lettered as `invalid_event` naming the
field, and no request goes anywhere for them (issue 15 item 3)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from consumer.codec import ChatEventEncoder
from consumer.core.events import MessageSent
from tests.integration.harness import (
    EngineThread,
    chat_event,
    line_simulator,
    make_settings,
    produce,
    read_all,
    wait_until,
)

pytestmark = pytest.mark.kafka


def test_unroutable_events_are_dead_lettered_and_the_rest_flow(
    kafka_bootstrap, topic_factory, unique
):
    topic = topic_factory(2)
    ok = chat_event("fine", 1, MessageSent("fine-1", "hi"))
    bad = [
        replace(chat_event("x", 1, MessageSent("x-1", "a")), portal="portal-z"),
        replace(chat_event("y", 1, MessageSent("y-1", "b")), chat_id="y|z"),
        replace(chat_event("w", 1, MessageSent("w-1", "c")), line=0),
        replace(chat_event("v", 1, MessageSent("v-1", "d")), connector="a\tb"),
    ]
    produce(kafka_bootstrap, topic, [*bad, ok], [ChatEventEncoder("single-object")])
    with line_simulator() as sim:
        settings = make_settings(kafka_bootstrap, topic, unique("g"), sim)
        with EngineThread(settings) as running:
            wait_until(lambda: running.outcomes_total() >= 5, 60, "an outcome for each")
            assert running.outcome("applied") == 1 and running.outcome("dead_lettered") == 4
            dead_metric = running.metrics.registry.get_sample_value(
                "imconnector_dead_letters_total", {"error_class": "invalid_event"}
            )
        chats = {
            e["chat"]["id"] for r in sim.portal.call_records() for e in r.params.get("MESSAGES", [])
        }
    assert chats == {"fine"}
    assert dead_metric == 4
    letters = read_all(kafka_bootstrap, f"{topic}.dlq")
    messages = sorted(dict(m.headers())["__connect.errors.exception.message"] for m in letters)
    assert {dict(m.headers())["imconnector.error.class"] for m in letters} == {b"invalid_event"}
    assert any(b"portal 'portal-z' is not configured" in m for m in messages)
    assert any(b"chat_id 'y|z' contains the chat key separator" in m for m in messages)
    assert any(b"line 0" in m for m in messages)
    assert any(b"connector 'a\\tb' contains a control character" in m for m in messages)
