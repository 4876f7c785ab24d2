"""Wiring: settings -> metrics, token store, Bitrix24 client, dispatcher, engine, ops server."""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

from consumer import __version__
from consumer.bitrix.oauth import TokenStore
from consumer.dispatch import Dispatcher
from consumer.dispatch_process import ProcessDispatcher
from consumer.engine import Engine
from consumer.errors import DispatchLost
from consumer.gctune import tune as tune_gc
from consumer.health import OpsServer
from consumer.kafka_io import token_store_for
from consumer.metrics import Metrics
from consumer.native import usable
from consumer.settings import Settings

logger = logging.getLogger(__name__)


def build_engine(
    settings: Settings,
    metrics: Metrics,
    *,
    token_store: TokenStore | None = None,
    memory_tokens: bool = False,
    create_sources: bool = False,
) -> Engine:
    """An engine with its dispatcher and Bitrix24 client, not yet running.

    OAuth pairs live in the tokens topic, or in memory (`memory_tokens`: the demo, tests).
    A `token_store` object cannot cross into a dispatch process: dispatch then runs in a
    thread of this process.
    """
    if settings.engine.dispatch == "process" and token_store is None:
        remote = ProcessDispatcher(settings, metrics, memory_tokens=memory_tokens)
        return Engine(settings, metrics, remote, create_sources=create_sources)
    store = (
        token_store
        if token_store is not None
        else token_store_for(settings, in_memory=memory_tokens)
    )
    dispatcher = Dispatcher.from_settings(settings, metrics, store)
    return Engine(settings, metrics, dispatcher, create_sources=create_sources)


def process_metrics() -> Metrics:
    """What a process that runs an engine (the service, the demo) does first: refuse a
    stale compiled build, set the collector's thresholds, and make its metrics, labelled
    with the build."""
    native = usable()
    thresholds = tune_gc()
    logger.info(
        "imconnector-consumer %s, %s (%d modules compiled by mypyc), GC thresholds %s",
        __version__,
        native.label,
        len(native.compiled),
        thresholds,
    )
    return Metrics(version=__version__, build=native.label)


def run_service(settings: Settings) -> int:
    """Run until SIGTERM/SIGINT; drain within the grace period; return the exit code."""
    metrics = process_metrics()
    engine = build_engine(settings, metrics)
    ops = OpsServer(
        metrics, lambda: engine.ready, host=settings.http_host, port=settings.http_port
    ).start()
    logger.info("metrics and probes on :%d (/metrics, /healthz, /readyz)", ops.port)
    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if stopping.is_set():
            return
        stopping.set()
        logger.info("signal %d: draining (grace %.0fs)", signum, settings.shutdown_grace_s)
        engine.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        engine.run()
    except DispatchLost as exc:
        logger.critical("%s; exiting: calls in flight are resent from the changelog", exc)
        return 1
    finally:
        ops.stop()
    return 0
