"""The service's processes run with the collector thresholds of `consumer/gctune.py`."""

from __future__ import annotations

import gc
import subprocess
import sys
from pathlib import Path

from consumer.gctune import THRESHOLDS, tune

ROOT = Path(__file__).resolve().parents[2]


def test_tune_sets_the_thresholds_and_reports_them():
    before = gc.get_threshold()
    try:
        assert tune() == THRESHOLDS
        assert gc.get_threshold() == THRESHOLDS
    finally:
        gc.set_threshold(*before)
    assert before != THRESHOLDS  # pytest runs with CPython's defaults


def test_the_dispatch_process_tunes_its_collector_before_serving():
    # main() with a socket that cannot exist: it fails where it starts serving, after
    # everything it sets up for itself.
    code = (
        "import gc, os, sys\n"
        "from consumer import dispatch_process\n"
        "before = gc.get_threshold()\n"
        "try:\n"
        "    dispatch_process.main(['child', '-1', str(os.getppid())])\n"
        "except (OSError, ValueError):\n"
        "    pass\n"
        "print(before, gc.get_threshold())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"(700, 10, 10) {THRESHOLDS}"
