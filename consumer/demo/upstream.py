"""The demo's other direction: simulated operators answer customers, the pull loop moves the
portal's OnImConnectorMessageAdd events into Kafka, and the demo's upstream service reads
them and confirms each delivery with a `DeliveryConfirmed` chat event carrying the
operator message's `im` ids, which the consumer sends back with
`imconnector.send.status.delivery`.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import Counter
from typing import Any

import httpx
from confluent_kafka import Consumer, KafkaError, Producer

from consumer.bitrix.oauth import TokenStore
from consumer.codec import ChatEventEncoder
from consumer.core.events import ChatEvent, DeliveryConfirmed
from consumer.errors import PoisonRecord
from consumer.inbound.contract import OperatorEvent, OperatorEventDecoder
from consumer.inbound.payloads import EVENT_NAMES
from consumer.inbound.pull import PullThread
from consumer.observability.metrics import Metrics
from consumer.settings import Settings

logger = logging.getLogger(__name__)

ANSWERS = (
    "Thanks for writing! Let me check that for you.",
    "Your order ships tomorrow.",
    "[b]Good news:[/b] the refund is on its way.",
    "Could you send me the order number?",
)


def bind_offline(rest_url: str, access_token: str) -> None:
    """What the app does once on a portal (`events bind`): every connector event offline."""
    with httpx.Client(timeout=10) as client:
        for name in EVENT_NAMES:
            response = client.post(
                f"{rest_url}event.bind",
                json={"auth": access_token, "event": name, "event_type": "offline"},
            )
            response.raise_for_status()


def confirmation(event: OperatorEvent) -> ChatEvent:
    """The upstream service delivered the operator's message to the customer: its
    external id is `op-<im message id>`, and Bitrix24 needs the `im` ids back."""
    assert event.im_chat_id is not None and event.im_message_id is not None
    now = int(time.time() * 1000)
    return ChatEvent(
        event_id=str(uuid.uuid4()),
        portal=event.portal,
        connector=event.connector,
        line=event.line,
        chat_id=event.chat_id,
        occurred_at=now,
        payload=DeliveryConfirmed(
            im_chat_id=event.im_chat_id,
            im_message_id=event.im_message_id,
            message_ids=(f"op-{event.im_message_id}",),
            delivered_at=now,
        ),
    )


class DemoUpstream:
    """The pull loop plus an upstream service that confirms every operator message."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        store: TokenStore,
        source_topic: str,
    ) -> None:
        self.settings = settings
        self.source_topic = source_topic
        self.received: Counter[str] = Counter()
        self.confirmed = 0
        self.samples: list[str] = []
        self._stop = threading.Event()
        self._pull = PullThread(settings, metrics, store)
        self._thread = threading.Thread(target=self._run, name="demo-upstream", daemon=True)

    def start(self) -> DemoUpstream:
        self._pull.start()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._pull.stop()

    def _run(self) -> None:
        kafka = self.settings.kafka.librdkafka()
        consumer = Consumer(
            {
                **kafka,
                "group.id": f"{self.settings.group_id}-upstream",
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
            }
        )
        producer = Producer({**kafka, "linger.ms": 5})
        encoder = ChatEventEncoder("single-object")
        decoder = OperatorEventDecoder()
        consumer.subscribe([self.settings.inbound.topic])
        try:
            while not self._stop.is_set():
                for msg in consumer.consume(100, timeout=0.2):
                    error = msg.error()
                    if error is not None:
                        if error.code() != KafkaError._PARTITION_EOF:
                            logger.warning("operator events: %s", error.str())
                        continue
                    self._answer(msg.value() or b"", decoder, encoder, producer)
                producer.poll(0)
        finally:
            producer.flush(10)
            consumer.close()

    def _answer(
        self,
        value: bytes,
        decoder: OperatorEventDecoder,
        encoder: ChatEventEncoder,
        producer: Producer,
    ) -> None:
        try:
            event = decoder.decode(value)
        except PoisonRecord as exc:
            logger.warning("an operator event the demo cannot read: %s", exc)
            return
        self.received[event.kind] += 1
        if event.kind != "MessageAdd":
            return
        reply = confirmation(event)
        producer.produce(self.source_topic, key=reply.key.encode(), value=encoder.encode(reply))
        self.confirmed += 1
        if len(self.samples) < 50:
            self.samples.append(
                f"operator message im {event.im_chat_id}/{event.im_message_id} in "
                f"{event.chat_id} ({event.text!r}) -> DeliveryConfirmed op-{event.im_message_id}"
            )


def delivered_on_portal(sim: Any) -> int:
    """Operator messages the simulated portal marked delivered (they took external ids)."""
    with sim.portal.lock:
        return sum(1 for d in sim.portal.openlines.deliveries if d["stored"])
