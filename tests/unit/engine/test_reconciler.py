"""The engine's waiting room for sends in doubt (`consumer.engine.reconciler`): the settle
delay, reads released together, a read put back, a verdict known without reads, and a
revoked partition's lookups dropped. No Kafka, no HTTP."""

from __future__ import annotations

import time
from typing import Any

from consumer.bitrix.readback import HISTORY, Verdict
from consumer.core.state import ChatState, PendingCall, PortalChat
from consumer.dispatch.batch import CallResult
from consumer.engine.partition import Partition
from consumer.engine.reconciler import Reconciler, Reconciliation
from consumer.settings import EngineSettings
from consumer.store.changelog import PartitionStore


def part(epoch: int = 1) -> Partition:
    return Partition("t", 0, epoch, PartitionStore(f"w{epoch}"))


def send(chat: str) -> PendingCall:
    element = {
        "user": {"id": "u"},
        "message": {"id": f"{chat}-m1", "text": "x"},
        "chat": {"id": chat},
    }
    return PendingCall("e1", 1, "MessageSent", "imconnector.send.messages", element, 0, ("t", 0, 1))


def known(session: int = 301) -> ChatState:
    return ChatState(session=True, portal=PortalChat(session, 1701, 101))


def key(chat: str) -> str:
    return f"p|demo|1|{chat}"


def test_a_lookup_waits_the_settle_delay_then_its_first_read_is_released() -> None:
    reconciler = Reconciler(EngineSettings(reconcile_settle_s=30))
    owner = part()
    reconciler.start(owner, key("c1"), send("c1"), known(), "restart")
    assert reconciler.holds(owner, key("c1")) and not reconciler.holds(part(2), key("c1"))
    now = time.monotonic()
    assert reconciler.release(now) == []
    assert reconciler.release(now + 31) == [(owner, key("c1"), HISTORY)]
    probe = reconciler.take(owner, key("c1"), HISTORY)
    assert probe is not None and probe.element == {"SESSION_ID": 301} and reconciler.owns(probe)


def test_lookups_due_close_together_are_released_together() -> None:
    reconciler = Reconciler(EngineSettings(reconcile_settle_s=0))
    owner = part()
    for chat in ("c1", "c2", "c3"):
        reconciler.start(owner, key(chat), send(chat), known(), "restart")
    released = reconciler.release(time.monotonic())
    assert [chat for _, chat, _ in released] == [key("c1"), key("c2"), key("c3")]


def test_a_read_never_sent_is_put_back_and_taken_again() -> None:
    reconciler = Reconciler(EngineSettings(reconcile_settle_s=0))
    owner = part()
    reconciler.start(owner, key("c1"), send("c1"), known(), "answer")
    reconciler.release(time.monotonic())
    probe = reconciler.take(owner, key("c1"), HISTORY)
    assert probe is not None
    assert reconciler.take(owner, key("c1"), HISTORY) is None  # one read at a time
    assert reconciler.put_back(probe) == (owner, key("c1"))
    again = reconciler.take(owner, key("c1"), HISTORY)
    assert again is not None and again.element == probe.element


def test_an_answer_gives_the_verdict_and_the_chat_leaves() -> None:
    reconciler = Reconciler(EngineSettings(reconcile_settle_s=0))
    owner = part()
    reconciler.start(owner, key("c1"), send("c1"), known(), "answer")
    reconciler.release(time.monotonic())
    probe = reconciler.take(owner, key("c1"), HISTORY)
    assert probe is not None
    answer: dict[str, Any] = {
        "chatId": 1701,
        "sessionId": 301,
        "message": {"1": {"senderid": "101", "params": {"connectorMid": ["c1-m1"]}}},
        "chat": {"1701": {"entityData1": "N|NONE|0|N|N|301|0|0|0|0"}},
    }
    answered = reconciler.answered(CallResult(key("c1"), probe, True, answer))
    assert answered is not None and answered[1] == Verdict(
        "present", where=PortalChat(301, 1701, 101)
    )
    assert not reconciler.holds(owner, key("c1")) and not reconciler.owns(probe)


def test_a_send_with_nothing_to_read_gets_its_fallback_after_the_settle_delay() -> None:
    reconciler = Reconciler(EngineSettings(reconcile_settle_s=30))
    decided: list[tuple[Reconciliation, Verdict]] = []
    reconciler.on_verdict = lambda found, verdict: decided.append((found, verdict))
    owner = part()
    reconciler.start(owner, key("c1"), send("c1"), ChatState(), "answer")  # a first send
    assert reconciler.release(time.monotonic()) == [] and decided == []
    assert reconciler.release(time.monotonic() + 31) == []
    assert [(f.chat, v) for f, v in decided] == [(key("c1"), Verdict("fallback", "no_user"))]
    assert not reconciler.holds(owner, key("c1"))


def test_a_revoked_partitions_lookups_and_reads_are_dropped() -> None:
    reconciler = Reconciler(EngineSettings(reconcile_settle_s=0))
    gone, kept = part(1), Partition("t", 1, 2, PartitionStore("w2"))
    reconciler.start(gone, key("c1"), send("c1"), known(), "restart")
    reconciler.start(kept, key("c2"), send("c2"), known(), "restart")
    reconciler.release(time.monotonic())
    probe = reconciler.take(gone, key("c1"), HISTORY)
    assert probe is not None
    reconciler.forget([gone])
    assert len(reconciler) == 1 and not reconciler.owns(probe)
    assert reconciler.answered(CallResult(key("c1"), probe, True, {})) is None
