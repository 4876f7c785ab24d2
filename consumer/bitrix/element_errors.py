"""Per-element `ERRORS` of send/update/delete.messages: localized texts -> stable codes.

A real portal fills `RESULT[i].ERRORS` with the *texts* of its errors in the portal's
language (docs: "array of error texts"; server `provider/base/input.php::receivingMessage`
takes `getErrorMessages()`), plus the text `CUser` left when it refused to create the
customer (`connectors/base.php::addUser`). Dead letters, alerts and `dlq redrive --code`
need a code, so the texts the server ships are mapped back to the code they stand for.
The texts come from the server's language files (English and Russian), quoted in
`KNOWN_TEXTS` with their sources; `#NAME#` is a placeholder the server fills in. A text
not known here gets `ELEMENT_REJECTED`; the dead letter keeps the full text either way.
"""

# ruff: noqa: RUF001 - Russian texts as the server ships them (Cyrillic on purpose)
from __future__ import annotations

import re
from collections.abc import Iterable

ELEMENT_REJECTED = "ELEMENT_REJECTED"

# code -> the texts that stand for it. Sources (bitrix24-core-corp mirror @ ca1b99a5 and
# bitrix-core-business): imconnector `lang/{en,ru}/lib/library.php` for the IMCONNECTOR_*
# messages, main `lang/{en,ru}/classes/general/user.php` for the CUser ones.
KNOWN_TEXTS: dict[str, tuple[str, ...]] = {
    # `base.php::processingInputNewAndUpdateMessage` / `processingUserAndChat`: no user or
    # chat block, or neither text nor files.
    "IMCONNECTOR_NOT_ALL_THE_REQUIRED_DATA": (
        "Incomplete data",
        "Переданы не все необходимые данные",
    ),
    # `base.php::processingUser`: the customer could not be created or found.
    "CONNECTOR_PROXY_NO_ADD_USER": (
        "Cannot create or get user mapped to external messenger user.",
        "Не удалось создать или получить пользователя системы, сопоставленного с "
        "пользователем удаленного мессенджера",
    ),
    # `base.php::getUserByUserCode`: `user.id` missing.
    "CONNECTOR_PROXY_NO_USER_IM": (
        "Failed to get IM user ID.",
        "Не получен id пользователя мессенджера",
    ),
    # `input.php::processingMessage`: an unknown `type_message`.
    "IMCONNECTOR_ERROR_PROVIDER_UNSUPPORTED_TYPE_INCOMING_MESSAGE": (
        "Unsupported type of inbound server message",
        "Неподдерживаемый тип входящего сообщения от серввера.",
    ),
    # `CUser::CheckFields` for an external user: the email is not one `check_email` takes.
    "WRONG_EMAIL": ("Incorrect E-Mail", "Неверный email."),
    # `CUser::CheckFields` with the portal's "unique email" option on.
    "USER_WITH_EMAIL_EXIST": (
        "A user with this e-mail address (#EMAIL#) already exists.",
        "Пользователь с таким email (#EMAIL#) уже существует.",
    ),
}

_MARKUP = re.compile(r"<br\s*/?>", re.IGNORECASE)


def _normal(text: str) -> str:
    """Case, markup (`CUser` appends `<br>`), spacing and the final full stop do not count."""
    return " ".join(_MARKUP.sub(" ", text).split()).rstrip(".").casefold()


def _pattern(text: str) -> re.Pattern[str]:
    parts = re.split(r"#[A-Z_]+#", text)
    return re.compile(".+".join(re.escape(_normal(part)) for part in parts))


_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    (_pattern(text), code) for code, texts in KNOWN_TEXTS.items() for text in texts
]


def code_of_text(text: str) -> str | None:
    """The code `text` stands for, or None. A text that is itself a known code (older
    servers and some stand-ins report codes) is that code."""
    stripped = text.strip()
    if stripped in KNOWN_TEXTS:
        return stripped
    normal = _normal(stripped)
    for pattern, code in _PATTERNS:
        if pattern.fullmatch(normal):
            return code
    return None


def element_error_code(errors: Iterable[str]) -> str:
    """The code of a failed element: that of its first known text (`CUser`'s own reason
    comes before the generic one), else `ELEMENT_REJECTED`."""
    for text in errors:
        code = code_of_text(text)
        if code is not None:
            return code
    return ELEMENT_REJECTED
