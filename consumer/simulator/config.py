"""Settings of one simulated portal: identity, OAuth, limits, preset lines, faults (YAML)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from consumer.simulator.faults import FaultPhase, FaultSettings
from consumer.simulator.sessions import ACCESS_LEVELS, OpenLinesAccess

_FAULT_FIELDS = {
    # SimulatorConfig field → FaultSettings field
    "error_rate": "error_rate",
    "latency_ms": "latency_ms",
    "hang_rate": "hang_rate",
    "hang_seconds": "hang_seconds",
    "reset_rate": "reset_rate",
    "split_write_rate": "split_write_rate",
    "fault_phase": "fault_phase",
    "fault_methods": "methods",
    "token_expiry_every": "token_expiry_every",
    "seed": "seed",
}


def parse_line_spec(spec: Any) -> tuple[str, int]:
    """`"conn:12"`, `["conn", 12]` or `{"connector": "conn", "line": 12}` → ("conn", 12)."""
    if isinstance(spec, str):
        connector, sep, line = spec.rpartition(":")
        if not sep or not connector or not line.strip().isdigit():
            raise ValueError(f"line {spec!r} is not CONNECTOR:LINE (e.g. mychannel:1)")
        return connector.strip().lower(), int(line)
    if isinstance(spec, dict):
        return parse_line_spec(f"{spec.get('connector', '')}:{spec.get('line', '')}")
    if isinstance(spec, list | tuple) and len(spec) == 2:
        return parse_line_spec(f"{spec[0]}:{spec[1]}")
    raise ValueError(f"line {spec!r} is not CONNECTOR:LINE")


@dataclass
class SimulatorConfig:
    """One portal per server. Defaults match a non-Enterprise cloud portal (reference §6, §7).

    `operating_cost_per_element` is the simulated execution time charged per call
    element (MESSAGES entry, or 1 for other calls); 0 means the budget never trips.
    `legacy_errors` answers whole-call failures of send/update/delete/status methods
    the old way: HTTP 200 with `result.SUCCESS=false` (reference §3.7 version caveat).
    `batch_imconnector` lets `imconnector.*` run inside `batch`; undocumented on a real
    portal (reference §1 item 8), so False refuses them with ERROR_BATCH_METHOD_NOT_ALLOWED.
    `session_idle_close_s` closes a chat's Open Lines session after that long without a
    message, so renames fail with CHAT_RENAMING_FAILED until the next one; `moved_to`
    makes the portal answer `move_status` with `Location` on that base URL, as a portal
    whose domain changed does (b24pysdk `bitrix_token.py` handles that 302).
    `openlines_access` says what the token's user may read back with
    `imopenlines.session.history.get` / `imopenlines.dialog.get` (`simulator.sessions`):
    every session (`all`, an administrator), only sessions it answered (`operator`), or
    none (`none`: ACCESS_DENIED / ACCESS_ERROR); `readback_methods` False makes them
    unknown methods (ERROR_METHOD_NOT_FOUND), as on a portal without them.
    """

    host: str = "127.0.0.1"
    port: int = 0
    client_id: str = "local.imconnector.sim"
    client_secret: str = "sim-secret"  # noqa: S105 - a local simulator's well-known secret
    member_id: str = "5f0e1c2d3b4a59687766554433221100"
    admin_user_id: int = 1
    access_token_ttl: float = 3600.0
    rate_limit_drain: float = 2.0
    rate_limit_burst: int = 50
    rate_limit_enabled: bool = True
    operating_limit: float = 480.0
    operating_cost_per_element: float = 0.0
    preset_lines: list[tuple[str, int]] = field(default_factory=list)
    chat_group: bool = False
    legacy_errors: bool = False
    batch_imconnector: bool = True
    language: str = "en"  # of the texts in ERRORS and the "Guest" name
    session_idle_close_s: float = 0.0  # an idle session closes after this long (0: never)
    moved_to: str | None = None  # the portal moved: /rest/ calls answer 3xx to this base URL
    move_status: int = 302
    openlines_access: OpenLinesAccess = "all"
    readback_methods: bool = True
    call_log_limit: int = 200_000
    # Faults (also settable at runtime through POST /_sim/faults).
    error_rate: float = 0.0
    latency_ms: float = 0.0
    hang_rate: float = 0.0
    hang_seconds: float = 5.0
    reset_rate: float = 0.0
    split_write_rate: float = 0.0
    fault_phase: FaultPhase = "before"
    fault_methods: list[str] | None = None
    token_expiry_every: int = 0
    seed: int | None = None

    def __post_init__(self) -> None:
        self.preset_lines = [parse_line_spec(spec) for spec in self.preset_lines]
        if self.rate_limit_drain < 0 or self.rate_limit_burst < 1:
            raise ValueError("rate_limit_drain must be >= 0 and rate_limit_burst >= 1")
        if self.access_token_ttl <= 0:
            raise ValueError("access_token_ttl must be positive")
        if self.language not in ("en", "ru"):
            raise ValueError(f"language must be 'en' or 'ru', got {self.language!r}")
        if self.session_idle_close_s < 0:
            raise ValueError("session_idle_close_s must not be negative (0 = never)")
        if self.openlines_access not in ACCESS_LEVELS:
            raise ValueError(
                f"openlines_access must be all, operator or none, got {self.openlines_access!r}"
            )
        if self.move_status not in (301, 302, 307, 308):
            raise ValueError(f"move_status must be 301, 302, 307 or 308, got {self.move_status}")
        self.fault_settings()  # validates the fault fields

    def fault_settings(self) -> FaultSettings:
        return FaultSettings(**{dst: getattr(self, src) for src, dst in _FAULT_FIELDS.items()})

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> SimulatorConfig:
        """Build from a plain mapping; a nested `faults:` section may use FaultSettings names."""
        data = dict(data)
        faults = data.pop("faults", None) or {}
        if not isinstance(faults, dict):
            raise ValueError("'faults' must be a mapping")
        reverse = {dst: src for src, dst in _FAULT_FIELDS.items()}
        for key, value in faults.items():
            data[reverse.get(str(key), str(key))] = value
        if "lines" in data:
            data["preset_lines"] = data.pop("lines")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown simulator settings: {', '.join(unknown)}")
        return cls(**data)

    @classmethod
    def from_yaml(cls, path: str | Path) -> SimulatorConfig:
        loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a mapping of simulator settings")
        return cls.from_mapping(loaded)
