"""Bitrix24 REST error codes as the simulator answers them, and the exception that carries one.

Per-element failures are reported as texts, as a real portal does (`element_texts`).
"""

# ruff: noqa: RUF001 - Russian texts as the server ships them (Cyrillic on purpose)

from __future__ import annotations

# Whole-call errors (reference §3, §5.4).
ERROR_ARGUMENT = "ERROR_ARGUMENT"
NOT_ACTIVE_LINE = "NOT_ACTIVE_LINE"
IMCONNECTOR_NO_CORRECT_PROVIDER = "IMCONNECTOR_NO_CORRECT_PROVIDER"
CHAT_RENAMING_FAILED = "CHAT_RENAMING_FAILED"
ERROR_METHOD_NOT_FOUND = "ERROR_METHOD_NOT_FOUND"
WRONG_AUTH_TYPE = "WRONG_AUTH_TYPE"
NO_AUTH_FOUND = "NO_AUTH_FOUND"
EXPIRED_TOKEN = "expired_token"  # noqa: S105 - an error code, not a secret
INVALID_TOKEN = "invalid_token"  # noqa: S105 - an error code, not a secret
QUERY_LIMIT_EXCEEDED = "QUERY_LIMIT_EXCEEDED"
OPERATION_TIME_LIMIT = "OPERATION_TIME_LIMIT"
INTERNAL_SERVER_ERROR = "INTERNAL_SERVER_ERROR"
# `batch` (reference §8): the whole request, or one sub-call in `result_error`.
ERROR_BATCH_LENGTH_EXCEEDED = "ERROR_BATCH_LENGTH_EXCEEDED"
ERROR_BATCH_METHOD_NOT_ALLOWED = "ERROR_BATCH_METHOD_NOT_ALLOWED"

# Failures that imconnector.register/unregister report inside an HTTP 200 `result` (§3.1, §3.6).
APPLICATION_REGISTRATION_ERROR_POINT = "APPLICATION_REGISTRATION_ERROR_POINT"
CONNECTOR_ID_REQUIRED = "CONNECTOR_ID_REQUIRED"
NAME_REQUIRED = "NAME_REQUIRED"
ICON_REQUIRED = "ICON_REQUIRED"
NO_PLACEMENT_HANDLER = "NO_PLACEMENT_HANDLER"
APPLICATION_UNREGISTRATION_ERROR = "APPLICATION_UNREGISTRATION_ERROR"

# Per-element failures of send/update/delete.messages: a real portal puts the *texts* of
# its errors into `ERRORS`, in the portal's language (docs: "array of error texts"; server
# `provider/base/input.php::receivingMessage` uses `getErrorMessages()`). The codes below
# name them here; `element_texts` gives what the portal says.
NOT_ALL_THE_REQUIRED_DATA = "IMCONNECTOR_NOT_ALL_THE_REQUIRED_DATA"
PROXY_NO_ADD_USER = "CONNECTOR_PROXY_NO_ADD_USER"
PROXY_NO_USER_IM = "CONNECTOR_PROXY_NO_USER_IM"
WRONG_EMAIL = "WRONG_EMAIL"

# Sources: imconnector `lang/{en,ru}/lib/library.php` (IMCONNECTOR_*), main
# `lang/{en,ru}/classes/general/user.php` (WRONG_EMAIL, which `CUser` ends with "<br>").
ELEMENT_TEXTS: dict[str, dict[str, str]] = {
    "en": {
        NOT_ALL_THE_REQUIRED_DATA: "Incomplete data",
        PROXY_NO_ADD_USER: "Cannot create or get user mapped to external messenger user.",
        PROXY_NO_USER_IM: "Failed to get IM user ID.",
        WRONG_EMAIL: "Incorrect E-Mail<br>",
    },
    "ru": {
        NOT_ALL_THE_REQUIRED_DATA: "Переданы не все необходимые данные",
        PROXY_NO_ADD_USER: "Не удалось создать или получить пользователя системы, "
        "сопоставленного с пользователем удаленного мессенджера",
        PROXY_NO_USER_IM: "Не получен id пользователя мессенджера",
        WRONG_EMAIL: "Неверный email.<br>",
    },
}
GUEST_NAME = {"en": "Guest", "ru": "Гость"}  # IMCONNECTOR_GUEST_USER, connectors/base.php


def element_texts(language: str, codes: list[str]) -> list[str]:
    """What `ERRORS` holds for these failures on a portal speaking `language`."""
    texts = ELEMENT_TEXTS.get(language, ELEMENT_TEXTS["en"])
    return [texts[code] for code in codes]


# OAuth server errors (§7).
INVALID_GRANT = "invalid_grant"
INVALID_CLIENT = "invalid_client"
INVALID_REQUEST = "invalid_request"


class RestError(Exception):
    """A whole-call failure: `code` and `description` become the error envelope.

    `in_result` marks the methods that report failure inside an HTTP 200 `result`
    (register/unregister) instead of as an error envelope.
    """

    def __init__(
        self, code: str, description: str, status: int = 400, *, in_result: bool = False
    ) -> None:
        super().__init__(f"{code}: {description}")
        self.code = code
        self.description = description
        self.status = status
        self.in_result = in_result


def argument_error(name: str) -> RestError:
    """The 400 `ERROR_ARGUMENT` Bitrix24 raises for a required parameter that is missing."""
    return RestError(ERROR_ARGUMENT, f"Argument '{name}' is null or empty")
