"""What a figure was measured on: CPU or GPU model, cores, torch version and threads."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo; the platform's processor string elsewhere."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe(device: str | torch.device = "cpu") -> dict[str, Any]:
    """A JSON-ready description of the machine as this process sees it."""
    import psutil
    import torch

    dev = torch.device(device)
    try:
        usable = len(os.sched_getaffinity(0))  # cores this process may run on
    except AttributeError:  # not on Linux
        usable = os.cpu_count() or 1
    info: dict[str, Any] = {
        "device": dev.type,
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cores": usable,
        "torch_threads": torch.get_num_threads(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }
    if dev.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(dev)
        info["cuda"] = torch.version.cuda
    return info


def summary(info: dict[str, Any]) -> str:
    """One line for a report header."""
    where = info.get("gpu") or info["cpu"]
    return (f"{where}, {info['usable_cores']} cores, torch {info['torch']} "
            f"({info['torch_threads']} threads)")
