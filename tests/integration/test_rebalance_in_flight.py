"""A rebalance while requests wait on a throttled portal (issue 15 item 5).

Requests planned for a partition that is then revoked must never leave from the old owner:
those still waiting for the portal's limits come back cancelled, are written to the
changelog as not sent, and the new owner sends them, in order, without an ambiguous resend.
"""

from __future__ import annotations

import pytest

from consumer.codec import ChatEventEncoder
from tests.integration.harness import (
    EngineThread,
    OutcomeWatcher,
    check_calls,
    final_outcomes,
    line_simulator,
    make_settings,
    produce,
    shuffled_workload,
    wait_until,
)

pytestmark = pytest.mark.kafka


def test_requests_waiting_on_a_throttled_portal_move_with_their_partition(
    kafka_bootstrap, topic_factory, unique
):
    topic = topic_factory(6)
    group = unique("g")
    scripts, events = shuffled_workload(21, 60, 3, 6)
    with line_simulator() as sim:
        engines = [
            EngineThread(
                make_settings(
                    kafka_bootstrap,
                    topic,
                    group,
                    sim,
                    instance_id=f"r{i}",
                    engine={"batch_size": 5},
                )
            )
            for i in range(3)
        ]
        # The portal refuses every request (QUERY_LIMIT_EXCEEDED) until the rebalance is over.
        sim.portal.update_limits({"rate_limit_enabled": True, "rate_limit_burst": 0})
        with engines[0], engines[1]:
            produce(kafka_bootstrap, topic, events, [ChatEventEncoder("single-object")])
            wait_until(
                lambda: all(e.engine.dispatcher.in_flight for e in engines[:2]),
                60,
                "requests of both replicas waiting on the throttled portal",
            )
            with engines[2]:
                wait_until(
                    lambda: (
                        all(e.engine.parts for e in engines)
                        and all(e.engine.ready for e in engines)
                    ),
                    120,
                    "the third replica to own partitions",
                )
                assert not [r for r in sim.portal.call_records() if r.applied]
                sim.portal.update_limits({"rate_limit_enabled": False, "rate_limit_burst": 1000})
                ids = {e.event_id for e in events}
                with OutcomeWatcher(kafka_bootstrap, f"{topic}.outcomes") as outcomes:
                    wait_until(lambda: outcomes.finished(ids), 180, "a committed outcome per event")
    _, ambiguous = final_outcomes(kafka_bootstrap, f"{topic}.outcomes")

    repeats = check_calls(sim, scripts, ambiguous)  # per-chat order; doubles only if ambiguous
    assert repeats <= sum(ambiguous.values())
    # Nothing was sent while the portal refused, so nothing was in flight at the handover:
    # the revoked partitions' calls were handed over as not sent.
    assert sum(ambiguous.values()) == 0
