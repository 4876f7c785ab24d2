"""Secret redaction for anything that leaves the process as text (logs, headers, outcomes)."""

from __future__ import annotations

import re

# Names whose values are secrets: tokens, passwords and secrets, librdkafka's dotted keys
# included (sasl.password, ssl.keystore.password, sasl.oauthbearer.client.secret), and the
# application_token Bitrix24 signs its event posts with.
_HIDDEN_NAMES = (
    r"(?:access_token|refresh_token|application_token|client_secret|auth"
    r"|[\w.-]*password|[\w.-]*secret|[\w.-]*passphrase|sasl\.oauthbearer\.config)"
)
_HIDDEN_FIELD = re.compile(rf"(?i){_HIDDEN_NAMES}")

_NAMED = re.compile(
    # name=value, "name": "value", 'name': 'value', and a form's auth[name]=value (Bitrix24
    # posts event handlers' auth that way; %5D is the encoded bracket). A quoted value is
    # replaced up to its closing quote; a value that opens an object or a list is left to
    # the names inside it.
    rf"(?i)({_HIDDEN_NAMES}(?:\]|%5D)?[\"']?\s*[=:]\s*)"
    r"(\"[^\"]*\"|'[^']*'|(?![{\[])[^\"'&\s,}]+)"
)
_UNNAMED = (
    re.compile(r"(?i)(bearer\s+)([A-Za-z0-9._~+/=-]+)"),
    # A private key in PEM (ssl.key.pem) wherever it appears.
    re.compile(
        r"(-----BEGIN [A-Z ]*PRIVATE KEY-----)(.*?)(?=-----END [A-Z ]*PRIVATE KEY-----)", re.S
    ),
)


def _hide_value(match: re.Match[str]) -> str:
    """The name and its separator kept; the value's quotes kept around `***`."""
    value = match.group(2)
    quote = value[0] if value[0] in "'\"" else ""
    return f"{match.group(1)}{quote}***{quote}"


def redact(text: str) -> str:
    """Replace the values of token, secret and password fields in `text` with `***`."""
    text = _NAMED.sub(_hide_value, text)
    for pattern in _UNNAMED:
        text = pattern.sub(lambda m: m.group(1) + "***", text)
    return text


def secret_name(name: str) -> bool:
    """Whether a field called `name` holds a secret (for structured output: log fields)."""
    return _HIDDEN_FIELD.fullmatch(name) is not None
