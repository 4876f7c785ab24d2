"""No memory limit re-applies an event (issue 15 item 9).

Events without a `sequence` are deduplicated by event id over the chat's last 64 ids; after a
restart the partition is read again from its committed offset, which one chat's open gap can
hold far back. A chat with 200 such events behind that offset must not have them applied
twice: a record at or below the chat's last admitted offset is known to be decided.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import replace

import pytest

from consumer.codec import ChatEventEncoder
from consumer.core.events import MessageSent
from tests.integration.harness import (
    PORTAL,
    chat_event,
    line_simulator,
    make_settings,
    portal_settings,
    produce,
    read_all,
    wait_until,
)

pytestmark = pytest.mark.kafka


def test_events_without_sequence_behind_a_pinned_offset_apply_once_across_a_sigkill(
    kafka_bootstrap, topic_factory, unique, tmp_path
):
    topic = topic_factory(1)
    group = unique("g")
    held = [
        chat_event("gap", 1, MessageSent("g-1", "a")),
        chat_event("gap", 3, MessageSent("g-3", "c")),
    ]
    loose = [
        replace(chat_event("loose", 1, MessageSent(f"l-{n}", f"t{n}")), sequence=None)
        for n in range(200)
    ]
    produce(kafka_bootstrap, topic, [*held, *loose], [ChatEventEncoder("single-object")])
    with line_simulator() as sim:
        settings = make_settings(kafka_bootstrap, topic, group, sim)
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("IMCONNECTOR_")},
            "IMCONNECTOR_KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap,
            "IMCONNECTOR_SOURCE_TOPICS": topic,
            "IMCONNECTOR_GROUP_ID": group,
            "IMCONNECTOR_HTTP_PORT": "0",
            "IMCONNECTOR_OUTCOMES_TOPIC": settings.outcomes_topic,
            "IMCONNECTOR_TOKENS_TOPIC": settings.tokens_topic,
            "IMCONNECTOR_PORTALS": json.dumps({PORTAL: portal_settings(sim)}),
            # The gap at sequence 2 stays open: the committed offset stays before `loose`.
            "IMCONNECTOR_ENGINE__GAP_TIMEOUT_S": "3600",
            "IMCONNECTOR_ENGINE__COMMIT_INTERVAL_MS": "20",
        }
        log = open(tmp_path / "service.log", "wb")  # noqa: SIM115 - closed below

        def start() -> subprocess.Popen[bytes]:
            return subprocess.Popen(
                [sys.executable, "-m", "consumer", "run"], env=env, stdout=log, stderr=log
            )

        def outcomes() -> Counter[str]:
            return Counter(
                json.loads(m.value())["outcome"]
                for m in read_all(kafka_bootstrap, settings.outcomes_topic)
            )

        first = start()
        try:
            # Every loose event applied and committed (outcome lines are in the same
            # transaction as the state that records them).
            wait_until(lambda: outcomes()["applied"] >= 201, 90, "the first run", interval=0.5)
            first.send_signal(signal.SIGKILL)
            first.wait(30)
            second = start()
            try:
                # The second run reads the 200 records again and recognises each one.
                wait_until(lambda: outcomes()["duplicate"] >= 200, 90, "the re-read", interval=0.5)
                second.send_signal(signal.SIGTERM)
                assert second.wait(60) == 0
            finally:
                if second.poll() is None:
                    second.kill()
        finally:
            if first.poll() is None:
                first.kill()
            log.close()
        sent = Counter(
            element["message"]["id"]
            for record in sim.portal.call_records()
            if record.applied and record.method == "imconnector.send.messages"
            for element in record.params["MESSAGES"]
        )
    assert {f"l-{n}" for n in range(200)} <= set(sent)
    assert max(sent.values()) == 1, [mid for mid, n in sent.items() if n > 1][:10]
    assert "g-3" not in sent, "the event behind the gap still waits"
