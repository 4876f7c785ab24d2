"""The dashboard and the alert rules against a real Prometheus scraping a real consumer.

Three consumer engines run in-process, each with its own metrics registry served by an
`OpsServer` (started before the engine, as `run_service` does). They are the scrape targets
`imconnector-consumer-0` (the busy replica: traffic and every failure class),
`imconnector-consumer-1` (a replica that gets fenced and dies) and `imconnector-consumer-2`
(a replica that cannot reach Kafka at first). Debian's `prometheus` binary
(ops/tools/install-prometheus.sh) scrapes them every second and evaluates a copy of
ops/alerts/imconnector-consumer.rules.yaml. Then:

* every PromQL target of ops/dashboards/imconnector-consumer.json, with the Grafana
  variables filled in the way Grafana does, returns data through `/api/v1/query`;
* every alert expression evaluates without error, and the alerts that a test can honestly
  provoke fire (`/api/v1/alerts`), each in the scenario built for it.

The scrape config adds `namespace` and `pod` with `relabel_configs` from Kubernetes-style
`__meta_kubernetes_*` target labels, as a ServiceMonitor does, so the dashboard's
`namespace=~"$namespace", pod=~"$pod"` matchers work as written.

The rules copy differs from the committed file in exactly these ways (everything else,
including `job="imconnector-consumer"`, is verbatim):

* every `for:` is `1s` (minutes of pending time do not fit in a test);
* ImconnectorConsumerOldestEventTooOld: `> 600` becomes `> 10` (seconds of event age);
* ImconnectorConsumerPollLoopStalled: `> 120` becomes `> 5` (seconds since the poll loop ran).
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import yaml
from confluent_kafka import KafkaException, Producer

from consumer.codec import ChatEventEncoder
from consumer.core.events import ChatEvent, ExternalUser, MessageSent
from consumer.observability.health import OpsServer
from consumer.settings import Settings
from consumer.simulator import SimulatorConfig, SimulatorServer
from tests.integration.harness import (
    CONNECTOR,
    LINE,
    EngineThread,
    make_settings,
    portal_settings,
    produce,
    produce_raw,
    wait_until,
)
from tests.integration.prometheus_server import (
    PrometheusServer,
    finite,
    free_port,
    prometheus_binary,
)

pytestmark = pytest.mark.kafka

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "ops" / "dashboards" / "imconnector-consumer.json"
RULES = REPO / "ops" / "alerts" / "imconnector-consumer.rules.yaml"
JOB = "imconnector-consumer"
NAMESPACE = "chat"
BUSY_POD = "imconnector-consumer-0"
DYING_POD = "imconnector-consumer-1"
CUT_OFF_POD = "imconnector-consumer-2"
ENCODER = [ChatEventEncoder("single-object")]
INACTIVE_LINE = 99

# Grafana computes $__rate_interval as max($__interval + scrape interval, 4 x scrape
# interval); with the data source's default 15s scrape interval that is 1m. A window that
# long also still covers the traffic phase when the panels are evaluated.
RATE_INTERVAL = "1m"
FOR_DURATION = "1s"
THRESHOLDS = {
    "ImconnectorConsumerOldestEventTooOld": ("> 600", "> 10"),
    "ImconnectorConsumerPollLoopStalled": ("> 120", "> 5"),
}

# Panels that stay empty, with why. The test checks they ARE empty, so it fails once the
# cause is fixed: then delete the entry. (None at present: consumer lag is exported since
# the engine stores the offsets it commits in transactions.)
KNOWN_EMPTY_PANELS: dict[str, str] = {
    # The inbound side (consumer.inbound) does not run here; its series are labelled by
    # mode, kind and portal and appear with the first operator event; the inbound tests
    # assert the metrics themselves (tests/integration/test_inbound_*.py).
    "Operator events /s": "no inbound events in this test",
    "Refused /s": "no inbound events in this test",
    "Pull lag by portal": "no pull loop in this test",
}

# Alerts this test cannot make fire; their expressions are still evaluated.
CANNOT_FIRE = {
    # process_start_time_seconds is that of the pytest process, which hosts all targets:
    # three restarts of a scrape target need three processes started one after another.
    "ImconnectorConsumerRestarting",
    # Needs a consumer lag above 1000 messages, and deriv() over a [15m:1m] subquery:
    # points on two minute boundaries, longer than this test runs.
    "ImconnectorConsumerLagGrowing",
}


def now_ms() -> int:
    return int(time.time() * 1000)


def event(portal: str, chat: str, seq: int, line: int = LINE) -> ChatEvent:
    """A MessageSent of `chat` stamped now (the oldest-event age is measured from it)."""
    return ChatEvent(
        event_id=str(uuid.uuid4()),
        portal=portal,
        connector=CONNECTOR,
        line=line,
        chat_id=chat,
        occurred_at=now_ms(),
        payload=MessageSent(f"{chat}-m{seq}", f"text {seq}"),
        sequence=seq,
        user=ExternalUser(id=f"u-{chat}", name="Anna"),
    )


def chats(portal: str, prefix: str, count: int, per_chat: int, line: int = LINE) -> list[ChatEvent]:
    return [
        event(portal, f"{prefix}{i}", seq, line)
        for seq in range(1, per_chat + 1)
        for i in range(count)
    ]


def simulator(**config: Any) -> SimulatorServer:
    return SimulatorServer(
        SimulatorConfig(preset_lines=[(CONNECTOR, LINE)], seed=7, **config)
    ).start()


def shortened_rules(target: Path) -> None:
    """Write the rules copy described in the module docstring."""
    doc = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    for group in doc["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = FOR_DURATION
            change = THRESHOLDS.get(rule.get("alert", ""))
            if change is not None:
                old, new = change
                assert old in rule["expr"], f"{rule['alert']}: {old!r} not in {rule['expr']!r}"
                rule["expr"] = rule["expr"].replace(old, new)
    target.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")


def alert_rules() -> dict[str, str]:
    """Alert name -> expression, as committed."""
    doc = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return {r["alert"]: r["expr"] for g in doc["groups"] for r in g["rules"] if "alert" in r}


def prometheus_config(rules: Path, targets: dict[str, int]) -> dict[str, Any]:
    return {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "scrape_configs": [
            {
                "job_name": JOB,
                "static_configs": [
                    {
                        "targets": [f"127.0.0.1:{port}"],
                        "labels": {
                            "__meta_kubernetes_namespace": NAMESPACE,
                            "__meta_kubernetes_pod_name": pod,
                        },
                    }
                    for pod, port in targets.items()
                ],
                # What a ServiceMonitor's generated config does with the pod's metadata.
                "relabel_configs": [
                    {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
                    {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
                ],
            }
        ],
    }


# -- the dashboard -----------------------------------------------------------------------
def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text(encoding="utf-8")))


def panel_targets(doc: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title / refId, expr) of every query target, rows included."""
    out: list[tuple[str, str]] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            walk(panel.get("panels", []))
            for target in panel.get("targets", []):
                out.append((f"{panel['title']} / {target['refId']}", target["expr"]))

    walk(doc["panels"])
    return out


def regex_value(values: list[str]) -> str:
    """A multi-value variable as Grafana renders it for a Prometheus regex matcher."""
    escaped = [re.sub(r"([\\^$*+?.()|{}\[\]])", r"\\\\\1", v) for v in values]
    return escaped[0] if len(escaped) == 1 else f"({'|'.join(escaped)})"


def resolve_variables(doc: dict[str, Any], prom: PrometheusServer) -> dict[str, str]:
    """Run the dashboard's `label_values(...)` variable queries like Grafana, select all."""
    values = {"__rate_interval": RATE_INTERVAL}
    for var in doc["templating"]["list"]:
        if var["type"] != "query":
            continue
        match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", var["definition"])
        assert match, f"variable {var['name']}: unsupported query {var['definition']!r}"
        found = prom.label_values(match.group(2), substitute(match.group(1), values))
        assert found, f"variable {var['name']} ({var['definition']}) has no values"
        values[var["name"]] = regex_value(sorted(found))
    return values


def substitute(expr: str, values: dict[str, str]) -> str:
    for name in sorted(values, key=len, reverse=True):
        expr = expr.replace(f"${{{name}}}", values[name]).replace(f"${name}", values[name])
    assert "$" not in expr, f"unresolved Grafana variable in {expr!r}"
    return expr


def has_data(prom: PrometheusServer, query: str) -> Callable[[], bool]:
    """A check: the query returns at least one sample with a finite value."""
    return lambda: any(finite(sample) for sample in prom.query(query))


def await_all(checks: dict[str, Callable[[], bool]], timeout: float, what: str) -> None:
    """Poll every check until all hold; on timeout name the ones that never did."""
    pending = dict(checks)
    deadline = time.monotonic() + timeout
    while pending:
        for name, check in list(pending.items()):
            if check():
                del pending[name]
        if not pending:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"after {timeout:.0f}s, {what}: " + "; ".join(pending))
        time.sleep(0.5)


# -- alerts ------------------------------------------------------------------------------
def firing(prom: PrometheusServer, alert: str, **labels: str) -> list[dict[str, Any]]:
    return [
        a
        for a in prom.firing()
        if a["labels"]["alertname"] == alert
        and all(a["labels"].get(k) == v for k, v in labels.items())
    ]


def await_firing(
    prom: PrometheusServer, expected: dict[str, dict[str, str]], timeout: float = 30.0
) -> None:
    def fires(alert: str, labels: dict[str, str]) -> Callable[[], bool]:
        return lambda: bool(firing(prom, alert, **labels))

    await_all(
        {f"{alert} {labels}": fires(alert, labels) for alert, labels in expected.items()},
        timeout,
        "these alerts never fired",
    )


def assert_not_firing(prom: PrometheusServer, alerts: list[str], **labels: str) -> None:
    wrong = [a for a in alerts if firing(prom, a, **labels)]
    assert not wrong, f"firing although the scenario gives no reason: {wrong}"


class KafkaDoor:
    """A bootstrap address for one replica: refuses connections (Kafka unreachable, as
    with a wrong address or a network policy) until opened, then forwards to the broker."""

    def __init__(self, broker: str) -> None:
        host, port = broker.split(",")[0].rsplit(":", 1)
        self._broker = (host, int(port))
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._open = False

    def open(self) -> None:
        """Start accepting and forwarding (again: no-op)."""
        if self._open:
            return
        server = socket.create_server(("127.0.0.1", self.port))
        self._keep(server)
        self._open = True
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def _keep(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return  # closed
            self._keep(client)
            try:
                upstream = socket.create_connection(self._broker, timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            self._keep(upstream)
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        with self._lock:
            for sock in self._sockets:
                sock.close()
            self._sockets.clear()


def readiness(thread: EngineThread) -> Callable[[], bool]:
    """The engine's readiness, as run_service hands it to the OpsServer."""
    return lambda: thread.engine.ready


def fence(settings: Settings, bootstrap: str) -> None:
    """Start a producer with the replica's transactional.id, as a second process started
    with the same instance id would: Kafka fences the replica's producer."""
    zombie_killer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "transactional.id": f"imconnector-{settings.group_id}-{settings.instance_id}",
        }
    )
    zombie_killer.init_transactions(30)
    zombie_killer.flush(5)


def test_prometheus_scrapes_the_consumer_and_every_panel_and_alert_works(
    kafka_bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    tmp_path: Path,
) -> None:
    prometheus_binary()  # fail first, and with the fix, when it is not installed
    with ExitStack() as stack:
        # Portals: a flaky one (5xx, connection resets, token expiry), one that always fails
        # (breaker), one with a wrong client secret and expired tokens (refresh fails), a
        # throttled one, and a healthy one (its line 99 is not active; the replica that dies
        # uses it too).
        flaky = simulator(
            rate_limit_enabled=False, error_rate=0.15, reset_rate=0.05, token_expiry_every=25
        )
        broken = simulator(rate_limit_enabled=False, error_rate=1.0)
        bad_secret = simulator(rate_limit_enabled=False)
        throttled = simulator(rate_limit_enabled=True, rate_limit_drain=2.0, rate_limit_burst=2)
        healthy = simulator(rate_limit_enabled=False)
        for sim in (flaky, broken, bad_secret, throttled, healthy):
            stack.callback(sim.stop)

        busy_topic, dying_topic, cut_off_topic = (
            topic_factory(2),
            topic_factory(1),
            topic_factory(1),
        )
        busy_settings = make_settings(
            kafka_bootstrap,
            busy_topic,
            unique("g-busy"),
            flaky,
            instance_id="c0",
            portals={
                "portal-a": portal_settings(flaky),
                "portal-b": portal_settings(broken),
                "portal-c": portal_settings(bad_secret, client_secret="wrong"),
                "portal-t": portal_settings(throttled, rate_drain=5.0, rate_burst=2),
                "portal-h": portal_settings(healthy),
            },
            engine={"batch_size": 2},
            # Enough attempts that portal-b's events wait behind its open breaker for the
            # whole test (backoff never runs out) instead of being dead-lettered.
            retry={"base_delay_s": 0.01, "max_delay_s": 0.05, "max_attempts": 30},
            shutdown_grace_s=1.0,
        )
        dying_settings = make_settings(
            kafka_bootstrap,
            dying_topic,
            unique("g-dying"),
            healthy,
            instance_id="c1",
            portals={"portal-a": portal_settings(healthy)},
            shutdown_grace_s=1.0,
        )
        door = KafkaDoor(kafka_bootstrap)
        stack.callback(door.close)
        cut_off_settings = make_settings(
            door.address,
            cut_off_topic,
            unique("g-cut-off"),
            healthy,
            instance_id="c2",
            portals={"portal-a": portal_settings(healthy)},
            shutdown_grace_s=1.0,
        )
        bad_secret.portal.expire_tokens()  # after portal_settings() issued the pair

        busy = stack.enter_context(EngineThread(busy_settings))
        dying = EngineThread(dying_settings)  # it crashes: stopped by hand below
        dying.thread.start()
        # (Its Engine._close() stops short on the fenced producer, before the dispatcher's
        # stop: done here, after the engine thread ended.)
        stack.callback(dying.engine.dispatcher.stop)
        stack.callback(dying.thread.join, 60)
        stack.callback(dying.engine.stop)
        # The third replica cannot reach Kafka until the door opens: it blocks in its
        # start-up (Topics.wait_for_cluster), never assigned, its poll loop never run.
        cut_off = EngineThread(cut_off_settings)
        cut_off.thread.start()
        stack.callback(cut_off.stop)
        stack.callback(door.open)  # so that a failed test can still stop it
        engines = {BUSY_POD: busy, DYING_POD: dying, CUT_OFF_POD: cut_off}
        ops = {
            pod: OpsServer(e.metrics, readiness(e), host="127.0.0.1", port=0).start()
            for pod, e in engines.items()
        }
        stopped: set[str] = set()

        def stop_ops_servers() -> None:
            for pod, server in ops.items():
                if pod not in stopped:
                    server.stop()

        stack.callback(stop_ops_servers)

        rules_copy = tmp_path / "rules.yaml"
        shortened_rules(rules_copy)
        prom = PrometheusServer(
            tmp_path, prometheus_config(rules_copy, {p: s.port for p, s in ops.items()})
        ).start()
        stack.callback(prom.stop)

        # Every target scraped: the zero-initialised counters are in the TSDB before anything
        # happens, so increase() sees the first dead letter too.
        wait_until(
            lambda: (
                {t["labels"].get("pod") for t in prom.targets() if t["health"] == "up"} == set(ops)
            ),
            30,
            "every target up",
        )
        wait_until(
            lambda: len(prom.query(f'imconnector_ready{{job="{JOB}"}}')) == len(ops),
            30,
            "a first scrape of every target",
        )
        rules = prom.alert_rules()
        assert {r["name"] for r in rules} == set(alert_rules()), "rules copy not fully loaded"

        # -- a replica that cannot reach Kafka is not ready --------------------------------
        await_firing(
            prom, {"ImconnectorConsumerNotReady": {"namespace": NAMESPACE, "pod": CUT_OFF_POD}}
        )
        # (PollLoopStalled fires for it as well: its heartbeat gauge is still 0, so
        # time() - 0 is far above the threshold. The network comes back:)
        door.open()
        wait_until(lambda: busy.engine.ready and dying.engine.ready, 60, "engines ready")

        # -- traffic and failures --------------------------------------------------------
        good = chats("portal-a", "a", 30, 3)
        inactive = chats("portal-h", "off", 12, 1, line=INACTIVE_LINE)  # NOT_ACTIVE_LINE
        stuck = chats("portal-b", "b", 3, 2)
        auth = chats("portal-c", "c", 3, 1)
        slow = chats("portal-t", "t", 10, 2)
        produce(kafka_bootstrap, busy_topic, [*stuck, *good, *inactive, *auth, *slow], ENCODER)
        produce_raw(kafka_bootstrap, busy_topic, b"poison", b"\x07not avro at all")
        produce(kafka_bootstrap, dying_topic, chats("portal-a", "d", 3, 1), ENCODER)

        registry = busy.metrics.registry

        def dead_letters(error_class: str) -> float:
            return (
                registry.get_sample_value(
                    "imconnector_dead_letters_total", {"error_class": error_class}
                )
                or 0.0
            )

        # Everything but portal-b's events (they wait behind its breaker) gets an outcome.
        finished = len(good) + len(inactive) + len(auth) + len(slow) + 1
        wait_until(lambda: busy.outcomes_total() >= finished, 60, "the busy replica's traffic")
        assert (dead_letters("permanent"), dead_letters("poison")) == (len(inactive), 1)
        assert dead_letters("auth") >= len(auth)
        wait_until(lambda: dying.outcome("applied") >= 3, 30, "the second replica's traffic")
        assert registry.get_sample_value(
            "imconnector_token_refreshes_total", {"result": "failed"}
        ), "no failed token refresh"
        assert registry.get_sample_value(
            "imconnector_ambiguous_sends_total", {"policy": "reconcile"}
        ), "no connection reset on a send (looked up on the portal)"
        wait_until(
            lambda: (
                registry.get_sample_value(
                    "imconnector_circuit_breaker_state", {"portal": "portal-b", "state": "open"}
                )
                == 1
            ),
            30,
            "portal-b's breaker to open",
        )

        # -- every dashboard query returns data ------------------------------------------
        doc = dashboard()
        variables = resolve_variables(doc, prom)
        assert variables["namespace"] == NAMESPACE
        assert variables["pod"] == f"({'|'.join(sorted(ops))})"
        queries = {name: substitute(expr, variables) for name, expr in panel_targets(doc)}
        known_empty = {n: q for n, q in queries.items() if n.split(" / ")[0] in KNOWN_EMPTY_PANELS}
        assert {n.split(" / ")[0] for n in known_empty} == set(KNOWN_EMPTY_PANELS)
        await_all(
            {
                f"{name}: {query}": has_data(prom, query)
                for name, query in queries.items()
                if name not in known_empty
            },
            45,
            "these panel queries returned no data (or only NaN)",
        )
        for name, query in known_empty.items():
            assert prom.query(query) == [], (
                f"{name} has data now; remove it from KNOWN_EMPTY_PANELS ({query})"
            )

        # -- every alert expression evaluates ----------------------------------------------
        for alert, expr in alert_rules().items():
            result = prom.query(expr)  # raises on a PromQL error
            assert isinstance(result, list), f"{alert}: {result!r}"

        # -- alerts of a running, partly failing replica ---------------------------------
        await_firing(
            prom,
            {
                # 12 events for a deactivated line in a few seconds.
                "ImconnectorConsumerDeadLettersGrowing": {
                    "namespace": NAMESPACE,
                    "error_class": "permanent",
                },
                # portal-b answers every call with HTTP 500.
                "ImconnectorConsumerCircuitBreakerOpen": {
                    "namespace": NAMESPACE,
                    "portal": "portal-b",
                },
                # portal-c: expired tokens and a wrong client secret.
                "ImconnectorConsumerTokenRefreshFailing": {"namespace": NAMESPACE},
                # portal-b's events wait behind the open breaker and age.
                "ImconnectorConsumerOldestEventTooOld": {
                    "namespace": NAMESPACE,
                    "topic": busy_topic,
                },
            },
        )
        # The cut-off replica reached Kafka and got its partition: NotReady resolved.
        wait_until(lambda: cut_off.engine.ready, 60, "the cut-off engine's assignment")
        wait_until(
            lambda: not firing(prom, "ImconnectorConsumerNotReady"), 30, "NotReady to resolve"
        )
        assert_not_firing(
            prom,
            [
                "ImconnectorConsumerDown",
                "ImconnectorConsumerAbsent",
                "ImconnectorConsumerPollLoopStalled",
                "ImconnectorConsumerTransactionsAborting",
                *sorted(CANNOT_FIRE),
            ],
        )

        # -- the second replica is fenced: its transaction aborts and the engine exits ----
        fence(dying_settings, kafka_bootstrap)
        produce(kafka_bootstrap, dying_topic, chats("portal-a", "d-late", 1, 1), ENCODER)
        dying.thread.join(60)
        assert not dying.thread.is_alive(), "the fenced engine kept running"
        assert isinstance(dying.error, KafkaException), f"engine ended with {dying.error!r}"
        assert dying.metrics.registry.get_sample_value(
            "imconnector_transactions_total", {"result": "aborted"}
        ), "the fenced commit was not counted as aborted"
        await_firing(
            prom,
            {
                # A second producer took over its transactional.id: the commit aborts.
                "ImconnectorConsumerTransactionsAborting": {"pod": DYING_POD},
                # The engine exited; its /metrics is still served, the heartbeat is frozen.
                "ImconnectorConsumerPollLoopStalled": {"pod": DYING_POD},
            },
        )
        for pod in (BUSY_POD, CUT_OFF_POD):
            assert_not_firing(
                prom,
                ["ImconnectorConsumerPollLoopStalled", "ImconnectorConsumerTransactionsAborting"],
                pod=pod,
            )
        assert_not_firing(prom, ["ImconnectorConsumerDown", "ImconnectorConsumerAbsent"])
        # (No NotReady for the dead engine: its imconnector_ready stays 1, because
        # Engine._close() raises from producer.flush() on the fenced producer before it sets
        # the gauge to 0. In production the process exits there and Down/Absent take over.)

        # -- its /metrics goes away: Down, but other replicas are up, so not Absent -------
        ops[DYING_POD].stop()
        stopped.add(DYING_POD)
        await_firing(prom, {"ImconnectorConsumerDown": {"namespace": NAMESPACE, "pod": DYING_POD}})
        assert_not_firing(prom, ["ImconnectorConsumerAbsent"])
        for pod in (BUSY_POD, CUT_OFF_POD):
            assert_not_firing(prom, ["ImconnectorConsumerDown"], pod=pod)

        # -- the other replicas go away too: Absent ---------------------------------------
        for pod in (BUSY_POD, CUT_OFF_POD):
            ops[pod].stop()
            stopped.add(pod)
        await_firing(
            prom,
            {
                "ImconnectorConsumerDown": {"pod": BUSY_POD},
                "ImconnectorConsumerAbsent": {},
            },
        )
        assert_not_firing(prom, sorted(CANNOT_FIRE))

        unhealthy = [
            (r["name"], r.get("lastError")) for r in prom.alert_rules() if r["health"] != "ok"
        ]
        assert not unhealthy, f"rules failing to evaluate: {unhealthy}"
