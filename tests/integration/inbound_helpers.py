"""Helpers for the inbound (operator events) tests: settings, customer chats in the
simulator, operator answers, and reading the operator-events topic."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
from harness import CONNECTOR, LINE, PORTAL, portal_settings, read_all

from consumer.inbound.contract import OperatorEvent, OperatorEventDecoder
from consumer.settings import Settings
from consumer.simulator import SimulatorServer


def inbound_settings(
    bootstrap: str,
    sim: SimulatorServer,
    unique: Callable[[str], str],
    *,
    application_token: str | None = None,
    **inbound: Any,
) -> Settings:
    """Settings with one portal backed by `sim` and a topic of the test's own."""
    portal = portal_settings(sim)
    portal["member_id"] = sim.config.member_id
    if application_token is not None:
        portal["application_token"] = application_token
    return Settings(
        kafka={"bootstrap_servers": bootstrap},
        group_id=unique("inbound"),
        instance_id="i1",
        tokens_topic=unique("tokens"),
        portals={PORTAL: portal},
        http_port=0,
        inbound={
            "topic": unique("operator-events"),
            "topic_partitions": 3,
            "pull_interval_s": 0.1,
            "produce_timeout_s": 10.0,
            **inbound,
        },
    )


def customer_chats(sim: SimulatorServer, count: int) -> list[int]:
    """`count` chats a customer opened (imconnector.send.messages); their CHAT_IDs."""
    token = sim.issue_tokens()["access_token"]
    elements = [
        {
            "user": {"id": f"u{n}", "name": "Anna"},
            "message": {"id": f"m{n}", "text": "Hello, is anyone there?"},
            "chat": {"id": f"chat-{n}"},
        }
        for n in range(count)
    ]
    response = httpx.post(
        f"{sim.url}/rest/imconnector.send.messages",
        json={"auth": token, "CONNECTOR": CONNECTOR, "LINE": LINE, "MESSAGES": elements},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    results = response.json()["result"]["DATA"]["RESULT"]
    return [int(r["session"]["CHAT_ID"]) for r in results]


def operator_answers(sim: SimulatorServer, chat_ids: list[int], per_chat: int = 1) -> list[Any]:
    """An operator answers `per_chat` times in each chat; the posted `im` blocks."""
    posted = []
    for round_ in range(per_chat):
        for chat_id in chat_ids:
            answer = sim.portal.operator_answer(chat_id, f"answer {round_} in {chat_id}")
            assert answer is not None
            posted.append(answer)
    return posted


def bind(sim: SimulatorServer, **params: Any) -> None:
    """event.bind OnImConnectorMessageAdd (offline unless a handler is given)."""
    body = {"event": "OnImConnectorMessageAdd", **params}
    if "handler" not in params:
        body["event_type"] = "offline"
    with sim.portal.lock:
        sim.portal.events.bind({k.upper(): v for k, v in body.items()})


def operator_events(bootstrap: str, topic: str, expect: int | None = None) -> list[OperatorEvent]:
    """Every committed record of the operator-events topic, decoded (keys checked)."""
    decoder = OperatorEventDecoder()
    events = []
    for msg in read_all(bootstrap, topic, expect=expect, timeout=30):
        event = decoder.decode(msg.value())
        assert msg.key().decode() == event.key
        assert dict(msg.headers())["event_id"].decode() == event.event_id
        events.append(event)
    return events


def offline_rows(sim: SimulatorServer) -> list[dict[str, Any]]:
    """The simulator's offline queue as event.offline.list shows it."""
    with sim.portal.lock:
        return list(sim.portal.events.snapshot()["offline"])
