"""The admin CLI (`connector …`, `schemas …`) against a real simulator over loopback."""

from __future__ import annotations

import argparse
import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import pytest
from simulator_fixtures import CONNECTOR, LINE, Sim, running_simulator

import schemas
from consumer.admin.connector import DEFAULT_ICON_SVG, register_commands, svg_data_image
from consumer.admin.schemas import register_schema_commands
from consumer.codec import SchemaRegistryClient
from consumer.core.events import ChatEvent, MessageSent
from consumer.errors import ConfigError

PORTAL = "sim"
HANDLER = "https://app.example.com/connector/settings"
# Simulator tokens are 70 hex characters; nothing that long may reach the output.
LONG_HEX = re.compile(r"[0-9a-f]{40,}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imconnector-consumer")
    sub = parser.add_subparsers(dest="command", required=True)
    register_commands(sub)
    register_schema_commands(sub)
    return parser


def run(*argv: str) -> int:
    """Parse and run like `consumer.cli.main`: a ConfigError exits 2."""
    args = build_parser().parse_args(list(argv))
    try:
        return int(args.func(args))
    except ConfigError:
        return 2


def portal_json(sim: Sim, tokens: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    url = sim.server.url
    return {
        "rest_url": f"{url}/rest/",
        "oauth_url": f"{url}/oauth/token/",
        "client_id": sim.server.config.client_id,
        "client_secret": sim.server.config.client_secret,
        "access_token": tokens["access_token"],
        "refresh_token": tokens["refresh_token"],
        **overrides,
    }


@pytest.fixture
def sim() -> Iterator[Sim]:
    with running_simulator() as running:
        yield running


@pytest.fixture
def configure(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Point the settings at portals (name -> PortalSettings JSON) through IMCONNECTOR_*."""
    monkeypatch.setenv("IMCONNECTOR_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    # load_settings(--config) writes IMCONNECTOR_CONFIG_FILE; set-then-delete restores it.
    monkeypatch.setenv("IMCONNECTOR_CONFIG_FILE", "unset")
    monkeypatch.delenv("IMCONNECTOR_CONFIG_FILE")

    def apply(portals: dict[str, dict[str, Any]]) -> None:
        monkeypatch.setenv("IMCONNECTOR_PORTALS", json.dumps(portals))

    return apply


@pytest.fixture
def portal(sim: Sim, configure: Callable[..., None]) -> Sim:
    """One configured portal, `sim`, seeded with the simulator's token pair."""
    configure({PORTAL: portal_json(sim, sim.tokens)})
    return sim


def calls(sim: Sim, method: str) -> list[dict[str, Any]]:
    return [record.as_dict() for record in sim.server.portal.call_records(method=method)]


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


# -- register ----------------------------------------------------------------------------------


def test_register_sends_real_booleans_and_the_default_icon(
    portal: Sim, capsys: pytest.CaptureFixture[str]
) -> None:
    code = run(
        "connector", "register", "--id", "My_Channel", "--name", "My channel",
        "--placement-handler", HANDLER, "--chat-group", "--no-del-external-messages",
        "--color", "#112233",
    )  # fmt: skip
    assert code == 0
    assert "'my_channel'" in capsys.readouterr().out
    [call] = calls(portal, "imconnector.register")
    params = call["params"]
    assert (call["http_status"], call["error"], call["applied"]) == (200, None, True)
    assert params["ID"] == "my_channel"  # lowercased before sending
    assert params["CHAT_GROUP"] is True
    assert params["DEL_EXTERNAL_MESSAGES"] is False
    assert params["NEED_SIGNATURE"] is True  # documented defaults are sent explicitly
    assert params["ICON"]["COLOR"] == "#112233"
    assert params["ICON"]["DATA_IMAGE"] == svg_data_image(DEFAULT_ICON_SVG)
    assert params["ICON"]["DATA_IMAGE"].startswith("data:image/svg+xml,%3Csvg")
    stored = portal.state()["connectors"]["my_channel"]
    assert stored["name"] == "My channel"
    assert stored["placement_handler"] == HANDLER
    assert stored["flags"]["CHAT_GROUP"] is True
    assert stored["flags"]["DEL_EXTERNAL_MESSAGES"] is False


def test_register_url_encodes_the_icon_file(portal: Sim, tmp_path: Path) -> None:
    svg = '<svg xmlns="http://www.w3.org/2000/svg"><circle r="5" fill="#fff"/></svg>\n'
    icon = tmp_path / "icon.svg"
    icon.write_text(svg, encoding="utf-8")
    code = run(
        "connector", "register", "--id", "iconic", "--name", "Iconic",
        "--placement-handler", HANDLER, "--icon-file", str(icon),
    )  # fmt: skip
    assert code == 0
    [call] = calls(portal, "imconnector.register")
    image = call["params"]["ICON"]["DATA_IMAGE"]
    assert image == "data:image/svg+xml," + quote(svg.strip(), safe="")
    assert unquote(image.split(",", 1)[1]) == svg.strip()
    (tmp_path / "not.svg").write_text("hello", encoding="utf-8")
    assert run(
        "connector", "register", "--id", "x", "--name", "X", "--placement-handler", HANDLER,
        "--icon-file", str(tmp_path / "not.svg"),
    ) == 2  # fmt: skip


def test_register_refuses_a_dot_in_the_id_before_calling(
    portal: Sim, capsys: pytest.CaptureFixture[str]
) -> None:
    args = build_parser().parse_args(
        ["connector", "register", "--id", "my.channel", "--name", "X",
         "--placement-handler", HANDLER]
    )  # fmt: skip
    with pytest.raises(ConfigError, match=r"contains '\.'.*APPLICATION_REGISTRATION_ERROR_POINT"):
        args.func(args)
    assert calls(portal, "imconnector.register") == []
    assert run("connector", "register", "--id", "a", "--name", "A",
               "--placement-handler", "not-a-url") == 2  # fmt: skip
    assert calls(portal, "imconnector.register") == []
    assert capsys.readouterr().out == ""


def test_register_failure_inside_http_200_is_reported_and_exits_1(
    portal: Sim, capsys: pytest.CaptureFixture[str]
) -> None:
    code = run(
        "connector", "register", "--id", "blank", "--name", "", "--placement-handler", HANDLER,
        "--no-local-checks", "--json",
    )  # fmt: skip
    assert code == 1
    captured = capsys.readouterr()
    # --json still shows the raw result; the error is one line on stderr.
    assert json.loads(captured.out) == {
        "result": False, "error": "NAME_REQUIRED",
        "error_description": "The connector name is not specified",
    }  # fmt: skip
    line = one_line(captured.err)
    assert "imconnector.register failed: NAME_REQUIRED" in line
    assert "--name" in line
    [call] = calls(portal, "imconnector.register")
    assert (call["http_status"], call["error"]) == (200, "NAME_REQUIRED")
    assert "blank" not in portal.state()["connectors"]


# -- activate / deactivate / status ----------------------------------------------------------------


def test_activate_sends_1_and_status_shows_it(
    portal: Sim, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("connector", "register", "--id", "chan", "--name", "Chan",
               "--placement-handler", HANDLER) == 0  # fmt: skip
    assert run("connector", "status", "--connector", "chan", "--line", "7", "--json") == 0
    before = capsys.readouterr().out.split("\n", 2)[-1]  # after register's two lines
    assert json.loads(before)["STATUS"] is False

    assert run("connector", "activate", "--connector", "chan", "--line", "7") == 0
    [activate] = calls(portal, "imconnector.activate")
    assert activate["params"]["ACTIVE"] == 1
    assert type(activate["params"]["ACTIVE"]) is int  # not "Y"/"N", not a bool
    assert activate["params"]["LINE"] == 7
    assert "now active on line 7" in capsys.readouterr().out

    assert run("connector", "status", "--connector", "chan", "--line", "7") == 0
    table = dict(line.split(None, 1) for line in capsys.readouterr().out.splitlines())
    assert table == {"LINE": "7", "CONNECTOR": "chan", "ERROR": "false",
                     "CONFIGURED": "true", "STATUS": "true"}  # fmt: skip
    [status_call, _] = calls(portal, "imconnector.status")[::-1]
    assert status_call["params"]["LINE"] == 7  # LINE is always passed


def test_deactivate_sends_0_and_status_goes_false(
    portal: Sim, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("connector", "status", "--connector", CONNECTOR, "--line", str(LINE),
               "--json") == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["STATUS"] is True  # preset demo:1

    assert run("connector", "deactivate", "--connector", CONNECTOR, "--line", str(LINE)) == 0
    [deactivate] = calls(portal, "imconnector.activate")
    assert deactivate["params"]["ACTIVE"] == 0
    assert type(deactivate["params"]["ACTIVE"]) is int
    assert "now inactive on line 1" in capsys.readouterr().out

    assert run("connector", "status", "--connector", CONNECTOR, "--line", str(LINE),
               "--json") == 0  # fmt: skip
    result = json.loads(capsys.readouterr().out)
    assert result == {"LINE": LINE, "CONNECTOR": CONNECTOR, "ERROR": False,
                      "CONFIGURED": False, "STATUS": False}  # fmt: skip
    assert not [line for line in portal.state()["lines"] if line["connector"] == CONNECTOR]


def test_line_must_be_positive(portal: Sim) -> None:
    assert run("connector", "activate", "--connector", CONNECTOR, "--line", "0") == 2
    assert calls(portal, "imconnector.activate") == []


# -- data-set, list, unregister -----------------------------------------------------------------


def test_data_set_stores_the_channel_data(portal: Sim, capsys: pytest.CaptureFixture[str]) -> None:
    code = run(
        "connector", "data-set", "--connector", CONNECTOR, "--line", str(LINE),
        "--id", "demo_line1", "--url", "https://chat.example.com/c/1",
        "--url-im", "https://chat.example.com/im/1", "--name", "Support",
    )  # fmt: skip
    assert code == 0
    assert "ID, URL, URL_IM, NAME" in capsys.readouterr().out
    assert portal.state()["connector_data"][f"{CONNECTOR}|{LINE}"] == {
        "ID": "demo_line1", "URL": "https://chat.example.com/c/1",
        "URL_IM": "https://chat.example.com/im/1", "NAME": "Support",
    }  # fmt: skip
    # Nothing to set is a usage error, caught before any call.
    assert run("connector", "data-set", "--connector", CONNECTOR, "--line", str(LINE)) == 2
    assert len(calls(portal, "imconnector.connector.data.set")) == 1


def test_list_prints_the_connectors(portal: Sim, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("connector", "list") == 0
    rows = [line.split(None, 1) for line in capsys.readouterr().out.splitlines()]
    assert rows[0] == ["ID", "NAME"]
    assert [CONNECTOR, CONNECTOR] in rows
    assert ["livechat", "Live chat"] in rows
    assert run("connector", "list", "--json") == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed[CONNECTOR] == CONNECTOR
    assert listed["telegrambot"] == "Telegram"


def test_unregister_and_its_failure_inside_http_200(
    portal: Sim, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("connector", "unregister", "--id", CONNECTOR) == 0
    assert f"unregistered connector '{CONNECTOR}'" in capsys.readouterr().out
    state = portal.state()
    assert CONNECTOR not in state["connectors"]
    assert not [line for line in state["lines"] if line["connector"] == CONNECTOR]

    assert run("connector", "unregister", "--id", CONNECTOR) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    line = one_line(captured.err)
    assert "imconnector.unregister failed: APPLICATION_UNREGISTRATION_ERROR" in line
    assert "connector list" in line
    second = calls(portal, "imconnector.unregister")[-1]
    assert (second["http_status"], second["error"]) == (200, "APPLICATION_UNREGISTRATION_ERROR")


# -- tokens and errors ------------------------------------------------------------------------


def test_an_expired_access_token_is_refreshed_transparently(
    portal: Sim, capsys: pytest.CaptureFixture[str]
) -> None:
    expired = portal.http.post("/_sim/expire-tokens").json()["expired"]
    assert expired >= 1
    assert run("connector", "status", "--connector", CONNECTOR, "--line", str(LINE),
               "--json") == 0  # fmt: skip
    captured = capsys.readouterr()
    assert json.loads(captured.out)["STATUS"] is True
    statuses = [(c["http_status"], c["error"]) for c in calls(portal, "imconnector.status")]
    assert statuses == [(401, "expired_token"), (200, None)]
    [refresh] = calls(portal, "oauth.token")
    assert (refresh["http_status"], refresh["applied"]) == (200, True)
    # The rotated pair is not kept by the settings store: the operator is told so.
    assert "refreshed" in captured.err
    assert "--token-store kafka" in captured.err


def test_a_wrong_client_secret_is_one_clear_line_and_exit_1(
    sim: Sim, configure: Callable[..., None], capsys: pytest.CaptureFixture[str]
) -> None:
    configure({PORTAL: portal_json(sim, sim.tokens, client_secret="not-the-secret")})
    sim.http.post("/_sim/expire-tokens")
    assert run("connector", "list") == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    line = one_line(captured.err)
    assert "imconnector.list failed: invalid_client" in line
    assert "client_secret" in line
    assert "not-the-secret" not in line
    [refresh] = calls(sim, "oauth.token")
    assert (refresh["http_status"], refresh["error"]) == (401, "invalid_client")


def test_a_webhook_url_gives_wrong_auth_type(
    sim: Sim, configure: Callable[..., None], capsys: pytest.CaptureFixture[str]
) -> None:
    webhook = f"{sim.server.url}/rest/1/k3yc0de/"
    configure({PORTAL: portal_json(sim, sim.tokens, rest_url=webhook)})
    assert run("connector", "list") == 1
    line = one_line(capsys.readouterr().err)
    assert "imconnector.list failed: WRONG_AUTH_TYPE" in line
    assert "application OAuth token, not a webhook" in line
    assert "k3yc0de" not in line


def test_output_never_contains_tokens_or_the_secret(
    portal: Sim, capsys: pytest.CaptureFixture[str]
) -> None:
    everything = []
    for argv in (
        ["connector", "register", "--id", "quiet", "--name", "Quiet",
         "--placement-handler", HANDLER, "--json"],
        ["connector", "activate", "--connector", "quiet", "--line", "3", "--json"],
        ["connector", "data-set", "--connector", "quiet", "--line", "3", "--name", "Q"],
        ["connector", "status", "--connector", "quiet", "--line", "3"],
        ["connector", "list", "--json"],
        ["connector", "unregister", "--id", "nope"],  # a failure line too
        ["connector", "unregister", "--id", "quiet", "--json"],
    ):  # fmt: skip
        run(*argv)
        captured = capsys.readouterr()
        everything.append(captured.out + captured.err)
    portal.http.post("/_sim/expire-tokens")
    assert run("connector", "list") == 0  # through a refresh: new tokens exist now
    captured = capsys.readouterr()
    everything.append(captured.out + captured.err)
    text = "\n".join(everything)
    assert "quiet" in text and "APPLICATION_UNREGISTRATION_ERROR" in text
    for secret in (portal.tokens["access_token"], portal.tokens["refresh_token"],
                   portal.server.config.client_secret):  # fmt: skip
        assert secret not in text
    assert LONG_HEX.findall(text) == []


# -- settings and portal selection ----------------------------------------------------------------


def test_portal_selection_and_config_file(
    sim: Sim,
    configure: Callable[..., None],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    good = portal_json(sim, sim.tokens)
    configure({"beta": good, "alpha": {**good, "client_id": "other"}})
    args = build_parser().parse_args(["connector", "list"])
    with pytest.raises(ConfigError, match=r"several portals are configured \(alpha, beta\)"):
        args.func(args)
    args = build_parser().parse_args(["connector", "list", "--portal", "gamma"])
    with pytest.raises(ConfigError, match=r"'gamma' is not configured; known portals: alpha"):
        args.func(args)
    assert run("connector", "list", "--portal", "beta", "--json") == 0
    assert CONNECTOR in json.loads(capsys.readouterr().out)

    # Without tokens the settings store has nothing to call with: a usage error.
    no_tokens = {k: v for k, v in good.items() if k not in ("access_token", "refresh_token")}
    configure({PORTAL: no_tokens})
    assert run("connector", "list") == 2

    # The portals can come from the YAML file instead.
    config = tmp_path / "consumer.yaml"
    config.write_text(json.dumps({"portals": {"fromfile": good}}), encoding="utf-8")
    monkeypatch.delenv("IMCONNECTOR_PORTALS")
    assert run("connector", "list", "--config", str(config), "--json") == 0
    assert "livechat" in json.loads(capsys.readouterr().out)
    assert run("connector", "list", "--config", str(tmp_path / "missing.yaml")) == 2


# -- schemas ---------------------------------------------------------------------------------------


def test_schemas_list_prints_the_single_object_fingerprints(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from consumer.codec import ChatEventEncoder

    assert run("schemas", "list", "--json") == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["version"] for row in rows] == [v for v, _ in schemas.released_versions()]
    assert rows[-1]["reader"] is True
    event = ChatEvent(
        event_id="00000000-0000-0000-0000-000000000001", portal="p", connector="c", line=1,
        chat_id="c1", occurred_at=1, payload=MessageSent(message_id="m1", text="hi"),
    )  # fmt: skip
    header = ChatEventEncoder("single-object").encode(event)[:10]
    assert rows[-1]["header"] == header.hex()
    assert rows[-1]["fingerprint"] == header[2:].hex()
    assert run("schemas", "list") == 0
    out = capsys.readouterr().out
    assert header[2:].hex() in out and "(reader)" in out


def test_schemas_check_compatible_against_the_registry(
    sim: Sim, capsys: pytest.CaptureFixture[str]
) -> None:
    registry_url = sim.server.registry_url
    # A subject with no versions yet: compatible, and the table says why.
    assert run("schemas", "check", "--registry", registry_url) == 0
    assert "no versions yet" in capsys.readouterr().out
    newest = schemas.released_versions()[-1][1]
    with SchemaRegistryClient(registry_url) as registry:
        schema_id = registry.register("chat-events-value", newest)
    assert run("schemas", "check", "--registry", registry_url) == 0
    out = capsys.readouterr().out
    assert f"chat-events-value v1 (id {schema_id})" in out
    assert "readable" in out
    assert out.rstrip().endswith("compatible")
    assert run("schemas", "check", "--registry", registry_url, "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["compatible"] is True
    assert {row["check"] for row in report["checks"]} == {"local", "registry"}


def test_schemas_check_incompatible_subject_exits_1(
    sim: Sim, capsys: pytest.CaptureFixture[str]
) -> None:
    registry_url = sim.server.registry_url
    other = {"type": "record", "name": "Ticket", "namespace": "t",
             "fields": [{"name": "ticket_no", "type": "long"}]}  # fmt: skip
    with SchemaRegistryClient(registry_url) as registry:
        registry.register("tickets-value", other)
    code = run("schemas", "check", "--registry", registry_url, "--subject", "tickets-value")
    assert code == 1
    out = capsys.readouterr().out
    assert "INCOMPATIBLE" in out
    assert out.rstrip().endswith("NOT compatible")


def test_schemas_check_unreachable_registry_is_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with running_simulator() as stopped:
        url = stopped.server.registry_url
    code = run("schemas", "check", "--registry", url.replace("http://", "http://u:pw@"))
    assert code == 1
    captured = capsys.readouterr()
    line = one_line(captured.err)
    assert "schema registry" in line and "ConnectError" in line
    assert "pw" not in line
    assert run("schemas", "check", "--registry", "ftp://x") == 2


def test_local_check_fails_when_an_old_version_is_unreadable(
    sim: Sim, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    v1 = schemas.released_versions()[-1][1]
    # v2 adds a required field without a default: v1 records cannot be read with it.
    broken = json.loads(json.dumps(v1))
    broken["fields"].append({"name": "tenant", "type": "string"})
    monkeypatch.setattr(schemas, "released_versions", lambda: ((1, v1), (2, broken)))
    assert run("schemas", "check", "--registry", sim.server.registry_url) == 1
    out = capsys.readouterr().out
    assert "bundled v1 -> v2" in out and "NOT READABLE" in out and "tenant" in out
    # With a default it resolves, and every payload branch of v1 was exercised.
    fixed = json.loads(json.dumps(broken))
    fixed["fields"][-1]["default"] = "t1"
    monkeypatch.setattr(schemas, "released_versions", lambda: ((1, v1), (2, fixed)))
    assert run("schemas", "check", "--registry", sim.server.registry_url, "--json") == 0
    report = json.loads(capsys.readouterr().out)
    local = [row for row in report["checks"] if row["check"] == "local"]
    assert [row["ok"] for row in local] == [True, True]


# -- the service's token topic ---------------------------------------------------------------------


@pytest.mark.kafka
def test_token_store_kafka_reads_and_keeps_the_rotated_pair(
    sim: Sim,
    configure: Callable[..., None],
    monkeypatch: pytest.MonkeyPatch,
    kafka_bootstrap: str,
    topic_factory: Callable[..., str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    from consumer.bitrix.oauth import TokenSet
    from consumer.kafka.tokens import KafkaTokenStore
    from consumer.settings import load_settings

    topic = topic_factory(1)
    monkeypatch.setenv("IMCONNECTOR_KAFKA__BOOTSTRAP_SERVERS", kafka_bootstrap)
    monkeypatch.setenv("IMCONNECTOR_TOKENS_TOPIC", topic)
    # The settings hold no pair: it comes from the topic only.
    bare = {k: v for k, v in portal_json(sim, sim.tokens).items()
            if k not in ("access_token", "refresh_token")}  # fmt: skip
    configure({PORTAL: bare})
    store = KafkaTokenStore(load_settings())
    seeded_at = time.time()
    store.save(PORTAL, TokenSet(
        access_token=sim.tokens["access_token"], refresh_token=sim.tokens["refresh_token"],
        expires_at=seeded_at + 3600, client_endpoint=f"{sim.server.url}/rest/",
        issued_at=seeded_at,
    ))  # fmt: skip

    sim.http.post("/_sim/expire-tokens")
    assert run("connector", "list", "--token-store", "kafka", "--json") == 0
    captured = capsys.readouterr()
    assert CONNECTOR in json.loads(captured.out)
    assert f"saved it to topic {topic}" in captured.err
    kept = store.load(PORTAL)
    assert kept is not None and kept.issued_at > seeded_at
    assert kept.refresh_token != sim.tokens["refresh_token"]
    # A second run starts from the kept pair: no refresh needed.
    assert run("connector", "list", "--token-store", "kafka") == 0
    assert capsys.readouterr().err == ""
    assert len(calls(sim, "oauth.token")) == 1


def test_register_help_shows_both_forms_of_each_flag(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["connector", "register", "--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    for option in ("--chat-group", "--no-chat-group", "--no-del-external-messages",
                   "--no-need-signature", "--icon-file", "--placement-handler"):  # fmt: skip
        assert option in text
    assert "--no-local-checks" not in text  # hidden
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["connector"])
    assert exited.value.code == 2
