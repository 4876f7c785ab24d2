"""`python -m consumer.simulator`: the simulator CLI without the service's console script."""

from __future__ import annotations

import sys

from consumer.simulator.cli import main

sys.exit(main())
