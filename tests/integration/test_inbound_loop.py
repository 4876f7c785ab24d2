"""The loop closes: operator answers -> offline queue -> Kafka -> the upstream's
DeliveryConfirmed -> imconnector.send.status.delivery with the operator message's `im`
ids -> the portal marks the message delivered. And the demo prints both directions."""

from __future__ import annotations

import re

import pytest
from harness import PORTAL, EngineThread, line_simulator, make_settings, wait_until
from inbound_helpers import customer_chats, operator_answers
from prometheus_client import CollectorRegistry

from consumer.bitrix.oauth import MemoryTokenStore
from consumer.demo.runner import run_demo
from consumer.demo.upstream import DemoUpstream, bind_offline, delivered_on_portal
from consumer.observability.metrics import Metrics

pytestmark = pytest.mark.kafka


def test_operator_answers_come_back_as_delivery_statuses_with_their_im_ids(
    kafka_bootstrap, topic_factory, unique
):
    with line_simulator() as sim:
        topic = topic_factory(3)
        settings = make_settings(kafka_bootstrap, topic, unique("g"), sim)
        settings = settings.model_copy(
            update={
                "inbound": settings.inbound.model_copy(
                    update={"topic": unique("operator-events"), "pull_interval_s": 0.1}
                )
            }
        )
        tokens = sim.issue_tokens()
        bind_offline(f"{sim.url}/rest/", tokens["access_token"])
        chats = customer_chats(sim, 3)
        upstream = DemoUpstream(settings, Metrics(CollectorRegistry()), MemoryTokenStore(), topic)
        with EngineThread(settings):
            upstream.start()
            try:
                posted = operator_answers(sim, chats, per_chat=2)
                wait_until(lambda: delivered_on_portal(sim) == 6, 90, "six delivery statuses")
            finally:
                upstream.stop()
        with sim.portal.lock:
            deliveries = [d for d in sim.portal.openlines.deliveries if d["stored"]]
            outbound = [
                m
                for chat in sim.portal.openlines.chats.values()
                for m in chat.messages
                if m.direction == "out"
            ]
    assert sorted((d["im_chat_id"], d["im_message_id"]) for d in deliveries) == sorted(
        (p["im"]["chat_id"], p["im"]["message_id"]) for p in posted
    )
    # Each operator message took the external id the upstream gave it; none still "sending".
    assert {m.im_id: m.external_ids for m in outbound} == {
        m.im_id: [f"op-{m.im_id}"] for m in outbound
    }
    assert not any(m.sending for m in outbound)
    assert upstream.confirmed == 6 and upstream.received["MessageAdd"] == 6
    assert PORTAL in settings.portals


def test_the_demo_prints_both_directions(kafka_bootstrap, capsys):
    assert run_demo(kafka_bootstrap, duration=6, chats=5, rate=15, http_port=0) == 0
    out = capsys.readouterr().out
    final = out[out.index("[final]") :]
    sent = re.search(r"DeliveryConfirmed sent (\d+)  delivered on the portal (\d+)", final)
    assert sent is not None, final
    assert int(sent.group(1)) > 0 and int(sent.group(2)) > 0
    assert "operator events in Kafka {'MessageAdd':" in final
    assert "-> DeliveryConfirmed op-" in final
    assert "imconnector.send.status.delivery" in out
