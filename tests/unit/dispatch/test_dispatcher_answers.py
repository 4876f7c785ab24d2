"""The dispatcher's reading of portal answers, against a scripted client (no network)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from consumer.bitrix.readback import HISTORY
from consumer.core.state import PendingCall
from consumer.dispatch.batch import Batch, BatchDone
from consumer.dispatch.dispatcher import UNKNOWN_OUTCOME, Dispatcher
from consumer.errors import AmbiguousError, PermanentError
from consumer.observability.metrics import Metrics
from consumer.settings import RetrySettings

SEND = "imconnector.send.messages"
RENAME = "imconnector.chat.name.set"


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

    async def batch(self, portal: str, method: str, calls: list[dict[str, Any]]) -> dict[str, Any]:
        return await self.call(portal, "batch", {"cmd": calls})

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


def test_a_batch_refused_with_error_argument_is_split_and_each_element_sent_once() -> None:
    # The portal checks every element's structure before running any
    # (`rest/customconnectors.php::sendMessages`), so after ERROR_ARGUMENT none ran.
    refused = PermanentError("ERROR_ARGUMENT: bad", code="ERROR_ARGUMENT", http_status=400)
    client = ScriptedClient([refused, ok(1), refused, ok(1)])
    with dispatcher(client) as (running, _):
        done = run(running, [call(1), call(2), call(3)])
    sent = [[m["message"]["id"] for m in params["MESSAGES"]] for _, params in client.requests]
    assert sent == [["m1", "m2", "m3"], ["m1"], ["m2"], ["m3"]]
    assert [(r.call.event_id, r.ok, r.code) for r in done.results] == [
        ("e1", True, None),
        ("e2", False, "ERROR_ARGUMENT"),
        ("e3", True, None),
    ]


def test_an_ambiguous_send_is_resent_and_marked_under_the_resend_policy() -> None:
    failure = AmbiguousError("HTTP 500", code="INTERNAL_SERVER_ERROR", http_status=500)
    client = ScriptedClient([failure, ok(2)])
    with dispatcher(client) as (running, metrics):
        done = run(running, [call(1), call(2)])
        value = metrics.registry.get_sample_value
        assert value("imconnector_ambiguous_sends_total", {"policy": "resend"}) == 2
        assert value("imconnector_api_requests_total", {"method": SEND, "status_class": "5xx"}) == 1
    assert [(r.ok, r.ambiguous) for r in done.results] == [(True, True), (True, True)]


def test_an_ambiguous_send_is_dead_lettered_unsent_under_the_dead_letter_policy() -> None:
    failure = AmbiguousError("not JSON", code="HTTP_502", http_status=502)
    client = ScriptedClient([failure])
    with dispatcher(client, unknown_outcome_policy="dead-letter") as (running, metrics):
        done = run(running, [call(1)])
        value = metrics.registry.get_sample_value
        assert value("imconnector_ambiguous_sends_total", {"policy": "dead-letter"}) == 1
    assert len(client.requests) == 1
    [result] = done.results
    assert (result.ok, result.error_class, result.code, result.ambiguous) == (
        False,
        "ambiguous",
        "HTTP_502",
        False,  # nothing was resent: no `ambiguous_resent` record
    )


def rename(n: int, name: str) -> PendingCall:
    element = {"CHAT_ID": f"c{n}", "NAME": name, "USER_ID": "u"}
    return PendingCall(f"e{n}", n, "ChatRenamed", RENAME, element, 0, ("t", 0, n))


def renamed() -> dict[str, Any]:
    return {"result": {"SUCCESS": True, "DATA": {"RESULT": {}}}}


def batched(count: int) -> dict[str, Any]:
    answers = {f"c{i}": {"SUCCESS": True, "DATA": {"RESULT": {}}} for i in range(count)}
    return {"result": {"result": answers, "result_error": []}}


@pytest.mark.parametrize(
    "name", ["Sale $result[c0] today", "$NEXT[x]", "a $Time[c1][start]", "$error[c0][error]"]
)
def test_a_rename_that_batch_would_rewrite_goes_out_directly(name: str) -> None:
    client = ScriptedClient([renamed()] * 3)
    with dispatcher(client) as (running, _):
        done = run(running, [rename(1, "Plain"), rename(2, name), rename(3, "Other")], RENAME)
    assert [method for method, _ in client.requests] == [RENAME] * 3
    assert client.requests[1][1]["NAME"] == name
    assert all(result.ok for result in done.results)


def test_renames_without_placeholders_share_one_batch_request() -> None:
    client = ScriptedClient([batched(2)])
    with dispatcher(client) as (running, _):
        done = run(running, [rename(1, "A $5 [deal]"), rename(2, "$resultless")], RENAME)
    assert [method for method, _ in client.requests] == ["batch"]
    assert all(result.ok for result in done.results)


def test_an_ambiguous_send_comes_back_unsent_to_be_looked_up_when_reconciling() -> None:
    failure = AmbiguousError("ReadTimeout", code="ReadTimeout")
    client = ScriptedClient([failure])
    with dispatcher(client, reconcile_sends=True) as (running, metrics):
        done = run(running, [call(1), call(2)])
        value = metrics.registry.get_sample_value
        assert value("imconnector_ambiguous_sends_total", {"policy": "reconcile"}) == 2
    assert len(client.requests) == 1  # nothing resent blind
    assert [(r.ok, r.error_class, r.ambiguous) for r in done.results] == [
        (False, UNKNOWN_OUTCOME, False),
        (False, UNKNOWN_OUTCOME, False),
    ]


def read(n: int) -> PendingCall:
    return PendingCall(f"e{n}", None, "Reconcile", HISTORY, {"SESSION_ID": 300 + n}, 0, ("t", 0, n))


def history_of(n: int) -> dict[str, Any]:
    return {"chatId": 1700 + n, "sessionId": 300 + n, "message": []}


def test_reads_of_several_chats_share_one_batch_and_each_gets_its_answer() -> None:
    answer = {
        "result": {
            "result": {"c0": history_of(1), "c2": history_of(3)},
            "result_error": {"c1": {"error": "ACCESS_DENIED", "error_description": "no"}},
        }
    }
    client = ScriptedClient([answer])
    with dispatcher(client) as (running, _):
        done = run(running, [read(1), read(2), read(3)], HISTORY)
        assert running.rename_batch_limit("p") == 50  # a read refused is no batch refusal
    assert [method for method, _ in client.requests] == ["batch"]
    assert client.requests[0][1]["cmd"] == [
        {"SESSION_ID": 301},
        {"SESSION_ID": 302},
        {"SESSION_ID": 303},
    ]
    assert [(r.ok, r.code, r.result) for r in done.results] == [
        (True, None, history_of(1)),
        (False, "ACCESS_DENIED", None),
        (True, None, history_of(3)),
    ]


def test_a_read_throttled_inside_the_batch_is_run_again_on_its_own() -> None:
    answer = {
        "result": {
            "result": {"c0": history_of(1)},
            "result_error": {"c1": {"error": "QUERY_LIMIT_EXCEEDED"}},
        }
    }
    client = ScriptedClient([answer, {"result": history_of(2)}])
    with dispatcher(client) as (running, _):
        done = run(running, [read(1), read(2)], HISTORY)
    assert client.requests[1] == (HISTORY, {"SESSION_ID": 302})  # its own params only
    assert [r.result for r in done.results] == [history_of(1), history_of(2)]


def test_a_read_the_portal_does_not_have_is_a_permanent_failure() -> None:
    missing = PermanentError(
        "ERROR_METHOD_NOT_FOUND", code="ERROR_METHOD_NOT_FOUND", http_status=404
    )
    client = ScriptedClient([missing])
    with dispatcher(client) as (running, _):
        [result] = run(running, [read(1)], HISTORY).results
    assert (result.ok, result.error_class, result.code) == (
        False,
        "permanent",
        "ERROR_METHOD_NOT_FOUND",
    )
