"""A partition's series leave with the partition (issue 17 item 6): a revoked partition's
`oldest_unfinished_event_age_seconds` must not go on paging anyone."""

from __future__ import annotations

import pytest

from tests.integration.harness import EngineThread, line_simulator, make_settings, wait_until

pytestmark = pytest.mark.kafka

AGE = "imconnector_oldest_unfinished_event_age_seconds"


def test_a_revoked_partitions_gauge_is_removed(kafka_bootstrap, topic_factory, unique):
    topic = topic_factory(2)
    group = unique("g")
    with line_simulator() as sim:
        first = EngineThread(make_settings(kafka_bootstrap, topic, group, sim, instance_id="a"))
        second = EngineThread(make_settings(kafka_bootstrap, topic, group, sim, instance_id="b"))
        with first:
            series = first.metrics.registry.get_sample_value

            def ages() -> set[str]:
                return {
                    str(p)
                    for p in (0, 1)
                    if series(AGE, {"topic": topic, "partition": str(p)}) is not None
                }

            wait_until(lambda: ages() == {"0", "1"}, 60, "a series for each partition")
            with second:
                wait_until(
                    lambda: len(first.engine.parts) == 1 and len(second.engine.parts) == 1,
                    60,
                    "one partition each",
                )
                kept = {str(p) for _, p in first.engine.parts}
                wait_until(lambda: ages() == kept, 30, "the revoked partition's series to go")
