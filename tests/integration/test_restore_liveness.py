"""A long restore is not killed by the liveness probe (issue 15 item 8).

Restore runs from the poll loop, a slice at a time, so the loop's heartbeat goes on while a
partition's chats are read back; readiness stays false until they are.
"""

from __future__ import annotations

import time

import httpx
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from consumer.core.state import ChatState
from consumer.observability.health import OpsServer
from consumer.store.encoding import encode_chat
from tests.integration.harness import (
    CONNECTOR,
    LINE,
    PORTAL,
    EngineThread,
    line_simulator,
    make_settings,
    wait_until,
)

pytestmark = pytest.mark.kafka

STATES = 300_000
LIVENESS_WINDOW_S = 0.5


def test_healthz_stays_green_through_a_restore_longer_than_the_liveness_window(
    kafka_bootstrap, topic_factory, unique
):
    topic = topic_factory(1)
    with line_simulator() as sim:
        settings = make_settings(kafka_bootstrap, topic, unique("g"), sim)
        changelog = settings.changelog_topic(topic)
        admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
        admin.create_topics([NewTopic(changelog, 1, 1, config={"cleanup.policy": "compact"})])[
            changelog
        ].result(30)
        producer = Producer(
            {"bootstrap.servers": kafka_bootstrap, "linger.ms": 50, "batch.size": 1_000_000}
        )
        now_ms = int(time.time() * 1000)
        for n in range(STATES):
            state = ChatState(
                watermark=3, session=True, user={"id": f"u{n}"}, last_activity_ms=now_ms
            )
            key = f"{PORTAL}|{CONNECTOR}|{LINE}|chat-{n}".encode()
            while True:
                try:
                    producer.produce(changelog, key=key, value=encode_chat(state), partition=0)
                    break
                except BufferError:
                    producer.poll(0.05)
        assert producer.flush(60) == 0

        running = EngineThread(settings)
        ops = OpsServer(
            running.metrics,
            lambda: running.engine.ready,
            host="127.0.0.1",
            port=0,
            stale_after_s=LIVENESS_WINDOW_S,
        ).start()
        probes: list[tuple[float, int, int]] = []
        try:
            with running, httpx.Client(base_url=f"http://127.0.0.1:{ops.port}") as http:

                def probe() -> bool:
                    health = http.get("/healthz").status_code
                    ready = http.get("/readyz").status_code
                    probes.append((time.monotonic(), health, ready))
                    return ready == 200

                wait_until(probe, 120, "the restore to finish", interval=0.05)
                restored = running.engine.parts[(topic, 0)].store
                assert len(restored) == STATES
        finally:
            ops.stop()
    not_ready = [at for at, _, ready in probes if ready != 200]
    assert not_ready, "readiness was false while restoring"
    restoring_s = not_ready[-1] - not_ready[0]
    print(f"restore of {STATES:,} states: not ready for {restoring_s:.1f}s, /healthz always 200")
    assert restoring_s > 3 * LIVENESS_WINDOW_S, "the restore outlasted the liveness window"
    assert {health for _, health, _ in probes} == {200}
