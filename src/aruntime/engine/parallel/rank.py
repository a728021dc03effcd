"""A parallel rank other than 0, started by engine/parallel/group.py: its shard of the
model and of the KV pool, each step rank 0 sends it run in lockstep, until the group closes
(or a collective fails: a rank is gone, and this one exits too). Its arguments come pickled on
stdin from its parent, never from a command line."""

from __future__ import annotations

import pickle
import sys
from datetime import timedelta

import torch
from torch._C._distributed_c10d import TCPStore  # where torch's stubs have it

from aruntime.engine.config import EngineConfig
from aruntime.engine.loader import load_checkpoint
from aruntime.engine.parallel.group import TIMEOUT_S, Collectives
from aruntime.engine.runner import ModelRunner, PlainStep


def main() -> int:
    config, rank, port, max_positions, threads = pickle.loads(sys.stdin.buffer.read())
    assert isinstance(config, EngineConfig)
    torch.set_num_threads(threads)
    store = TCPStore("127.0.0.1", port, config.ranks, False,
                          timedelta(seconds=TIMEOUT_S))
    ckpt = load_checkpoint(config.model)
    group = Collectives(store, rank, config.tensor_parallel, config.pipeline_parallel)
    runner = ModelRunner(config, ckpt.config, ckpt.weights(config.kbs_url), max_positions,
                         collectives=group)
    try:
        while (payload := group.broadcast(None)) is not None:
            step = pickle.loads(payload)
            assert isinstance(step, PlainStep)
            runner.run(step)
    except RuntimeError:  # a rank is gone (rank 0 included): nothing left to serve
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
