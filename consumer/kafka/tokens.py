"""OAuth pairs in a compacted topic, shared by every replica (`TokenStore`)."""

from __future__ import annotations

from confluent_kafka import KafkaError, KafkaException, Producer

from consumer.bitrix.oauth import MemoryTokenStore, TokenSet, TokenStore
from consumer.kafka.clients import client_config, restore_reader
from consumer.kafka.restore import read_partition_to_end
from consumer.settings import Settings


class KafkaTokenStore:
    """OAuth pairs in a compacted topic (key = portal) shared by every replica."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._topic = settings.tokens_topic
        self._producer = Producer(
            {**client_config(settings), "acks": "all", "enable.idempotence": True}
        )

    def load(self, portal: str) -> TokenSet | None:
        """The newest pair for `portal` in the topic."""
        reader = restore_reader(self._settings)
        newest: TokenSet | None = None
        try:
            for key, value in read_partition_to_end(reader, self._topic, 0, timeout=20):
                if key.decode() == portal and value:
                    candidate = TokenSet.from_json(value)
                    if newest is None or candidate.issued_at >= newest.issued_at:
                        newest = candidate
        finally:
            reader.close()
        return newest

    def save(self, portal: str, tokens: TokenSet) -> None:
        """Write and flush: the pair is durable before it is used."""
        self._producer.produce(
            self._topic, key=portal.encode(), value=tokens.to_json(), partition=0
        )
        if self._producer.flush(15) != 0:
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "token save not acknowledged"))


def token_store_for(settings: Settings, *, in_memory: bool = False) -> TokenStore:
    """Where the Bitrix24 client keeps OAuth pairs: the tokens topic, shared by every
    replica, or this process's memory (the demo, tests)."""
    return MemoryTokenStore() if in_memory else KafkaTokenStore(settings)
