"""The `imconnector-consumer` command line: run, simulate, demo, produce, tokens, dlq, events, ...

Configuration errors exit with status 2 and one line naming the setting and the fix.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from consumer import __version__
from consumer.errors import ConfigError


def _cmd_run(args: argparse.Namespace) -> int:
    from consumer.logs import setup_logging
    from consumer.observability.tracing import setup_tracing
    from consumer.service import run_service
    from consumer.settings import load_settings

    settings = load_settings(args.config)
    setup_logging(settings.log_format, settings.log_level)
    setup_tracing()  # only when OTEL_TRACES_EXPORTER names an exporter
    return run_service(settings)


def _cmd_simulate(args: argparse.Namespace) -> int:
    from consumer.simulator.cli import run_cli

    return run_cli(args)


def _cmd_demo(args: argparse.Namespace) -> int:
    from consumer.demo.runner import run_demo
    from consumer.logs import setup_logging

    setup_logging("text", "WARNING")
    return run_demo(args.bootstrap_servers, args.duration, args.chats, args.rate, args.http_port)


def _cmd_produce(args: argparse.Namespace) -> int:
    from confluent_kafka import Producer

    from consumer.codec import ChatEventEncoder, SchemaRegistryClient, event_from_json
    from consumer.kafka.clients import client_config
    from consumer.settings import load_settings

    # The service's own Kafka and registry settings (SASL/SSL, registry auth and CA);
    # the options only override the addresses.
    overrides: dict[str, Any] = {}
    if args.bootstrap_servers:
        overrides["kafka"] = {"bootstrap_servers": args.bootstrap_servers}
    if args.registry:
        overrides["schema_registry_url"] = args.registry
    settings = load_settings(args.config, **overrides)
    registry = SchemaRegistryClient.from_settings(settings)
    if args.wire == "confluent" and registry is None:
        raise ConfigError(
            "--wire confluent needs --registry URL (or IMCONNECTOR_SCHEMA_REGISTRY_URL)"
        )
    encoder = ChatEventEncoder(args.wire, registry, subject=f"{args.topic}-value")
    producer = Producer(client_config(settings, **{"linger.ms": 10}))
    source = sys.stdin if args.file == "-" else open(args.file, encoding="utf-8")  # noqa: SIM115
    count = 0
    with source:
        for number, line in enumerate(source, 1):
            if not line.strip():
                continue
            try:
                event = event_from_json(json.loads(line))
            except (ValueError, KeyError, TypeError) as exc:
                raise ConfigError(f"{args.file}:{number}: not a valid event: {exc}") from None
            producer.produce(args.topic, key=event.key.encode(), value=encoder.encode(event))
            producer.poll(0)
            count += 1
    remaining = producer.flush(30)
    if remaining:
        print(f"error: {remaining} events not acknowledged by Kafka", file=sys.stderr)
        return 1
    print(f"produced {count} events to {args.topic} ({args.wire})")
    return 0


def _cmd_tokens_seed(args: argparse.Namespace) -> int:
    from consumer.bitrix.oauth import TokenSet
    from consumer.kafka.tokens import KafkaTokenStore
    from consumer.kafka.topics import Topics
    from consumer.settings import load_settings

    settings = load_settings(args.config)
    access = os.environ.get("IMCONNECTOR_SEED_ACCESS_TOKEN") or args.access_token
    refresh = os.environ.get("IMCONNECTOR_SEED_REFRESH_TOKEN") or args.refresh_token
    if not access or not refresh:
        raise ConfigError(
            "give the pair in IMCONNECTOR_SEED_ACCESS_TOKEN and "
            "IMCONNECTOR_SEED_REFRESH_TOKEN (or --access-token/--refresh-token)"
        )
    portal = settings.portals.get(args.portal)
    if portal is None:
        raise ConfigError(f"portal {args.portal!r} is not in IMCONNECTOR_PORTALS")
    Topics(settings).ensure(create_sources=False)
    KafkaTokenStore(settings).save(
        args.portal,
        TokenSet(
            access_token=access,
            refresh_token=refresh,
            expires_at=time.time() + 3600,
            client_endpoint=args.client_endpoint or portal.rest_url,
            issued_at=time.time(),
        ),
    )
    print(f"seeded tokens for portal {args.portal} in topic {settings.tokens_topic}")
    return 0


def _cmd_dlq_redrive(args: argparse.Namespace) -> int:
    from consumer.admin.redrive import RedriveFilter, parse_time, redrive
    from consumer.settings import load_settings

    settings = load_settings(args.config)
    source = args.source_topic or (
        settings.source_topics[0] if len(settings.source_topics) == 1 else None
    )
    if source is None:
        raise ConfigError("several source topics are configured: pick one with --source-topic")
    try:
        filters = RedriveFilter(
            error_classes=frozenset(args.error_class or ()),
            codes=frozenset(args.code or ()),
            since_ms=parse_time(args.since),
            until_ms=parse_time(args.until),
            chat=args.chat,
        )
    except ValueError as exc:
        raise ConfigError(f"--since/--until: {exc}") from None
    redrive(
        settings,
        source,
        filters=filters,
        dry_run=args.dry_run,
        rate=args.rate,
        max_redrives=args.max_redrives,
        group=args.group,
        as_json=sys.stdout if args.json else None,
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also used by the README's help text)."""
    parser = argparse.ArgumentParser(
        prog="imconnector-consumer",
        description="Mirror Avro chat events from Kafka into Bitrix24 Open Channels.",
    )
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the consumer (config from IMCONNECTOR_* and --config)")
    run.add_argument("--config", help="YAML config file (env vars override it)")
    run.set_defaults(func=_cmd_run)

    simulate = sub.add_parser("simulate", help="run the Bitrix24 portal simulator")
    from consumer.simulator.cli import add_cli_arguments

    add_cli_arguments(simulate)
    simulate.set_defaults(func=_cmd_simulate)

    demo = sub.add_parser("demo", help="local Kafka + simulator + demo traffic + consumer")
    demo.add_argument("--bootstrap-servers", default="127.0.0.1:9092")
    demo.add_argument("--duration", type=float, default=60.0, help="seconds; 0 = until Ctrl-C")
    demo.add_argument("--chats", type=int, default=200)
    demo.add_argument("--rate", type=float, default=200.0, help="events per second")
    demo.add_argument("--http-port", type=int, default=9000)
    demo.set_defaults(func=_cmd_demo)

    produce = sub.add_parser("produce", help="encode JSON-lines events and publish them")
    produce.add_argument("--config", help="YAML config file: Kafka security, registry auth")
    produce.add_argument(
        "--bootstrap-servers", help="default: the settings' (IMCONNECTOR_KAFKA__BOOTSTRAP_SERVERS)"
    )
    produce.add_argument("--topic", required=True)
    produce.add_argument("--wire", choices=("single-object", "confluent"), default="single-object")
    produce.add_argument(
        "--registry",
        help="schema registry URL for --wire confluent (default: IMCONNECTOR_SCHEMA_REGISTRY_URL)",
    )
    produce.add_argument("--file", default="-", help="JSON lines, '-' for stdin")
    produce.set_defaults(func=_cmd_produce)

    tokens = sub.add_parser("tokens", help="OAuth token pairs in the token topic")
    tokens_sub = tokens.add_subparsers(dest="tokens_command", required=True)
    seed = tokens_sub.add_parser("seed", help="store a portal's access/refresh pair")
    seed.add_argument("--config")
    seed.add_argument("--portal", required=True)
    seed.add_argument("--access-token", help="prefer IMCONNECTOR_SEED_ACCESS_TOKEN")
    seed.add_argument("--refresh-token", help="prefer IMCONNECTOR_SEED_REFRESH_TOKEN")
    seed.add_argument("--client-endpoint")
    seed.set_defaults(func=_cmd_tokens_seed)

    dlq = sub.add_parser("dlq", help="dead-letter topics")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True)
    red = dlq_sub.add_parser("redrive", help="replay dead letters to their source topic")
    red.add_argument("--config")
    red.add_argument("--source-topic", help="default: the only configured source topic")
    red.add_argument(
        "--error-class",
        action="append",
        help=(
            "poison, permanent, causal_wait, auth, exhausted, parked, ambiguous, late, "
            "invalid_event, too_large, lost (repeatable)"
        ),
    )
    red.add_argument("--code", action="append", help="Bitrix24/decoder code (repeatable)")
    red.add_argument("--since", help="last failure at or after (ISO 8601 or epoch ms)")
    red.add_argument("--until", help="last failure at or before (ISO 8601 or epoch ms)")
    red.add_argument("--chat", help="chat key portal|connector|line|chat_id")
    red.add_argument("--dry-run", action="store_true", help="list, replay nothing")
    red.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="max records/s (0 = unlimited); committed per time slice",
    )
    red.add_argument(
        "--max-redrives",
        type=int,
        default=3,
        help="loop guard: skip records already replayed this many times",
    )
    red.add_argument("--group", help="redrive consumer group (default <group_id>.redrive)")
    red.add_argument(
        "--json", action="store_true", help="the listing (--dry-run) and report as JSON"
    )
    red.set_defaults(func=_cmd_dlq_redrive)

    from consumer.admin.connector import register_commands
    from consumer.admin.schemas import register_schema_commands

    register_commands(sub)  # connector register|activate|...
    register_schema_commands(sub)  # schemas list|check
    from consumer.inbound.commands import register_event_commands

    register_event_commands(sub)  # events bind|pull|serve
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except ConfigError as exc:
        print(f"imconnector-consumer: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
