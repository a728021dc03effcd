"""Readings of the machine taken in the same run as a benchmark's figures: the matmul roofline,
memcpy and file-read bandwidth, this process's peak RSS. The machine is shared, so a ceiling
read on another day would not be the ceiling the figures met."""

from __future__ import annotations

import os
import resource
import statistics
import time
from pathlib import Path


def sync(device: str) -> None:
    """Wait for the device's queued work, so that a clock read after it has seen it done."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_gflops(device: str, n: int = 2048, repeats: int = 7) -> float:
    """The roofline: median GFLOP/s of an n x n fp32 matmul on this device, now."""
    import torch

    a, b = (torch.randn(n, n, device=device) for _ in range(2))
    c = torch.empty(n, n, device=device)
    times = []
    for i in range(repeats + 2):  # two warm-ups
        sync(device)
        t0 = time.perf_counter()
        torch.mm(a, b, out=c)
        sync(device)
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times) / 1e9


def peak_rss_mb() -> float:
    """This process's peak resident set so far (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memcpy_gbps(nbytes: int = 256 << 20, repeats: int = 5) -> float:
    import torch

    src = torch.ones(nbytes // 4)
    dst = torch.empty_like(src)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - t0)
    return nbytes / statistics.median(times) / 1e9


def file_read_gbps(directory: Path, nbytes: int = 256 << 20, repeats: int = 5) -> float:
    """Reading a file that sits in the page cache, as a just-demoted block does."""
    path = directory / "read-probe.bin"
    path.write_bytes(os.urandom(1 << 20) * (nbytes >> 20))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        path.read_bytes()
        times.append(time.perf_counter() - t0)
    path.unlink()
    return nbytes / statistics.median(times) / 1e9
