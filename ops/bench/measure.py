"""What the benchmark computes from the simulator's call log and the service's metrics.

Pure functions (no Kafka, no processes), so they are unit tested: requests and elements
per method, burst ratios, latency per event and the latency the service adds.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict, deque
from collections.abc import Iterable, Iterator
from typing import Any

from consumer.core.events import ChatEvent
from consumer.core.mapping import BATCHABLE, RENAME
from ops.bench.naive import request_params


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile of `values` (not empty)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def identities(method: str, params: dict[str, Any]) -> Iterator[tuple[str, ...]]:
    """What identifies each element of one request: method, chat id, message id(s), text."""
    if method == RENAME:
        yield (method, str(params.get("CHAT_ID")), str(params.get("NAME")))
        return
    for element in params.get("MESSAGES") or ():
        message = element.get("message") or {}
        yield (
            method,
            str((element.get("chat") or {}).get("id")),
            json.dumps(message.get("id")),
            str(message.get("text")),
        )


def call_summary(calls: list[dict[str, Any]]) -> dict[str, Any]:
    """HTTP requests and elements per method, HTTP statuses.

    A REST `batch` request is one HTTP request; the simulator logs each of its sub-calls
    as a record of its own method pointing at it (`batch`). Per method, `requests` counts
    the HTTP requests that carried it (a batch once per method inside it).
    """
    requests: Counter[str] = Counter()
    elements: Counter[str] = Counter()
    statuses: Counter[str] = Counter()
    carried: set[tuple[int, str]] = set()  # (batch record index, sub-call method)
    total = batches = 0
    for call in calls:
        method = call["method"]
        parent = call.get("batch")
        if parent is None:
            total += 1
            statuses[str(call["http_status"])] += 1
            if method == "batch":
                batches += 1
                continue
            requests[method] += 1
        elif (parent, method) not in carried:
            carried.add((parent, method))
            requests[method] += 1
        elements[method] += len(call["params"].get("MESSAGES") or ()) if method in BATCHABLE else 1
    return {
        "requests": dict(requests),
        "elements": dict(elements),
        "statuses": dict(statuses),
        "total_requests": total,
        "batch_requests": batches,
    }


def internals(samples: list[Any]) -> dict[str, float]:
    """What the service says about itself: transactions, request durations, batch sizes."""

    def total(name: str, **labels: str) -> float:
        return float(
            sum(
                s.value
                for s in samples
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
            )
        )

    transactions = total("imconnector_transaction_duration_seconds_count")
    requests = total("imconnector_api_request_duration_seconds_count")
    batches = total("imconnector_api_batch_size_count")
    return {
        "transactions": transactions,
        "transaction_ms": 1000
        * total("imconnector_transaction_duration_seconds_sum")
        / max(1.0, transactions),
        "request_ms": 1000
        * total("imconnector_api_request_duration_seconds_sum")
        / max(1.0, requests),
        "batch_mean": total("imconnector_api_batch_size_sum") / max(1.0, batches),
        "paused_partitions": total("imconnector_paused_partitions"),
        "sequence_gaps": total("imconnector_sequence_gaps_total"),
    }


def burst_ratio(
    summary: dict[str, Any], batch_size: int, methods: Iterable[str]
) -> tuple[float, int, int]:
    """(requests / sum of ceil(elements / batch size), requests, that bound) over `methods`."""
    requests = sum(summary["requests"].get(m, 0) for m in methods)
    bound = sum(math.ceil(summary["elements"].get(m, 0) / batch_size) for m in methods)
    return (requests / bound if bound else float("nan")), requests, bound


def first_copies(produced: Iterable[tuple[ChatEvent, float]]) -> list[tuple[ChatEvent, float]]:
    """Each distinct event once, with the Kafka timestamp of its first record, in topic order.

    A duplicate record counts from its first copy: the event was there to be acted on then.
    """
    seen: set[str] = set()
    out = []
    for event, stamp in produced:
        if event.event_id not in seen:
            seen.add(event.event_id)
            out.append((event, stamp))
    return out


def in_chat_order(events: list[tuple[ChatEvent, float]]) -> list[tuple[ChatEvent, float]]:
    """`events` (distinct) chat by chat, each chat in its own order: by `sequence`, or in
    topic order for a chat whose events carry none (the order the service applies them)."""
    chats: dict[str, list[tuple[float, int, ChatEvent, float]]] = defaultdict(list)
    for position, (event, stamp) in enumerate(events):
        rank = float(event.sequence) if event.sequence is not None else float("inf")
        chats[event.key].append((rank, position, event, stamp))
    return [(event, stamp) for chat in chats.values() for _, _, event, stamp in sorted(chat)]


def ready_times(produced: Iterable[tuple[ChatEvent, float]]) -> dict[str, float]:
    """Event id -> the latest record timestamp among the event and its predecessors in its
    chat: the moment the service had everything it needed to make the event's call.

    An event that arrives before a predecessor (out of order) must wait for it; that wait
    is the producer's, not the service's, so it is not counted against the service.
    """
    ready: dict[str, float] = {}
    latest: dict[str, float] = {}
    for event, stamp in in_chat_order(first_copies(produced)):
        latest[event.key] = max(stamp, latest.get(event.key, stamp))
        ready[event.event_id] = latest[event.key]
    return ready


def _match(
    since: list[tuple[ChatEvent, float]],
    calls: list[dict[str, Any]],
    counted_from: float = float("-inf"),
) -> tuple[list[float], int]:
    """Per event of `since` (in chat order) whose element a call carries: that call's
    `wall_time` minus the event's start time; and how many events expect a call. Events
    that start before `counted_from` are matched but give no sample.

    Events are matched to request elements by method + chat id + message id(s) + text (or
    chat id + name for renames), first come first matched; the first answered call that
    carries an element counts. Events that make no call (superseded, moot) have no sample.
    """
    pending: dict[tuple[str, ...], deque[float]] = defaultdict(deque)
    expected = 0
    for event, start in since:
        for ident in identities(*request_params(event)):
            pending[ident].append(start)
            expected += 1
    out: list[float] = []
    for call in sorted(calls, key=lambda c: c["index"]):
        if call["http_status"] is None:
            continue
        for ident in identities(call["method"], call["params"]):
            starts = pending.get(ident)
            if starts:
                start = starts.popleft()
                if start >= counted_from:
                    out.append(call["wall_time"] - start)
    return out, expected


def latencies(
    produced: list[tuple[ChatEvent, float]], calls: list[dict[str, Any]]
) -> tuple[list[float], int]:
    """Record timestamp (of the event's first copy) -> completion of the call carrying its
    element, per event. Returns (latencies in seconds, events expected to make a call)."""
    return _match(in_chat_order(first_copies(produced)), calls)


def added_latencies(
    produced: list[tuple[ChatEvent, float]],
    calls: list[dict[str, Any]],
    counted_from: float = float("-inf"),
) -> tuple[list[float], int]:
    """The latency the service adds, per event: completion of the call carrying its element
    minus `ready_times` (the latest record timestamp among the event and its predecessors
    in its chat). Returns (latencies in seconds, events expected to make a call).

    A consumer that does not keep a chat's order (the naive one) can call an event before a
    predecessor arrived: its added latency is then negative. `counted_from`: events ready
    before it give no sample (a fresh process's first second of traffic).
    """
    ready = ready_times(produced)
    events = in_chat_order(first_copies(produced))
    return _match([(event, ready[event.event_id]) for event, _ in events], calls, counted_from)
