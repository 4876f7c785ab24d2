"""What the engine and the dispatcher exchange: a `Batch` of head calls for one request, the
`CallResult` of each call, and the `DispatchPort` the engine drives."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from consumer.bitrix.readback import READ_METHODS
from consumer.core.mapping import BATCHABLE
from consumer.core.state import PendingCall


@dataclass(slots=True)
class Batch:
    """Head calls of several chats for one request (`calls` keeps chat order stable)."""

    portal: str
    connector: str
    line: int
    method: str
    calls: list[tuple[str, PendingCall]]
    routes: list[tuple[str, int, int]] = field(default_factory=list)  # (topic, partition, epoch)
    reported: set[int] = field(default_factory=set)  # ids of calls whose result left early


@dataclass(slots=True)
class CallResult:
    """The final result of one call after retries."""

    chat_key: str
    call: PendingCall
    ok: bool
    result: dict[str, Any] | None = None
    error_class: str | None = None
    code: str | None = None
    message: str | None = None
    http_status: int | None = None
    attempts: int = 1
    ambiguous: bool = False
    cancelled: bool = False  # never sent: its partition was revoked meanwhile


@dataclass(slots=True)
class BatchDone:
    """Results of one batch: all of them, or those that finished early (cancelled calls of
    a revoked partition); each result names its call."""

    batch: Batch
    results: list[CallResult] = field(default_factory=list)


class DispatchPort(Protocol):
    """What the engine needs of a dispatcher: `Dispatcher` (an asyncio loop on a thread of
    this process) is one, and so is a test's wrapper around it."""

    @property
    def in_flight(self) -> int: ...

    def in_flight_by_portal(self) -> Mapping[str, int]: ...

    def revoke(self, epochs: set[int]) -> None: ...

    def set_share(self, share: float) -> None: ...

    def start(self) -> None: ...

    def submit(self, batch: Batch) -> None: ...

    def drain(self) -> list[BatchDone]: ...

    def wait(self, timeout: float) -> bool: ...

    def stop(self, timeout: float = 5.0) -> None: ...

    def portal_has_capacity(self, portal: str) -> bool: ...

    def rename_batch_limit(self, portal: str) -> int: ...


def request_params(batch: Batch, elements: list[dict[str, Any]]) -> dict[str, Any]:
    """The request's parameters: `MESSAGES` for the methods that take an array, the
    element's flat parameters otherwise (renames)."""
    if batch.method in READ_METHODS:  # a chat's read names what it reads, nothing else
        return dict(elements[0])
    if batch.method in BATCHABLE:
        return {"CONNECTOR": batch.connector, "LINE": batch.line, "MESSAGES": elements}
    return {"CONNECTOR": batch.connector, "LINE": batch.line, **elements[0]}
