"""Property tests: any interleaving, duplication and delay of a chat's events yields the
same Bitrix24 calls in sequence order (architecture §3 order/dedup + §6 invariants 1-3)."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.core.events import ChatEvent
from consumer.core.fold import FoldConfig, new_call, on_event, on_success
from consumer.core.ordering import Lane
from consumer.core.state import IN_FLIGHT, ChatState
from consumer.demo.workload import chat_script

CONFIG = FoldConfig()


def run_chat(
    deliveries: list[ChatEvent], capacity: int = 128, burst: bool = False
) -> tuple[list[tuple], dict]:
    """Deliver events to one chat's lane + fold; every call succeeds.

    With `burst`, calls are dispatched only after every delivery (as when the dispatcher
    lags far behind); otherwise after each event. Returns the calls in the order they
    were made and the count of each outcome.
    """
    state = ChatState()
    lane: Lane[ChatEvent] = Lane(capacity, 64, lambda e: e)
    calls: list[tuple] = []
    outcomes: dict[str, int] = {}
    for now, event in enumerate(deliveries):
        offer = lane.offer(state, event, now)
        for item, admission in offer.ready:
            if admission == "duplicate":
                outcomes["duplicate"] = outcomes.get("duplicate", 0) + 1
                continue
            call = new_call(item, state, ("t", 0, now))
            for outcome in on_event(state, item, call, now, CONFIG):
                outcomes[outcome.outcome] = outcomes.get(outcome.outcome, 0) + 1
            if not burst:
                dispatch(state, calls, outcomes, now)
    dispatch(state, calls, outcomes, len(deliveries))
    return calls, outcomes


def dispatch(state: ChatState, calls: list[tuple], outcomes: dict, now: int) -> None:
    while state.outbox:
        head = state.outbox[0]
        head.status = IN_FLIGHT
        calls.append((head.method, head.seq, head.event_id))
        for outcome in on_success(state, head, {"session_id": "1"}, now):
            outcomes[outcome.outcome] = outcomes.get(outcome.outcome, 0) + 1


@st.composite
def shuffled_chat(draw: st.DrawFn) -> tuple[list[ChatEvent], list[ChatEvent]]:
    seed = draw(st.integers(0, 2**32 - 1))
    n = draw(st.integers(1, 30))
    rng = random.Random(seed)
    script = chat_script(rng, "p", "c", 1, "chat", n, start_ms=1_000)
    deliveries = list(script)
    for event in script:  # duplicates anywhere
        if draw(st.booleans()) and draw(st.integers(0, 4)) == 0:
            deliveries.insert(draw(st.integers(0, len(deliveries))), event)
    order = draw(st.permutations(range(len(deliveries))))
    return script, [deliveries[i] for i in order]


@settings(max_examples=300, deadline=None)
@given(shuffled_chat())
def test_any_interleaving_and_duplication_gives_the_in_order_calls(case):
    script, deliveries = case
    expected_calls, expected_outcomes = run_chat(script)
    calls, outcomes = run_chat(deliveries)
    assert calls == expected_calls
    assert run_chat(deliveries, burst=True)[0] == expected_calls
    seqs = [seq for _, seq, _ in calls]
    assert seqs == sorted(seqs), "calls must follow sequence order"
    extra = len(deliveries) - len(script)
    assert outcomes.get("duplicate", 0) == expected_outcomes.get("duplicate", 0) + extra
    # Every delivered record ends in exactly one outcome (invariant 3).
    assert sum(outcomes.values()) == len(deliveries)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(2, 25))
def test_no_event_takes_effect_twice(seed, n):
    rng = random.Random(seed)
    script = chat_script(rng, "p", "c", 1, "chat", n, start_ms=1_000)
    deliveries = script + script[::-1] + script
    calls, _ = run_chat(deliveries)
    ids = [event_id for _, _, event_id in calls]
    assert len(ids) == len(set(ids))


def test_without_sequences_partition_order_and_event_id_dedup():
    rng = random.Random(3)
    script = chat_script(rng, "p", "c", 1, "chat", 12, with_sequence=False, start_ms=1_000)
    calls_once, _ = run_chat(script)
    calls_dup, outcomes = run_chat(script + script[:5])
    assert calls_once == calls_dup
    assert outcomes["duplicate"] == 5
