"""Realistic chat traffic for the demo, the benchmark and the tests.

Each chat gets a script in sequence order (first a customer message, then a mix of
messages, edits, deletes, renames and delivery/read confirmations); `interleave` mixes
chats and can inject duplicates and out-of-order delivery within a chat.
"""

from __future__ import annotations

import random
import time
import uuid
import zlib
from dataclasses import dataclass

from consumer.core.events import (
    ChatEvent,
    ChatRenamed,
    DeliveryConfirmed,
    ExternalUser,
    File,
    MessageDeleted,
    MessageEdited,
    MessageSent,
    Payload,
    ReadConfirmed,
)

FIRST_NAMES = (
    "Anna",
    "Boris",
    "Chen",
    "Dana",
    "Emil",
    "Fatima",
    "Goran",
    "Hana",
    "Ivan",
    "Julia",
    "Kemal",
    "Lena",
    "Marco",
    "Nadia",
    "Oleg",
    "Priya",
)
LAST_NAMES = ("Ivanova", "Schmidt", "Garcia", "Kowalski", "Nguyen", "Okafor", "Rossi", "Sato")
# What messengers really hand over as names, much of it outside what Bitrix24 accepts
# (letters, spaces, `-`, `'`, at most 25 characters): the service cleans them.
WILD_NAMES = (
    "R2D2",
    "Anna 🌸",
    "J. Smith",
    "Maximilian-Alexander Christopher",
    "O\u2019Brien",
    "Мария",
    "李小龙",
    "user_4711",
)
TEXTS = (
    "Hello, I have a question about my order",
    "Is delivery possible tomorrow?",
    "Thanks!",
    "Can you send the invoice again?",
    "The parcel arrived damaged",
    "What are your opening hours?",
    "[b]Urgent[/b]: please call me back",
    "Order #{n} still not shipped",
    "Could I change the address?",
    "ok",
)


@dataclass(frozen=True, slots=True)
class Mix:
    """Relative weights of the event kinds after a chat's first message."""

    send: int = 50
    edit: int = 12
    delete: int = 6
    rename: int = 8
    delivery: int = 14
    read: int = 10


def chat_script(
    rng: random.Random,
    portal: str,
    connector: str,
    line: int,
    chat_id: str,
    n_events: int,
    mix: Mix = Mix(),
    with_sequence: bool = True,
    start_ms: int | None = None,
    first_sequence: int = 1,
    user: ExternalUser | None = None,
    user_on_sends_only: bool = False,
) -> list[ChatEvent]:
    """The events of one chat in order (sequence first..first+n-1 when `with_sequence`).

    `user` is the customer (a random one unless given). `user_on_sends_only`: as many
    producers do, only new messages carry the customer; edits, deletes, renames and
    confirmations come without a user block.
    """
    if user is None:
        user = ExternalUser(
            id=f"user-{chat_id}", name=rng.choice(FIRST_NAMES), last_name=rng.choice(LAST_NAMES)
        )
    at = start_ms if start_ms is not None else int(time.time() * 1000)
    sent: list[str] = []
    im_message = rng.randint(1000, 9000)
    events: list[ChatEvent] = []
    kinds = ("send", "edit", "delete", "rename", "delivery", "read")
    weights = (mix.send, mix.edit, mix.delete, mix.rename, mix.delivery, mix.read)
    for index in range(n_events):
        number = first_sequence + index
        kind = "send" if number == 1 else rng.choices(kinds, weights)[0]
        payload: Payload
        if kind in ("edit", "delete") and not sent:
            kind = "send" if first_sequence == 1 else "rename"
        if kind == "send":
            message_id = f"{chat_id}-m{number}"
            sent.append(message_id)
            files = (
                (File(f"https://files.example.com/{message_id}.jpg", "photo.jpg"),)
                if rng.random() < 0.05
                else ()
            )
            payload = MessageSent(
                message_id=message_id,
                text=rng.choice(TEXTS).format(n=rng.randint(100, 999)),
                files=files,
            )
        elif kind == "edit":
            payload = MessageEdited(
                message_id=rng.choice(sent), text="(edited) " + rng.choice(TEXTS).format(n=index)
            )
        elif kind == "delete":
            payload = MessageDeleted(message_id=rng.choice(sent))
        elif kind == "rename":
            payload = ChatRenamed(name=f"{user.name} {user.last_name} #{index}")
        elif kind == "delivery":
            im_message += 1
            payload = DeliveryConfirmed(
                im_chat_id=zlib.crc32(chat_id.encode()) % 100000,
                im_message_id=im_message,
                message_ids=(f"op-{chat_id}-{im_message}",),
                delivered_at=at,
            )
        else:
            payload = ReadConfirmed(
                im_chat_id=zlib.crc32(chat_id.encode()) % 100000,
                im_message_id=im_message,
                message_ids=(f"op-{chat_id}-{im_message}",),
            )
        at += rng.randint(1, 5)
        events.append(
            ChatEvent(
                event_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                portal=portal,
                connector=connector,
                line=line,
                chat_id=chat_id,
                occurred_at=at,
                payload=payload,
                sequence=number if with_sequence else None,
                user=user if kind == "send" or not user_on_sends_only else None,
            )
        )
    return events


def interleave(
    scripts: list[list[ChatEvent]],
    rng: random.Random,
    *,
    duplicate_rate: float = 0.0,
    reorder_rate: float = 0.0,
) -> list[ChatEvent]:
    """Mix chats randomly (order within a chat kept), then inject duplicates and swaps.

    A duplicate is a second copy of an event placed later; a reorder swaps an event with
    the next event of the same chat, so the later sequence arrives first.
    """
    cursors = [0] * len(scripts)
    live = [i for i, s in enumerate(scripts) if s]
    out: list[ChatEvent] = []
    while live:
        pick = rng.randrange(len(live))
        index = live[pick]
        out.append(scripts[index][cursors[index]])
        cursors[index] += 1
        if cursors[index] == len(scripts[index]):
            live[pick] = live[-1]
            live.pop()
    if reorder_rate:
        last_pos: dict[str, int] = {}
        for pos, event in enumerate(out):
            prev = last_pos.get(event.key)
            if prev is not None and rng.random() < reorder_rate:
                out[prev], out[pos] = out[pos], out[prev]
            last_pos[event.key] = pos
    if duplicate_rate:
        result: list[ChatEvent] = []
        pending: list[tuple[int, ChatEvent]] = []
        for pos, event in enumerate(out):
            result.append(event)
            if rng.random() < duplicate_rate:
                pending.append((pos + rng.randint(1, 50), event))
            while pending and pending[0][0] <= pos:
                result.append(pending.pop(0)[1])
            pending.sort(key=lambda item: item[0])
        result.extend(event for _, event in pending)
        out = result
    return out
