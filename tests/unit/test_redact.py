"""Secret redaction for text that leaves the process: every form a token, secret or password
takes in our logs, dead-letter headers and error messages, and nothing else touched."""

from __future__ import annotations

import pytest

from consumer.redact import redact, secret_name


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # name=value, as in URLs, librdkafka's config dumps and our own messages
        ("GET /rest/x?auth=tok1&chat=5", "GET /rest/x?auth=***&chat=5"),
        ("access_token=tok1 refresh_token=ref1", "access_token=*** refresh_token=***"),
        ("ACCESS_TOKEN=tok1", "ACCESS_TOKEN=***"),
        ("client_secret: sec1", "client_secret: ***"),
        (
            "sasl.password=pw1 ssl.keystore.password=pw2",
            "sasl.password=*** ssl.keystore.password=***",
        ),
        ("ssl.key.passphrase=pp1", "ssl.key.passphrase=***"),
        ("sasl.oauthbearer.client.secret=oidc1", "sasl.oauthbearer.client.secret=***"),
        ("sasl.oauthbearer.config=principal1", "sasl.oauthbearer.config=***"),
        ("x-api-secret=k2, next", "x-api-secret=***, next"),
        # JSON and Python reprs
        ('{"access_token": "tok1", "n": 1}', '{"access_token": "***", "n": 1}'),
        ("{'refresh_token': 'ref1'}", "{'refresh_token': '***'}"),
        ('{"password":"pw1"}', '{"password":"***"}'),
        # headers
        ("Authorization: Bearer abc.def-1", "Authorization: Bearer ***"),
        ("authorization: bearer abc", "authorization: bearer ***"),
    ],
)
def test_secret_values_are_replaced(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # a quoted value is replaced whole, blanks and all
        ('{"password": "with space"}', '{"password": "***"}'),
        ("{'client_secret': 'a b c'}", "{'client_secret': '***'}"),
        (
            'sasl.oauthbearer.config="principal=admin extension_key=k1"',
            'sasl.oauthbearer.config="***"',
        ),
        # Bitrix24 posts event handlers' auth as a form: auth[access_token]=...
        (
            "auth[access_token]=tok1&auth[application_token]=app1&auth[domain]=p.example",
            "auth[access_token]=***&auth[application_token]=***&auth[domain]=p.example",
        ),
        ("auth%5Brefresh_token%5D=ref1&x=1", "auth%5Brefresh_token%5D=***&x=1"),
        ("application_token=app1", "application_token=***"),
        # a nested object keeps its shape; its secret members are replaced
        (
            '{"auth": {"access_token": "tok1", "domain": "p.example"}}',
            '{"auth": {"access_token": "***", "domain": "p.example"}}',
        ),
    ],
)
def test_quoted_bracketed_and_nested_secrets_are_replaced_whole(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_a_private_key_keeps_its_markers_and_loses_its_body() -> None:
    pem = (
        "key: -----BEGIN RSA PRIVATE KEY-----\nMIIEsecret\nline2\n-----END RSA PRIVATE KEY----- ok"
    )
    assert redact(pem) == "key: -----BEGIN RSA PRIVATE KEY-----***-----END RSA PRIVATE KEY----- ok"


@pytest.mark.parametrize(
    "text",
    [
        "sent 3 messages to chat c-1 of portal p.example",
        "author=bob chat_id=5 token_count=3",
        "HTTP 503 QUERY_LIMIT_EXCEEDED: Too many requests",
        '{"portal": "p1", "MESSAGES": [{"message": {"id": ["m1"], "text": "hi"}}]}',
        "",
    ],
)
def test_text_without_secrets_is_unchanged(text: str) -> None:
    assert redact(text) == text


def test_every_secret_in_a_text_is_replaced_and_redaction_is_stable() -> None:
    text = "auth=t1&refresh_token=t2 Bearer t3 {'password': 't4'} client_secret=t5"
    once = redact(text)
    assert not any(f"t{i}" in once for i in range(1, 6)), once
    assert redact(once) == once


@pytest.mark.parametrize(
    "name",
    [
        "access_token",
        "REFRESH_TOKEN",
        "auth",
        "client_secret",
        "application_token",
        "sasl.password",
    ],
)
def test_secret_field_names(name: str) -> None:
    assert secret_name(name)


@pytest.mark.parametrize("name", ["portal", "chat_id", "author", "token_count", "http_status"])
def test_other_field_names(name: str) -> None:
    assert not secret_name(name)
