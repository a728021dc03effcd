"""Where ARuntime keeps its files: one home directory, overridable by ARUNTIME_HOME."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    return Path(os.environ.get("ARUNTIME_HOME") or Path.home() / ".cache" / "aruntime")


def models_dir() -> Path:
    return home() / "models"


def data_dir() -> Path:
    return home() / "data"
