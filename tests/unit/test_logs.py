"""Logs that parse and keep no secret: librdkafka's own lines and errors go through the JSON
logger, fields given with `extra=` are kept with their JSON types, and secrets are hidden
whether in the message, a field's value, a field named like one, or a traceback."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from consumer.logs import JsonFormatter, TextFormatter, logging_setup, setup_logging

ROOT = Path(__file__).resolve().parents[2]

# Every kind of client against a port nobody listens on: a broker outage.
OUTAGE = r"""
import logging, socket, time
from confluent_kafka import Consumer, KafkaException, Producer
from consumer.kafka.clients import consumer_config, producer_config
from consumer.logs import setup_logging
from consumer.settings import load_settings

probe = socket.socket()
probe.bind(("127.0.0.1", 0))
port = probe.getsockname()[1]
probe.close()  # closed: connections are refused
setup_logging("json", "INFO")
settings = load_settings(kafka={"bootstrap_servers": f"127.0.0.1:{port}"})
seen = set()

class Seen(logging.Handler):
    def emit(self, record):
        seen.add(record.getMessage().split(" ", 1)[0])

logging.getLogger("consumer.kafka.librdkafka").addHandler(Seen())
consumer = Consumer(consumer_config(settings))
consumer.subscribe(["chat-events"])
producer = Producer(producer_config(settings, **{"transaction.timeout.ms": 2000}))
try:
    producer.init_transactions(2)
except KafkaException as exc:
    logging.getLogger("test").warning("init_transactions failed", extra={"kafka": str(exc)})
deadline = time.monotonic() + 30
while time.monotonic() < deadline and not {"FAIL", "1/1"} <= seen:
    consumer.consume(timeout=0.1)
    producer.poll(0.1)
logging.getLogger("test").info("done", extra={"portal": "p1", "attempt": 3})
consumer.close()
"""


def test_a_broker_outage_writes_only_json_lines() -> None:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("IMCONNECTOR_")}
    done = subprocess.run(
        [sys.executable, "-c", OUTAGE],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stderr.splitlines()
    assert not [line for line in lines if re.match(r"%\d+\|", line)], done.stderr[:2000]
    docs = [json.loads(line) for line in lines]  # every line parses
    from_librdkafka = [d for d in docs if d["logger"] == "consumer.kafka.librdkafka"]
    assert any("Connect to" in d["msg"] for d in from_librdkafka)  # a log line (FAIL)
    assert any(d.get("kafka_error") == "_ALL_BROKERS_DOWN" for d in from_librdkafka)  # error_cb
    # librdkafka may still log from consumer.close(), after "done": find the line by its text.
    done_line = next(d for d in docs if d["logger"] == "test" and d["msg"] == "done")
    assert {"portal": "p1", "attempt": 3}.items() <= done_line.items()


def test_extra_fields_are_kept_and_redacted() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "sent %s", ("it",), None)
    record.portal = "p1"
    record.partition = 0
    record.response = "refresh_token=abc123 was refused"
    doc = json.loads(JsonFormatter().format(record))
    assert doc["msg"] == "sent it"
    assert doc["portal"] == "p1" and doc["partition"] == 0
    assert "abc123" not in doc["response"]


def test_secret_librdkafka_values_are_redacted_from_log_lines() -> None:
    record = logging.LogRecord(
        "consumer.kafka.librdkafka",
        logging.WARNING,
        __file__,
        1,
        "conf: sasl.oauthbearer.client.secret=oidc-1 ssl.keystore.password=ks-2 "
        "ssl.key.pem=-----BEGIN PRIVATE KEY-----\nMIIEpem3\n-----END PRIVATE KEY-----",
        (),
        None,
    )
    line = JsonFormatter().format(record)
    for secret in ("oidc-1", "ks-2", "MIIEpem3"):
        assert secret not in line


def _record(msg: str = "sent %s", args: tuple[object, ...] = ("it",), **extra: object) -> str:
    record = logging.LogRecord("consumer.x", logging.INFO, __file__, 1, msg, args, None)
    record.__dict__.update(extra)
    return JsonFormatter().format(record)


def test_a_json_line_keeps_extra_fields_with_their_json_types() -> None:
    line = _record(portal="p1", offset=12, lag_s=0.5, ready=True, nothing=None, ids=["m1"])
    doc = json.loads(line)
    assert doc["level"] == "info" and doc["logger"] == "consumer.x" and doc["msg"] == "sent it"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", doc["ts"])
    assert (doc["portal"], doc["offset"], doc["lag_s"], doc["ready"]) == ("p1", 12, 0.5, True)
    assert "nothing" not in doc  # a None field is left out
    assert doc["ids"] == "['m1']"  # anything else as text


def test_an_extra_field_named_like_a_secret_never_shows_its_value() -> None:
    line = _record(access_token="tok-1", refresh_token="ref-2", client_secret="sec-3", auth="a-4")
    doc = json.loads(line)
    for name, secret in (
        ("access_token", "tok-1"),
        ("refresh_token", "ref-2"),
        ("client_secret", "sec-3"),
        ("auth", "a-4"),
    ):
        assert doc[name] == "***"
        assert secret not in line


def test_secrets_inside_extra_values_messages_and_tracebacks_are_redacted() -> None:
    try:
        raise RuntimeError("POST /rest/x?auth=tok-5 refused")
    except RuntimeError:
        exc_info = sys.exc_info()
    record = logging.LogRecord(
        "consumer.x", logging.ERROR, __file__, 1, "calling %s", ("x?auth=tok-6",), exc_info
    )
    record.request = {"headers": {"Authorization": "Bearer tok-7"}}
    line = JsonFormatter().format(record)
    doc = json.loads(line)
    assert "RuntimeError" in doc["exc"]
    for secret in ("tok-5", "tok-6", "tok-7"):
        assert secret not in line
    assert "tok-5" not in TextFormatter().format(record)


def test_an_extra_cannot_overwrite_the_lines_own_fields() -> None:
    doc = json.loads(_record(level="fake", ts="then", logger="other", exc="none"))
    assert doc["level"] == "info" and doc["logger"] == "consumer.x"
    assert doc["ts"] != "then" and "exc" not in doc


def test_a_record_with_newlines_is_still_one_line() -> None:
    line = _record("first\nsecond %s", ("third\nfourth",), note="a\nb")
    assert "\n" not in line
    assert json.loads(line)["msg"] == "first\nsecond third\nfourth"


def test_the_text_format_redacts_too() -> None:
    record = logging.LogRecord(
        "consumer.x", logging.WARNING, __file__, 1, "refresh_token=%s", ("ref-8",), None
    )
    line = TextFormatter().format(record)
    assert "ref-8" not in line and "WARNING" in line and "consumer.x" in line


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    """The root logger, put back as it was after the test."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, logging.getLogger("httpx").level)
    yield root
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    logging.getLogger("httpx").setLevel(saved[2])


@pytest.mark.parametrize(("fmt", "formatter"), [("json", JsonFormatter), ("text", TextFormatter)])
def test_setup_logging_installs_one_handler_with_the_asked_format(
    root_logger: logging.Logger, fmt: str, formatter: type[logging.Formatter]
) -> None:
    setup_logging(fmt, "DEBUG")
    (handler,) = root_logger.handlers
    assert isinstance(handler.formatter, formatter)
    assert root_logger.level == logging.DEBUG
    assert logging.getLogger("httpx").level == logging.WARNING  # its URLs carry tokens
    assert logging_setup() == (fmt, "DEBUG")
