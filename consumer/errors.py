"""The one exception tree of the service; an error's class decides what happens to the event.

ConsumerError
├── ConfigError (ValueError)            bad settings: exit non-zero with one line
├── PoisonRecord                        undecodable bytes: dead-letter at once
│   ├── UnknownWireFormat               neither Confluent framing nor single-object
│   ├── UnknownSchema                   registry id / fingerprint not known
│   └── SchemaMismatch                  bytes do not match the writer schema
├── RegistryUnavailable                 transient: wait and retry, never dead-letter
├── TransactionStuck                    a Kafka commit blocks for good: exit, restart restores
├── PartitionsLost                      the group took the partitions away: rejoin, restore
└── BitrixError                         a Bitrix24 call failed (`error_class` says how)
    ├── PermanentError                  ERROR_ARGUMENT, NOT_ACTIVE_LINE, ...: dead-letter
    ├── CausalWait                      CHAT_RENAMING_FAILED before a session: hold
    ├── AuthError                       expired_token / NO_AUTH_FOUND: refresh, repeat
    │   └── AuthFailed                  refresh impossible (invalid_grant, ...): permanent
    ├── Throttled                       QUERY_LIMIT_EXCEEDED / OPERATION_TIME_LIMIT: slow down
    └── TransientError                  5xx, transport: retry with backoff
        └── AmbiguousError              the request may have been applied (timeout, reset)
"""

from __future__ import annotations

from typing import Literal

ErrorClass = Literal[
    "poison",
    "permanent",
    "causal_wait",
    "auth",
    "throttled",
    "transient",
    "exhausted",
    "ambiguous",
    "parked",
    "late",
    "invalid_event",
    "too_large",
    "lost",
]


class ConsumerError(Exception):
    """Root of every error this service raises on purpose."""


class ConfigError(ConsumerError, ValueError):
    """A setting is missing or malformed; the message names the setting and the fix."""


class PoisonRecord(ConsumerError):
    """A record that can never be decoded; it goes to the dead-letter topic as it is."""

    reason = "poison"

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


class UnknownWireFormat(PoisonRecord):
    """The first bytes match neither Confluent framing (0x00) nor single-object (C3 01)."""


class UnknownSchema(PoisonRecord):
    """The schema id or fingerprint names no schema the registry or the bundle knows."""


class SchemaMismatch(PoisonRecord):
    """The bytes do not decode with the writer schema, or it cannot be resolved."""


class RegistryUnavailable(ConsumerError):
    """The schema registry did not answer; the record waits, it is not poison."""


class TransactionStuck(ConsumerError):
    """A Kafka transaction did not finish long after its timeout (librdkafka can block in
    commit when a coordinator goes away). The process exits without waiting for it; the
    next instance fences the stuck producer and restores from the changelog."""

    exit_code = 3


class PartitionsLost(ConsumerError):
    """The group gave this member's partitions to others without a revoke (its session
    expired: the process was paused or cut off while a broker restarted). What it holds in
    memory may be behind what the next owner does, so nothing more of it is committed: the
    engine closes, aborting its open transaction, and the service starts a fresh engine
    that joins again and restores from the changelog (no process restart)."""


class BitrixError(ConsumerError):
    """A Bitrix24 REST call failed. `error_class` routes it (architecture §5)."""

    error_class: ErrorClass = "permanent"
    retriable = False

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        http_status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.http_status = http_status
        self.retry_after = retry_after


class PermanentError(BitrixError):
    """The portal rejected the call for good; dead-letter the event, the lane goes on."""


class CausalWait(BitrixError):
    """The call needs something that has not happened yet (a session for a rename)."""

    error_class: ErrorClass = "causal_wait"


class AuthError(BitrixError):
    """The access token is expired or unknown; refresh once and repeat."""

    error_class: ErrorClass = "auth"
    retriable = True


class AuthFailed(BitrixError):
    """Tokens cannot be refreshed (spent/invalid refresh token, bad client); permanent."""

    error_class: ErrorClass = "auth"


class Throttled(BitrixError):
    """The portal asked us to slow down; wait and retry, never dead-letter."""

    error_class: ErrorClass = "throttled"
    retriable = True


class TransientError(BitrixError):
    """A 5xx or a transport error before the request left; retry with backoff."""

    error_class: ErrorClass = "transient"
    retriable = True


class AmbiguousError(TransientError):
    """The request may have been applied (read timeout, reset after sending)."""

    error_class: ErrorClass = "ambiguous"
