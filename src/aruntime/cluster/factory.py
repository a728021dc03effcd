"""Which pool a deployment asks for: one worker or several behind the router, prefill and
decode workers handing KV over a transport, or the same as Ray actors (this process connected
to a cluster already). The one place that names the pool classes."""

from __future__ import annotations

from aruntime.cluster.serving import ServingPool
from aruntime.engine.config import EngineConfig


def open_pool(config: EngineConfig, workers: int = 1, policy: str = "kv", *,
              prefill_workers: int = 0, decode_workers: int = 0,
              transport_dir: str | None = None, ray: bool = False) -> ServingPool:
    """The pool, not started (`start()` loads the model in every worker)."""
    disaggregated = bool(prefill_workers or decode_workers)
    if ray:
        from aruntime.cluster.ray.pool import RayDisaggregatedPool, RayPool

        if disaggregated:
            return RayDisaggregatedPool(config, prefill_workers, decode_workers, policy)
        return RayPool(config, workers, policy)
    if disaggregated:
        from aruntime.cluster.disagg import DisaggregatedPool

        return DisaggregatedPool(config, prefill_workers, decode_workers, policy,
                                 transport_dir=transport_dir)
    from aruntime.cluster.pool import WorkerPool

    return WorkerPool(config, workers, policy)
