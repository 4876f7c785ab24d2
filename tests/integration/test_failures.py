"""Failure handling against the simulator's fault injection (architecture §5): what is
retried, what is dead-lettered with which headers, what waits, and redrive."""

from __future__ import annotations

import io
import json
import uuid

import httpx
import pytest

from consumer.admin.redrive import RedriveFilter, redrive
from consumer.codec import ChatEventEncoder
from consumer.core.events import ChatEvent, ChatRenamed, ExternalUser, MessageEdited, MessageSent
from consumer.kafka.tokens import KafkaTokenStore
from consumer.simulator import SimulatorConfig, SimulatorServer
from tests.integration.harness import (
    CONNECTOR,
    LINE,
    PORTAL,
    EngineThread,
    applied_call_list,
    make_settings,
    portal_settings,
    produce,
    read_all,
    wait_until,
)

pytestmark = pytest.mark.kafka
ENCODER = [ChatEventEncoder("single-object")]
FAST_RETRY = {"base_delay_s": 0.01, "max_delay_s": 0.05, "max_attempts": 3}


def start_sim(**config) -> SimulatorServer:
    return SimulatorServer(
        SimulatorConfig(
            preset_lines=[(CONNECTOR, LINE)], rate_limit_enabled=False, seed=1, **config
        )
    ).start()


@pytest.fixture
def sim():
    server = start_sim()
    yield server
    server.stop()


def ev(
    chat: str,
    seq: int,
    payload,
    portal: str = PORTAL,
    line: int = LINE,
    user: str | None = None,
    name: str = "Anna",
) -> ChatEvent:
    return ChatEvent(
        event_id=str(uuid.uuid4()),
        portal=portal,
        connector=CONNECTOR,
        line=line,
        chat_id=chat,
        occurred_at=1_764_000_000_000 + seq,
        payload=payload,
        sequence=seq,
        user=ExternalUser(id=user or f"u-{chat}", name=name),
    )


def sends(chat: str, n: int, portal: str = PORTAL, start: int = 1) -> list[ChatEvent]:
    return [
        ev(chat, seq, MessageSent(f"{chat}-m{seq}", f"text {seq}"), portal)
        for seq in range(start, start + n)
    ]


def headers_of(msg) -> dict[str, bytes]:
    return dict(msg.headers() or ())


def test_transient_5xx_is_retried_until_applied(kafka_bootstrap, topic_factory, unique):
    sim = start_sim(error_rate=0.3)
    try:
        topic = topic_factory(2)
        settings = make_settings(
            kafka_bootstrap,
            topic,
            unique("g"),
            sim,
            retry={"base_delay_s": 0.01, "max_delay_s": 0.05, "max_attempts": 30},
        )
        events = [e for i in range(20) for e in sends(f"c{i}", 3)]
        with EngineThread(settings) as running:
            produce(kafka_bootstrap, topic, events, ENCODER)
            wait_until(lambda: running.outcome("applied") >= len(events), 60, "all applied")
            # A 500 to a send is ambiguous (the portal may have applied part of it), so it
            # is looked up on the portal before it is sent again (a chat's first send, with
            # nothing to look it up by, is resent under unknown_outcome_policy=resend); here
            # it came before anything was applied, so nothing is doubled.
            in_doubt = running.metrics.registry.get_sample_value(
                "imconnector_ambiguous_sends_total", {"policy": "reconcile"}
            )
            assert running.outcome("dead_lettered") == 0
        assert in_doubt and in_doubt > 0
        failed = [r for r in sim.portal.call_records() if r.http_status == 500]
        assert failed and all(r.error == "INTERNAL_SERVER_ERROR" for r in failed)
        per_chat = applied_call_list(sim)
        for i in range(20):
            assert [ident for _, ident in per_chat[f"c{i}"]] == [
                f"c{i}-m{s}:text {s}" for s in (1, 2, 3)
            ]
    finally:
        sim.stop()


def test_permanent_error_dead_letters_that_event_and_the_lane_goes_on(
    kafka_bootstrap, topic_factory, unique, sim
):
    topic = topic_factory(1)
    settings = make_settings(kafka_bootstrap, topic, unique("g"), sim)
    inactive = ev("c-off", 1, MessageSent("off-1", "x"), line=99)
    events = [inactive, *sends("c-on", 2)]
    with EngineThread(settings) as running:
        produce(kafka_bootstrap, topic, events, ENCODER)
        wait_until(
            lambda: running.outcome("applied") >= 2 and running.outcome("dead_lettered") >= 1,
            60,
            "outcomes",
        )
    dead = read_all(kafka_bootstrap, settings.dlq_topic(topic), expect=1)
    assert len(dead) == 1
    h = headers_of(dead[0])
    assert h["imconnector.error.class"] == b"permanent"
    assert h["imconnector.error.code"] == b"NOT_ACTIVE_LINE"
    assert h["imconnector.error.http_status"] == b"400"
    assert h["__connect.errors.topic"] == topic.encode()
    assert h["__connect.errors.offset"] == b"0"
    assert h["imconnector.event_id"] == inactive.event_id.encode()
    assert h["imconnector.version"] and h["imconnector.error.first_failure_ms"]
    assert dead[0].value() == ENCODER[0].encode(inactive)
    assert dead[0].key() == inactive.key.encode()


def test_per_element_failure_dead_letters_only_that_element(
    kafka_bootstrap, topic_factory, unique, sim
):
    topic = topic_factory(1)
    settings = make_settings(
        kafka_bootstrap, topic, unique("g"), sim, engine={"commit_interval_ms": 200}
    )
    # No text and no files: the portal refuses that element ("Incomplete data").
    bad = ev("c-bad", 1, MessageSent("bad-1"))
    events = [*sends("c-a", 1), bad, *sends("c-b", 1)]
    with EngineThread(settings) as running:
        produce(kafka_bootstrap, topic, events, ENCODER)
        wait_until(
            lambda: running.outcome("applied") + running.outcome("dead_lettered") >= 3,
            60,
            "outcomes",
        )
        assert running.outcome("applied") == 2
    dead = read_all(kafka_bootstrap, settings.dlq_topic(topic), expect=1)
    h = headers_of(dead[0])
    assert h["imconnector.error.class"] == b"permanent"
    # The code the portal's text stands for, and the text itself.
    assert h["imconnector.error.code"] == b"IMCONNECTOR_NOT_ALL_THE_REQUIRED_DATA"
    assert h["__connect.errors.exception.message"] == b"Incomplete data"
    assert h["imconnector.event_id"] == bad.event_id.encode()


def test_rename_waits_for_the_first_send_then_times_out_into_a_dead_letter(
    kafka_bootstrap, topic_factory, unique, sim
):
    topic = topic_factory(1)
    settings = make_settings(
        kafka_bootstrap, topic, unique("g"), sim, engine={"rename_wait_timeout_s": 1.0}
    )
    early = ev("c-wait", 1, ChatRenamed("Early name"))
    lonely = ev("c-lonely", 1, ChatRenamed("Never sent"))
    follow = ev("c-wait", 2, MessageSent("w-2", "first message"))
    with EngineThread(settings) as running:
        produce(kafka_bootstrap, topic, [early, lonely, follow], ENCODER)
        wait_until(lambda: running.outcome("applied") >= 2, 60, "send then rename")
        wait_until(lambda: running.outcome("dead_lettered") >= 1, 30, "the rename timeout")
    methods = [r.method for r in sim.portal.call_records() if r.http_status == 200]
    assert methods == ["imconnector.send.messages", "imconnector.chat.name.set"]
    dead = read_all(kafka_bootstrap, settings.dlq_topic(topic), expect=1)
    h = headers_of(dead[0])
    assert (h["imconnector.error.class"], h["imconnector.error.code"]) == (
        b"causal_wait",
        b"CHAT_RENAMING_FAILED",
    )
    assert h["imconnector.event_id"] == lonely.event_id.encode()


def test_expired_tokens_are_refreshed_and_secrets_never_leak(
    kafka_bootstrap, topic_factory, unique
):
    sim = start_sim(token_expiry_every=4)
    try:
        topic = topic_factory(1)
        tokens = sim.issue_tokens()
        settings = make_settings(
            kafka_bootstrap,
            topic,
            unique("g"),
            sim,
            portals={PORTAL: portal_settings(sim, tokens)},
            engine={"batch_size": 2},
        )
        events = [e for i in range(6) for e in sends(f"t{i}", 3)]
        with EngineThread(settings) as running:
            produce(kafka_bootstrap, topic, events, ENCODER)
            wait_until(lambda: running.outcome("applied") >= len(events), 60, "all applied")
            refreshes = running.metrics.registry.get_sample_value(
                "imconnector_token_refreshes_total", {"result": "ok"}
            )
            metrics_text = _metrics_text(running)
        assert refreshes and refreshes >= 2
        assert any(r.error == "expired_token" for r in sim.portal.call_records())
        secrets = [tokens["access_token"], tokens["refresh_token"], sim.config.client_secret]
        outcomes = read_all(kafka_bootstrap, settings.outcomes_topic)
        blob = b"".join((m.value() or b"") + repr(m.headers()).encode() for m in outcomes)
        for secret in secrets:
            assert secret.encode() not in blob
            assert secret not in metrics_text
    finally:
        sim.stop()


def _metrics_text(running: EngineThread) -> str:
    from prometheus_client import generate_latest

    return generate_latest(running.metrics.registry).decode()


def test_wrong_client_secret_dead_letters_with_class_auth(
    kafka_bootstrap, topic_factory, unique, sim
):
    topic = topic_factory(1)
    settings = make_settings(
        kafka_bootstrap,
        topic,
        unique("g"),
        sim,
        portals={PORTAL: portal_settings(sim, client_secret="wrong")},
    )
    sim.portal.expire_tokens()  # the first call needs a refresh, which the bad secret fails
    with EngineThread(settings) as running:
        produce(kafka_bootstrap, topic, sends("c-auth", 1), ENCODER)
        wait_until(lambda: running.outcome("dead_lettered") >= 1, 60, "auth dead letter")
    dead = read_all(kafka_bootstrap, settings.dlq_topic(topic), expect=1)
    h = headers_of(dead[0])
    assert h["imconnector.error.class"] == b"auth"
    assert h["imconnector.error.code"] == b"invalid_client"
    assert b"wrong" not in b"".join(h.values())


def test_throttling_slows_down_and_never_dead_letters(kafka_bootstrap, topic_factory, unique):
    sim = start_sim()
    sim.portal.update_limits(
        {"rate_limit_enabled": True, "rate_limit_drain": 20.0, "rate_limit_burst": 3}
    )
    try:
        topic = topic_factory(2)
        settings = make_settings(kafka_bootstrap, topic, unique("g"), sim, engine={"batch_size": 1})
        events = [e for i in range(10) for e in sends(f"q{i}", 2)]
        with EngineThread(settings) as running:
            produce(kafka_bootstrap, topic, events, ENCODER)
            wait_until(lambda: running.outcome("applied") >= len(events), 60, "all applied")
            throttled = running.metrics.registry.get_sample_value(
                "imconnector_retries_total", {"reason": "throttled"}
            )
            assert running.outcome("dead_lettered") == 0
        assert throttled and throttled > 0
        assert any(
            r.error == "QUERY_LIMIT_EXCEEDED" and r.http_status == 503
            for r in sim.portal.call_records()
        )
    finally:
        sim.stop()


def test_operating_budget_pauses_only_that_method(kafka_bootstrap, topic_factory, unique):
    sim = start_sim(operating_limit=1.0, operating_cost_per_element=0.3)
    try:
        topic = topic_factory(1)
        settings = make_settings(
            kafka_bootstrap,
            topic,
            unique("g"),
            sim,
            portals={PORTAL: portal_settings(sim, operating_limit=1.0)},
            engine={"batch_size": 1},
        )
        first = sends("ob", 1)
        edits = [ev("ob", seq, MessageEdited("ob-m1", f"edit {seq}")) for seq in (2, 3, 4, 5)]
        others = [e for i in range(3) for e in sends(f"ob-other-{i}", 1)]
        with EngineThread(settings) as running:
            produce(kafka_bootstrap, topic, [*first, *edits, *others], ENCODER)
            wait_until(lambda: running.outcome("applied") >= 4, 60, "sends applied")
            waited = wait_until(
                lambda: running.metrics.registry.get_sample_value(
                    "imconnector_throttle_wait_seconds_total", {"reason": "operating_budget"}
                ),
                30,
                "update.messages to pause on its budget",
            )
            assert running.outcome("dead_lettered") == 0
        # update.messages hit its budget and paused before the portal refused it; the
        # sends of the other chats went on.
        updates = [
            r for r in sim.portal.call_records() if r.method == "imconnector.update.messages"
        ]
        assert not any(r.error == "OPERATION_TIME_LIMIT" for r in updates[:3])
        assert waited and waited > 0
    finally:
        sim.stop()


def test_outage_parks_chats_breaker_keeps_other_portal_flowing_and_redrive_replays(
    kafka_bootstrap, topic_factory, unique
):
    healthy = start_sim()
    broken = start_sim(error_rate=1.0)
    try:
        topic = topic_factory(2)
        settings = make_settings(
            kafka_bootstrap,
            topic,
            unique("g"),
            healthy,
            retry=FAST_RETRY,
            portals={PORTAL: portal_settings(healthy), "portal-b": portal_settings(broken)},
        )
        good = [e for i in range(5) for e in sends(f"g{i}", 3)]
        bad = [e for i in range(3) for e in sends(f"b{i}", 3, portal="portal-b")]
        with EngineThread(settings) as running:
            produce(kafka_bootstrap, topic, [*bad, *good], ENCODER)
            wait_until(lambda: running.outcome("applied") >= len(good), 60, "healthy portal")
            wait_until(lambda: running.outcome("dead_lettered") >= len(bad), 90, "parking")
            registry = running.metrics.registry
            assert (
                registry.get_sample_value(
                    "imconnector_dead_letters_total", {"error_class": "exhausted"}
                )
                == 3
            )
            assert (
                registry.get_sample_value(
                    "imconnector_dead_letters_total", {"error_class": "parked"}
                )
                == 6
            )
            assert (
                registry.get_sample_value(
                    "imconnector_circuit_breaker_state", {"portal": "portal-b", "state": "open"}
                )
                is not None
            )
            # The portal heals; the operator redrives the dead letters.
            broken.portal.update_faults({"error_rate": 0.0})
            assert len(read_all(kafka_bootstrap, settings.dlq_topic(topic), expect=9)) == 9
            out = io.StringIO()
            report = redrive(settings, topic, filters=RedriveFilter(), dry_run=True, out=out)
            assert report.redriven == 9 and "exhausted/INTERNAL_SERVER_ERROR" in out.getvalue()
            report = redrive(
                settings,
                topic,
                filters=RedriveFilter(error_classes=frozenset({"exhausted", "parked"})),
                out=io.StringIO(),
            )
            assert report.redriven == 9
            wait_until(
                lambda: running.outcome("applied") >= len(good) + len(bad),
                60,
                "redriven events applied",
            )
            # A second redrive finds nothing new (resumable, exactly once).
            assert (
                redrive(settings, topic, filters=RedriveFilter(), out=io.StringIO()).redriven == 0
            )
        per_chat = applied_call_list(broken)
        for i in range(3):
            assert [ident for _, ident in per_chat[f"b{i}"]] == [
                f"b{i}-m{s}:text {s}" for s in (1, 2, 3)
            ]
    finally:
        healthy.stop()
        broken.stop()


def test_two_replicas_racing_on_an_expired_token_both_keep_working(
    kafka_bootstrap, topic_factory, unique
):
    sim = start_sim()
    try:
        topic = topic_factory(4)
        group = unique("g")
        tokens = sim.issue_tokens()
        settings = [
            make_settings(
                kafka_bootstrap,
                topic,
                group,
                sim,
                instance_id=f"rep{i}",
                portals={PORTAL: portal_settings(sim, tokens)},
            )
            for i in range(2)
        ]
        stores = [KafkaTokenStore(s) for s in settings]
        first = [e for i in range(12) for e in sends(f"r{i}", 2)]
        second = [e for i in range(12) for e in sends(f"r{i}", 2, start=3)]
        with EngineThread(settings[0], stores[0]) as a, EngineThread(settings[1], stores[1]) as b:
            wait_until(lambda: a.engine.parts and b.engine.parts, 60, "both assigned")
            produce(kafka_bootstrap, topic, first, ENCODER)
            wait_until(
                lambda: a.outcome("applied") + b.outcome("applied") >= len(first), 60, "first half"
            )
            httpx.post(f"{sim.url}/_sim/expire-tokens").raise_for_status()
            produce(kafka_bootstrap, topic, second, ENCODER)
            wait_until(
                lambda: a.outcome("applied") + b.outcome("applied") >= 48,
                60,
                "second half after the token expiry",
            )
            dead = a.outcome("dead_lettered") + b.outcome("dead_lettered")
            results = {
                r: sum(
                    (
                        e.metrics.registry.get_sample_value(
                            "imconnector_token_refreshes_total", {"result": r}
                        )
                        or 0
                    )
                    for e in (a, b)
                )
                for r in ("ok", "adopted", "failed")
            }
        assert dead == 0
        assert results["ok"] >= 1 and results["failed"] == 0
        grants = [r for r in sim.portal.call_records() if r.method == "oauth.token"]
        assert len([g for g in grants if g.http_status == 200]) >= 1
        stored = stores[0].load(PORTAL)
        assert stored is not None and stored.refresh_token != tokens["refresh_token"]
        assert json.dumps(stored.client_endpoint).startswith('"http://127.0.0.1')
    finally:
        sim.stop()


def test_a_real_gap_is_given_up_after_the_timeout_and_the_late_event_dead_lettered(
    kafka_bootstrap, topic_factory, unique, sim
):
    topic = topic_factory(1)
    settings = make_settings(
        kafka_bootstrap, topic, unique("g"), sim, engine={"gap_timeout_s": 1.0}
    )
    one, two, three = sends("gap", 3)
    with EngineThread(settings) as running:
        produce(kafka_bootstrap, topic, [one, three], ENCODER)
        wait_until(lambda: running.outcome("applied") >= 2, 60, "1 and, after the gap, 3")
        gaps = running.metrics.registry.get_sample_value(
            "imconnector_sequence_gaps_total", {"reason": "timeout"}
        )
        assert gaps == 1
        produce(kafka_bootstrap, topic, [two], ENCODER)
        wait_until(lambda: running.outcome("dead_lettered") >= 1, 60, "the late event")
        assert running.outcome("duplicate") == 0
    assert [ident for _, ident in applied_call_list(sim)["gap"]] == [
        "gap-m1:text 1",
        "gap-m3:text 3",
    ]
    dead = read_all(kafka_bootstrap, settings.dlq_topic(topic), expect=1)
    h = headers_of(dead[0])
    assert (h["imconnector.error.class"], h["imconnector.error.code"]) == (
        b"late",
        b"SEQUENCE_GAP_EXPIRED",
    )
    assert h["imconnector.event_id"] == two.event_id.encode()
