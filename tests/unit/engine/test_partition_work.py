"""What the engine keeps per partition: idle chats are compacted only after a while."""

from __future__ import annotations

import random

from consumer.core.events import ChatEvent
from consumer.core.fold import FoldConfig, new_call, on_event
from consumer.core.ordering import Lane
from consumer.core.state import ChatState
from consumer.demo.workload import chat_script
from consumer.engine.engine import COMPACT_AFTER_MS, PartitionWork

NOW = 1_764_000_000_000


def _waiting_state() -> ChatState:
    """A chat with a send in its outbox."""
    rng = random.Random(1)
    event: ChatEvent = chat_script(rng, "p.bitrix24.com", "c", 1, "x", 1, start_ms=NOW)[0]
    state = ChatState()
    on_event(state, event, new_call(event, state, ("t", 0, 5)), NOW, FoldConfig())
    assert state.outbox
    return state


def test_only_chats_idle_for_a_while_are_kept_as_their_record() -> None:
    work = PartitionWork("t", 0, 1)
    old = NOW - COMPACT_AFTER_MS - 1
    work.states = {
        "idle-long": ChatState(watermark=7, session=True, last_activity_ms=old),
        "idle-just-now": ChatState(watermark=3, last_activity_ms=NOW - 1_000),
        "waiting": _waiting_state(),
        "in-flight": ChatState(watermark=2, last_activity_ms=old),
        "holding-a-gap": ChatState(watermark=4, last_activity_ms=old),
        "dedup-window": ChatState(recent_ids=["e1"], last_activity_ms=old),
        "already": ChatState(watermark=9, last_activity_ms=old).to_bytes(),
    }
    work.states["waiting"].last_activity_ms = old  # type: ignore[union-attr]
    work.busy.add("in-flight")
    work.lanes["holding-a-gap"] = Lane(8, 8, lambda e: e)
    expected = ChatState(watermark=7, session=True, last_activity_ms=old).to_bytes()

    assert work.sweep(NOW, ttl_ms=7 * 86_400_000) == 1
    assert work.states["idle-long"] == expected
    kept = {chat for chat, value in work.states.items() if isinstance(value, ChatState)}
    assert kept == {"idle-just-now", "waiting", "in-flight", "holding-a-gap", "dedup-window"}
    # A compacted chat is decoded again, unchanged, on its next event.
    assert work.state("idle-long") == ChatState(watermark=7, session=True, last_activity_ms=old)
