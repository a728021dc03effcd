"""Block keys, the block pool and the scheduler, without a model."""

from __future__ import annotations

import subprocess
import sys

import pytest

from aruntime.engine.block_pool import BlockPool, NoFreeBlocksError
from aruntime.engine.sampling import SamplingParams
from aruntime.engine.scheduler import Scheduler
from aruntime.engine.sequence import Sequence
from aruntime.kv.keys import KeyScheme, block_key, prefix_keys

SCHEME = KeyScheme(block_size=4, model_revision="sha256:" + "ab" * 32)


def test_keys_are_canonical_across_processes() -> None:
    here = prefix_keys(SCHEME.root(b"tenant-a"), list(range(10)), 4)
    code = ("from aruntime.kv.keys import KeyScheme, prefix_keys;"
            f"s = KeyScheme(4, {SCHEME.model_revision!r});"
            "print(','.join(k.hex() for k in "
            "prefix_keys(s.root(b'tenant-a'), list(range(10)), 4)))")
    for seed in ("1", "2"):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True, env={"PYTHONHASHSEED": seed, "PATH": ""})
        assert out.stdout.strip() == ",".join(k.hex() for k in here)
    assert len(here) == 2  # only full blocks get keys


def test_keys_depend_on_everything_they_cover() -> None:
    root = SCHEME.root()
    base = block_key(root, [1, 2, 3, 4])
    assert block_key(root, [1, 2, 3, 5]) != base
    assert block_key(SCHEME.root(b"other-tenant"), [1, 2, 3, 4]) != base
    assert block_key(KeyScheme(4, "sha256:" + "cd" * 32).root(), [1, 2, 3, 4]) != base
    assert block_key(KeyScheme(8, SCHEME.model_revision).root(), [1, 2, 3, 4]) != base
    # chaining: the same block after another parent gets another key
    assert block_key(base, [1, 2, 3, 4]) != base


def test_pool_refcounts_and_lru_eviction() -> None:
    pool = BlockPool(4)
    a = pool.allocate(2)
    assert pool.num_free == 2
    key0 = block_key(SCHEME.root(), [1, 1, 1, 1])
    pool.cache(a[0], key0, [1, 1, 1, 1])
    pool.free(a[::-1])
    assert pool.num_free == 4
    assert pool.lookup([key0], [1, 1, 1, 1], 4) == [a[0]]
    assert pool.lookup([key0], [1, 1, 1, 2], 4) == []  # tokens are checked, not just the key
    pool.take([a[0]])
    assert pool.num_free == 3 and pool.blocks[a[0]].ref_count == 1
    pool.free([a[0]])
    # Allocating every block evicts the cached one last-used-last, and it stops being findable.
    pool.allocate(4)
    assert pool.lookup([key0], [1, 1, 1, 1], 4) == []
    with pytest.raises(NoFreeBlocksError):
        pool.allocate(1)


def test_scheduler_shares_prefix_blocks_and_preempts_newest() -> None:
    pool = BlockPool(6)
    sched = Scheduler(pool, block_size=4, max_num_seqs=8, max_num_batched_tokens=64)
    params = SamplingParams(max_tokens=4)
    first = Sequence("a", list(range(9)), params, SCHEME.root())
    sched.add(first)
    out = sched.schedule()
    assert [c.num_tokens for c in out.chunks] == [9]
    for c in out.chunks:
        sched.on_computed(c)
    second = Sequence("b", [*list(range(8)), 99], params, SCHEME.root())
    sched.add(second)
    out = sched.schedule()
    chunk = next(c for c in out.chunks if c.seq is second)
    assert second.num_cached_tokens == 8 and chunk.start == 8 and chunk.num_tokens == 1
    assert second.block_table[:2] == first.block_table[:2]
    assert pool.blocks[first.block_table[0]].ref_count == 2
    # Grow both until blocks run out: the newest is preempted and keeps its tokens.
    for c in out.chunks:
        sched.on_computed(c)
    for seq in (first, second):
        seq.token_ids += [7] * 8
    out = sched.schedule()
    assert out.num_preempted >= 1 and second in sched.waiting
    assert second.num_computed_tokens == 0 and second.num_tokens == 17
    sched.finish(first)
    sched.finish(second)
    assert pool.num_free == pool.num_blocks
