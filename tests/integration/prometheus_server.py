"""A real Prometheus server for integration tests: the `prometheus` binary on a loopback port.

Debian's `prometheus` package (ops/tools/install-prometheus.sh) provides the binary. The
server gets a temporary config and TSDB directory, listens on 127.0.0.1 only and is stopped
(terminate, then kill) when the test is done. Queries go through the HTTP API
(`/api/v1/query`, `/api/v1/alerts`, `/api/v1/rules`, `/api/v1/targets`, label values).
"""

from __future__ import annotations

import math
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.integration.harness import wait_until

PROMETHEUS_INSTALLER = "ops/tools/install-prometheus.sh"


def prometheus_binary() -> str:
    """Path of the `prometheus` server; fails (never skips) with the fix when it is missing."""
    path = shutil.which("prometheus")
    if path is None:
        pytest.fail(
            f"the prometheus server binary is not on PATH: run {PROMETHEUS_INSTALLER} "
            "(Debian package `prometheus`; scripts/bootstrap does it)",
            pytrace=False,
        )
    return path


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def finite(sample: dict[str, Any]) -> bool:
    """True when an instant-vector sample's value is a number (not NaN or ±Inf)."""
    return math.isfinite(float(sample["value"][1]))


class PrometheusServer:
    """One `prometheus` process with the given config, in `workdir`."""

    def __init__(self, workdir: Path, config: dict[str, Any]) -> None:
        self.binary = prometheus_binary()
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = workdir / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        self.log_path = workdir / "prometheus.log"
        self._log = self.log_path.open("wb")
        self._proc: subprocess.Popen[bytes] | None = None
        self.http = httpx.Client(base_url=self.url, timeout=10.0)

    def start(self, timeout: float = 30.0) -> PrometheusServer:
        """Start the server and wait for `/-/ready`."""
        self._proc = subprocess.Popen(
            [
                self.binary,
                f"--config.file={self.config_path}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
        )
        wait_until(self._ready, timeout, f"prometheus /-/ready on {self.url}", interval=0.1)
        return self

    def _ready(self) -> bool:
        assert self._proc is not None
        if self._proc.poll() is not None:
            raise AssertionError(f"prometheus exited with {self._proc.returncode}:\n{self.log()}")
        try:
            return self.http.get("/-/ready").status_code == 200
        except httpx.TransportError:
            return False

    def log(self) -> str:
        """What the server logged so far (for failure messages)."""
        self._log.flush()
        return self.log_path.read_text(encoding="utf-8", errors="replace")[-4000:]

    def stop(self) -> None:
        """Terminate (SIGTERM), wait, kill if it does not exit."""
        self.http.close()
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(15)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
        self._log.close()

    # -- HTTP API ---------------------------------------------------------------------------
    def api(self, path: str, **params: Any) -> Any:
        """GET /api/v1/<path>; returns `data`, fails with Prometheus' error otherwise."""
        response = self.http.get(f"/api/v1/{path}", params=params)
        body = response.json()
        if response.status_code != 200 or body.get("status") != "success":
            raise AssertionError(f"/api/v1/{path} {params}: {response.status_code} {body}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query; the samples of the resulting vector (scalars become one sample)."""
        data = self.api("query", query=expr)
        if data["resultType"] == "vector":
            return list(data["result"])
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        raise AssertionError(f"{expr}: unexpected result type {data['resultType']}")

    def label_values(self, label: str, match: str) -> list[str]:
        """Values of `label` on series matching `match` (Grafana's label_values())."""
        return list(self.api(f"label/{label}/values", **{"match[]": match}))

    def targets(self) -> list[dict[str, Any]]:
        """Active scrape targets."""
        return list(self.api("targets", state="active")["activeTargets"])

    def firing(self) -> list[dict[str, Any]]:
        """Alerts currently firing (pending ones left out)."""
        return [a for a in self.api("alerts")["alerts"] if a["state"] == "firing"]

    def alert_rules(self) -> list[dict[str, Any]]:
        """Loaded alerting rules with their health and last evaluation error."""
        groups = self.api("rules", type="alert")["groups"]
        return [rule for group in groups for rule in group["rules"]]
