"""The librdkafka configurations: the group consumer, the transactional producer and the
group-less reader used for restores; `client_config` for any other client.

The consumer reads committed data only and never auto-commits; the producer is
transactional with a stable id per replica so a restarted process fences its zombie.
Every client logs through Python logging (`logger=` and `error_cb`), so librdkafka's own
`%3|...|FAIL|...` lines never reach stderr raw: they are JSON lines like every other.
"""

from __future__ import annotations

import logging
from typing import Any

from confluent_kafka import Consumer, KafkaError

from consumer.settings import Settings

# librdkafka's log lines (served by the client's poll) and its error events.
LIBRDKAFKA_LOG = logging.getLogger("consumer.kafka.librdkafka")


def _log_error(error: KafkaError) -> None:
    """error_cb: librdkafka's error events, as log records a log shipper can parse.

    Informational as a rule (the client recovers by itself); a fatal one also reaches
    the application through the client's own calls, which decide what to do.
    """
    LIBRDKAFKA_LOG.log(
        logging.CRITICAL if error.fatal() else logging.WARNING,
        "%s",
        error.str(),
        extra={"kafka_error": error.name(), "fatal": error.fatal()},
    )


def client_config(settings: Settings, **extra: Any) -> dict[str, Any]:
    """`settings.kafka.librdkafka()` with librdkafka's logs and errors sent to Python
    logging; the base of every client the service and its commands make."""
    conf = settings.kafka.librdkafka()
    conf["logger"] = LIBRDKAFKA_LOG
    conf["error_cb"] = _log_error
    conf.update(extra)
    return conf


def consumer_config(settings: Settings, **extra: Any) -> dict[str, Any]:
    """The group consumer: manual offsets (committed via the producer's transactions)."""
    conf = client_config(settings)
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
    """The transactional producer for changelog, outcomes, dead letters and offsets.

    With `stats_cb=` its librdkafka statistics (broker rtt, throttle, transaction state)
    come at the consumer's interval.
    """
    conf = client_config(settings)
    base: dict[str, Any] = {
        "transactional.id": f"imconnector-{settings.group_id}-{settings.instance_id}",
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "transaction.timeout.ms": 30000,
        "client.id": f"imconnector-{settings.instance_id}-tx",
        "compression.type": "lz4",
    }
    if "stats_cb" in extra:
        base["statistics.interval.ms"] = settings.kafka.statistics_interval_ms
    base.update(conf)
    base.update(extra)
    return base


def restore_reader(settings: Settings) -> Consumer:
    """A group-less consumer for changelog and token restores."""
    conf = client_config(settings)
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
