"""The push handler's guards and the inbound settings, without a broker: application tokens,
replays, the request rate, pull lag, and settings errors that name the setting."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from pydantic import SecretStr

from consumer.errors import ConfigError
from consumer.inbound.pull import PortalQueue
from consumer.inbound.push import ApplicationTokens, ReplayGuard, RequestRate
from consumer.settings import PortalSettings, load_settings


def portal(**extra: object) -> PortalSettings:
    return PortalSettings(
        rest_url="https://p.example.com/rest/", client_id="c", client_secret="s", **extra
    )


def test_tokens_find_the_portal_by_member_id_or_key() -> None:
    tokens = ApplicationTokens(
        {
            "shop": portal(member_id="ABC123", application_token=SecretStr("t1")),
            "d897063e1ce7c5eb9f04b9751eef5915": portal(application_token=SecretStr("t2")),
        }
    )
    assert tokens.portal_for("abc123") == "shop"
    assert tokens.portal_for("D897063E1CE7C5EB9F04B9751EEF5915") == (
        "d897063e1ce7c5eb9f04b9751eef5915"
    )
    assert tokens.portal_for("shop") is None  # a portal with member_id is known by it only
    assert tokens.portal_for(None) is None
    assert tokens.matches("shop", "t1")
    assert not tokens.matches("shop", "t2") and not tokens.matches("shop", None)


def test_a_token_file_is_read_again_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("one\n")
    tokens = ApplicationTokens({"p": portal(application_token_file=str(path))})
    assert tokens.matches("p", "one")
    path.write_text("two\n")
    os.utime(path, (1, 1))
    assert tokens.matches("p", "two") and not tokens.matches("p", "one")
    path.unlink()
    assert tokens.expected("p") is None


def test_both_token_settings_are_refused() -> None:
    with pytest.raises(ConfigError, match="application_token_file"):
        ApplicationTokens(
            {"p": portal(application_token=SecretStr("t"), application_token_file="/x")}
        )


def test_replays_are_claimed_once_and_released_on_failure() -> None:
    guard = ReplayGuard(capacity=2)
    assert guard.claim(["a", "b"]) == {"a", "b"}
    assert guard.claim(["a"]) == set()  # being stored right now
    guard.release(["a"])
    assert guard.claim(["a"]) == {"a"}
    guard.confirm(["a", "b"])
    assert guard.claim(["a", "b", "c"]) == {"c"}
    guard.confirm(["c"])  # capacity 2: the oldest id is forgotten
    assert guard.claim(["a"]) == {"a"}


def test_request_rate_allows_a_burst_then_refuses() -> None:
    rate = RequestRate(rate=0.001, burst=3)
    assert [rate.try_take() for _ in range(4)] == [True, True, True, False]


def test_pull_lag_is_the_oldest_uncleared_event_or_the_time_since_the_queue_was_empty() -> None:
    queue = PortalQueue()
    assert queue.lag() == 0.0
    queue.oldest_ms = int((time.time() - 42) * 1000)
    assert 41 <= queue.lag() <= 60
    queue.oldest_ms = None
    queue.empty_at = time.time() - 100
    queue.retry_at = time.monotonic() + 30  # the queue cannot be read right now
    assert 99 <= queue.lag() <= 120


def test_inbound_settings_errors_name_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMCONNECTOR_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    monkeypatch.setenv("IMCONNECTOR_INBOUND__PUSH_PATH", "events")
    with pytest.raises(ConfigError, match="IMCONNECTOR_INBOUND__PUSH_PATH"):
        load_settings()
    monkeypatch.setenv("IMCONNECTOR_INBOUND__PUSH_PATH", "/hooks/b24")
    monkeypatch.setenv("IMCONNECTOR_INBOUND__PULL_IN_SERVICE", "true")
    settings = load_settings()
    assert settings.inbound.push_path == "/hooks/b24" and settings.inbound.pull_in_service
    monkeypatch.setenv("IMCONNECTOR_INBOUND__WIRE", "xml")
    with pytest.raises(ConfigError, match="IMCONNECTOR_INBOUND__WIRE"):
        load_settings()


def test_the_application_token_never_shows_in_the_masked_dump(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("IMCONNECTOR_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    monkeypatch.setenv(
        "IMCONNECTOR_PORTALS",
        '{"p": {"rest_url": "https://p.example.com/rest/", "client_id": "c", '
        '"client_secret": "s", "application_token": "app-token-sentinel"}}',
    )
    assert "app-token-sentinel" not in str(load_settings().masked_dump())


def test_pull_in_the_service_needs_a_portal(monkeypatch: pytest.MonkeyPatch) -> None:
    from prometheus_client import CollectorRegistry

    from consumer.bitrix.oauth import MemoryTokenStore
    from consumer.inbound.service import InboundInService
    from consumer.observability.metrics import Metrics

    monkeypatch.setenv("IMCONNECTOR_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    monkeypatch.setenv("IMCONNECTOR_INBOUND__PULL_IN_SERVICE", "true")
    with pytest.raises(ConfigError, match="IMCONNECTOR_PORTALS"):
        InboundInService(load_settings(), Metrics(CollectorRegistry()), MemoryTokenStore())
