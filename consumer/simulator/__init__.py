"""A Bitrix24 portal simulator (imconnector REST, `batch`, OAuth, limits, faults) + a registry.

Start one in-process with `SimulatorServer(SimulatorConfig(...)).start()`, or from the
command line with `imconnector-consumer simulate` / `python -m consumer.simulator`.
"""

from __future__ import annotations

from consumer.simulator.calllog import CallLog, CallRecord
from consumer.simulator.cli import add_cli_arguments, run_cli
from consumer.simulator.clock import Clock, ManualClock, system_clock
from consumer.simulator.config import SimulatorConfig
from consumer.simulator.faults import FaultPlan, FaultSettings
from consumer.simulator.limits import LeakyBucket, OperatingBudget
from consumer.simulator.oauth import TokenStore
from consumer.simulator.openlines import OpenLines, conversation_key
from consumer.simulator.portal import Portal, RestReply
from consumer.simulator.registry import SchemaRegistry
from consumer.simulator.server import SimulatorServer

__all__ = [
    "CallLog",
    "CallRecord",
    "Clock",
    "FaultPlan",
    "FaultSettings",
    "LeakyBucket",
    "ManualClock",
    "OpenLines",
    "OperatingBudget",
    "Portal",
    "RestReply",
    "SchemaRegistry",
    "SimulatorConfig",
    "SimulatorServer",
    "TokenStore",
    "add_cli_arguments",
    "conversation_key",
    "run_cli",
    "system_clock",
]
