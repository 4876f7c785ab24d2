"""Injected faults: 5xx, latency, hung and reset connections, forced token expiry; seeded."""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal, get_args

FaultKind = Literal["error", "hang", "reset"]
FaultPhase = Literal["before", "after"]


@dataclass
class FaultSettings:
    """What to inject. Rates are fractions of /rest/ calls; `methods` narrows them to some methods.

    `fault_phase="before"`: the fault replaces the call and nothing is applied.
    `fault_phase="after"`: the call is applied, then its answer is lost or turned into a 500,
    the ambiguous outcome a client cannot tell from a failure.
    `split_write_rate`: per message a send adds, the chance that the request dies between
    adding it and storing its external id (`CONNECTOR_MID`): that message stays without
    an id, the elements after it are not applied and the client gets a 500.
    """

    error_rate: float = 0.0
    latency_ms: float = 0.0
    hang_rate: float = 0.0
    hang_seconds: float = 5.0
    reset_rate: float = 0.0
    split_write_rate: float = 0.0
    fault_phase: FaultPhase = "before"
    methods: list[str] | None = None
    token_expiry_every: int = 0
    seed: int | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        for name in ("error_rate", "hang_rate", "reset_rate", "split_write_rate"):
            rate = getattr(self, name)
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {rate!r}")
        if self.error_rate + self.hang_rate + self.reset_rate > 1.0:
            raise ValueError("error_rate + hang_rate + reset_rate must not exceed 1")
        if self.latency_ms < 0 or self.hang_seconds < 0:
            raise ValueError("latency_ms and hang_seconds must not be negative")
        if self.fault_phase not in get_args(FaultPhase):
            raise ValueError(f"fault_phase must be 'before' or 'after', got {self.fault_phase!r}")
        if self.token_expiry_every < 0:
            raise ValueError("token_expiry_every must not be negative (0 = off)")
        if self.methods is not None:
            self.methods = [str(method).lower() for method in self.methods]

    def merged(self, changes: dict[str, Any]) -> FaultSettings:
        """A copy with `changes` applied; unknown keys are refused so typos do not pass silently."""
        known = {f.name for f in fields(self)}
        changes = dict(changes)
        if "fault_methods" in changes:
            changes["methods"] = changes.pop("fault_methods")
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"unknown fault settings: {', '.join(unknown)}")
        return FaultSettings(**{**asdict(self), **changes})

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FaultPlan:
    """Decides, call by call, which fault hits it. Not thread-safe: the portal lock guards it."""

    settings: FaultSettings = field(default_factory=FaultSettings)
    _rng: random.Random = field(init=False, repr=False)
    _authenticated_calls: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.settings.seed)

    def update(self, changes: dict[str, Any]) -> FaultSettings:
        """Merge runtime changes; a new seed restarts the random sequence."""
        self.settings = self.settings.merged(changes)
        if "seed" in changes:
            self._rng = random.Random(self.settings.seed)
        return self.settings

    def applies_to(self, method: str) -> bool:
        methods = self.settings.methods
        return methods is None or method.lower() in methods

    def latency_seconds(self, method: str) -> float:
        return self.settings.latency_ms / 1000.0 if self.applies_to(method) else 0.0

    def draw(self, method: str) -> FaultKind | None:
        """One uniform draw split into error / hang / reset bands."""
        if not self.applies_to(method):
            return None
        s = self.settings
        if s.error_rate + s.hang_rate + s.reset_rate <= 0.0:
            return None
        roll = self._rng.random()
        if roll < s.error_rate:
            return "error"
        if roll < s.error_rate + s.hang_rate:
            return "hang"
        if roll < s.error_rate + s.hang_rate + s.reset_rate:
            return "reset"
        return None

    def dies_between_writes(self, method: str) -> bool:
        """Whether the request dies between a message and its id (`split_write_rate`)."""
        rate = self.settings.split_write_rate
        if rate <= 0.0 or not self.applies_to(method):
            return False
        return self._rng.random() < rate

    def token_expires_now(self) -> bool:
        """Every N-th authenticated call finds its access token expired (N = token_expiry_every)."""
        every = self.settings.token_expiry_every
        if every <= 0:
            return False
        self._authenticated_calls += 1
        return self._authenticated_calls % every == 0
