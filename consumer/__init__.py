"""imconnector-consumer: chat events from Kafka into Bitrix24 Open Channels, and the
operators' events from Bitrix24 back into Kafka."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:  # one version source: the package metadata (pyproject.toml's [project] version)
    __version__ = version("imconnector-consumer")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
