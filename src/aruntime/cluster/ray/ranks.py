"""A parallel group's ranks 1..N-1 as Ray actors (`aruntime serve --ray` with
--tensor-parallel or --pipeline-parallel): the engine actor is rank 0 and starts the others
through this launcher instead of as processes of its own. Each rank actor serves the same
loop a local rank process does (engine/parallel/rank.py) in one long call, joined by gloo at
the store on the engine actor's node. They are placed on that node when Ray can (a soft
affinity): a tensor-parallel step crosses to every shard twice a layer. Like the engine
actors they take no CPU from Ray's accounting: a rank runs its share of its engine's."""

from __future__ import annotations

import os
import subprocess
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from aruntime.engine.parallel.launch import RankArgs, RankLauncher, RankProcess

LOST = -9  # what a killed or crashed rank actor's exit is reported as


class RankActor:
    def serve(self, args: RankArgs) -> int:
        from aruntime.engine.parallel.rank import serve

        return serve(args)


class RayRank:
    """A started rank actor, seen as a process is (RankProcess)."""

    def __init__(self, actor: Any, done: ray.ObjectRef) -> None:
        self.actor, self.done = actor, done

    def poll(self) -> int | None:
        ready, _ = ray.wait([self.done], timeout=0)
        return self._code() if ready else None

    def wait(self, timeout: float | None = None) -> int:
        ready, _ = ray.wait([self.done], timeout=timeout)
        if not ready:
            raise subprocess.TimeoutExpired("a rank actor", timeout or 0)
        return self._code()

    def kill(self) -> None:
        ray.kill(self.actor, no_restart=True)

    def _code(self) -> int:
        try:
            code: int = ray.get(self.done)
        except ray.exceptions.RayError:  # the actor died under the call
            return LOST
        return code


class RayRanks(RankLauncher):
    def __init__(self) -> None:
        self.node = ray.get_runtime_context().get_node_id()
        self._host = ray.util.get_node_ip_address()

    @property
    def host(self) -> str:
        return self._host

    def start(self, args: RankArgs) -> RankProcess:
        gpus = 1 if args.config.device == "cuda" else 0
        actor: Any = ray.remote(RankActor).options(
            name=f"aruntime-rank{args.rank}-of-{os.getpid()}-{args.port}", num_cpus=0,
            num_gpus=gpus, max_restarts=0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(self.node, soft=True)).remote()
        return RayRank(actor, actor.serve.remote(args))
