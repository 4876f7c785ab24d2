"""Which assigned partitions fetch: each is paused while anything pauses it (restoring,
waiting for the schema registry, backpressure) and fetches again once nothing does. The
backpressure decisions come from `consumer.engine.backpressure`; this applies them, and gives
up the sequence gaps open longest when the reorder buffers are full.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from confluent_kafka import Consumer, TopicPartition

from consumer.engine import backpressure
from consumer.engine.partition import BACKPRESSURE, Partition
from consumer.observability.metrics import Metrics
from consumer.settings import EngineSettings

logger = logging.getLogger(__name__)


class Fetching:
    """Pauses and resumes the engine's partitions on its consumer."""

    def __init__(
        self,
        parts: dict[tuple[str, int], Partition],
        settings: EngineSettings,
        metrics: Metrics,
        give_up_gap: Callable[[Partition, str], int],
    ) -> None:
        self.consumer: Consumer | None = None  # set once the engine made it
        self._parts = parts
        self._settings = settings
        self._metrics = metrics
        self._give_up_gap = give_up_gap

    def pause(self, part: Partition, reason: str) -> None:
        """`reason` now pauses the partition."""
        part.pauses.add(reason)
        self._sync(part)

    def resume(self, part: Partition, reason: str) -> None:
        """`reason` no longer pauses the partition."""
        part.pauses.discard(reason)
        self._sync(part)

    def _sync(self, part: Partition) -> None:
        """Tell the consumer whether the partition fetches: it does when nothing pauses it."""
        assert self.consumer is not None
        paused = bool(part.pauses)
        if paused != part.fetching_paused and self._parts.get(part.key) is part:
            tp = [TopicPartition(part.topic, part.partition)]
            if paused:
                self.consumer.pause(tp)
            else:
                self.consumer.resume(tp)
            part.fetching_paused = paused

    def balance(self) -> None:
        """Pause partitions whose calls pile up, resume them once drained; bound the events
        held for sequence gaps."""
        if not self._parts:
            return
        per_chat = self._settings.max_buffered_per_chat
        loads = {}
        for key, part in self._parts.items():
            if part.crowded:
                part.crowded = {
                    chat
                    for chat in part.crowded
                    if backpressure.still_crowded(_outbox_of(part, chat), per_chat)
                }
            loads[key] = backpressure.Load(
                part.calls_waiting(), bool(part.crowded), BACKPRESSURE in part.pauses, part.revoking
            )
        limit = backpressure.share(self._settings.max_buffered_events, len(self._parts))
        pause, resume = backpressure.pauses(loads, limit)
        for key in pause:
            self.pause(self._parts[key], BACKPRESSURE)
        for key in resume:
            self.resume(self._parts[key], BACKPRESSURE)
        if pause:
            self._metrics.partition_pauses.inc(len(pause))
        self._metrics.paused_partitions.set(
            sum(1 for p in self._parts.values() if BACKPRESSURE in p.pauses)
        )
        self._bound_held()

    def _bound_held(self) -> None:
        limit = self._settings.max_buffered_events
        held = sum(len(part.held_offsets) for part in self._parts.values())
        if not backpressure.relief(held, limit):
            return
        logger.warning(
            "%d events wait in reorder buffers (max_buffered_events %d): giving up the "
            "gaps open longest",
            held,
            limit,
        )
        lanes = backpressure.oldest_first(
            (lane.buffer.since_ms, (part, chat))
            for part in self._parts.values()
            if not part.revoking
            for chat, lane in part.lanes.items()
        )
        for part, chat in lanes:
            if not backpressure.relief(held, limit):
                break
            held -= self._give_up_gap(part, chat)


def _outbox_of(part: Partition, chat: str) -> int:
    state = part.store.peek(chat)
    return len(state.outbox) if state is not None else 0
