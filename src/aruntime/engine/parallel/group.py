"""A tensor- and pipeline-parallel group on one machine: rank 0 is the engine (its scheduler,
its sampler), ranks 1..N-1 are processes of their own (engine/parallel/rank.py), rank
`stage * tp + t` holding stage `stage`'s layers, shard t; joined by torch.distributed's gloo
over loopback TCP (process groups of their own — one over every rank, one over each stage's
shards — never the process-global default, so one process may hold several). Each step, rank 0 sends
the step's plain inputs (runner.PlainStep, pickled) and every rank runs it; the collectives
inside the model (engine/parallel/tp_parts.py) keep them in lockstep. A rank that dies makes
the next collective fail (gloo sees its socket close, or TIMEOUT_S passes), so a step never
hangs: the engine fails its requests and the group is closed."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import time
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch._C._distributed_c10d import PrefixStore, TCPStore  # where torch's stubs have them

from aruntime.engine.config import EngineConfig
from aruntime.engine.runner import PlainStep

TIMEOUT_S = 60.0


class RankLostError(RuntimeError):
    """A collective failed: a rank of the group is gone (or stalled past TIMEOUT_S)."""


def _waited(work: Any, what: str) -> None:
    try:
        work.wait()
    except RuntimeError as exc:
        raise RankLostError(f"a parallel rank is gone ({what} failed: {exc})") from None


class Collectives:
    """One rank's gloo group: sum in place, gather, and the steps rank 0 broadcasts; the time
    spent in the model's collectives and the bytes each contributed (`aruntime bench
    parallel` reads them), and the step broadcasts' bytes apart."""

    def __init__(self, store: TCPStore, rank: int, tp: int, pp: int) -> None:
        self.rank, self.world, self.tp, self.pp = rank, tp * pp, tp, pp
        self.stage, self.tp_rank = divmod(rank, tp)
        self.comm_ns = 0  # inside all-reduce, all-gather, send and receive
        self.comm_bytes = 0  # this rank's tensors into them
        self.step_bytes = 0  # the steps' plain inputs broadcast
        timeout = timedelta(seconds=TIMEOUT_S)
        # Any: torch's stubs leave out the group's own collectives
        self.pg: Any = dist.ProcessGroupGloo(store, rank, self.world, timeout)
        self.tp_pg: Any = self.pg  # the stage's shards: every rank, without stages
        if tp > 1 and pp > 1:
            self.tp_pg = dist.ProcessGroupGloo(PrefixStore(f"stage{self.stage}", store),
                                               self.tp_rank, tp, timeout)

    def peer(self, stage: int) -> int:
        """The rank holding this rank's shard of `stage`."""
        return stage * self.tp + self.tp_rank

    def reduce(self, t: torch.Tensor) -> None:
        started = time.perf_counter_ns()
        _waited(self.tp_pg.allreduce([t]), "all-reduce")
        self._count(t, started)

    def gather(self, t: torch.Tensor) -> list[torch.Tensor]:
        started = time.perf_counter_ns()
        out = [torch.empty_like(t) for _ in range(self.tp)]
        _waited(self.tp_pg.allgather([out], [t]), "all-gather")
        self._count(t, started)
        return out

    def send(self, t: torch.Tensor, dst: int) -> None:
        """A pipeline stage's output to the next stage (or the logits to rank 0)."""
        started = time.perf_counter_ns()
        _waited(self.pg.send([t], dst, 0), "a send to the next stage")
        self._count(t, started)

    def recv(self, t: torch.Tensor, src: int) -> None:
        started = time.perf_counter_ns()
        _waited(self.pg.recv([t], src, 0), "a receive from the previous stage")
        self.comm_ns += time.perf_counter_ns() - started

    def _count(self, t: torch.Tensor, started: int) -> None:
        self.comm_ns += time.perf_counter_ns() - started
        self.comm_bytes += t.numel() * t.element_size()

    def broadcast(self, payload: bytes | None) -> bytes | None:
        """Rank 0's bytes on every rank (None: the group is closing)."""
        size = torch.tensor([-1 if payload is None else len(payload)], dtype=torch.int64)
        self._from_root(size)
        if size.item() < 0:
            return None
        data = (torch.frombuffer(bytearray(payload), dtype=torch.uint8) if payload is not None
                else torch.empty(int(size.item()), dtype=torch.uint8))
        self._from_root(data)
        self.step_bytes += data.numel()
        return data.numpy().tobytes()

    def _from_root(self, t: torch.Tensor) -> None:
        opts = dist.BroadcastOptions()
        opts.rootRank = 0
        _waited(self.pg.broadcast([t], opts), "the step's broadcast")


class ParallelGroup:
    """Rank 0's side: starts the other ranks, joins them, sends each step (the runner's
    StepSender), and closes them."""

    def __init__(self, config: EngineConfig, max_positions: int) -> None:
        world = config.ranks
        # the ranks share this machine's CPUs: each runs its share of torch's threads
        self.threads_before = torch.get_num_threads()
        threads = threads_per_rank(world)
        torch.set_num_threads(threads)
        store = TCPStore("127.0.0.1", 0, world, True, timedelta(seconds=TIMEOUT_S),
                              wait_for_workers=False)  # they start below
        self.procs = [subprocess.Popen([sys.executable, "-m", "aruntime.engine.parallel.rank"],
                                       stdin=subprocess.PIPE)
                      for _ in range(1, world)]
        for rank, proc in enumerate(self.procs, start=1):
            assert proc.stdin is not None
            proc.stdin.write(pickle.dumps((config, rank, store.port, max_positions, threads)))
            proc.stdin.close()
        self.store = store
        self.collectives = Collectives(store, 0, config.tensor_parallel,
                                       config.pipeline_parallel)

    def send(self, step: PlainStep) -> None:
        self.collectives.broadcast(pickle.dumps(step))

    def close(self) -> None:
        """Tell every rank to exit (if the group still stands), then make sure they have."""
        try:
            if all(p.poll() is None for p in self.procs):
                self.collectives.broadcast(None)
        except RuntimeError:
            pass  # a rank is gone: the others' next collective fails and they exit
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        torch.set_num_threads(self.threads_before)


def threads_per_rank(world: int) -> int:
    return max(1, len(os.sched_getaffinity(0)) // world)
