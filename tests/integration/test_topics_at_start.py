"""The topics the service creates are safe for production, and the ones it finds are checked
(issue 15 item 7): replication and min.insync.replicas are settings; a changelog that is not
compacted or not co-partitioned, or a token topic that is not compacted, refuses the start
with one line that says what to fix."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, ResourceType

from consumer.errors import ConfigError
from consumer.kafka.topics import Topics
from tests.integration.harness import line_simulator, make_settings, portal_settings

pytestmark = pytest.mark.kafka


def configs(admin: AdminClient, topic: str) -> dict[str, str]:
    resource = ConfigResource(ResourceType.TOPIC, topic)
    entries = admin.describe_configs([resource])[resource].result(30)
    return {name: entry.value for name, entry in entries.items()}


def test_created_topics_follow_the_replication_settings(kafka_bootstrap, topic_factory, unique):
    topic = topic_factory(2)
    with line_simulator() as sim:
        settings = make_settings(
            kafka_bootstrap, topic, unique("g"), sim, topics={"min_insync_replicas": 1}
        )
    Topics(settings).ensure()
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    for created in (
        settings.changelog_topic(topic),
        settings.dlq_topic(topic),
        settings.outcomes_topic,
        settings.tokens_topic,
    ):
        assert configs(admin, created)["min.insync.replicas"] == "1", created
    assert configs(admin, settings.changelog_topic(topic))["cleanup.policy"] == "compact"
    assert configs(admin, settings.tokens_topic)["cleanup.policy"] == "compact"


@pytest.mark.parametrize("which", ["changelog", "tokens"])
def test_a_topic_that_must_be_compacted_but_is_not_refuses_the_start(
    kafka_bootstrap, topic_factory, unique, which
):
    topic = topic_factory(2)
    with line_simulator() as sim:
        settings = make_settings(kafka_bootstrap, topic, unique("g"), sim)
        name = settings.changelog_topic(topic) if which == "changelog" else settings.tokens_topic
        admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
        partitions = 2 if which == "changelog" else 1
        admin.create_topics([NewTopic(name, partitions, 1, config={"cleanup.policy": "delete"})])[
            name
        ].result(30)
        with pytest.raises(ConfigError, match=r"must be compacted: set cleanup\.policy=compact"):
            Topics(settings).ensure()
        # The service says so in one line and exits 2 (a crash loop would say nothing).
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("IMCONNECTOR_")},
            "IMCONNECTOR_KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap,
            "IMCONNECTOR_SOURCE_TOPICS": topic,
            "IMCONNECTOR_GROUP_ID": settings.group_id,
            "IMCONNECTOR_OUTCOMES_TOPIC": settings.outcomes_topic,
            "IMCONNECTOR_TOKENS_TOPIC": settings.tokens_topic,
            "IMCONNECTOR_PORTALS": json.dumps({"portal-a": portal_settings(sim)}),
            "IMCONNECTOR_HTTP_PORT": "0",
        }
        result = subprocess.run(
            [sys.executable, "-m", "consumer", "run"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert result.returncode == 2, result.stderr[-2000:]
    (line,) = [ln for ln in result.stderr.splitlines() if "configuration error" in ln]
    assert name in line and "cleanup.policy=compact" in line


def test_a_changelog_with_other_partitions_than_its_source_refuses_the_start(
    kafka_bootstrap, topic_factory, unique
):
    topic = topic_factory(3)
    with line_simulator() as sim:
        settings = make_settings(kafka_bootstrap, topic, unique("g"), sim)
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    changelog = settings.changelog_topic(topic)
    admin.create_topics([NewTopic(changelog, 2, 1, config={"cleanup.policy": "compact"})])[
        changelog
    ].result(30)
    with pytest.raises(ConfigError, match="must be co-partitioned"):
        Topics(settings).ensure()
