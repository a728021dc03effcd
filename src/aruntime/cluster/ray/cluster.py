"""Joining a Ray cluster for `aruntime serve --ray`, and what each role's actors ask it for.

Ray is imported only here and in the modules that run on it, and only in Ray mode: plain
`aruntime serve` never needs it.

Placement by role: when the cluster advertises the custom resource `aruntime_<role>` (nodes
started with `ray start --resources='{"aruntime_decode": 1}'`), each actor of that role asks
for one unit of it, so the role lands on those nodes only and a node hosts as many of its
workers as it has units; otherwise Ray places actors anywhere. Actors ask for no CPU (the engine
thread is not a Ray task; a small cluster still hosts several) and for one GPU each when the
engine runs on one.
"""

from __future__ import annotations

import socket
from typing import Any

from aruntime.errors import first_line

__all__ = ["RayUnavailableError", "actor_options", "connect"]

CONNECT_TIMEOUT_S = 5.0  # a TCP connect to the head; Ray's own timeout is much longer


class RayUnavailableError(RuntimeError):
    """Ray is not installed, the cluster cannot be reached, or it cannot host the workers."""


def connect(address: str) -> None:
    """`auto`: the cluster in RAY_ADDRESS or the latest started on this machine, else a new
    local one (`ray.init()`). Otherwise a running cluster's head: `host:port` (its GCS) or
    `ray://host:port` (Ray Client). An address is checked even when this process is connected
    already (then it is not joined again)."""
    try:
        import ray
    except ImportError:
        raise RayUnavailableError("--ray needs Ray: pip install 'aruntime[ray]'") from None
    if address != "auto":
        _check_reachable(address)
    if ray.is_initialized():
        return
    try:
        ray.init(address=None if address == "auto" else address, include_dashboard=False,
                 log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise RayUnavailableError(f"--ray {address}: {first_line(exc)}") from None


def _check_reachable(address: str) -> None:
    """Fail in seconds, in one line, where Ray would retry for a minute."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise RayUnavailableError(f"--ray {address}: expected auto, HOST:PORT or "
                                  "ray://HOST:PORT")
    try:
        socket.create_connection((host.strip("[]"), int(port)), CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise RayUnavailableError(f"--ray {address}: cannot reach a Ray cluster there "
                                  f"({exc.strerror or exc})") from None


def actor_options(role: str, workers: int, device: str) -> dict[str, Any]:
    """`ray.remote` options for `workers` actors of `role`, checked against what the cluster
    has: an actor it can never place would wait forever instead of failing."""
    import ray

    total = ray.cluster_resources()
    gpus = 1 if device == "cuda" or (device == "auto" and total.get("GPU", 0) > 0) else 0
    options: dict[str, Any] = {"num_cpus": 0, "num_gpus": gpus}
    needs = {"GPU": gpus * workers}
    resource = f"aruntime_{role}"
    if resource in total:
        options["resources"] = {resource: 1}
        needs[resource] = workers
    for name, need in needs.items():
        if need > total.get(name, 0):
            raise RayUnavailableError(f"{workers} {role} workers need {need:g} {name}; the Ray "
                                      f"cluster has {total.get(name, 0):g}")
    return options
