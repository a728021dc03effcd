"""A parallel rank other than 0, started by engine/parallel/group.py: its shard of the
model and of the KV pool, each step rank 0 sends it run in lockstep (and its KV shards sent
or kept when rank 0 saves or restores whole blocks), until the group closes (or a collective
fails: a rank is gone, and this one exits too). Its arguments come pickled on stdin from its
parent, never from a command line."""

from __future__ import annotations

import pickle
import sys
from datetime import timedelta

import torch
from torch._C._distributed_c10d import TCPStore  # where torch's stubs have it

from aruntime.engine.loader import load_checkpoint
from aruntime.engine.parallel.group import TIMEOUT_S, Collectives
from aruntime.engine.parallel.kv_shards import ReadBlocks, WriteBlocks, keep_part, places
from aruntime.engine.parallel.launch import RankArgs
from aruntime.engine.runner import ModelRunner, PlainStep, blocks_of


def main() -> int:
    args = pickle.loads(sys.stdin.buffer.read())
    assert isinstance(args, RankArgs)
    return serve(args)


def serve(args: RankArgs) -> int:
    """Join the group and serve rank 0's messages: 0 when it closes, 1 when a rank is lost."""
    config, rank = args.config, args.rank
    torch.set_num_threads(args.threads)
    store = TCPStore(args.host, args.port, config.ranks, False, timedelta(seconds=TIMEOUT_S))
    ckpt = load_checkpoint(config.model)
    group = Collectives(store, rank, config.tensor_parallel, config.pipeline_parallel)
    runner = ModelRunner(config, ckpt.config, ckpt.weights(config.kbs_url), args.max_positions,
                         collectives=group)
    place = places(ckpt.config, config.tensor_parallel, config.pipeline_parallel)[rank]
    try:
        while (payload := group.broadcast(None)) is not None:
            message = pickle.loads(payload)
            if isinstance(message, PlainStep):
                runner.run(message)
            elif isinstance(message, ReadBlocks):
                group.send(blocks_of(runner.kv_cache, message.block_ids), 0)
            else:
                assert isinstance(message, WriteBlocks)
                keep_part(runner.kv_cache, place, message)
    except RuntimeError:  # a rank is gone (rank 0 included): nothing left to serve
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
