"""Optional extras in tests: skipped where the extra is not installed, except in CI."""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest


def require_extra(module: str) -> ModuleType:
    """Import ``module`` of an optional extra; skip the test without it, but fail in CI
    (``CI`` set), which installs every extra, so that a broken install cannot pass silently."""
    if os.environ.get("CI"):
        return importlib.import_module(module)
    return pytest.importorskip(module)
