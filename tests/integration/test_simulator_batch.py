"""The simulator's REST `batch`: sub-calls, result maps, halt, limits, faults, call log (§8)."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import pytest
from simulator_fixtures import (
    CONNECTOR,
    LINE,
    TIME_KEYS,
    Sim,
    message,
    running_simulator,
)

from consumer.simulator import SimulatorConfig
from consumer.simulator.cli import add_cli_arguments, build_config

RENAME = "imconnector.chat.name.set"


@pytest.fixture
def sim() -> Iterator[Sim]:
    with running_simulator() as running:
        yield running


def command(method: str, **params: Any) -> str:
    """One `cmd` entry: `"method?query"`, encoded the way PHP's http_build_query would."""
    return f"{method}?{urlencode(params, quote_via=quote)}"


def rename(chat: str, name: str, **extra: Any) -> str:
    params = {"CONNECTOR": CONNECTOR, "LINE": LINE, "CHAT_ID": chat, "NAME": name}
    return command(RENAME, **{"USER_ID": "u1", **params, **extra})


def status() -> str:
    return command("imconnector.status", CONNECTOR=CONNECTOR, LINE=LINE)


def batch(sim: Sim, cmd: Any, *, halt: int = 0, **kwargs: Any) -> httpx.Response:
    return sim.call("batch", {"halt": halt, "cmd": cmd}, **kwargs)


def open_chats(sim: Sim, *chats: str) -> None:
    """One inbound message per chat from user u1: a session exists, so renames can work."""
    response = sim.send(*(message(f"m-{chat}", chat=chat) for chat in chats))
    assert response.status_code == 200, response.text


def chat_names(sim: Sim) -> dict[str, str]:
    return {c["external_chat_id"]: c["name"] for c in sim.state()["chats"].values()}


def batch_records(sim: Sim) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The last batch record and the sub-call records that point at it."""
    calls = sim.calls()
    (*_, outer) = [c for c in calls if c["method"] == "batch" and c["batch"] is None]
    return outer, [c for c in calls if c["batch"] == outer["index"]]


def test_batch_of_renames_applies_each_and_logs_every_sub_call(sim: Sim) -> None:
    chats = [f"c{i}" for i in range(5)]
    open_chats(sim, *chats)
    cmd = {f"r{i}": rename(chat, f"Name {i} & co") for i, chat in enumerate(chats)}
    response = batch(sim, cmd)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"result", "time"}
    assert set(body["time"]) == TIME_KEYS
    result = body["result"]
    assert result["result"] == {key: {"SUCCESS": True, "DATA": {"RESULT": {}}} for key in cmd}
    assert result["result_error"] == []
    assert (result["result_total"], result["result_next"]) == ([], [])
    assert list(result["result_time"]) == list(cmd)
    assert all(set(timing) == TIME_KEYS for timing in result["result_time"].values())
    assert chat_names(sim) == {chat: f"Name {i} & co" for i, chat in enumerate(chats)}

    outer, subs = batch_records(sim)
    assert (outer["http_status"], outer["error"], outer["applied"], outer["batch"]) == (
        200,
        None,
        True,
        None,
    )
    assert [s["index"] for s in subs] == list(range(outer["index"] + 1, outer["index"] + 6))
    assert {(s["method"], s["http_status"], s["error"], s["applied"]) for s in subs} == {
        (RENAME, 200, None, True)
    }
    assert [s["params"]["CHAT_ID"] for s in subs] == chats
    assert subs[0]["params"]["NAME"] == "Name 0 & co"
    # Filtering by method still finds every rename; HTTP requests are the top-level records.
    assert len(sim.calls(method=RENAME)) == 5
    assert [c["method"] for c in sim.calls() if c["batch"] is None] == [
        "imconnector.send.messages",
        "batch",
    ]


def test_failing_sub_calls_land_in_result_error_and_the_others_still_run(sim: Sim) -> None:
    open_chats(sim, "c1", "c2", "c3")
    cmd = {
        "ok1": rename("c1", "One"),
        "no_name": command(RENAME, CONNECTOR=CONNECTOR, LINE=LINE, CHAT_ID="c2", USER_ID="u1"),
        "unknown": command("imconnector.no.such.method"),
        "nested": "batch?" + urlencode({"cmd[x]": status()}),
        "ok3": rename("c3", "Three"),
    }
    result = batch(sim, cmd).json()["result"]
    assert list(result["result"]) == ["ok1", "ok3"]
    errors = result["result_error"]
    assert {key: e["error"] for key, e in errors.items()} == {
        "no_name": "ERROR_ARGUMENT",
        "unknown": "ERROR_METHOD_NOT_FOUND",
        "nested": "ERROR_BATCH_METHOD_NOT_ALLOWED",
    }
    assert "NAME" in errors["no_name"]["error_description"]
    assert list(result["result_time"]) == ["ok1", "ok3"]
    names = chat_names(sim)
    assert (names["c1"], names["c3"]) == ("One", "Three")
    _, subs = batch_records(sim)
    assert [(s["method"], s["error"], s["applied"]) for s in subs] == [
        (RENAME, None, True),
        (RENAME, "ERROR_ARGUMENT", False),
        ("imconnector.no.such.method", "ERROR_METHOD_NOT_FOUND", False),
        ("batch", "ERROR_BATCH_METHOD_NOT_ALLOWED", False),
        (RENAME, None, True),
    ]


def test_halt_stops_at_the_first_failing_sub_call(sim: Sim) -> None:
    open_chats(sim, "c1", "c2")
    before = chat_names(sim)["c2"]
    cmd = {
        "first": rename("c1", "Renamed"),
        "broken": rename("ghost-chat", "Nobody"),
        "after": rename("c2", "Never"),
    }
    result = batch(sim, cmd, halt=1).json()["result"]
    assert result["result"] == {"first": {"SUCCESS": True, "DATA": {"RESULT": {}}}}
    assert list(result["result_error"]) == ["broken"]
    assert result["result_error"]["broken"]["error"] == "CHAT_RENAMING_FAILED"
    assert list(result["result_time"]) == ["first"]
    assert chat_names(sim) == {"c1": "Renamed", "c2": before}
    _, subs = batch_records(sim)
    assert [s["params"]["CHAT_ID"] for s in subs] == ["c1", "ghost-chat"]


def test_past_fifty_sub_calls_each_extra_key_fails_and_the_first_fifty_run(sim: Sim) -> None:
    chats = [f"c{i}" for i in range(52)]
    open_chats(sim, *chats)
    response = batch(sim, {f"k{i}": rename(chat, f"N{i}") for i, chat in enumerate(chats)})
    assert response.status_code == 200  # not the whole request (rest_provider.php)
    result = response.json()["result"]
    assert sorted(result["result"]) == sorted(f"k{i}" for i in range(50))
    assert set(result["result_error"]) == {"k50", "k51"}
    assert {e["error"] for e in result["result_error"].values()} == {"ERROR_BATCH_LENGTH_EXCEEDED"}
    names = chat_names(sim)
    assert [names[f"c{i}"] for i in range(50)] == [f"N{i}" for i in range(50)]
    assert names["c50"] != "N50" and names["c51"] != "N51"


@pytest.mark.parametrize("cmd", [None, [], {}, "imconnector.status"])
def test_a_batch_without_commands_is_an_argument_error(sim: Sim, cmd: Any) -> None:
    body = {"auth": sim.token} if cmd is None else {"auth": sim.token, "cmd": cmd}
    response = sim.http.post("/rest/batch", json=body)
    assert response.status_code == 400
    assert response.json()["error"] == "ERROR_ARGUMENT"
    assert len(sim.calls()) == 1


def test_a_batch_of_fifty_costs_one_unit_of_the_leaky_bucket() -> None:
    with running_simulator(
        rate_limit_enabled=True, rate_limit_burst=2, rate_limit_drain=1.0
    ) as sim:
        full = [status() for _ in range(50)]
        for _ in range(2):
            response = batch(sim, full)
            assert response.status_code == 200, response.text
            assert len(response.json()["result"]["result"]) == 50
        refused = batch(sim, full)
        assert refused.status_code == 503
        assert refused.json()["error"] == "QUERY_LIMIT_EXCEEDED"
        calls = sim.calls()
        assert len(calls) == 2 * 51 + 1  # the refused batch logs itself only
        assert calls[-1]["method"] == "batch" and calls[-1]["applied"] is False
        sim.clock.advance(1.0)
        assert sim.call("imconnector.status", {"CONNECTOR": CONNECTOR, "LINE": LINE}).is_success


def test_sub_calls_are_charged_to_their_own_methods_operating_budget() -> None:
    with running_simulator(operating_limit=1.0, operating_cost_per_element=1.0) as sim:
        open_chats(sim, "c1")
        cmd = {"r1": rename("c1", "First"), "r2": rename("c1", "Second"), "s": status()}
        response = batch(sim, cmd)
        assert response.status_code == 200
        body = response.json()
        result = body["result"]
        assert list(result["result"]) == ["r1", "s"]
        assert result["result_error"] == {
            "r2": {
                "error": "OPERATION_TIME_LIMIT",
                "error_description": result["result_error"]["r2"]["error_description"],
            }
        }
        assert result["result_time"]["r1"]["operating"] == pytest.approx(1.0)
        assert result["result_time"]["s"]["operating"] == pytest.approx(1.0)
        # Sub-calls run one after another; the batch itself is charged to no budget.
        assert result["result_time"]["s"]["start"] == pytest.approx(
            result["result_time"]["r1"]["finish"]
        )
        assert body["time"]["operating"] == 0
        assert chat_names(sim) == {"c1": "First"}


def test_imconnector_sub_calls_can_be_refused_at_runtime(sim: Sim) -> None:
    open_chats(sim, "c1")
    before = chat_names(sim)
    limits = sim.http.post("/_sim/limits", json={"batch_imconnector": False}).json()
    assert limits["batch_imconnector"] is False
    result = batch(sim, {"r": rename("c1", "X"), "s": status()}).json()["result"]
    assert result["result"] == []
    assert {key: e["error"] for key, e in result["result_error"].items()} == {
        "r": "ERROR_BATCH_METHOD_NOT_ALLOWED",
        "s": "ERROR_BATCH_METHOD_NOT_ALLOWED",
    }
    assert chat_names(sim) == before
    outer, subs = batch_records(sim)
    assert outer["applied"] is False and all(s["applied"] is False for s in subs)
    # Outside a batch the same methods keep working.
    assert sim.ok(
        RENAME,
        {"CONNECTOR": CONNECTOR, "LINE": LINE, "CHAT_ID": "c1", "USER_ID": "u1", "NAME": "Y"},
    )


def test_imconnector_sub_calls_can_be_refused_by_config() -> None:
    with running_simulator(batch_imconnector=False) as sim:
        open_chats(sim, "c1")
        before = chat_names(sim)
        response = batch(sim, [rename("c1", "X")])
        assert response.status_code == 200
        (error,) = response.json()["result"]["result_error"]
        assert error["error"] == "ERROR_BATCH_METHOD_NOT_ALLOWED"
        assert chat_names(sim) == before


def test_a_bad_outer_token_is_401_and_logs_only_the_batch(sim: Sim) -> None:
    open_chats(sim, "c1")
    before = chat_names(sim)
    response = sim.http.post(
        "/rest/batch", json={"auth": "not-a-token", "cmd": [rename("c1", "X", auth=sim.token)]}
    )
    assert response.status_code == 401
    assert response.json()["error"] == "NO_AUTH_FOUND"
    assert chat_names(sim) == before
    (outer,) = sim.calls(since=1)
    assert (outer["method"], outer["http_status"], outer["error"]) == (
        "batch",
        401,
        "NO_AUTH_FOUND",
    )
    assert sim.token not in str(outer)


def test_a_sub_calls_own_auth_is_ignored_and_redacted(sim: Sim) -> None:
    open_chats(sim, "c1")
    cmd = {"r": rename("c1", "Mine", auth="forged-token"), "s": status() + f"&auth={sim.token}"}
    response = sim.http.post(
        "/rest/batch", json={"cmd": cmd}, headers={"Authorization": f"Bearer {sim.token}"}
    )
    assert response.status_code == 200
    assert list(response.json()["result"]["result"]) == ["r", "s"]
    assert chat_names(sim) == {"c1": "Mine"}
    outer, subs = batch_records(sim)
    assert sim.token not in str(sim.calls()) and "forged-token" not in str(sim.calls())
    assert outer["params"]["CMD"]["r"].endswith("&auth=[REDACTED]")
    assert [s["params"]["AUTH"] for s in subs] == ["[REDACTED]", "[REDACTED]"]


def test_form_encoded_batch_with_numeric_keys_answers_with_lists(sim: Sim) -> None:
    open_chats(sim, "c1", "c2")
    form = {
        "auth": sim.token,
        "halt": "0",
        "cmd[0]": rename("c1", "Form one"),
        "cmd[1]": command(RENAME, CONNECTOR=CONNECTOR, LINE=LINE),
        "cmd[2]": rename("c2", "Form two"),
    }
    response = sim.http.post("/rest/batch.json", data=form)
    assert response.status_code == 200, response.text
    result = response.json()["result"]
    # Keys 0 and 2 succeeded: not 0..n-1, so PHP writes an object; errors the same way.
    assert result["result"] == {
        "0": {"SUCCESS": True, "DATA": {"RESULT": {}}},
        "2": {"SUCCESS": True, "DATA": {"RESULT": {}}},
    }
    assert list(result["result_error"]) == ["1"]
    both = sim.http.post(
        "/rest/batch",
        data={"auth": sim.token, "cmd[0]": status(), "cmd[1]": rename("c2", "Listed")},
    )
    listed = both.json()["result"]
    assert listed["result"][0]["STATUS"] is True
    assert listed["result"][1] == {"SUCCESS": True, "DATA": {"RESULT": {}}}
    assert isinstance(listed["result_time"], list) and len(listed["result_time"]) == 2
    assert listed["result_error"] == []
    assert chat_names(sim) == {"c1": "Form one", "c2": "Listed"}


def test_a_fault_for_batch_fails_the_whole_request(sim: Sim) -> None:
    open_chats(sim, "c1")
    before = chat_names(sim)
    sim.faults(error_rate=1.0, fault_methods=["batch"])
    response = batch(sim, [rename("c1", "X")])
    assert response.status_code == 500
    assert response.json()["error"] == "INTERNAL_SERVER_ERROR"
    assert chat_names(sim) == before
    (outer,) = sim.calls(since=1)
    assert (outer["method"], outer["fault"], outer["applied"]) == ("batch", "error", False)
    # The filter names the outer method: a plain call of the sub-method is not hit.
    assert sim.ok(
        RENAME,
        {"CONNECTOR": CONNECTOR, "LINE": LINE, "CHAT_ID": "c1", "USER_ID": "u1", "NAME": "Z"},
    )
    assert chat_names(sim) == {"c1": "Z"}


def test_a_fault_after_the_batch_applies_it_and_logs_its_sub_calls(sim: Sim) -> None:
    open_chats(sim, "c1")
    sim.faults(error_rate=1.0, fault_phase="after", fault_methods=["batch"])
    assert batch(sim, [rename("c1", "Applied")]).status_code == 500
    assert chat_names(sim) == {"c1": "Applied"}
    outer, (sub,) = batch_records(sim)
    assert (outer["fault"], outer["applied"], outer["http_status"]) == ("error", True, 500)
    assert (sub["method"], sub["applied"], sub["http_status"], sub["fault"]) == (
        RENAME,
        True,
        500,
        None,
    )


def test_a_webhook_batch_runs_but_refuses_imconnector_sub_calls(sim: Sim) -> None:
    open_chats(sim, "c1")
    before = chat_names(sim)
    response = sim.http.post("/rest/1/abcdef123/batch.json", json={"cmd": [rename("c1", "X")]})
    assert response.status_code == 200
    (error,) = response.json()["result"]["result_error"]
    assert error["error"] == "WRONG_AUTH_TYPE"
    assert chat_names(sim) == before


def test_batch_imconnector_is_a_yaml_key_and_a_cli_flag(tmp_path: Path) -> None:
    path = tmp_path / "sim.yaml"
    path.write_text("batch_imconnector: false\n", encoding="utf-8")
    assert SimulatorConfig.from_yaml(path).batch_imconnector is False
    parser = argparse.ArgumentParser()
    add_cli_arguments(parser)
    assert build_config(parser.parse_args([])).batch_imconnector is True
    flagged = build_config(parser.parse_args(["--no-batch-imconnector"]))
    assert flagged.batch_imconnector is False


def test_forced_token_expiry_hits_the_outer_auth_check_once() -> None:
    with running_simulator(token_expiry_every=2) as sim:
        assert batch(sim, [status(), status(), status()]).status_code == 200  # auth check 1
        expired = batch(sim, [status()])  # auth check 2: sub-calls are not counted
        assert expired.status_code == 401
        assert expired.json()["error"] == "expired_token"
        assert [c["method"] for c in sim.calls(method="batch")] == ["batch", "batch"]
