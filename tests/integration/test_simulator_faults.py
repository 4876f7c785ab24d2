"""Injected faults: 500s, latency, hangs, TCP resets, before/after phases, filters, seeding."""

from __future__ import annotations

import time

import httpx
import pytest
from simulator_fixtures import CONNECTOR, LINE, message, running_simulator

STATUS = {"CONNECTOR": CONNECTOR, "LINE": LINE}


def test_error_rate_answers_500_and_applies_nothing() -> None:
    with running_simulator(error_rate=1.0) as sim:
        response = sim.send(message())
        assert response.status_code == 500
        assert response.json()["error"] == "INTERNAL_SERVER_ERROR"
        assert sim.state()["chats"] == {}
        (call,) = sim.calls()
        assert (call["fault"], call["applied"], call["http_status"]) == ("error", False, 500)


def test_latency_is_added_to_every_rest_call() -> None:
    with running_simulator(latency_ms=200) as sim:
        started = time.perf_counter()
        assert sim.call("imconnector.status", STATUS).status_code == 200
        assert time.perf_counter() - started >= 0.2


def test_admin_endpoints_are_not_slowed_down() -> None:
    # A minute of added latency against a 10 s client timeout: only an admin call that skips
    # the latency can answer, however busy the machine is.
    with running_simulator(latency_ms=60_000) as sim:
        assert sim.state()["chats"] == {}


def test_hang_withholds_the_answer_until_the_client_times_out() -> None:
    with running_simulator(hang_rate=1.0, hang_seconds=3.0) as sim:
        with pytest.raises(httpx.ReadTimeout):
            sim.send(message(), timeout=httpx.Timeout(5.0, read=0.3))
        assert sim.state()["chats"] == {}
        (call,) = sim.calls()
        assert (call["fault"], call["http_status"], call["applied"]) == ("hang", None, False)


def test_hang_ends_by_closing_the_connection_without_an_answer() -> None:
    with (
        running_simulator(hang_rate=1.0, hang_seconds=0.2) as sim,
        pytest.raises(httpx.RemoteProtocolError),
    ):
        sim.call("imconnector.status", STATUS, timeout=httpx.Timeout(5.0))


def test_reset_is_a_transport_error_and_applies_nothing() -> None:
    with running_simulator(reset_rate=1.0) as sim:
        with pytest.raises(httpx.TransportError) as caught:
            sim.send(message())
        assert isinstance(caught.value, httpx.ReadError | httpx.RemoteProtocolError)
        assert sim.state()["chats"] == {}
        (call,) = sim.calls()
        assert (call["fault"], call["http_status"]) == ("reset", None)


def test_fault_after_the_call_applies_it_but_loses_the_answer() -> None:
    with running_simulator(error_rate=1.0, fault_phase="after") as sim:
        response = sim.send(message("ambiguous"))
        assert response.status_code == 500
        assert response.json()["error"] == "INTERNAL_SERVER_ERROR"
        (chat,) = sim.state()["chats"].values()
        assert [m["external_id"] for m in chat["messages"]] == ["ambiguous"]
        (call,) = sim.calls()
        assert (call["fault"], call["applied"], call["http_status"]) == ("error", True, 500)


@pytest.mark.parametrize(
    ("fault", "expected"), [("reset_rate", httpx.TransportError), ("hang_rate", httpx.ReadTimeout)]
)
def test_transport_faults_after_the_call_apply_it(fault: str, expected: type[Exception]) -> None:
    with running_simulator(fault_phase="after", hang_seconds=2.0, **{fault: 1.0}) as sim:
        with pytest.raises(expected):
            sim.send(message("lost-answer"), timeout=httpx.Timeout(5.0, read=0.3))
        (chat,) = sim.state()["chats"].values()
        assert chat["messages"][0]["external_id"] == "lost-answer"
        assert sim.calls()[0]["applied"] is True


def test_faults_can_be_limited_to_some_methods() -> None:
    with running_simulator(error_rate=1.0, fault_methods=["imconnector.send.messages"]) as sim:
        assert sim.call("imconnector.status", STATUS).status_code == 200
        assert sim.send(message()).status_code == 500


def test_faults_are_settable_at_runtime_and_merge() -> None:
    with running_simulator() as sim:
        assert sim.send(message("m1")).status_code == 200
        settings = sim.faults(error_rate=1.0, methods=["IMCONNECTOR.SEND.MESSAGES"])
        assert settings["error_rate"] == 1.0
        assert settings["methods"] == ["imconnector.send.messages"]
        merged = sim.faults(latency_ms=5)
        assert merged["error_rate"] == 1.0 and merged["latency_ms"] == 5
        assert sim.send(message("m2")).status_code == 500
        assert sim.call("imconnector.status", STATUS).status_code == 200
        sim.faults(error_rate=0.0)
        assert sim.send(message("m3")).status_code == 200
        assert sim.http.post("/_sim/faults", json={"eror_rate": 1}).status_code == 400
        assert sim.http.post("/_sim/faults", json={"error_rate": 2}).status_code == 400
        assert sim.http.get("/_sim/faults").json()["latency_ms"] == 5


def test_seeded_faults_replay_the_same_sequence() -> None:
    def run() -> list[int]:
        with running_simulator(error_rate=0.5, seed=1234) as sim:
            return [sim.call("imconnector.status", STATUS).status_code for _ in range(30)]

    first, second = run(), run()
    assert first == second
    assert {200, 500} <= set(first)
