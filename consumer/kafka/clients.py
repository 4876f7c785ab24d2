"""The librdkafka configurations: the group consumer, the transactional producer and the
group-less reader used for restores.

The consumer reads committed data only and never auto-commits; the producer is
transactional with a stable id per replica so a restarted process fences its zombie.
"""

from __future__ import annotations

from typing import Any

from confluent_kafka import Consumer

from consumer.settings import Settings


def consumer_config(settings: Settings, **extra: Any) -> dict[str, Any]:
    """The group consumer: manual offsets (committed via the producer's transactions)."""
    conf = settings.kafka.librdkafka()
    base: dict[str, Any] = {
        "group.id": settings.group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
        "client.id": f"imconnector-{settings.instance_id}",
        "statistics.interval.ms": settings.kafka.statistics_interval_ms,
        # End-of-partition events tell the engine it has read everything: only then may a
        # sequence gap be given up (the missing event is not in an unread backlog).
        "enable.partition.eof": True,
    }
    if settings.kafka.static_membership:
        base["group.instance.id"] = f"{settings.group_id}-{settings.instance_id}"
    if settings.kafka.group_protocol == "consumer":
        base["group.protocol"] = "consumer"  # KIP-848: assignment is server-side
    else:
        base["partition.assignment.strategy"] = "cooperative-sticky"
        base["session.timeout.ms"] = 15000
        base["heartbeat.interval.ms"] = 3000
    base.update(conf)
    base.update(extra)
    return base


def producer_config(settings: Settings, **extra: Any) -> dict[str, Any]:
    """The transactional producer for changelog, outcomes, dead letters and offsets."""
    conf = settings.kafka.librdkafka()
    base: dict[str, Any] = {
        "transactional.id": f"imconnector-{settings.group_id}-{settings.instance_id}",
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "transaction.timeout.ms": 30000,
        "client.id": f"imconnector-{settings.instance_id}-tx",
        "compression.type": "lz4",
    }
    base.update(conf)
    base.update(extra)
    return base


def restore_reader(settings: Settings) -> Consumer:
    """A group-less consumer for changelog and token restores."""
    conf = settings.kafka.librdkafka()
    conf.update(
        {
            "group.id": f"{settings.group_id}-restore",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
            "fetch.max.bytes": 52428800,
            "max.partition.fetch.bytes": 10485760,
        }
    )
    return Consumer(conf)
