"""Looking a send up on the portal (`consumer.bitrix.readback`): which reads, and what the
answers mean (reference `bitrix24-readback.md`)."""

from __future__ import annotations

from typing import Any

import pytest

from consumer.bitrix.readback import (
    DIALOG,
    HISTORY,
    Lookup,
    Read,
    Verdict,
    fallback_reason,
    parse_dialog,
    parse_history,
    stored_forms,
    user_code,
)
from consumer.core.state import PortalChat
from consumer.simulator.openlines import OpenLines
from consumer.simulator.sessions import SessionReads

CUSTOMER = 450
KNOWN = PortalChat(session_id=469, chat_id=1982, user_id=CUSTOMER)


def element(message_id: Any = "m1", **message: Any) -> dict[str, Any]:
    return {"user": {"id": "u1"}, "message": {"id": message_id, **message}, "chat": {"id": "c1"}}


def lookup(message_id: Any = "m1", known: PortalChat | None = KNOWN, **message: Any) -> Lookup:
    return Lookup(element(message_id, **message), known, "Demo", 1, "c1")


def history(
    *messages: tuple[int, list[str] | None],
    session: int = 469,
    open_now: int | None = 469,
    users: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A history answer shaped like the docs' sample (`imopenlines-session-history-get.md`)."""
    items = {}
    for index, (sender, mids) in enumerate(messages):
        params: Any = {"connectorMid": mids} if mids is not None else []
        items[str(19000 + index)] = {
            "id": str(19000 + index),
            "senderid": str(sender),
            "params": params,
        }
    chat: dict[str, Any] = {"id": "1982", "entityType": "LINES"}
    if open_now is not None:
        chat["entityData1"] = f"N|NONE|0|N|N|{open_now}|1684478426|0|0|0"
    return {
        "chatId": 1982,
        "sessionId": session,
        "message": items or [],
        "users": users or {str(CUSTOMER): {"id": str(CUSTOMER), "connector": True}},
        "chat": {"1982": chat},
    }


@pytest.mark.parametrize(
    ("sent", "forms"),
    [
        ("m1", {"m1"}),
        ("  m1\n", {"m1"}),
        (12345, {"12345"}),
        ("x" * 100, {"x" * 100}),
        ("y" * 150, {"y" * 100, "y" * 97 + "..."}),
        ("0", set()),
        ("", set()),
        ("   ", set()),
        (None, set()),
    ],
)
def test_the_id_is_compared_in_the_forms_the_portal_stores(sent: Any, forms: set[str]) -> None:
    assert stored_forms(sent) == frozenset(forms)


def test_the_user_code_is_connector_line_chat_and_bitrix_user() -> None:
    assert user_code("Demo", 7, "chat-9", 101) == "demo|7|chat-9|101"


def test_the_known_session_is_read_first() -> None:
    assert lookup().first() == Read(HISTORY, {"SESSION_ID": 469})


def test_a_message_of_the_customer_with_the_id_means_present() -> None:
    probe = lookup()
    probe.first()
    verdict = probe.answered(HISTORY, history((CUSTOMER, ["m0"]), (CUSTOMER, ["m1"])))
    assert verdict == Verdict("present", where=KNOWN)


def test_the_id_missing_from_the_current_session_means_missing() -> None:
    probe = lookup()
    probe.first()
    assert probe.answered(HISTORY, history((CUSTOMER, ["m0"]), (0, None))).outcome == "missing"


def test_an_operator_message_with_the_same_id_does_not_count() -> None:
    probe = lookup()
    probe.first()
    answer = history((7, ["m1"]), users={"7": {"connector": False}})
    assert probe.answered(HISTORY, answer).outcome == "missing"


def test_a_send_on_an_operators_behalf_is_found_under_that_operator() -> None:
    probe = lookup(user_id=7)
    probe.first()
    assert probe.answered(HISTORY, history((7, ["m1"]))).outcome == "present"


def test_a_long_id_is_found_in_its_stored_form() -> None:
    long_id = "z" * 130
    probe = lookup(long_id)
    probe.first()
    answer = history((CUSTOMER, ["z" * 97 + "..."]))
    assert probe.answered(HISTORY, answer).outcome == "present"


def test_a_deleted_message_has_no_params_and_counts_as_missing() -> None:
    probe = lookup()
    probe.first()
    deleted: dict[str, Any] = history((CUSTOMER, None))
    next(iter(deleted["message"].values()))["params"] = {"isDeleted": "Y"}
    assert probe.answered(HISTORY, deleted).outcome == "missing"


def test_a_chat_that_moved_to_a_newer_session_is_read_there() -> None:
    probe = lookup()
    probe.first()
    step = probe.answered(HISTORY, history((CUSTOMER, ["m0"]), open_now=470))
    assert step == Read(HISTORY, {"SESSION_ID": 470})
    found = probe.answered(HISTORY, history((CUSTOMER, ["m1"]), session=470, open_now=470))
    assert found == Verdict("present", where=PortalChat(470, 1982, CUSTOMER))


def test_a_chat_without_an_open_session_falls_back() -> None:
    # A message added to a closed session keeps no id (the closed-with-vote path).
    probe = lookup()
    probe.first()
    verdict = probe.answered(HISTORY, history((CUSTOMER, ["m0"]), open_now=0))
    assert verdict == Verdict("fallback", "session_closed")


def test_without_a_session_the_chat_is_found_by_its_user_code() -> None:
    probe = lookup(known=PortalChat(user_id=CUSTOMER))
    assert probe.first() == Read(DIALOG, {"USER_CODE": f"demo|1|c1|{CUSTOMER}"})
    dialog = {"id": 1982, "entity_id": "demo|1|c1|450", "entity_data_1": "N|NONE|0|N|N|469|1|0|0|0"}
    assert probe.answered(DIALOG, dialog) == Read(HISTORY, {"SESSION_ID": 469})
    assert probe.answered(HISTORY, history((CUSTOMER, ["m1"]))).where == KNOWN


def test_a_dialog_without_an_open_session_falls_back() -> None:
    probe = lookup(known=PortalChat(user_id=CUSTOMER))
    probe.first()
    dialog = {"id": 1982, "entity_data_1": "N|NONE|0|N|N|0|1|0|0|0"}
    assert probe.answered(DIALOG, dialog) == Verdict("fallback", "session_closed")


@pytest.mark.parametrize(
    ("known", "message_id", "reason"),
    [
        (None, "m1", "no_user"),
        (PortalChat(chat_id=5), "m1", "no_user"),
        (KNOWN, "0", "id_not_kept"),
    ],
)
def test_nothing_to_look_up_falls_back_at_once(
    known: PortalChat | None, message_id: str, reason: str
) -> None:
    assert lookup(message_id, known).first() == Verdict("fallback", reason)


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        ("ACCESS_DENIED", "access_denied"),
        ("ACCESS_ERROR", "access_denied"),
        ("insufficient_scope", "access_denied"),
        ("ERROR_METHOD_NOT_FOUND", "method_missing"),
        ("INTERNAL_SERVER_ERROR", "read_error"),
        (None, "read_error"),
    ],
)
def test_a_refused_read_falls_back_with_its_reason(code: str | None, reason: str) -> None:
    assert fallback_reason(code, "permanent") == reason
    assert lookup().refused(code, "permanent") == Verdict("fallback", reason)


@pytest.mark.parametrize(
    "answer",
    [None, [], {"chatId": 1}, {"sessionId": 469, "chatId": 1982, "message": "x"}],
)
def test_an_answer_of_another_shape_is_unreadable(answer: Any) -> None:
    assert parse_history(answer) is None
    probe = lookup()
    probe.first()
    assert probe.answered(HISTORY, answer) == Verdict("fallback", "unreadable")


def test_a_history_without_the_chats_session_field_cannot_say_missing() -> None:
    probe = lookup()
    probe.first()
    verdict = probe.answered(HISTORY, history((CUSTOMER, ["m0"]), open_now=None))
    assert verdict == Verdict("fallback", "unreadable")


def test_an_empty_session_comes_as_a_list_and_reads_as_no_messages() -> None:
    parsed = parse_history(history())
    assert parsed is not None and parsed.messages == [] and parsed.current_session == 469
    assert parse_dialog({"id": "1982", "entity_data_1": "N|NONE|0|N|N|469"}) == (1982, 469)
    assert parse_dialog({"id": 1982}) is None


def test_lookups_stop_after_a_few_reads() -> None:
    probe = lookup()
    probe.first()
    probe.answered(HISTORY, history(open_now=470))
    probe.answered(HISTORY, history(session=470, open_now=471))
    assert probe.answered(HISTORY, history(session=471, open_now=472)).outcome == "fallback"


def test_the_simulators_answers_read_as_the_docs_sample_does() -> None:
    openlines = OpenLines()
    openlines.preset_line("demo", 1)
    reply = openlines.send_messages(
        {
            "CONNECTOR": "demo",
            "LINE": 1,
            "MESSAGES": [element("m1", text="hi"), element("m2", text="hi")],
        }
    )
    first = reply["DATA"]["RESULT"][0]
    known = PortalChat(
        int(first["session"]["ID"]), int(first["session"]["CHAT_ID"]), int(first["user"])
    )
    reads = SessionReads(openlines, user_id=1)
    for message_id, outcome in (("m2", "present"), ("m3", "missing")):
        probe = Lookup(element(message_id), known, "demo", 1, "c1")
        step = probe.first()
        assert isinstance(step, Read)
        assert probe.answered(HISTORY, reads.history(step.params)).outcome == outcome
    by_code = Lookup(element("m1"), PortalChat(user_id=known.user_id), "demo", 1, "c1")
    step = by_code.first()
    assert isinstance(step, Read) and step.method == DIALOG
    step = by_code.answered(DIALOG, reads.dialog(step.params))
    assert step == Read(HISTORY, {"SESSION_ID": known.session_id})
