"""Renames through REST `batch`: several `chat.name.set` calls share one HTTP request, a
failed sub-call is re-run on its own, and a portal that refuses `batch` for
`imconnector.*` (unconfirmed on real portals) gets one request per rename from then on.

The dispatcher tests drive `Dispatcher` + `BitrixClient` against the simulator (no Kafka);
the last test runs the whole service on the real broker.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator

import pytest

from consumer.bitrix.client import BitrixClient
from consumer.bitrix.oauth import MemoryTokenStore
from consumer.codec import ChatEventEncoder
from consumer.core.events import ChatRenamed, MessageSent
from consumer.core.mapping import RENAME, SEND
from consumer.core.state import PendingCall
from consumer.dispatch.batch import Batch, BatchDone, CallResult
from consumer.dispatch.dispatcher import Dispatcher
from consumer.observability.metrics import Metrics
from consumer.settings import HttpSettings, PortalSettings, RetrySettings
from consumer.simulator import SimulatorConfig, SimulatorServer
from tests.integration.harness import (
    CONNECTOR,
    LINE,
    PORTAL,
    EngineThread,
    OutcomeWatcher,
    applied_call_list,
    chat_event,
    expected_calls,
    make_settings,
    portal_settings,
    produce,
    wait_until,
)


def _sim(**config: object) -> SimulatorServer:
    return SimulatorServer(
        SimulatorConfig(preset_lines=[(CONNECTOR, LINE)], rate_limit_enabled=False, **config)
    ).start()


@pytest.fixture
def sim() -> Iterator[SimulatorServer]:
    server = _sim()
    yield server
    server.stop()


@pytest.fixture
def refusing_sim() -> Iterator[SimulatorServer]:
    server = _sim(batch_imconnector=False)
    yield server
    server.stop()


def _dispatcher(sim: SimulatorServer) -> Dispatcher:
    portals = {PORTAL: PortalSettings(**portal_settings(sim))}

    def client() -> BitrixClient:
        return BitrixClient(portals, HttpSettings(), MemoryTokenStore())

    return Dispatcher(client, RetrySettings(max_attempts=2, base_delay_s=0.01), Metrics())


def _call(method: str, element: dict[str, object], event_id: str) -> PendingCall:
    return PendingCall(event_id, 1, "test", method, element, 0, ("t", 0, 0))


def _send(chat: str) -> tuple[str, PendingCall]:
    element = {"user": {"id": f"u-{chat}"}, "message": {"id": f"m-{chat}", "text": "hi"}}
    element["chat"] = {"id": chat}
    return chat, _call(SEND, element, f"send-{chat}")


def _rename(chat: str, name: str, user: str | None = None) -> tuple[str, PendingCall]:
    element = {"CHAT_ID": chat, "NAME": name, "USER_ID": user or f"u-{chat}"}
    return chat, _call(RENAME, element, f"rename-{chat}")


def _run(dispatcher: Dispatcher, method: str, calls: list[tuple[str, PendingCall]]) -> BatchDone:
    dispatcher.submit(Batch(PORTAL, CONNECTOR, LINE, method, calls))
    done: list[BatchDone] = []
    while not done:
        dispatcher.wait(5.0)
        done = dispatcher.drain()
    return done[0]


def _by_chat(done: BatchDone) -> dict[str, CallResult]:
    return {result.chat_key: result for result in done.results}


def test_renames_share_one_batch_request_and_a_failed_sub_call_is_rerun_alone(sim):
    dispatcher = _dispatcher(sim)
    dispatcher.start()
    try:
        sent = _run(dispatcher, SEND, [_send("a"), _send("b"), _send("c")])
        assert all(r.ok for r in sent.results)
        # A known customer, but never in chat "nobody": the portal has no dialog to rename.
        # (An unknown USER_ID would answer SUCCESS and rename nothing, like a real portal.)
        renames = [
            _rename("a", "Alpha"),
            _rename("nobody", "Ghost", user="u-a"),
            _rename("c", "Gamma"),
        ]
        done = _by_chat(_run(dispatcher, RENAME, renames))
    finally:
        dispatcher.stop()
    assert done["a"].ok and done["c"].ok
    assert (done["nobody"].ok, done["nobody"].error_class, done["nobody"].code) == (
        False,
        "causal_wait",
        "CHAT_RENAMING_FAILED",
    )
    records = [r for r in sim.portal.call_records() if r.method != SEND]
    requests = [r for r in records if r.batch is None]
    assert [r.method for r in requests] == ["batch", RENAME], "one batch, one lone re-run"
    inside = [(r.params["CHAT_ID"], r.error) for r in records if r.batch == requests[0].index]
    assert inside == [("a", None), ("nobody", "CHAT_RENAMING_FAILED"), ("c", None)]
    assert requests[1].params["CHAT_ID"] == "nobody"
    names = _names(sim)
    assert (names["a"], names["c"]) == ("Alpha", "Gamma")
    assert dispatcher.rename_batch_limit(PORTAL) > 1, "a sub-call failure is no refusal"


def test_a_portal_refusing_batch_gets_one_request_per_rename(refusing_sim, caplog):
    sim = refusing_sim
    dispatcher = _dispatcher(sim)
    dispatcher.start()
    try:
        _run(dispatcher, SEND, [_send("a"), _send("b")])
        assert dispatcher.rename_batch_limit(PORTAL) > 1
        with caplog.at_level(logging.WARNING, logger="consumer.dispatch.dispatcher"):
            done = _by_chat(_run(dispatcher, RENAME, [_rename("a", "One"), _rename("b", "Two")]))
    finally:
        dispatcher.stop()
    assert done["a"].ok and done["b"].ok
    assert dispatcher.rename_batch_limit(PORTAL) == 1
    requests = [r for r in sim.portal.call_records() if r.method != SEND and r.batch is None]
    assert [r.method for r in requests] == ["batch", RENAME, RENAME]
    refused = [r.error for r in sim.portal.call_records() if r.batch == requests[0].index]
    assert refused == ["ERROR_BATCH_METHOD_NOT_ALLOWED"] * 2
    assert any("ERROR_BATCH_METHOD_NOT_ALLOWED" in m for m in caplog.messages)
    names = _names(sim)
    assert (names["a"], names["b"]) == ("One", "Two")


def _names(sim: SimulatorServer) -> dict[str, str]:
    """External chat id -> the name of its Open Lines chat."""
    chats = sim.portal.state()["chats"].values()
    return {chat["external_chat_id"]: chat["name"] for chat in chats}


@pytest.mark.kafka
def test_a_backlog_of_renames_goes_out_in_batch_requests_in_order(
    kafka_bootstrap, topic_factory, unique, sim
):
    topic = topic_factory(3)
    scripts = []
    for i in range(300):
        chat = f"rb-{i}"
        scripts.append(
            [
                chat_event(chat, 1, MessageSent(f"{chat}-m1", "first")),
                chat_event(chat, 2, ChatRenamed(f"{chat} renamed")),
                chat_event(chat, 3, ChatRenamed(f"{chat} renamed again")),
            ]
        )
    events = [e for script in scripts for e in script]
    produce(kafka_bootstrap, topic, events, [ChatEventEncoder("single-object")])
    settings = make_settings(kafka_bootstrap, topic, unique("g"), sim)
    with (
        EngineThread(settings),
        OutcomeWatcher(kafka_bootstrap, f"{topic}.outcomes") as outcomes,
    ):
        wait_until(lambda: outcomes.finished({e.event_id for e in events}), 120, "outcomes")
    seen = applied_call_list(sim)
    for script in scripts:
        assert seen[script[0].chat_id] == expected_calls(script), script[0].chat_id
    records = sim.portal.call_records()
    renames = [r for r in records if r.method == RENAME and r.applied]
    carriers = {r.batch if r.batch is not None else f"single-{r.index}" for r in renames}
    print(f"{len(renames)} renames in {len(carriers)} requests")
    # Up to two renames per chat (the older one may be superseded while it waits).
    assert len(renames) >= 300
    assert len(carriers) <= 3 * math.ceil(len(renames) / 50), "renames share requests"
