"""Dispatch in a process of its own (`consumer.dispatch_process`): requests leave from the
child, its metrics reach the engine's registry, and the two never outlive each other."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from consumer.codec import ChatEventEncoder
from consumer.errors import DispatchLost
from consumer.gctune import THRESHOLDS
from tests.integration.harness import (
    PORTAL,
    EngineThread,
    applied_call_list,
    check_calls,
    expected_calls,
    final_outcomes,
    line_simulator,
    make_settings,
    portal_settings,
    produce,
    shuffled_workload,
    wait_until,
)

pytestmark = pytest.mark.kafka


@pytest.fixture
def sim():
    with line_simulator(latency_ms=15) as server:
        yield server


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _dead(pid: int) -> bool:
    """Gone, or a zombie nobody reaped yet: either way it runs no more code."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


@pytest.mark.parametrize("dispatch", ["process", "thread"])
def test_both_dispatch_modes_apply_every_call_once_in_order_and_count_the_requests(
    kafka_bootstrap, topic_factory, unique, sim, dispatch
):
    topic = topic_factory(3)
    engine = {"dispatch": dispatch}
    settings = make_settings(kafka_bootstrap, topic, unique("g"), sim, engine=engine)
    scripts, events = shuffled_workload(5, 40, 3, 10)
    with EngineThread(settings) as running:
        pid = running.engine.dispatcher.pid if dispatch == "process" else None  # type: ignore[union-attr]
        produce(kafka_bootstrap, topic, events, [ChatEventEncoder("single-object")])
        wait_until(
            lambda: running.outcomes_total() >= len(events), 120, "every record to reach an outcome"
        )
        wait_until(lambda: not running.engine.dispatcher.in_flight, 30, "no batch in flight")
        registry = running.metrics.registry
        requests = Counter(r.method for r in sim.portal.call_records() if r.batch is None)
        relayed = {
            method: registry.get_sample_value(
                "imconnector_api_requests_total", {"method": method, "status_class": "2xx"}
            )
            for method in requests
        }
        in_flight = registry.get_sample_value("imconnector_calls_in_flight")
        dispatch_rss = registry.get_sample_value(
            "imconnector_dispatch_process_resident_memory_bytes"
        )
    if pid is not None:
        assert pid != os.getpid()
        wait_until(lambda: _dead(pid), 30, "the dispatch process to exit with the engine")
        # Its memory and CPU are exported next to the service's own process metrics.
        assert dispatch_rss is not None and dispatch_rss > 10_000_000
    else:
        assert dispatch_rss is None
    seen = applied_call_list(sim)
    for script in scripts:
        assert seen[script[0].chat_id] == expected_calls(script), script[0].chat_id
    # The child's request metrics reach the engine's registry, one count per request.
    assert relayed == dict(requests.items())
    assert in_flight == 0


def test_the_service_exits_when_its_dispatch_process_dies_and_the_restart_finishes(
    kafka_bootstrap, topic_factory, unique, sim
):
    topic = topic_factory(3)
    settings = make_settings(kafka_bootstrap, topic, unique("g"), sim, engine={"batch_size": 5})
    scripts, events = shuffled_workload(7, 80, 4, 12)
    produce(kafka_bootstrap, topic, events, [ChatEventEncoder("single-object")])
    first = EngineThread(settings)
    first.thread.start()
    wait_until(lambda: len(sim.portal.call_records()) >= 20, 90, "calls before the kill")
    child = first.engine.dispatcher.pid  # type: ignore[union-attr]
    assert child is not None and "consumer.dispatch_process" in _cmdline(child)
    os.kill(child, signal.SIGKILL)
    first.thread.join(60)
    assert not first.thread.is_alive(), "the engine went on without its dispatch process"
    assert isinstance(first.error, DispatchLost), first.error
    assert "exit status -9" in str(first.error)
    with EngineThread(settings):
        distinct = {e.event_id for e in events}
        wait_until(
            lambda: (
                len(final_outcomes(kafka_bootstrap, settings.outcomes_topic)[0]) >= len(distinct)
            ),
            180,
            "a final outcome for every event",
            interval=0.5,
        )
    final, ambiguous = final_outcomes(kafka_bootstrap, settings.outcomes_topic)
    assert set(final) == {e.event_id for e in events}
    # Nothing twice, except a send recorded as ambiguous (it was in flight at the kill).
    assert check_calls(sim, scripts, ambiguous) <= sum(ambiguous.values())


def test_the_dispatch_process_dies_with_the_service(
    kafka_bootstrap, topic_factory, unique, sim, tmp_path
):
    """Also: the service starts with its own GC thresholds (consumer/gctune.py)."""
    topic = topic_factory(1)
    settings = make_settings(kafka_bootstrap, topic, unique("g"), sim)
    env = {
        **os.environ,
        "IMCONNECTOR_KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap,
        "IMCONNECTOR_SOURCE_TOPICS": topic,
        "IMCONNECTOR_GROUP_ID": settings.group_id,
        "IMCONNECTOR_HTTP_PORT": "0",
        "IMCONNECTOR_OUTCOMES_TOPIC": settings.outcomes_topic,
        "IMCONNECTOR_TOKENS_TOPIC": settings.tokens_topic,
        "IMCONNECTOR_SCHEMA_REGISTRY_URL": f"{sim.url}/registry",
        "IMCONNECTOR_PORTALS": json.dumps({PORTAL: portal_settings(sim)}),
    }
    log_path = tmp_path / "service.log"
    with log_path.open("wb") as log:
        service = subprocess.Popen(
            [sys.executable, "-m", "consumer", "run"], env=env, stdout=log, stderr=log
        )
    try:
        children = wait_until(
            lambda: [
                c for c in _children(service.pid) if "consumer.dispatch_process" in _cmdline(c)
            ],
            60,
            "the dispatch process to start",
        )
        # Logged before the engine starts, so before its dispatch process exists.
        assert f"GC thresholds {THRESHOLDS}" in log_path.read_text(), log_path.read_text()
        service.send_signal(signal.SIGKILL)
        service.wait(30)
        wait_until(lambda: _dead(children[0]), 30, "the dispatch process to die with the service")
    finally:
        if service.poll() is None:
            service.kill()
            service.wait(30)


def test_the_demo_stops_with_the_cause_when_the_consumer_fails(kafka_bootstrap):
    demo = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "consumer",
            "demo",
            "--bootstrap-servers",
            kafka_bootstrap,
            "--duration",
            "120",
            "--http-port",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        children = wait_until(
            lambda: [c for c in _children(demo.pid) if "consumer.dispatch_process" in _cmdline(c)],
            60,
            "the demo's dispatch process to start",
        )
        os.kill(children[0], signal.SIGKILL)
        _, err = demo.communicate(timeout=60)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.communicate(timeout=30)
    # Long before its 120 s: one line with the cause, and a failing exit status.
    assert demo.returncode == 1
    assert b"the consumer stopped: DispatchLost: the dispatch process" in err
    assert b"exit status -9" in err
