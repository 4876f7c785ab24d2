"""The dispatcher's reading of portal answers, against a scripted client (no network)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prometheus_client import CollectorRegistry

from consumer.core.state import PendingCall
from consumer.dispatch.dispatcher import Batch, BatchDone, Dispatcher
from consumer.observability.metrics import Metrics
from consumer.settings import RetrySettings

SEND = "imconnector.send.messages"


class ScriptedClient:
    """Answers each request with the next scripted body, or raises the next exception."""

    def __init__(self, answers: list[dict[str, Any] | Exception]) -> None:
        self.portals: dict[str, Any] = {}
        self.answers = answers
        self.requests: list[tuple[str, dict[str, Any]]] = []

    async def call(self, portal: str, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self.requests.append((method, params))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def aclose(self) -> None:
        pass


def call(n: int, method: str = SEND, cleaned: tuple[str, ...] = ()) -> PendingCall:
    element = {"user": {"id": "u"}, "message": {"id": f"m{n}", "text": "x"}, "chat": {"id": "c"}}
    pending = PendingCall(f"e{n}", n, "MessageSent", method, element, 0, ("t", 0, n))
    pending.cleaned = cleaned
    return pending


def ok(count: int) -> dict[str, Any]:
    return {"result": {"SUCCESS": True, "DATA": {"RESULT": [{"SUCCESS": True}] * count}}}


@contextmanager
def dispatcher(client: ScriptedClient, **options: Any) -> Iterator[tuple[Dispatcher, Metrics]]:
    metrics = Metrics(CollectorRegistry())
    retry = RetrySettings(max_attempts=3, base_delay_s=0.01, max_delay_s=0.02)
    running = Dispatcher(lambda: client, retry, metrics, **options)  # type: ignore[arg-type,return-value]
    running.start()
    try:
        yield running, metrics
    finally:
        running.stop()


def run(running: Dispatcher, calls: list[PendingCall], method: str = SEND) -> BatchDone:
    running.submit(Batch("p", "c", 1, method, [(f"chat{c.seq}", c) for c in calls]))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        done = running.drain()
        if done:
            return done[0]
        running.wait(0.05)
    raise AssertionError("the batch did not finish")


def test_cleaned_display_fields_are_counted_once_per_call() -> None:
    client = ScriptedClient([ok(2), ok(1)])
    with dispatcher(client) as (running, metrics):
        first = call(1, cleaned=("name", "email"))
        second = call(2, cleaned=("name",))
        run(running, [first, second])
        run(running, [first])  # sent again (a resend): not counted again
        value = metrics.registry.get_sample_value
        assert value("imconnector_display_fields_cleaned_total", {"field": "name"}) == 2
        assert value("imconnector_display_fields_cleaned_total", {"field": "email"}) == 1
        assert value("imconnector_display_fields_cleaned_total", {"field": "last_name"}) == 0
