"""Shared fixtures: one real Kafka broker per session, fresh topics and groups per test.

The broker is `KAFKA_BOOTSTRAP_SERVERS` when set, else the project's own local KRaft
broker (`ops/kafka/local-kafka.sh start`, which reuses one that is already up).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    """Bootstrap servers of a real broker (started by the project's script if needed)."""
    servers = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if servers:
        return servers
    subprocess.run([str(ROOT / "ops/kafka/local-kafka.sh"), "start"], check=True)
    return "127.0.0.1:" + os.environ.get("LOCAL_KAFKA_PORT", "9092")


@pytest.fixture
def unique() -> Callable[[str], str]:
    """Names no other test uses (topics, groups, instance ids)."""
    run = uuid.uuid4().hex[:8]

    def make(prefix: str) -> str:
        return f"{prefix}-{run}"

    return make


@pytest.fixture
def topic_factory(kafka_bootstrap: str) -> Iterator[Callable[..., str]]:
    """Create a fresh topic with N partitions; deleted after the test."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    created: list[str] = []

    def make(partitions: int = 3, name: str | None = None) -> str:
        topic = name or f"t-{uuid.uuid4().hex[:10]}"
        for _, future in admin.create_topics([NewTopic(topic, partitions, 1)]).items():
            future.result(30)
        created.append(topic)
        return topic

    yield make
    if created:
        for future in admin.delete_topics(created).values():
            with contextlib.suppress(Exception):  # cleanup is best effort
                future.result(30)
