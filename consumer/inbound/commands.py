"""`imconnector-consumer events bind|pull|serve`: subscribe a portal to the connector
events, and run the pull loop or the push handler in the foreground.

`bind` goes through the admin commands' plumbing (`consumer.admin.connector`): the same
portal choice, token store and one-line failures naming the Bitrix24 code and the fix.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import threading
from typing import Any

from consumer import __version__
from consumer.admin.connector import _call, _portal_options, _reports_failures, _target
from consumer.admin.console import absolute_url, out, print_json
from consumer.inbound.payloads import EVENT_NAMES
from consumer.settings import Settings, load_settings

logger = logging.getLogger(__name__)


def _bound(handlers: Any) -> set[tuple[str, str, str]]:
    """`event.get`'s entries as (EVENT, handler URL or "" for offline, connector id)."""
    found = set()
    for entry in handlers if isinstance(handlers, list) else []:
        if not isinstance(entry, dict):
            continue
        offline = str(entry.get("offline", "0")) == "1"
        found.add(
            (
                str(entry.get("event", "")).upper(),
                "" if offline else str(entry.get("handler") or ""),
                str(entry.get("connector_id") or "") if offline else "",
            )
        )
    return found


@_reports_failures
def cmd_bind(args: argparse.Namespace) -> int:
    """Bind each connector event offline (pull), or online to `--handler` (push)."""
    target = _target(args)
    handler = absolute_url(args.handler, "--handler") if args.handler else ""
    connector = target.settings.inbound.auth_connector or ""
    have = _bound(_call(target, "event.get", {}))
    done: dict[str, str] = {}
    for name in EVENT_NAMES:
        if (name.upper(), handler, "" if handler else connector) in have:
            done[name] = "already bound"
            continue
        params: dict[str, Any] = {"event": name}
        if handler:
            params["handler"] = handler
        else:
            params["event_type"] = "offline"  # offline-events.md: no handler URL needed
            if connector:
                params["auth_connector"] = connector
        _call(target, "event.bind", params)
        done[name] = "bound"
    if args.json:
        print_json(done)
        return 0
    how = f"to {handler}" if handler else "offline (pull them with 'events pull')"
    for name, state in done.items():
        out(f"{name}: {state} {how}")
    return 0


def _until_signal() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def _prepared(args: argparse.Namespace) -> Settings:
    from consumer.logs import setup_logging

    settings = load_settings(args.config)
    setup_logging(settings.log_format, settings.log_level)
    return settings


def cmd_pull(args: argparse.Namespace) -> int:
    """The pull loop until SIGTERM, with /metrics and probes on the HTTP port."""
    from consumer.inbound.pull import run_pull
    from consumer.kafka.tokens import token_store_for
    from consumer.observability.health import OpsServer
    from consumer.observability.metrics import Metrics

    settings = _prepared(args)
    metrics = Metrics(version=__version__)
    store = token_store_for(settings)
    ops = OpsServer(metrics, lambda: True, host=settings.http_host, port=settings.http_port)
    ops.start()
    logger.info("pulling offline events into %s; metrics on :%d", settings.inbound.topic, ops.port)
    try:
        asyncio.run(run_pull(settings, metrics, store, _until_signal(), args.portal))
    finally:
        ops.stop()
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """The push handler (and /metrics, probes) until SIGTERM."""
    from consumer.inbound.service import push_endpoint
    from consumer.observability.health import OpsServer
    from consumer.observability.metrics import Metrics

    settings = _prepared(args)
    inbound = settings.inbound
    metrics = Metrics(version=__version__)
    handler, sink = push_endpoint(settings, metrics)
    ops = OpsServer(
        metrics,
        lambda: True,
        host=inbound.push_host,
        port=inbound.push_port,
        post_routes={inbound.push_path: handler.handle},
    ).start()
    logger.info(
        "operator events pushed to :%d%s go to %s", ops.port, inbound.push_path, inbound.topic
    )
    try:
        _until_signal().wait()
    finally:
        ops.stop()
        sink.close()
    return 0


def register_event_commands(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    """Add `events …` to the CLI's sub-commands."""
    events = subparsers.add_parser(
        "events", help="Bitrix24's operator events into Kafka (docs/inbound-events.md)"
    )
    commands = events.add_subparsers(dest="events_command", required=True)
    bind = commands.add_parser(
        "bind",
        parents=[_portal_options()],
        help="event.bind the OnImConnector* events: offline (default) or to --handler",
    )
    bind.add_argument(
        "--handler",
        metavar="URL",
        help="bind them online to this push handler (the URL of 'events serve', reachable "
        "from Bitrix24) instead of offline",
    )
    bind.set_defaults(func=cmd_bind)
    pull = commands.add_parser("pull", help="move the offline event queues into Kafka")
    pull.add_argument("--config", help="YAML config file (IMCONNECTOR_* env vars override it)")
    pull.add_argument("--portal", action="append", help="only this portal (repeatable)")
    pull.set_defaults(func=cmd_pull)
    serve = commands.add_parser("serve", help="serve the push handler for online handlers")
    serve.add_argument("--config", help="YAML config file (IMCONNECTOR_* env vars override it)")
    serve.set_defaults(func=cmd_serve)
