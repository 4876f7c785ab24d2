"""What the engine keeps per assigned source partition: its chats (a `PartitionStore`), the
chats holding a sequence gap, the calls in requests, where reading and committing stand,
and why it is paused."""

from __future__ import annotations

from dataclasses import dataclass, field

from consumer.core.events import ChatEvent
from consumer.core.ordering import Lane
from consumer.store.changelog import PartitionStore

# Why a partition's fetching is paused; it fetches again once no reason is left.
BACKPRESSURE = "backpressure"
RESTORING = "restoring"
REGISTRY = "registry"


@dataclass(slots=True)
class Held:
    """A consumed record on its way through admission (held while a gap is open)."""

    event: ChatEvent
    offset: int
    raw: bytes
    raw_key: bytes
    headers: tuple[tuple[str, bytes], ...]
    redrive: bool


def event_of(held: Held) -> ChatEvent:
    """The decoded event of a held record."""
    return held.event


def offset_of(held: Held) -> int:
    """The source offset of a held record."""
    return held.offset


@dataclass(slots=True)
class Partition:
    """One assigned source partition."""

    topic: str
    partition: int
    epoch: int  # unique per assignment: results for an earlier one are ignored
    store: PartitionStore
    lanes: dict[str, Lane[Held]] = field(default_factory=dict)  # chats holding a gap
    held_offsets: set[int] = field(default_factory=set)
    held_renames: set[str] = field(default_factory=set)
    busy: set[str] = field(default_factory=set)  # chats with a call in a request
    ready: set[str] = field(default_factory=set)  # chats queued for a request
    next_offset: int = -1
    committed: int = -1
    pending: int = 0  # calls in outboxes + held renames
    crowded: set[str] = field(default_factory=set)  # outbox at max_buffered_per_chat
    pauses: set[str] = field(default_factory=set)
    fetching_paused: bool = False  # what the consumer was last told
    revoking: bool = False
    caught_up_ms: int = 0  # when the partition was last read to its end
    # A record waits for the registry: when it is read again (monotonic), after what wait.
    registry_retry_at: float = 0.0
    registry_delay: float = 0.0
    rewind: int = -1  # the first offset fetched while restoring (read again after it)

    @property
    def key(self) -> tuple[str, int]:
        """`(topic, partition)`."""
        return self.topic, self.partition

    @property
    def restoring(self) -> bool:
        """Its chats are still being read from the changelog."""
        return RESTORING in self.pauses

    def committable(self) -> int:
        """The offset to commit: nothing past an event still waiting in a reorder buffer."""
        if self.held_offsets:
            return min(self.held_offsets)
        return self.next_offset

    def in_use(self, chat: str) -> bool:
        """A call of the chat is in a request, or events of it wait for a gap."""
        return chat in self.busy or chat in self.lanes

    def calls_waiting(self) -> int:
        """Calls waiting for a request or in one (held renames wait for a send instead)."""
        return self.pending - len(self.held_renames)
