"""Helpers shared by the benchmarks (run them from the repository root)."""

from __future__ import annotations

import platform
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def machine() -> str:
    from synthgen.engines.devices import detect_device

    d = detect_device()
    return f"{d.label}, Python {platform.python_version()}"
