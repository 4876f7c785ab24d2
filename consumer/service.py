"""Wiring: settings -> metrics, token store, Bitrix24 client, dispatcher, engine, ops server
(and the inbound pull loop / push handler when the settings turn them on)."""

from __future__ import annotations

import faulthandler
import gc
import logging
import os
import signal
import threading
from types import FrameType

from consumer import __version__
from consumer.bitrix.oauth import TokenStore
from consumer.dispatch.dispatcher import Dispatcher
from consumer.engine.engine import Engine
from consumer.errors import PartitionsLost, TransactionStuck
from consumer.inbound.service import InboundInService
from consumer.kafka.tokens import token_store_for
from consumer.observability.health import OpsServer
from consumer.observability.metrics import Metrics
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
    """
    store = (
        token_store
        if token_store is not None
        else token_store_for(settings, in_memory=memory_tokens)
    )
    dispatcher = Dispatcher.from_settings(settings, metrics, store)
    return Engine(settings, metrics, dispatcher, create_sources=create_sources)


def process_metrics() -> Metrics:
    """What a process that runs an engine (the service, the demo) does first: set the
    collector's thresholds and make its metrics."""
    # Fewer young collections: the service keeps many long-lived objects and frees most
    # short-lived ones by reference counting (docs/benchmarks.md has the A/B).
    gc.set_threshold(10_000, 20, 20)
    logger.info("imconnector-consumer %s", __version__)
    return Metrics(version=__version__)


def run_service(settings: Settings) -> int:
    """Run until SIGTERM/SIGINT; drain within the grace period; return the exit code."""
    metrics = process_metrics()
    store = token_store_for(settings)  # one rotation chain for the engine and the pull loop
    engines = [build_engine(settings, metrics, token_store=store)]  # the last one runs
    inbound = InboundInService(settings, metrics, store)
    ops = OpsServer(
        metrics,
        lambda: engines[-1].ready,
        host=settings.http_host,
        port=settings.http_port,
        post_routes=inbound.routes,
    ).start()
    logger.info("metrics and probes on :%d (/metrics, /healthz, /readyz)", ops.port)
    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if stopping.is_set():
            return
        stopping.set()
        logger.info("signal %d: draining (grace %.0fs)", signum, settings.shutdown_grace_s)
        engines[-1].stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # `kill -USR1 <pid>` prints every thread's stack to stderr: what a stuck pod is doing.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    try:
        while True:
            try:
                engines[-1].run()
                break
            except PartitionsLost as exc:
                # The old engine closed without committing; a new one joins and restores.
                logger.warning("%s", exc)
                if stopping.is_set():
                    break
                engines[:] = [build_engine(settings, metrics, token_store=store)]
                if stopping.is_set():  # a signal between the check and the swap
                    engines[-1].stop()
    except TransactionStuck as exc:
        # The committer thread is blocked inside librdkafka: an orderly exit would wait for
        # it (interpreter shutdown joins it). Nothing is lost: the transaction was not
        # committed, and the next instance fences it and restores from the changelog.
        logger.critical("%s", exc)
        logging.shutdown()
        os._exit(TransactionStuck.exit_code)
    finally:
        ops.stop()
        inbound.stop()
    return 0
