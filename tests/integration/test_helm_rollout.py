"""A rolling update as the chart configures it completes when replicas == partitions.

The Deployment's strategy (maxSurge, maxUnavailable) and readiness probe come from the
rendered chart. Replicas are real engines against the real broker, each behind its own
`OpsServer` as in `run_service`; readiness is read the way the kubelet reads it, an HTTP GET
of the probe's path (200 = ready). The test plays the Deployment controller's rolling
update: it starts new pods while the total stays within replicas + maxSurge, and stops an
old pod (SIGTERM: the engine drains and leaves the group) only while the ready pods stay at
least replicas - maxUnavailable. With maxUnavailable 0, a surge pod that is not ready
stalls the rollout for good: this is what happened when readiness meant "holds a
partition" and the group already had one member per partition.

Events keep arriving during the rollout; all of them must be mirrored in the end.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import httpx
import pytest

from consumer.codec import ChatEventEncoder
from consumer.core.events import MessageSent
from consumer.observability.health import OpsServer
from consumer.settings import Settings
from tests.integration.chart import VALUE_SETS, container, render, workload
from tests.integration.harness import (
    EngineThread,
    chat_event,
    line_simulator,
    make_settings,
    produce,
    wait_until,
)

pytestmark = pytest.mark.kafka

ENCODER = [ChatEventEncoder("single-object")]
# Kubernetes' default progressDeadlineSeconds is 600; a healthy step here takes seconds.
STEP_DEADLINE = 120


class Pod:
    """One replica: an engine and its probe port."""

    def __init__(self, settings: Settings, probe_path: str) -> None:
        self.engine = EngineThread(settings)
        self.ops = OpsServer(
            self.engine.metrics, lambda: self.engine.engine.ready, host="127.0.0.1", port=0
        )
        self.url = f"http://127.0.0.1:{self.ops.port}{probe_path}"

    def start(self) -> Pod:
        self.ops.start()
        self.engine.thread.start()
        return self

    def ready(self) -> bool:
        """The readiness probe as the kubelet runs it."""
        try:
            return httpx.get(self.url, timeout=2.0).status_code == 200
        except httpx.TransportError:
            return False

    def terminate(self) -> None:
        """SIGTERM: drain, commit, leave the group; then the probe port goes."""
        self.engine.stop()
        self.ops.stop()

    def applied(self) -> float:
        return self.engine.outcome("applied")


@pytest.mark.parametrize("partitions", [1, 2], ids=["one-partition", "two-partitions"])
def test_rolling_update_completes_with_as_many_replicas_as_partitions(
    helm: str,
    kafka_bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    partitions: int,
) -> None:
    deployment = workload(render(helm, "defaults"))
    assert deployment["kind"] == "Deployment", VALUE_SETS["defaults"]
    rolling: dict[str, Any] = deployment["spec"]["strategy"]["rollingUpdate"]
    max_surge, max_unavailable = int(rolling["maxSurge"]), int(rolling["maxUnavailable"])
    probe = container(deployment)["readinessProbe"]["httpGet"]["path"]
    replicas = partitions  # KEDA's ceiling, or a one-partition topic

    topic = topic_factory(partitions)
    group = unique("g-rollout")
    with ExitStack() as stack:
        sim = stack.enter_context(line_simulator())
        generation = iter(range(100))

        def new_pod(version: str) -> Pod:
            settings = make_settings(
                kafka_bootstrap,
                topic,
                group,
                sim,
                instance_id=f"{version}-{next(generation)}",
                shutdown_grace_s=2.0,
            )
            pod = Pod(settings, probe).start()
            stack.callback(lambda: pod.engine.thread.is_alive() and pod.terminate())
            return pod

        old = [new_pod("v1") for _ in range(replicas)]
        wait_until(lambda: all(p.ready() for p in old), STEP_DEADLINE, "the old pods ready")

        # Traffic during the whole rollout.
        sent = 0
        stop_traffic = threading.Event()

        def traffic() -> None:
            nonlocal sent
            while not stop_traffic.is_set():
                chat = f"chat-{sent % 7}"
                produce(
                    kafka_bootstrap,
                    topic,
                    [chat_event(chat, sent // 7 + 1, MessageSent(f"m{sent}", "hi"))],
                    ENCODER,
                )
                sent += 1
                stop_traffic.wait(0.2)

        producer = threading.Thread(target=traffic, daemon=True)
        producer.start()
        stack.callback(stop_traffic.set)

        new: list[Pod] = []
        finished: list[Pod] = []
        while old:
            while len(old) + len(new) < replicas + max_surge and len(new) < replicas:
                new.append(new_pod("v2"))

            def may_remove_one() -> bool:
                ready = sum(p.ready() for p in old + new)
                return ready - 1 >= replicas - max_unavailable

            wait_until(
                may_remove_one,
                STEP_DEADLINE,
                f"a pod to spare ({len(new)} new pod(s) started; none ready = a stalled rollout)",
                interval=0.5,
            )
            leaving = old.pop(0)
            leaving.terminate()
            finished.append(leaving)
        wait_until(lambda: all(p.ready() for p in new), STEP_DEADLINE, "the new pods ready")

        stop_traffic.set()
        producer.join(30)
        total = sent
        wait_until(
            lambda: sum(p.applied() for p in finished + new) >= total,
            STEP_DEADLINE,
            f"all {total} events sent during the rollout to be mirrored",
        )
        assert len(new) == replicas and not old
