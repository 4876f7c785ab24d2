"""Simulator test helpers: an in-process simulator on port 0 with a manual clock and a client."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx

from consumer.simulator import ManualClock, SimulatorConfig, SimulatorServer

CONNECTOR = "demo"
LINE = 1
# The keys of every `time` block (a call's envelope, each batch sub-call's result_time).
TIME_KEYS = {
    "start",
    "finish",
    "duration",
    "processing",
    "date_start",
    "date_finish",
    "operating_reset_at",
    "operating",
}
# One TLS context for every client: building it is the slowest part of httpx.Client() and
# the simulator speaks plain http anyway.
_TLS = ssl.create_default_context()


@dataclass
class Sim:
    """A running simulator, its clock, an HTTP client and a valid token pair."""

    server: SimulatorServer
    clock: ManualClock
    http: httpx.Client
    tokens: dict[str, Any] = field(default_factory=dict)

    @property
    def token(self) -> str:
        return str(self.tokens["access_token"])

    def call(
        self, method: str, params: dict[str, Any] | None = None, **kwargs: Any
    ) -> httpx.Response:
        """POST /rest/<method> with a JSON body carrying `auth` (override with auth=...)."""
        body = {"auth": self.token, **(params or {})}
        return self.http.post(f"/rest/{method}", json=body, **kwargs)

    def ok(self, method: str, params: dict[str, Any] | None = None) -> Any:
        response = self.call(method, params)
        assert response.status_code == 200, response.text
        return response.json()["result"]

    def send(self, *elements: dict[str, Any], line: int = LINE, **kwargs: Any) -> httpx.Response:
        """imconnector.send.messages on `demo:<line>`; kwargs go to httpx (e.g. timeout)."""
        return self.call(
            "imconnector.send.messages",
            {"CONNECTOR": CONNECTOR, "LINE": line, "MESSAGES": list(elements)},
            **kwargs,
        )

    def state(self) -> dict[str, Any]:
        response = self.http.get("/_sim/state")
        assert response.status_code == 200
        return dict(response.json())

    def calls(self, **query: Any) -> list[dict[str, Any]]:
        response = self.http.get("/_sim/calls", params=query)
        assert response.status_code == 200
        return list(response.json()["calls"])

    def faults(self, **changes: Any) -> dict[str, Any]:
        response = self.http.post("/_sim/faults", json=changes)
        assert response.status_code == 200, response.text
        return dict(response.json())


def message(
    msg_id: str = "m1",
    text: str | None = "hello",
    *,
    user: str = "u1",
    chat: str = "c1",
    name: str | None = None,
) -> dict[str, Any]:
    """One MESSAGES element as the consumer sends it."""
    user_block: dict[str, Any] = {"id": user}
    if name is not None:
        user_block["name"] = name
    msg: dict[str, Any] = {"id": msg_id, "date": 1_773_266_000}
    if text is not None:
        msg["text"] = text
    return {"user": user_block, "message": msg, "chat": {"id": chat}}


@contextmanager
def running_simulator(**config: Any) -> Iterator[Sim]:
    """A started simulator with `demo:1` active, the rate limit off unless asked, and a clock."""
    config.setdefault("preset_lines", [(CONNECTOR, LINE)])
    config.setdefault("rate_limit_enabled", False)
    clock = ManualClock()
    server = SimulatorServer(SimulatorConfig(**config), clock=clock).start()
    try:
        with httpx.Client(base_url=server.url, timeout=10.0, verify=_TLS) as client:
            yield Sim(server=server, clock=clock, http=client, tokens=server.issue_tokens())
    finally:
        server.stop()
