"""Chaos: faults, token expiry, a tight rate limit, SIGKILLs and a broker restart at once.

Afterwards, from the simulator's call log and the topics: every event is applied exactly
once or dead-lettered with a reason, per-chat order held, and the only doubles are calls
recorded as ambiguous. CI runs a smaller count (CHAOS_EVENTS, CHAOS_CHATS, CHAOS_KILLS);
`make chaos` runs the full 50,000 events / 2,000 chats / 10 kills.

The figures report the customer messages the portal shows twice (`doubled_sends`, of which
`doubled_first_sends` were a chat's first send, which has nothing to be looked up by) and
what looking sends of unknown outcome up found; CHAOS_RECONCILE=0 runs the same with
reconciliation off (every such send resent blind), for comparison.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from consumer.codec import ChatEventEncoder
from consumer.core.events import MessageSent
from consumer.demo.workload import chat_script, interleave
from consumer.simulator import SimulatorConfig, SimulatorServer
from tests.integration.harness import (
    CONNECTOR,
    LINE,
    PORTAL,
    check_calls,
    final_outcomes,
    portal_settings,
    produce,
    read_all,
    side_records,
    wait_until,
)

pytestmark = [pytest.mark.kafka, pytest.mark.chaos]
ROOT = Path(__file__).resolve().parents[2]
EVENTS = int(os.environ.get("CHAOS_EVENTS", "6000"))
CHATS = int(os.environ.get("CHAOS_CHATS", "400"))
KILLS = int(os.environ.get("CHAOS_KILLS", "4"))
RECONCILE = os.environ.get("CHAOS_RECONCILE", "1") != "0"


def test_chaos(kafka_bootstrap, topic_factory, unique, tmp_path):
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        pytest.fail(
            "the chaos test restarts the broker: run it on the project's local broker "
            "(unset KAFKA_BOOTSTRAP_SERVERS)"
        )
    started = time.monotonic()
    rng = random.Random(2026)
    per_chat = max(2, EVENTS // CHATS)
    scripts = [
        chat_script(
            rng, PORTAL, CONNECTOR, LINE, f"chaos-{i}", per_chat, start_ms=1_764_000_000_000
        )
        for i in range(CHATS)
    ]
    events = interleave(scripts, rng, duplicate_rate=0.05, reorder_rate=0.05)
    sim = SimulatorServer(
        SimulatorConfig(
            preset_lines=[(CONNECTOR, LINE)],
            seed=7,
            error_rate=0.05,
            hang_rate=0.02,
            hang_seconds=3.0,
            token_expiry_every=200,
            rate_limit_drain=40.0,
            rate_limit_burst=60,
        )
    ).start()
    topic = topic_factory(4)
    group = unique("chaos")
    env = {
        **os.environ,
        "IMCONNECTOR_KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap,
        "IMCONNECTOR_SOURCE_TOPICS": topic,
        "IMCONNECTOR_GROUP_ID": group,
        "IMCONNECTOR_INSTANCE_ID": "chaos-1",
        "IMCONNECTOR_HTTP_PORT": "0",
        "IMCONNECTOR_OUTCOMES_TOPIC": f"{topic}.outcomes",
        "IMCONNECTOR_TOKENS_TOPIC": f"{topic}.tokens",
        "IMCONNECTOR_PORTALS": json.dumps(
            {PORTAL: portal_settings(sim, rate_drain=40.0, rate_burst=60)}
        ),
        "IMCONNECTOR_ENGINE__COMMIT_INTERVAL_MS": "50",
        "IMCONNECTOR_HTTP__READ_TIMEOUT_S": "1.5",
        # The simulator finishes a request in milliseconds (a hang applies nothing): a send
        # in doubt is looked up 2 s after, not Bitrix24's 60 s.
        "IMCONNECTOR_ENGINE__RECONCILE_SENDS": "true" if RECONCILE else "false",
        "IMCONNECTOR_ENGINE__RECONCILE_SETTLE_S": "2.0",
        "IMCONNECTOR_RETRY__MAX_ATTEMPTS": "25",
        "IMCONNECTOR_RETRY__BASE_DELAY_S": "0.05",
        "IMCONNECTOR_RETRY__MAX_DELAY_S": "1.0",
        "IMCONNECTOR_LOG_FORMAT": "json",
        "IMCONNECTOR_LOG_LEVEL": "WARNING",
    }
    log = open(tmp_path / "consumer.log", "wb")  # noqa: SIM115 - closed below
    processes: list[subprocess.Popen[bytes]] = []

    def start() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "consumer", "run"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
        processes.append(proc)
        return proc

    distinct = {e.event_id for e in events}
    outcomes_topic = f"{topic}.outcomes"

    def applied_elements() -> int:
        return sum(
            len(r.params.get("MESSAGES", [1]))
            for r in sim.portal.call_records()
            if r.http_status == 200
        )

    try:
        produce(kafka_bootstrap, topic, events, [ChatEventEncoder("single-object")])
        current = start()
        broker_restart_at = KILLS // 2
        for kill in range(KILLS):
            target = applied_elements() + rng.randint(
                EVENTS // (KILLS * 4) + 1, EVENTS // (KILLS * 2) + 2
            )
            wait_until(
                lambda t=target, p=current: applied_elements() >= t or p.poll() is not None,
                240,
                f"progress before kill {kill + 1}",
                interval=0.1,
            )
            assert current.poll() is None, f"the consumer exited on its own: {_tail(tmp_path)}"
            current.send_signal(signal.SIGKILL)
            current.wait(30)
            if kill == broker_restart_at:
                subprocess.run([str(ROOT / "ops/kafka/local-kafka.sh"), "restart"], check=True)
            current = start()
        wait_until(
            lambda: len(final_outcomes(kafka_bootstrap, outcomes_topic)[0]) >= len(distinct),
            600,
            "a final outcome for every event",
            interval=2.0,
        )
        current.send_signal(signal.SIGTERM)
        assert current.wait(90) == 0, _tail(tmp_path)
    finally:
        for proc in processes:
            if proc.poll() is None:
                proc.kill()
        log.close()
        sim.stop()
    final, ambiguous = final_outcomes(kafka_bootstrap, outcomes_topic)
    assert set(final) == distinct
    repeats = check_calls(sim, scripts, ambiguous)
    send_elements = Counter()
    for record in sim.portal.call_records():
        if record.method == "imconnector.send.messages" and record.applied:
            for element in record.params.get("MESSAGES", []):
                send_elements[(element["chat"]["id"], element["message"]["id"])] += 1
    doubled_sends = sum(n - 1 for n in send_elements.values() if n > 1)
    first_sends = set()  # each chat's first send: nothing to look it up by until answered
    for script in scripts:
        sent = [e.payload for e in script if isinstance(e.payload, MessageSent)]
        if sent:
            first_sends.add((script[0].chat_id, sent[0].message_id))
    doubled_first = sum(n - 1 for key, n in send_elements.items() if n > 1 and key in first_sends)
    dead = Counter()
    for msg in read_all(kafka_bootstrap, f"{topic}.dlq"):
        dead[dict(msg.headers())["imconnector.error.class"].decode()] += 1
    assert sum(dead.values()) == Counter(final.values())["dead_lettered"]
    records = sim.portal.call_records()
    faults = Counter(r.fault for r in records if r.fault)
    figures = {
        "records": len(events),
        "events": len(distinct),
        "chats": CHATS,
        "kills": KILLS,
        "broker_restarts": 1,
        "ambiguous_resends": sum(ambiguous.values()),
        "repeated_calls_on_portal": repeats,
        "reconcile": RECONCILE,
        "doubled_sends": doubled_sends,
        "doubled_first_sends": doubled_first,
        "side_records": dict(side_records(kafka_bootstrap, outcomes_topic)),
        "dead_letters": dict(dead),
        "outcomes": dict(Counter(final.values())),
        "injected_faults": dict(faults),
        "expired_tokens": sum(1 for r in records if r.error == "expired_token"),
        "throttled": sum(1 for r in records if r.error == "QUERY_LIMIT_EXCEEDED"),
        "wall_time_s": round(time.monotonic() - started, 1),
    }
    print("chaos figures:", json.dumps(figures))
    assert repeats <= figures["ambiguous_resends"]


def _tail(tmp_path: Path) -> str:
    return (tmp_path / "consumer.log").read_text(errors="replace")[-3000:]
