"""`@frozen` classes: frozen for the type checker, plain slotted dataclasses at run time."""

from __future__ import annotations

import pickle
from pathlib import Path

from mypy import api as mypy_api

from consumer.core.events import ChatEvent, ExternalUser, File, MessageSent

ROOT = Path(__file__).resolve().parents[3]


def _event() -> ChatEvent:
    return ChatEvent(
        "e1",
        "p",
        "c",
        1,
        "x",
        5,
        MessageSent("m1", "hi", (File("https://files.example/a.png", "a.png"),)),
        sequence=3,
        user=ExternalUser("u1", name="Ann"),
    )


def test_values_are_equal_hashable_slotted_and_picklable() -> None:
    first, second = _event(), _event()
    assert first == second and first is not second
    assert hash(first) == hash(second)
    assert len({first, second}) == 1
    assert not hasattr(first, "__dict__")
    assert pickle.loads(pickle.dumps(first)) == first
    assert _event() != ChatEvent("e2", "p", "c", 1, "x", 5, MessageSent("m1"))


def test_the_type_checker_refuses_to_change_a_field(tmp_path: Path) -> None:
    snippet = tmp_path / "mutates.py"
    snippet.write_text(
        "from consumer.core.events import ChatEvent, MessageSent\n"
        "from consumer.core.fold import Outcome\n"
        "def change(event: ChatEvent, payload: MessageSent, outcome: Outcome) -> None:\n"
        "    event.sequence = 4\n"
        "    payload.text = 'edited'\n"
        "    outcome.code = 'X'\n"
    )
    out, _, status = mypy_api.run(
        ["--strict", "--no-incremental", "--cache-dir=/dev/null", str(snippet)]
    )
    assert status == 1, out
    assert out.count("is read-only") == 3, out
    for line in (4, 5, 6):
        assert f"mutates.py:{line}: error" in out, out
