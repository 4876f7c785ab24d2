"""The event contract as typed Python values: `ChatEvent` and its six payload kinds.

Pure data, no I/O. `schemas/` holds the Avro definition; `consumer.codec.decoder` turns bytes
into these objects and back.
"""

from __future__ import annotations

from typing import Literal, TypeAlias

from consumer.core.frozen import frozen

# The chat key is also the Kafka record key: "portal|connector|line|chat_id".
ChatKey: TypeAlias = str


def chat_key(portal: str, connector: str, line: int, chat_id: str) -> ChatKey:
    """Build the record key that puts every event of one chat on one partition."""
    return f"{portal}|{connector}|{line}|{chat_id}"


@frozen
class ExternalUser:
    """The customer on the external side (`MESSAGES[].user`)."""

    id: str
    name: str | None = None
    last_name: str | None = None
    picture_url: str | None = None
    url: str | None = None
    gender: str | None = None
    email: str | None = None
    phone: str | None = None


@frozen
class File:
    """An attachment Bitrix24 downloads from `url`."""

    url: str
    name: str | None = None


@frozen
class ChatRenamed:
    """The external chat got a new title: `imconnector.chat.name.set`."""

    name: str
    kind: Literal["ChatRenamed"] = "ChatRenamed"


@frozen
class MessageSent:
    """A customer message: `imconnector.send.messages` (not idempotent on the portal)."""

    message_id: str
    text: str | None = None
    files: tuple[File, ...] = ()
    chat_name: str | None = None
    chat_url: str | None = None
    disable_crm: bool = False
    operator_id: int | None = None
    kind: Literal["MessageSent"] = "MessageSent"


@frozen
class MessageEdited:
    """A customer edited a message: `imconnector.update.messages`."""

    message_id: str
    text: str | None = None
    files: tuple[File, ...] = ()
    kind: Literal["MessageEdited"] = "MessageEdited"


@frozen
class MessageDeleted:
    """A customer deleted a message: `imconnector.delete.messages`."""

    message_id: str
    kind: Literal["MessageDeleted"] = "MessageDeleted"


@frozen
class DeliveryConfirmed:
    """An operator message reached the customer: `imconnector.send.status.delivery`."""

    im_chat_id: int
    im_message_id: int
    message_ids: tuple[str, ...]
    delivered_at: int | None = None
    kind: Literal["DeliveryConfirmed"] = "DeliveryConfirmed"


@frozen
class ReadConfirmed:
    """The customer read an operator message: `imconnector.send.status.reading`."""

    im_chat_id: int
    im_message_id: int
    message_ids: tuple[str, ...]
    kind: Literal["ReadConfirmed"] = "ReadConfirmed"


Payload: TypeAlias = (
    ChatRenamed | MessageSent | MessageEdited | MessageDeleted | DeliveryConfirmed | ReadConfirmed
)

PAYLOAD_KINDS: tuple[str, ...] = (
    "ChatRenamed",
    "MessageSent",
    "MessageEdited",
    "MessageDeleted",
    "DeliveryConfirmed",
    "ReadConfirmed",
)


@frozen
class ChatEvent:
    """One decoded chat event (architecture §2)."""

    event_id: str
    portal: str
    connector: str
    line: int
    chat_id: str
    occurred_at: int  # epoch milliseconds
    payload: Payload
    sequence: int | None = None
    user: ExternalUser | None = None

    @property
    def key(self) -> ChatKey:
        """The chat key (`portal|connector|line|chat_id`)."""
        return chat_key(self.portal, self.connector, self.line, self.chat_id)

    @property
    def kind(self) -> str:
        """The payload's union branch name, e.g. `MessageSent`."""
        return self.payload.kind
