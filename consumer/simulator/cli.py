"""`imconnector-consumer simulate`: run the Bitrix24 simulator in the foreground until a signal."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

from consumer.simulator.config import SimulatorConfig, parse_line_spec
from consumer.simulator.server import SimulatorServer

DEFAULT_PORT = 8765
STRICT_OPERATING_COST = 0.05  # seconds of `time.operating` charged per call element
STRICT_SESSION_IDLE = 1800.0


def _line(value: str) -> tuple[str, int]:
    try:
        return parse_line_spec(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of the `simulate` command; flags given override the YAML `--config` file."""
    parser.add_argument("--host", default=None, help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help=f"port (default {DEFAULT_PORT})")
    parser.add_argument("--config", type=Path, default=None, help="simulator settings (YAML)")
    parser.add_argument(
        "--line",
        dest="lines",
        action="append",
        type=_line,
        default=None,
        metavar="CONNECTOR:LINE",
        help="register and activate a connector on a line at start (repeatable)",
    )
    parser.add_argument("--rate-drain", type=float, default=None, help="leaky bucket drain, req/s")
    parser.add_argument("--rate-burst", type=int, default=None, help="leaky bucket burst size")
    parser.add_argument("--latency-ms", type=float, default=None, help="latency added per call")
    parser.add_argument(
        "--error-rate", type=float, default=None, help="fraction of calls answered with HTTP 500"
    )
    parser.add_argument(
        "--no-batch-imconnector",
        dest="batch_imconnector",
        action="store_const",
        const=False,
        default=None,
        help="refuse imconnector.* inside batch (ERROR_BATCH_METHOD_NOT_ALLOWED)",
    )
    parser.add_argument(
        "--fault-phase",
        choices=("before", "after"),
        default=None,
        help="'after': a faulted call is applied first, then its answer lost or made a 500 "
        "(the ambiguous case a client must not take for 'nothing happened')",
    )
    parser.add_argument(
        "--fault-methods",
        default=None,
        metavar="METHOD[,METHOD]",
        help="inject faults only into these methods (e.g. imconnector.send.messages)",
    )
    parser.add_argument(
        "--session-idle-close",
        type=float,
        default=None,
        metavar="SECONDS",
        help="close an Open Lines session after this long without a message (0: never)",
    )
    parser.add_argument(
        "--language", choices=("en", "ru"), default=None, help="language of ERRORS texts"
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="a fresh portal as strict as the real one: no preset lines (register and "
        f"activate first), operating time charged ({STRICT_OPERATING_COST} s per element), "
        f"sessions closing after {STRICT_SESSION_IDLE:.0f} s idle",
    )
    parser.add_argument("--seed", type=int, default=None, help="fault RNG seed (reproducible)")
    parser.add_argument(
        "--tokens-file",
        type=Path,
        default=None,
        help="where to write the issued token pair (default: a file in the temp dir)",
    )


def build_config(args: argparse.Namespace) -> SimulatorConfig:
    """YAML (if any) first, then the flags that were given."""
    config = SimulatorConfig.from_yaml(args.config) if args.config else SimulatorConfig()
    overrides: dict[str, Any] = {
        "host": args.host,
        "port": args.port,
        "rate_limit_drain": args.rate_drain,
        "rate_limit_burst": args.rate_burst,
        "latency_ms": args.latency_ms,
        "error_rate": args.error_rate,
        "seed": args.seed,
        "batch_imconnector": args.batch_imconnector,
        "fault_phase": args.fault_phase,
        "fault_methods": args.fault_methods.split(",") if args.fault_methods else None,
        "session_idle_close_s": args.session_idle_close,
        "language": args.language,
    }
    changes = {key: value for key, value in overrides.items() if value is not None}
    if args.strict:
        if args.lines or config.preset_lines:
            raise ValueError("--strict starts with no lines: drop --line and preset lines")
        changes.setdefault("operating_cost_per_element", STRICT_OPERATING_COST)
        changes.setdefault("session_idle_close_s", STRICT_SESSION_IDLE)
    if args.lines:
        changes["preset_lines"] = [*config.preset_lines, *args.lines]
    if args.port is None and config.port == 0:
        # A foreground simulator needs a port people can type; port 0 is for tests.
        changes["port"] = DEFAULT_PORT
    return replace(config, **changes)


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _write_tokens(path: Path, tokens: dict[str, Any]) -> None:
    # The pair is a credential: owner-only permissions, never printed.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(tokens, handle, indent=2)


def run_cli(args: argparse.Namespace) -> int:
    """Start the simulator, print how to reach it, serve until SIGINT/SIGTERM; the exit code."""
    try:
        config = build_config(args)
    except (OSError, ValueError) as exc:
        _say(f"simulate: {exc}")
        return 2
    try:
        server = SimulatorServer(config)
    except OSError as exc:
        _say(f"simulate: cannot listen on {config.host}:{config.port}: {exc}")
        return 1
    stop = threading.Event()

    def _on_signal(signum: int, frame: Any) -> None:
        del signum, frame
        stop.set()

    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.start()
        tokens_path = args.tokens_file or Path(tempfile.gettempdir()) / (
            f"imconnector-simulator-{server.port}-tokens.json"
        )
        _write_tokens(tokens_path, server.issue_tokens())
        lines = ", ".join(f"{c}:{n}" for c, n in config.preset_lines) or "none"
        _say(f"Bitrix24 simulator listening on {server.url}")
        _say(f"  client_endpoint: {server.url}/rest/")
        _say(f"  token endpoint:  {server.url}/oauth/token/")
        _say(f"  schema registry: {server.registry_url}")
        _say(f"  client_id:       {config.client_id}")
        _say(f"  preset lines:    {lines}")
        _say(f"  token pair:      {tokens_path} (new pair: POST {server.url}/_sim/tokens)")
        _say(f"  inspect:         GET {server.url}/_sim/calls, GET {server.url}/_sim/state")
        _say("Press Ctrl+C to stop.")
        stop.wait()
        return 0
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m consumer.simulator", description=__doc__)
    add_cli_arguments(parser)
    return run_cli(parser.parse_args(argv))
