"""Builds the package; with IMCONNECTOR_COMPILE=1, mypyc compiles the per-record path.

Everything else is in pyproject.toml. `consumer/native.py` lists the compiled modules and
explains the build; `scripts/compile` runs this in place for the venv.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from setuptools import setup

sys.path.insert(0, str(Path(__file__).resolve().parent))
from consumer.native import COMPILED, GROUP


def ext_modules() -> list[object]:
    if os.environ.get("IMCONNECTOR_COMPILE") != "1":
        return []
    from mypyc.build import mypycify

    return mypycify(list(COMPILED), group_name=GROUP, opt_level="3")


setup(ext_modules=ext_modules())
