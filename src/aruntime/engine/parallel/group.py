"""A tensor- and pipeline-parallel group: rank 0 is the engine (its scheduler, its sampler),
ranks 1..N-1 run engine/parallel/rank.py's loop — processes of this machine, or Ray actors
(engine/parallel/launch.py) — rank `stage * tp + t` holding stage `stage`'s layers, shard t;
joined by torch.distributed's gloo over TCP (process groups of their own, one over every
rank and one over each stage's shards, never the process-global default, so one process may
hold several). Each step, rank 0 sends the step's plain inputs (runner.PlainStep, pickled)
and every rank runs it; the collectives inside the model (engine/parallel/tp_parts.py) keep
them in lockstep. A rank that dies makes the next collective fail (gloo sees its socket
close, or TIMEOUT_S passes), so a step never hangs: the engine fails its requests and
restarts the group (`ParallelGroup.restart`)."""

from __future__ import annotations

import os
import pickle
import subprocess
import time
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch._C._distributed_c10d import PrefixStore, TCPStore  # where torch's stubs have them

from aruntime.engine.config import EngineConfig
from aruntime.engine.parallel.kv_shards import ReadBlocks, WriteBlocks
from aruntime.engine.parallel.launch import LocalRanks, RankArgs, RankLauncher
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
        self.join(store)

    def join(self, store: TCPStore) -> None:
        """(Re)join the group the ranks at `store` form; a restarted group is joined in place,
        so the model's parts, which hold this object's methods, use the new one."""
        timeout = timedelta(seconds=TIMEOUT_S)
        # Any: torch's stubs leave out the group's own collectives
        self.pg: Any = dist.ProcessGroupGloo(store, self.rank, self.world, timeout)
        self.tp_pg: Any = self.pg  # the stage's shards: every rank, without stages
        if self.tp > 1 and self.pp > 1:
            self.tp_pg = dist.ProcessGroupGloo(PrefixStore(f"stage{self.stage}", store),
                                               self.tp_rank, self.tp, timeout)

    def peer(self, stage: int) -> int:
        """The rank holding this rank's shard of `stage`."""
        return stage * self.tp + self.tp_rank

    # gloo moves host memory: a CUDA tensor (ranks sharing one GPU) goes through a host copy

    def reduce(self, t: torch.Tensor) -> None:
        started = time.perf_counter_ns()
        h = t.cpu()
        _waited(self.tp_pg.allreduce([h]), "all-reduce")
        if h is not t:
            t.copy_(h)
        self._count(t, started)

    def gather(self, t: torch.Tensor) -> list[torch.Tensor]:
        started = time.perf_counter_ns()
        h = t.cpu()
        out = [torch.empty_like(h) for _ in range(self.tp)]
        _waited(self.tp_pg.allgather([out], [h]), "all-gather")
        self._count(t, started)
        return [o.to(t.device) for o in out]

    def send(self, t: torch.Tensor, dst: int) -> None:
        """A tensor to one rank, waited for (a stage's KV shard to rank 0)."""
        self.wait(self.isend(t, dst, 0), "a send to rank 0")

    def isend(self, t: torch.Tensor, dst: int, tag: int) -> Any:
        """A pipeline stage's output to the next stage (or the logits to rank 0), not waited
        for: the caller keeps what this returns until `wait` says it is sent."""
        started = time.perf_counter_ns()
        h = t.cpu()
        work = self.pg.send([h], dst, tag)
        self._count(t, started)
        return work, h  # the host copy lives as long as the send

    def wait(self, sent: Any, what: str) -> None:
        started = time.perf_counter_ns()
        _waited(sent[0], what)
        self.comm_ns += time.perf_counter_ns() - started

    def recv(self, t: torch.Tensor, src: int, tag: int = 0) -> None:
        started = time.perf_counter_ns()
        h = t if t.device.type == "cpu" else torch.empty_like(t, device="cpu")
        _waited(self.pg.recv([h], src, tag), "a receive from another stage")
        if h is not t:
            t.copy_(h)
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
    StepSender), restarts them when one is lost, and closes them."""

    def __init__(self, config: EngineConfig, max_positions: int,
                 launcher: RankLauncher | None = None) -> None:
        self.config, self.max_positions = config, max_positions
        self.launcher = launcher or LocalRanks()
        # the ranks share this machine's CPUs: each runs its share of torch's threads
        self.threads_before = torch.get_num_threads()
        self.threads = threads_per_rank(config.tensor_parallel)
        torch.set_num_threads(self.threads)
        self.restarts = 0
        self.collectives = Collectives(self._spawn(), 0, config.tensor_parallel,
                                       config.pipeline_parallel)

    def _spawn(self) -> TCPStore:
        """A new store and ranks 1..N-1 started against it (they join when rank 0 does)."""
        host = self.launcher.host
        store = TCPStore(host, 0, self.config.ranks, True, timedelta(seconds=TIMEOUT_S),
                         wait_for_workers=False)
        self.procs = [self.launcher.start(RankArgs(self.config, rank, host, store.port,
                                                   self.max_positions, self.threads))
                      for rank in range(1, self.config.ranks)]
        self.store = store
        return store

    def restart(self) -> None:
        """After a rank was lost: the survivors stopped, fresh ranks started and joined (their
        KV pools empty: the engine forgets its cached blocks). A rank that cannot start
        raises, and the engine fails as a whole."""
        self._stop(kill=True)
        self.collectives.join(self._spawn())
        self.restarts += 1

    def send(self, message: PlainStep | ReadBlocks | WriteBlocks) -> None:
        """A step, or a request for the ranks' KV shards (engine/parallel/kv_shards.py)."""
        self.collectives.broadcast(pickle.dumps(message))

    def recv_from(self, t: torch.Tensor, rank: int) -> None:
        self.collectives.recv(t, rank)

    def close(self) -> None:
        """Tell every rank to exit (if the group still stands), then make sure they have."""
        try:
            if all(p.poll() is None for p in self.procs):
                self.collectives.broadcast(None)
        except RuntimeError:
            pass  # a rank is gone: the others' next collective fails and they exit
        self._stop(kill=False)
        torch.set_num_threads(self.threads_before)

    def _stop(self, kill: bool) -> None:
        """Every other rank gone; `kill`: now (a survivor of a lost rank may be waiting on a
        broadcast until TIMEOUT_S), else after 10 s to exit on its own."""
        for proc in self.procs:
            if kill and proc.poll() is None:
                proc.kill()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def threads_per_rank(tp: int) -> int:
    """A stage's shards run at once, so each takes its share of the CPUs; the stages of a
    pipeline mostly take turns (a decode step is never cut), so each takes the whole share:
    measured on the default model on 2 cores, PP=2 with 2 threads a stage made 16 tokens for
    8 prompts in 2.75 s, with 1 in 4.4 s."""
    return max(1, len(os.sched_getaffinity(0)) // tp)
