"""Bad configuration exits non-zero with one line naming the setting and the fix."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from consumer.errors import ConfigError
from consumer.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("IMCONNECTOR_")}
    return subprocess.run(
        [sys.executable, "-m", "consumer", "run", *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def portal(url: str) -> str:
    return json.dumps({"p1": {"rest_url": url, "client_id": "app", "client_secret": "s3cr3t"}})


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({}, "IMCONNECTOR_KAFKA__BOOTSTRAP_SERVERS is required"),
        (
            {"IMCONNECTOR_KAFKA__BOOTSTRAP_SERVERS": "localhost"},
            "IMCONNECTOR_KAFKA__BOOTSTRAP_SERVERS: 'localhost' is not host:port",
        ),
        (
            {
                "IMCONNECTOR_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:9092",
                "IMCONNECTOR_PORTALS": portal("portal.example.com/rest"),
            },
            "IMCONNECTOR_PORTALS__P1__REST_URL: rest_url 'portal.example.com/rest' is not an",
        ),
        (
            {
                "IMCONNECTOR_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:9092",
                "IMCONNECTOR_PORTALS": portal("http://portal.example.com/rest/"),
            },
            "must use https",
        ),
        (
            {
                "IMCONNECTOR_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:9092",
                "IMCONNECTOR_ENGINE__BATCH_SIZE": "0",
            },
            "IMCONNECTOR_ENGINE__BATCH_SIZE",
        ),
        (
            {
                "IMCONNECTOR_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:9092",
                "IMCONNECTOR_ENGINE__UNKNOWN_OUTCOME_POLICY": "retry",
            },
            "IMCONNECTOR_ENGINE__UNKNOWN_OUTCOME_POLICY",
        ),
        (
            {
                "IMCONNECTOR_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:9092",
                "IMCONNECTOR_PORTALS": "{not json",
            },
            "take JSON",
        ),
    ],
)
def test_bad_config_exits_2_with_one_line(env, needle):
    done = run_cli(env)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("imconnector-consumer: configuration error: ")
    assert needle in lines[0]
    assert "s3cr3t" not in done.stderr + done.stdout


def test_missing_config_file_is_named():
    done = run_cli(
        {"IMCONNECTOR_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:9092"},
        "--config",
        "/nonexistent/imconnector.yaml",
    )
    assert done.returncode == 2
    assert "config file /nonexistent/imconnector.yaml does not exist" in done.stderr


def test_yaml_file_is_read_and_env_overrides_it(tmp_path, monkeypatch):
    for key in list(os.environ):
        if key.startswith("IMCONNECTOR_"):
            monkeypatch.delenv(key)
    config = tmp_path / "c.yaml"
    config.write_text(
        "kafka:\n  bootstrap_servers: 10.0.0.1:9092\ngroup_id: from-file\n"
        "engine:\n  batch_size: 7\n"
    )
    monkeypatch.setenv("IMCONNECTOR_GROUP_ID", "from-env")
    settings = load_settings(config)
    assert settings.kafka.bootstrap_servers == "10.0.0.1:9092"
    assert settings.group_id == "from-env" and settings.engine.batch_size == 7
    monkeypatch.setenv("IMCONNECTOR_ENGINE__BATCH_SIZE", "-1")
    with pytest.raises(ConfigError, match="IMCONNECTOR_ENGINE__BATCH_SIZE"):
        load_settings(config)


def test_secrets_are_masked_in_the_settings_dump(monkeypatch):
    monkeypatch.setenv("IMCONNECTOR_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    monkeypatch.setenv("IMCONNECTOR_KAFKA__SASL_PASSWORD", "kafka-pass")
    monkeypatch.setenv(
        "IMCONNECTOR_PORTALS",
        json.dumps(
            {
                "p": {
                    "rest_url": "https://x.bitrix24.com/rest/",
                    "client_id": "a",
                    "client_secret": "cs",
                    "refresh_token": "rt-secret",
                }
            }
        ),
    )
    dump = json.dumps(load_settings().masked_dump())
    assert "kafka-pass" not in dump and "rt-secret" not in dump and '"cs"' not in dump
    assert load_settings().kafka.librdkafka()["sasl.password"] == "kafka-pass"
