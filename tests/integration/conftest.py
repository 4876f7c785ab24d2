"""Fixtures of the chart tests (test_helm*.py, test_prometheus.py): the helm binary."""

from __future__ import annotations

import pytest

from tests.integration.chart import helm_binary


@pytest.fixture(scope="session")
def helm() -> str:
    """Path of the helm binary; fails (never skips) with the fix when it is missing."""
    return helm_binary()
