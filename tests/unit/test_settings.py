"""Settings fail fast on names that do not exist, read secret files, and keep secrets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from consumer.errors import ConfigError
from consumer.kafka.clients import consumer_config, producer_config
from consumer.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
BOOTSTRAP = {"IMCONNECTOR_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:9092"}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.upper().startswith("IMCONNECTOR_"):
            monkeypatch.delenv(key)


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.upper().startswith("IMCONNECTOR_")}
    return subprocess.run(
        [sys.executable, "-m", "consumer", "run", *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )


def test_a_misspelt_variable_exits_2_with_did_you_mean() -> None:
    done = run_cli({**BOOTSTRAP, "IMCONNECTOR_ENGINE__BATCHSIZE": "7"})
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "imconnector-consumer: configuration error: IMCONNECTOR_ENGINE__BATCHSIZE is not a "
        "known setting: did you mean IMCONNECTOR_ENGINE__BATCH_SIZE?"
    ]


@pytest.mark.parametrize(
    ("name", "suggestion"),
    [
        ("IMCONNECTOR_GROUPID", "IMCONNECTOR_GROUP_ID"),
        ("IMCONNECTOR_PORTALS__P1__CLIENT_SECRT", "IMCONNECTOR_PORTALS__P1__CLIENT_SECRET"),
        ("IMCONNECTOR_KAFKA__SASL_PASWORD", "IMCONNECTOR_KAFKA__SASL_PASSWORD"),
        ("IMCONNECTOR_SCHEMA_REGISTRY__URL", "IMCONNECTOR_SCHEMA_REGISTRY_URL"),
    ],
)
def test_unknown_variables_are_named_with_the_close_spelling(
    monkeypatch: pytest.MonkeyPatch, name: str, suggestion: str
) -> None:
    monkeypatch.setenv("IMCONNECTOR_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    monkeypatch.setenv(name, "x")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert f"{name} is not a known setting: did you mean {suggestion}?" in str(caught.value)


def test_pass_through_and_reserved_variables_are_known(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMCONNECTOR_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    monkeypatch.setenv("IMCONNECTOR_KAFKA__CONFIG__LINGER.MS", "7")
    monkeypatch.setenv("IMCONNECTOR_SEED_ACCESS_TOKEN", "not-a-setting-but-known")
    monkeypatch.setenv("IMCONNECTOR_PORTALS__P1__REST_URL", "https://p1.bitrix24.com/rest/")
    monkeypatch.setenv("IMCONNECTOR_PORTALS__P1__CLIENT_ID", "app")
    monkeypatch.setenv("IMCONNECTOR_PORTALS__P1__CLIENT_SECRET", "cs")
    settings = load_settings()
    assert settings.kafka.librdkafka()["linger.ms"] == "7"
    assert settings.portals["p1"].client_id == "app"


def test_an_unknown_config_file_key_exits_2_with_did_you_mean(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("kafka:\n  bootstrap_servers: 10.0.0.1:9092\nengine:\n  batchsize: 7\n")
    done = run_cli({}, "--config", str(config))
    assert done.returncode == 2
    assert done.stderr.strip().endswith(
        "config file key engine.batchsize is not a known setting: did you mean engine.batch_size?"
    )


def test_secrets_come_from_files_in_the_secrets_dir(tmp_path: Path) -> None:
    (tmp_path / "IMCONNECTOR_KAFKA__SASL_PASSWORD").write_text("from-a-file\n")
    (tmp_path / "imconnector_schema_registry_password").write_text("sr-pass")
    (tmp_path / "..data").mkdir()  # what a Kubernetes Secret volume holds besides the keys
    settings = load_settings(
        secrets_dir=tmp_path,
        kafka={"bootstrap_servers": "127.0.0.1:9092"},
        schema_registry_url="http://registry.kafka.svc:8081",
        schema_registry_username="sr-user",
    )
    assert settings.kafka.librdkafka()["sasl.password"] == "from-a-file"
    assert settings.schema_registry_password is not None
    assert settings.schema_registry_password.get_secret_value() == "sr-pass"
    assert "from-a-file" not in json.dumps(settings.masked_dump()) + repr(settings)


def test_a_misspelt_secret_file_and_a_missing_secrets_dir_are_errors(tmp_path: Path) -> None:
    (tmp_path / "IMCONNECTOR_KAFKA__SASL_PASWORD").write_text("x")
    with pytest.raises(ConfigError, match="did you mean IMCONNECTOR_KAFKA__SASL_PASSWORD"):
        load_settings(secrets_dir=tmp_path, kafka={"bootstrap_servers": "a:1"})
    with pytest.raises(ConfigError, match="secrets directory /nonexistent/s does not exist"):
        load_settings(secrets_dir="/nonexistent/s", kafka={"bootstrap_servers": "a:1"})


SECRET_KEYS = {
    "sasl.password": "v-sasl",
    "sasl.oauthbearer.client.secret": "v-oidc",
    "sasl.oauthbearer.config": "principal=admin secret=v-unsecure",
    "ssl.key.pem": "-----BEGIN PRIVATE KEY-----v-pem-----END PRIVATE KEY-----",
    "ssl.key.password": "v-keypass",
    "ssl.keystore.password": "v-keystore",
}


def test_secret_librdkafka_keys_are_masked_in_every_dump(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMCONNECTOR_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    monkeypatch.setenv("IMCONNECTOR_KAFKA__CONFIG", json.dumps({**SECRET_KEYS, "linger.ms": "5"}))
    settings = load_settings()
    shown = json.dumps(settings.masked_dump()) + repr(settings) + str(settings.kafka)
    for value in SECRET_KEYS.values():
        assert value not in shown
    assert settings.masked_dump()["kafka"]["config"]["linger.ms"] == "5"
    conf = settings.kafka.librdkafka()  # what librdkafka gets is the real value
    assert {key: conf[key] for key in SECRET_KEYS} == SECRET_KEYS


def test_any_http_registry_url_is_accepted_and_credentials_stay_out_of_it() -> None:
    settings = load_settings(
        kafka={"bootstrap_servers": "a:1"},
        schema_registry_url="http://schema-registry.kafka.svc:8081/",
    )
    assert settings.schema_registry_url == "http://schema-registry.kafka.svc:8081"
    with pytest.raises(ConfigError, match="not in the URL"):
        load_settings(
            kafka={"bootstrap_servers": "a:1"},
            schema_registry_url="https://user:pw@registry.example.com",
        )
    with pytest.raises(ConfigError, match="needs both"):
        load_settings(
            kafka={"bootstrap_servers": "a:1"},
            schema_registry_url="https://registry.example.com",
            schema_registry_username="u",
        )
    with pytest.raises(ConfigError, match=r"CA bundle /nonexistent/ca\.pem does not exist"):
        load_settings(
            kafka={"bootstrap_servers": "a:1"},
            schema_registry_url="https://registry.example.com",
            schema_registry_ca_location="/nonexistent/ca.pem",
        )


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"group_id": "my group"}, "IMCONNECTOR_GROUP_ID: group id 'my group' is not a legal"),
        ({"source_topics": "chat events"}, "IMCONNECTOR_SOURCE_TOPICS: topic 'chat events'"),
        ({"outcomes_topic": "out/comes"}, "IMCONNECTOR_OUTCOMES_TOPIC"),
        ({"source_topics": ".."}, "is not a legal Kafka name"),
        ({"dlq_topic_template": "{topic}:dlq"}, "dlq_topic_template gives topic"),
    ],
)
def test_illegal_kafka_names_are_config_errors(overrides: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError, match="legal Kafka name") as caught:
        load_settings(kafka={"bootstrap_servers": "a:1"}, **overrides)
    assert needle in str(caught.value)


def test_static_membership_is_off_by_default_and_keyed_on_instance_id() -> None:
    deployment = load_settings(kafka={"bootstrap_servers": "a:1"}, instance_id="web-7f9c-x2")
    assert "group.instance.id" not in consumer_config(deployment)
    stateful = load_settings(
        kafka={"bootstrap_servers": "a:1", "static_membership": True},
        group_id="g",
        instance_id="imconnector-consumer-2",
    )
    assert consumer_config(stateful)["group.instance.id"] == "g-imconnector-consumer-2"
    assert producer_config(stateful)["transactional.id"] == "imconnector-g-imconnector-consumer-2"
