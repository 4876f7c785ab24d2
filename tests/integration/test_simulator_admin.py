"""Simulator inspection and setup: redacted call log, state, reset, silent logs, YAML, CLI."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from simulator_fixtures import CONNECTOR, LINE, Sim, message, running_simulator

from consumer.simulator import SimulatorConfig, SimulatorServer
from consumer.simulator.cli import add_cli_arguments, build_config

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def sim() -> Iterator[Sim]:
    with running_simulator() as running:
        yield running


def test_call_log_records_every_call_in_order_with_outcomes(sim: Sim) -> None:
    sim.send(message("m1"))
    sim.call("imconnector.status", {"LINE": 1})
    sim.call("imconnector.nope")
    calls = sim.calls()
    assert [c["index"] for c in calls] == [0, 1, 2]
    assert [c["method"] for c in calls] == [
        "imconnector.send.messages",
        "imconnector.status",
        "imconnector.nope",
    ]
    assert [(c["http_status"], c["error"], c["applied"]) for c in calls] == [
        (200, None, True),
        (400, "ERROR_ARGUMENT", False),
        (404, "ERROR_METHOD_NOT_FOUND", False),
    ]
    assert calls[0]["params"]["MESSAGES"][0]["message"]["id"] == "m1"
    assert calls[0]["monotonic"] <= calls[1]["monotonic"] <= calls[2]["monotonic"]
    assert calls[0]["wall_time"] == sim.clock()
    assert all(c["fault"] is None for c in calls)
    assert [c["index"] for c in sim.calls(since=2)] == [2]


def test_call_log_redacts_tokens_and_secrets(sim: Sim) -> None:
    sim.call("imconnector.status", {"CONNECTOR": CONNECTOR, "LINE": LINE})
    sim.http.post(
        f"/rest/imconnector.status?access_token={sim.token}", json={"CONNECTOR": CONNECTOR}
    )
    sim.http.get(
        "/oauth/token/",
        params={
            "grant_type": "refresh_token",
            "client_id": "local.imconnector.sim",
            "client_secret": "sim-secret",
            "refresh_token": sim.tokens["refresh_token"],
        },
    )
    raw = sim.http.get("/_sim/calls").text
    assert sim.token not in raw
    assert sim.tokens["refresh_token"] not in raw
    assert "sim-secret" not in raw
    calls = sim.calls()
    assert calls[0]["params"]["AUTH"] == "[REDACTED]"
    assert calls[1]["params"]["ACCESS_TOKEN"] == "[REDACTED]"
    token_call = calls[2]
    assert token_call["method"] == "oauth.token" and token_call["http_status"] == 200
    assert token_call["params"]["client_secret"] == "[REDACTED]"
    assert token_call["params"]["client_id"] == "local.imconnector.sim"


def test_server_logs_no_secrets(sim: Sim, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    sim.http.get(f"/rest/imconnector.status?auth={sim.token}&CONNECTOR=demo&LINE=1")
    sim.http.get(
        "/oauth/token/",
        params={"grant_type": "refresh_token", "client_id": "x", "client_secret": "sim-secret"},
    )
    sim.http.post("/rest/1/webhooksecret42/imconnector.status", json={"CONNECTOR": "demo"})
    # httpx (the client) logs full URLs; only the simulator's own records are under test.
    server_log = "\n".join(
        record.getMessage() for record in caplog.records if record.name == "consumer.simulator"
    )
    assert "imconnector.status" in server_log  # method and status are logged...
    assert sim.token not in server_log  # ...secrets are not
    assert "sim-secret" not in server_log
    assert "webhooksecret42" not in server_log


def test_state_shows_connectors_lines_data_users_and_chats(sim: Sim) -> None:
    sim.ok(
        "imconnector.connector.data.set",
        {"CONNECTOR": CONNECTOR, "LINE": LINE, "DATA": {"NAME": "Shop"}},
    )
    sim.send(message("m1", "first", name="Ann"))
    sim.send(message("m1", "first", name="Ann"))
    state = sim.state()
    assert set(state) == {
        "connectors",
        "lines",
        "connector_data",
        "users",
        "profiles",
        "chats",
        "deliveries",
    }
    assert state["lines"] == [
        {
            "connector": "demo",
            "line": 1,
            "active": True,
            "connection": True,
            "register": True,
            "error": False,
            "status": True,
        }
    ]
    assert state["connector_data"] == {"demo|1": {"NAME": "Shop"}}
    user = state["users"]["demo|u1"]
    (key,) = state["chats"]
    assert key == f"demo|1|c1|{user['id']}"
    chat = state["chats"][key]
    assert chat["name"] == "Ann"
    assert [(m["external_id"], m["text"], m["deleted"]) for m in chat["messages"]] == [
        ("m1", "first", False),
        ("m1", "first", False),
    ]


def test_reset_clears_calls_and_chats_but_keeps_tokens_and_lines(sim: Sim) -> None:
    sim.send(message())
    assert sim.http.post("/_sim/reset").json() == {"reset": True}
    assert sim.calls() == []
    state = sim.state()
    assert state["chats"] == {} and state["users"] == {}
    assert state["lines"][0]["status"] is True
    assert sim.send(message("after")).status_code == 200  # same token still valid
    assert sim.calls()[0]["index"] == 0


def test_preset_lines_lowercase_the_connector() -> None:
    with running_simulator(preset_lines=[("MyBot", 3), ("other", 4)]) as sim:
        lines = {(line["connector"], line["line"]) for line in sim.state()["lines"]}
        assert lines == {("mybot", 3), ("other", 4)}
        assert sim.ok("imconnector.status", {"CONNECTOR": "MYBOT", "LINE": 3})["STATUS"] is True


def test_concurrent_clients_are_served_consistently(sim: Sim) -> None:
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            with httpx.Client(base_url=sim.server.url) as client:
                for i in range(25):
                    response = client.post(
                        "/rest/imconnector.send.messages",
                        json={
                            "auth": sim.token,
                            "CONNECTOR": CONNECTOR,
                            "LINE": LINE,
                            "MESSAGES": [message(f"m{n}-{i}", user=f"u{n}", chat=f"c{n}")],
                        },
                    )
                    assert response.status_code == 200
        except (AssertionError, httpx.HTTPError) as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    chats = sim.state()["chats"]
    assert len(chats) == 8
    assert all(len(chat["messages"]) == 25 for chat in chats.values())
    assert len({chat["session_id"] for chat in chats.values()}) == 8
    assert [c["index"] for c in sim.calls()] == list(range(200))


def test_config_from_yaml_accepts_nested_faults_and_line_specs(tmp_path: Path) -> None:
    path = tmp_path / "sim.yaml"
    path.write_text(
        "port: 0\n"
        "client_id: yaml.app\n"
        "lines: ['Shop:2', [bot, 3], {connector: web, line: 4}]\n"
        "rate_limit_burst: 7\n"
        "faults: {error_rate: 0.25, methods: [imconnector.send.messages], seed: 9}\n",
        encoding="utf-8",
    )
    config = SimulatorConfig.from_yaml(path)
    assert config.preset_lines == [("shop", 2), ("bot", 3), ("web", 4)]
    assert config.rate_limit_burst == 7 and config.client_id == "yaml.app"
    faults = config.fault_settings()
    assert (faults.error_rate, faults.methods, faults.seed) == (
        0.25,
        ["imconnector.send.messages"],
        9,
    )
    path.write_text("colour: blue\n", encoding="utf-8")
    with pytest.raises(ValueError, match="colour"):
        SimulatorConfig.from_yaml(path)


def test_cli_flags_override_the_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "sim.yaml"
    path.write_text("rate_limit_burst: 7\nlatency_ms: 10\nlines: ['a:1']\n", encoding="utf-8")
    parser = argparse.ArgumentParser()
    add_cli_arguments(parser)
    args = parser.parse_args(
        ["--config", str(path), "--line", "B:2", "--rate-burst", "9", "--error-rate", "0.5"]
    )
    config = build_config(args)
    assert config.preset_lines == [("a", 1), ("b", 2)]
    assert (config.rate_limit_burst, config.latency_ms, config.error_rate) == (9, 10, 0.5)
    assert config.port == 8765
    with pytest.raises(SystemExit):
        parser.parse_args(["--line", "no-line-number"])


def test_cli_serves_until_sigterm(tmp_path: Path) -> None:
    tokens_file = tmp_path / "tokens.json"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "consumer.simulator",
            "--port",
            "0",
            "--line",
            "demo:1",
            "--tokens-file",
            str(tokens_file),
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        lines = []
        for line in process.stdout:
            lines.append(line)
            if line.startswith("Press Ctrl+C"):
                break
        output = "".join(lines)
        url = output.split("listening on ", 1)[1].split()[0]
        assert "local.imconnector.sim" in output
        assert str(tokens_file) in output
        tokens = json.loads(tokens_file.read_text(encoding="utf-8"))
        assert tokens["access_token"] not in output  # the pair goes to the file only
        assert oct(tokens_file.stat().st_mode & 0o777) == "0o600"
        response = httpx.post(
            f"{url}/rest/imconnector.status",
            json={"auth": tokens["access_token"], "CONNECTOR": "demo", "LINE": 1},
        )
        assert response.json()["result"]["STATUS"] is True
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def test_server_can_be_stopped_without_being_started() -> None:
    server = SimulatorServer(SimulatorConfig())
    assert server.url.startswith("http://127.0.0.1:")
    server.stop()
    server.stop()  # idempotent
