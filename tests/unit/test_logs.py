"""Logs that parse: librdkafka's own lines and errors go through the JSON logger, and
fields given with `extra=` are kept."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

from consumer.logs import JsonFormatter

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
