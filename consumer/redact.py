"""Secret redaction for anything that leaves the process as text (logs, headers, outcomes)."""

from __future__ import annotations

import re

_PATTERNS = (
    # name=value / "name": "value" for tokens, passwords and secrets, librdkafka's dotted
    # keys included (sasl.password, ssl.keystore.password, sasl.oauthbearer.client.secret).
    re.compile(
        r"(?i)((?:access_token|refresh_token|client_secret|auth|[\w.]*password|[\w.]*secret"
        r"|[\w.]*passphrase|sasl\.oauthbearer\.config)"
        r"[\"']?\s*[=:]\s*[\"']?)([^\"'&\s,}]+)"
    ),
    re.compile(r"(?i)(bearer\s+)([A-Za-z0-9._~+/=-]+)"),
    # A private key in PEM (ssl.key.pem) wherever it appears.
    re.compile(
        r"(-----BEGIN [A-Z ]*PRIVATE KEY-----)(.*?)(?=-----END [A-Z ]*PRIVATE KEY-----)", re.S
    ),
)


def redact(text: str) -> str:
    """Replace the values of token, secret and password fields in `text` with `***`."""
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + "***", text)
    return text
