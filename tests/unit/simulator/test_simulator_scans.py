"""The simulator's JSON scans give what a full walk gives: lower-cased MESSAGES keys and a
redacted call log, for any request, whatever its keys and text."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from consumer.simulator.calllog import REDACTED, SECRET_KEYS, redact
from consumer.simulator.params import lower_keys_deep

# Keys that try to slip past a scan: secret names in any case, upper-case letters behind an
# escaped quote or a backslash, a Kelvin sign (lower-cases to "k"), Cyrillic capitals.
_TRICKY_KEYS = [
    "auth",
    "AUTH",
    "Access_Token",
    "ACCESS_TO\u212aEN",
    "client_secret",
    "PassWord",
    'a"B',
    "x\\Y",
    "ИМЯ",
    "text",
    "user",
    "ID",
]
keys = st.one_of(st.sampled_from(_TRICKY_KEYS), st.text(max_size=8))
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.text(max_size=12),
    st.sampled_from(['"auth":', 'say "AUTH": hi', "Ω", "\\"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=4)),
    max_leaves=20,
)


def _lowered(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k).lower(): _lowered(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_lowered(v) for v in value]
    return value


def _redacted(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: REDACTED if str(k).lower() in SECRET_KEYS else _redacted(v) for k, v in value.items()
        }
    if isinstance(value, list):
        return [_redacted(v) for v in value]
    return value


@given(values)
def test_lower_keys_deep_matches_a_full_walk(value: Any) -> None:
    assert lower_keys_deep(value) == _lowered(value)


@given(st.dictionaries(keys, values, max_size=5))
def test_redact_matches_a_full_walk(params: dict[str, Any]) -> None:
    assert redact(params) == _redacted(params)


def test_a_message_with_secret_looking_text_keeps_its_text() -> None:
    text = 'my "auth": is "ACCESS_TOKEN": 42'
    params = {"AUTH": "t0k3n", "MESSAGES": [{"message": {"id": "m1", "text": text}}]}
    logged = redact(params)
    assert logged["AUTH"] == REDACTED
    assert logged["MESSAGES"][0]["message"]["text"] == text
    assert "t0k3n" not in repr(logged)


def test_a_nested_secret_is_redacted_at_any_depth() -> None:
    params = {"DATA": [{"inner": {"Refresh_Token": "r3fr3sh", "keep": "me"}}]}
    logged = redact(params)
    assert logged == {"DATA": [{"inner": {"Refresh_Token": REDACTED, "keep": "me"}}]}
    assert params["DATA"][0]["inner"]["Refresh_Token"] == "r3fr3sh"  # the request is intact


def test_upper_case_keys_are_lowered_and_lower_case_ones_kept() -> None:
    messages = [{"User": {"ID": "u1"}, "message": {"id": "m1", "text": "Hello There"}}]
    assert lower_keys_deep(messages) == [
        {"user": {"id": "u1"}, "message": {"id": "m1", "text": "Hello There"}}
    ]
    plain = [{"user": {"id": "u1"}, "message": {"text": "Hello There"}}]
    assert lower_keys_deep(plain) == plain
