"""A member whose session expires gets its partitions taken without a revoke ("lost"): a
paused process (a frozen node, a long stop-the-world) or one cut off while a broker
restarts. It must not commit anything more of them, and must not exit: it joins the group
again, restores from the changelog, and every event is still applied once.

Two `python -m consumer run` processes share a group; one is stopped (SIGSTOP) until the
group has dropped it and the other took its partitions, events arrive meanwhile, and then
it is let go on (SIGCONT).
"""

from __future__ import annotations

import json
import os
import random
import signal

import pytest
from confluent_kafka import ConsumerGroupState
from confluent_kafka.admin import AdminClient

from consumer.codec import ChatEventEncoder
from consumer.demo.workload import chat_script, interleave
from consumer.simulator import SimulatorConfig, SimulatorServer
from tests.integration.harness import (
    CONNECTOR,
    LINE,
    PORTAL,
    Replica,
    check_calls,
    final_outcomes,
    portal_settings,
    produce,
    wait_until,
)

pytestmark = pytest.mark.kafka
CHATS = 60
SESSION_TIMEOUT_MS = 6000  # the broker's group.min.session.timeout.ms


def settled_members(bootstrap: str, group: str) -> list[int]:
    """Partitions per member once the group is stable (empty while it rebalances)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    (future,) = admin.describe_consumer_groups([group], request_timeout=10).values()
    described = future.result()
    if described.state != ConsumerGroupState.STABLE:
        return []
    return sorted(len(m.assignment.topic_partitions) for m in described.members)


def test_a_member_that_lost_its_partitions_rejoins_without_exiting(
    kafka_bootstrap, topic_factory, unique, tmp_path
):
    rng = random.Random(15)
    scripts = [
        chat_script(rng, PORTAL, CONNECTOR, LINE, f"lost-{i}", 8, start_ms=1_764_000_000_000)
        for i in range(CHATS)
    ]
    events = interleave(scripts, rng, duplicate_rate=0.0, reorder_rate=0.0)
    early, late = events[: len(events) // 2], events[len(events) // 2 :]
    sim = SimulatorServer(SimulatorConfig(preset_lines=[(CONNECTOR, LINE)], seed=3)).start()
    topic = topic_factory(4)
    group = unique("lost")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("IMCONNECTOR_")},
        "IMCONNECTOR_KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap,
        "IMCONNECTOR_KAFKA__CONFIG": json.dumps({"session.timeout.ms": str(SESSION_TIMEOUT_MS)}),
        "IMCONNECTOR_SOURCE_TOPICS": topic,
        "IMCONNECTOR_GROUP_ID": group,
        "IMCONNECTOR_HTTP_PORT": "0",
        "IMCONNECTOR_OUTCOMES_TOPIC": f"{topic}.outcomes",
        "IMCONNECTOR_TOKENS_TOPIC": f"{topic}.tokens",
        "IMCONNECTOR_PORTALS": json.dumps({PORTAL: portal_settings(sim)}),
        "IMCONNECTOR_ENGINE__COMMIT_INTERVAL_MS": "50",
        "IMCONNECTOR_LOG_FORMAT": "json",
        "IMCONNECTOR_LOG_LEVEL": "WARNING",
    }
    paused, other = (Replica(name, env, tmp_path) for name in ("lost-a", "lost-b"))
    outcomes = f"{topic}.outcomes"
    distinct = {e.event_id for e in events}
    encoders = [ChatEventEncoder("single-object")]
    try:
        produce(kafka_bootstrap, topic, early, encoders)
        paused.start()
        other.start()
        wait_until(
            lambda: settled_members(kafka_bootstrap, group) == [2, 2],
            60,
            "both members",
            interval=0.5,
        )
        wait_until(
            lambda: len(final_outcomes(kafka_bootstrap, outcomes)[0]) >= len(early),
            120,
            "the first half applied",
            interval=0.5,
        )
        assert paused.proc is not None and other.proc is not None
        paused.proc.send_signal(signal.SIGSTOP)
        try:
            # The group drops the paused member once its session expires; the other takes
            # every partition and goes on with what arrives meanwhile.
            wait_until(
                lambda: settled_members(kafka_bootstrap, group) == [4],
                SESSION_TIMEOUT_MS / 1000 + 30,
                "the group to drop the paused member",
                interval=0.5,
            )
            produce(kafka_bootstrap, topic, late[: len(late) // 2], encoders)
        finally:
            paused.proc.send_signal(signal.SIGCONT)
        wait_until(
            lambda: "without a revoke" in paused.log(),
            60,
            "the member to see its loss",
            interval=0.2,
        )
        produce(kafka_bootstrap, topic, late[len(late) // 2 :], encoders)
        wait_until(
            lambda: settled_members(kafka_bootstrap, group) == [2, 2],
            60,
            "the member back",
            interval=0.5,
        )
        wait_until(
            lambda: len(final_outcomes(kafka_bootstrap, outcomes)[0]) >= len(distinct),
            180,
            "a final outcome for every event",
            interval=0.5,
        )
        assert paused.alive(), f"the member exited: {paused.log()[-3000:]}"
        assert other.alive(), other.log()[-3000:]
        assert paused.starts == 1 and other.starts == 1
        for replica in (paused, other):
            replica.proc.send_signal(signal.SIGTERM)
        for replica in (paused, other):
            assert replica.proc.wait(60) == 0, replica.log()[-3000:]
    finally:
        for replica in (paused, other):
            if replica.alive():
                replica.proc.kill()
        sim.stop()
    final, ambiguous = final_outcomes(kafka_bootstrap, outcomes)
    assert set(final) == distinct
    assert set(final.values()) <= {"applied", "moot", "superseded", "skipped"}, final
    check_calls(sim, scripts, ambiguous)
