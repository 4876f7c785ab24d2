"""Secret redaction for anything that leaves the process as text (logs, headers, outcomes)."""

from __future__ import annotations

import re

_PATTERNS = (
    re.compile(
        r"(?i)((?:access_token|refresh_token|client_secret|auth|password|sasl\.password)"
        r"[\"']?\s*[=:]\s*[\"']?)([^\"'&\s,}]+)"
    ),
    re.compile(r"(?i)(bearer\s+)([A-Za-z0-9._~+/=-]+)"),
)


def redact(text: str) -> str:
    """Replace the values of token, secret and password fields in `text` with `***`."""
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + "***", text)
    return text
