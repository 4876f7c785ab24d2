"""imconnector-consumer: mirrors Avro chat events from Kafka into Bitrix24 Open Channels."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
