"""The benchmark's child processes: the Bitrix24 simulator and the service, and their CPU.

Each runs as its own process (`python -m consumer.simulator`, `python -m consumer run`), so
neither shares the benchmark's GIL; the service is configured only through IMCONNECTOR_*
variables and watched through its /metrics and /readyz endpoints.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from ops.bench.workload import CONNECTOR, LINE, PORTAL

ROOT = Path(__file__).resolve().parents[2]
OUTCOMES = "imconnector_event_outcomes_total"
REBALANCES = "imconnector_rebalances_total"
ASSIGNED = "imconnector_assigned_partitions"


def log(text: str) -> None:
    """Progress on stderr, so stdout carries only the table."""
    sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {text}\n")
    sys.stderr.flush()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` (all threads) and of its live children
    (the service's dispatch process), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        children = [
            int(child)
            for task in Path(f"/proc/{pid}/task").iterdir()
            for child in (task / "children").read_text().split()
        ]
    except OSError:
        return 0.0
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return own + sum(cpu_seconds(child) for child in children)


def stolen_seconds() -> float:
    """CPU seconds the hypervisor gave to other guests (all CPUs), from /proc/stat: a run
    with much steal is slower for reasons outside the code."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    return int(fields[8]) / os.sysconf("SC_CLK_TCK") if len(fields) > 8 else 0.0


# -- the simulator process -------------------------------------------------------------------
class Simulator:
    """`python -m consumer.simulator` in its own process (its CPU does not share our GIL)."""

    def __init__(self, workdir: Path, latency_ms: float = 0.0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = workdir / "simulator.yaml"
        config.write_text(
            "rate_limit_enabled: false\n"
            "call_log_limit: 5000000\n"
            f"latency_ms: {latency_ms}\n"
            f"preset_lines: ['{CONNECTOR}:{LINE}']\n",
            encoding="utf-8",
        )
        self._tokens_file = workdir / "simulator-tokens.json"
        self._log = (workdir / "simulator.log").open("wb")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "consumer.simulator",
                "--port",
                str(self.port),
                "--config",
                str(config),
                "--tokens-file",
                str(self._tokens_file),
            ],
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.http = httpx.Client(base_url=self.url, timeout=120)
        deadline = time.monotonic() + 30
        while not self._tokens_file.exists() or self._tokens_file.stat().st_size == 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the simulator did not start (log: {self._log.name})")
            time.sleep(0.05)
        time.sleep(0.1)  # the file is written before the banner; let the write finish
        self.tokens: dict[str, Any] = json.loads(self._tokens_file.read_text(encoding="utf-8"))

    @property
    def rest_url(self) -> str:
        return f"{self.url}/rest/"

    def reset(self, latency_ms: float) -> None:
        """Forget calls and chats; set the latency added to every call."""
        self.http.post("/_sim/reset").raise_for_status()
        self.http.post("/_sim/faults", json={"latency_ms": latency_ms}).raise_for_status()

    def calls(self) -> list[dict[str, Any]]:
        """Every REST call since the last reset (token-endpoint calls left out)."""
        response = self.http.get("/_sim/calls")
        response.raise_for_status()
        return [
            c
            for c in response.json()["calls"]
            if c["method"].startswith("imconnector.") or c["method"] == "batch"
        ]

    def stop(self) -> None:
        self.http.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


# -- the service process ---------------------------------------------------------------------
class EngineProcess:
    """`python -m consumer run` with IMCONNECTOR_* settings; watched through /metrics."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        group: str,
        sim: Simulator,
        workdir: Path,
        extra_env: dict[str, str],
        profile_to: Path | None = None,
        instance: str | None = None,
        cwd: Path = ROOT,
    ) -> None:
        self.port = free_port()
        self.group = group
        instance = instance or group
        portal = {
            "rest_url": sim.rest_url,
            "oauth_url": f"{sim.url}/oauth/token/",
            "client_id": "local.imconnector.sim",
            "client_secret": "sim-secret",
            "access_token": sim.tokens["access_token"],
            "refresh_token": sim.tokens["refresh_token"],
            # The simulator's limits are off: the service's own bucket must not be the limit.
            "rate_drain": 1_000_000.0,
            "rate_burst": 1_000_000,
        }
        env = {k: v for k, v in os.environ.items() if not k.startswith("IMCONNECTOR_")}
        env.update(
            {
                "IMCONNECTOR_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
                "IMCONNECTOR_SOURCE_TOPICS": topic,
                "IMCONNECTOR_GROUP_ID": group,
                "IMCONNECTOR_INSTANCE_ID": instance,
                "IMCONNECTOR_OUTCOMES_TOPIC": f"{group}.outcomes",
                "IMCONNECTOR_TOKENS_TOPIC": f"{group}.tokens",
                "IMCONNECTOR_PORTALS": json.dumps({PORTAL: portal}),
                "IMCONNECTOR_HTTP_HOST": "127.0.0.1",
                "IMCONNECTOR_HTTP_PORT": str(self.port),
                "IMCONNECTOR_LOG_FORMAT": "text",
                "IMCONNECTOR_LOG_LEVEL": "WARNING",
                "IMCONNECTOR_SHUTDOWN_GRACE_S": "5",
                **extra_env,
            }
        )
        self.log_path = workdir / f"{instance}.log"
        self._log = self.log_path.open("wb")
        command = [sys.executable]
        if profile_to is not None:
            command += ["-m", "cProfile", "-o", str(profile_to)]
        command += ["-m", "consumer", "run"]
        self.spawned_at = time.monotonic()
        self.proc = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=self._log, stderr=subprocess.STDOUT
        )
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=10)

    def _check_alive(self) -> None:
        if self.proc.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"the service exited with {self.proc.returncode}:\n{tail}")

    def wait_ready(self, timeout: float = 90.0) -> float:
        """Block until /readyz answers 200; return time.monotonic() then."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            with contextlib.suppress(httpx.HTTPError):
                if self.http.get("/readyz").status_code == 200:
                    return time.monotonic()
            time.sleep(0.02)
        raise RuntimeError(f"the service was not ready within {timeout:.0f}s")

    def samples(self) -> list[Any]:
        self._check_alive()
        text = self.http.get("/metrics").text
        return [s for family in text_string_to_metric_families(text) for s in family.samples]

    def outcomes(self) -> dict[str, float]:
        return {s.labels["outcome"]: s.value for s in self.samples() if s.name == OUTCOMES}

    def wait_outcomes(self, expected: int, deadline: float) -> tuple[float, float]:
        """Poll until `expected` records have an outcome or `deadline`; (count, at).

        A scrape costs the service a few ms of CPU (and of its GIL), so polls are spaced
        by the time the rest should take at the rate so far (0.1 s to 2 s): about twenty
        scrapes a run, and the end is still seen within 0.1 s.
        """
        last: tuple[float, float] | None = None
        while True:
            total = sum(self.outcomes().values())
            now = time.monotonic()
            if total >= expected or now >= deadline:
                return total, now
            pause = 0.25
            if last is not None and total > last[0]:
                rate = (total - last[0]) / (now - last[1])
                pause = min(2.0, max(0.1, 0.5 * (expected - total) / rate))
            last = (total, now)
            time.sleep(min(pause, max(0.0, deadline - now)))

    def log_problems(self, limit: int = 5) -> list[str]:
        """The first distinct WARNING/ERROR/CRITICAL lines of the service's log."""
        seen: list[str] = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if any(level in line for level in (" WARNING ", " ERROR ", " CRITICAL ")):
                text = line.split(" ", 1)[-1][:300]
                if text not in seen:
                    seen.append(text)
                if len(seen) >= limit:
                    break
        return seen

    def stop(self) -> None:
        self.http.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
