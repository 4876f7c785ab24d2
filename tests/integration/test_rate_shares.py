"""Replicas share a portal's rate limit by the partitions they own (issue 17 item 5).

Three replicas against one portal with Bitrix24's standard leaky bucket (2 req/s, burst 50),
a backlog for all of them, two minutes: the portal refuses at most 1 % of the requests, and
at least 80 % of its limit is used.
"""

from __future__ import annotations

import time

import pytest

from consumer.codec import ChatEventEncoder
from consumer.core.events import MessageSent
from tests.integration.harness import (
    PORTAL,
    EngineThread,
    chat_event,
    line_simulator,
    make_settings,
    portal_settings,
    produce,
    wait_until,
)

pytestmark = pytest.mark.kafka

DRAIN, BURST, WINDOW_S = 2.0, 50, 120.0


def test_three_replicas_keep_to_one_portals_limit_together(kafka_bootstrap, topic_factory, unique):
    topic = topic_factory(6)
    group = unique("g")
    events = [chat_event(f"c{n}", 1, MessageSent(f"c{n}-m1", "hi")) for n in range(600)]
    with line_simulator() as sim:
        sim.portal.update_limits(
            {"rate_limit_enabled": True, "rate_limit_drain": DRAIN, "rate_limit_burst": BURST}
        )
        portals = {PORTAL: portal_settings(sim, rate_drain=DRAIN, rate_burst=BURST)}
        replicas = [
            EngineThread(
                make_settings(
                    kafka_bootstrap,
                    topic,
                    group,
                    sim,
                    portals=portals,
                    instance_id=f"r{i}",
                    engine={"batch_size": 1},
                )
            )
            for i in range(3)
        ]
        with replicas[0], replicas[1], replicas[2]:
            wait_until(
                lambda: all(len(r.engine.parts) == 2 and r.engine.ready for r in replicas),
                120,
                "two partitions restored on each replica",
            )
            started = time.time()
            produce(kafka_bootstrap, topic, events, [ChatEventEncoder("single-object")])
            wait_until(lambda: time.time() >= started + WINDOW_S, WINDOW_S + 10, "two minutes")
            records = [
                r
                for r in sim.portal.call_records()
                if started <= r.wall_time < started + WINDOW_S and r.method != "batch"
            ]
            backlog_left = sum(r.outcome("applied") for r in replicas) < len(events)
    refused = sum(1 for r in records if r.error == "QUERY_LIMIT_EXCEEDED")
    through = sum(1 for r in records if r.http_status == 200)
    print(f"rate shares: {through} requests through, {refused} refused in {WINDOW_S:.0f}s")
    assert backlog_left, "the backlog lasted the whole window"
    assert refused <= 0.01 * len(records)
    assert through >= 0.8 * DRAIN * WINDOW_S
