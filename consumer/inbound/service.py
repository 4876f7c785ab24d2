"""The inbound side inside the service process (`run`), as the settings ask for it: the
pull loop in a thread (`inbound.pull_in_service`) and the push handler on the service's
HTTP port (`inbound.push_on_service_port`). Each has its own Kafka producer, apart from
the engine's."""

from __future__ import annotations

import logging

from consumer.bitrix.oauth import TokenStore
from consumer.errors import ConfigError
from consumer.inbound.pull import PullThread
from consumer.inbound.push import ApplicationTokens, PushHandler
from consumer.inbound.sink import AcknowledgedSink, ensure_topic
from consumer.observability.health import PostRoute
from consumer.observability.metrics import Metrics
from consumer.settings import Settings

logger = logging.getLogger(__name__)


def push_endpoint(settings: Settings, metrics: Metrics) -> tuple[PushHandler, AcknowledgedSink]:
    """The push handler and the producer it stores through (close the sink at the end)."""
    tokens = ApplicationTokens(settings.portals)  # refuses contradictory token settings
    ensure_topic(settings)
    sink = AcknowledgedSink(settings)
    return PushHandler(settings.inbound, tokens, sink, metrics), sink


class InboundInService:
    """Starts what `settings.inbound` turns on; `routes` go to the service's HTTP port."""

    def __init__(self, settings: Settings, metrics: Metrics, store: TokenStore) -> None:
        inbound = settings.inbound
        self.routes: dict[str, PostRoute] = {}
        self._sink: AcknowledgedSink | None = None
        self._pull: PullThread | None = None
        if inbound.push_on_service_port:
            handler, self._sink = push_endpoint(settings, metrics)
            self.routes[inbound.push_path] = handler.handle
            logger.info("operator events pushed to :%d%s", settings.http_port, inbound.push_path)
        if inbound.pull_in_service:
            if not settings.portals:
                raise ConfigError(
                    "IMCONNECTOR_INBOUND__PULL_IN_SERVICE needs a portal in IMCONNECTOR_PORTALS"
                )
            self._pull = PullThread(settings, metrics, store).start()
            logger.info("pulling the offline event queues of %s", ", ".join(settings.portals))

    def stop(self) -> None:
        """Stop the pull loop and flush the push producer."""
        if self._pull is not None:
            self._pull.stop()
        if self._sink is not None:
            self._sink.close()
