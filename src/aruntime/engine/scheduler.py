"""Iteration-level scheduling: continuous batching with chunked prefill under a token budget,
automatic prefix caching and preemption by recompute. No tensors here.

Each step, running sequences go first (oldest first), each taking the tokens it still needs up to
the budget; waiting sequences fill what budget is left. When blocks run out, the newest running
sequence is preempted: its blocks are freed and it goes back to the front of the queue, keeping
every token it has produced, so it is recomputed (mostly from the prefix cache) and never lost.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from aruntime.engine.block_pool import BlockPool
from aruntime.engine.sequence import Sequence, SequenceStatus
from aruntime.kv.connector import KVConnector
from aruntime.kv.keys import BlockKey


@dataclass(slots=True)
class ScheduledChunk:
    seq: Sequence
    start: int  # first position computed this step
    num_tokens: int

    @property
    def samples(self) -> bool:
        """A chunk that reaches the sequence's last known token yields its next token."""
        return self.start + self.num_tokens == self.seq.num_tokens


@dataclass(slots=True)
class SchedulerOutput:
    chunks: list[ScheduledChunk] = field(default_factory=list)
    num_preempted: int = 0

    @property
    def num_tokens(self) -> int:
        return sum(c.num_tokens for c in self.chunks)


class Scheduler:
    def __init__(self, pool: BlockPool, block_size: int, max_num_seqs: int,
                 max_num_batched_tokens: int, kv: KVConnector | None = None) -> None:
        self.pool = pool
        self.kv = kv  # where a device prefix hit continues from, and computed blocks go
        self.tier_hit_tokens = 0
        self.published: list[tuple[int, BlockKey]] = []  # newly computed blocks, for the kv
        self.block_size = block_size
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0
        self.prefix_query_tokens = 0
        self.prefix_hit_tokens = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.max_num_batched_tokens
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            n = min(seq.num_tokens - seq.num_computed_tokens, budget)
            while not self._grow(seq, n):
                victim = self.running.pop()
                self._preempt(victim)
                out.num_preempted += 1
                if victim is seq:
                    break
            else:
                out.chunks.append(ScheduledChunk(seq, seq.num_computed_tokens, n))
                budget -= n
                i += 1
        if out.num_preempted:
            return out  # blocks are short: admit nothing new this step
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            if not seq.block_table:
                self._take_prefix(seq)
            n = min(seq.num_tokens - seq.num_computed_tokens, budget)
            if not self._grow(seq, n):
                # A waiting sequence holds nothing: a preempted one may go back ahead of it,
                # and blocks it kept would starve that one once nothing runs (a livelock). Its
                # prefix blocks stay cached in the pool, so the next try hits them again.
                self._release(seq)
                break
            self.waiting.popleft()
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            out.chunks.append(ScheduledChunk(seq, seq.num_computed_tokens, n))
            budget -= n
        return out

    def _take_prefix(self, seq: Sequence) -> None:
        """Reuse cached full blocks; at least one token is always computed to get logits.
        A request that asks for prompt logprobs reuses none: cached positions give no logits."""
        bs = self.block_size
        reusable = 0 if seq.params.prompt_logprobs is not None else (seq.num_tokens - 1) // bs
        keys = seq.block_keys(bs, reusable)
        hits = self.pool.lookup(keys, seq.token_ids, bs)
        self.pool.take(hits)
        seq.block_table = list(hits)
        loaded = self._load_from_kv(seq, keys[len(hits):]) if self.kv and not seq.device_only \
            else 0
        seq.num_computed_tokens = (len(hits) + loaded) * bs
        seq.num_published_blocks = len(hits) + loaded
        if seq.scheduled_time is None:
            seq.scheduled_time = time.time()
            seq.num_cached_tokens = seq.num_computed_tokens
            self.prefix_query_tokens += seq.num_tokens
            self.prefix_hit_tokens += seq.num_computed_tokens

    def _load_from_kv(self, seq: Sequence, keys: list[BlockKey]) -> int:
        """Continue a device prefix hit from the KV connector's stores into fresh device blocks
        (its scheduler side says how far, its worker side fills them). Blocks that could not be
        loaded (gone or stale) are given back and their tokens recomputed."""
        assert self.kv is not None
        n = min(self.kv.available(keys), self.pool.num_free)
        if n == 0:
            return 0
        ids = self.pool.allocate(n)
        loaded = self.kv.load(keys[:n], ids)
        self.pool.free(ids[loaded:][::-1])
        bs, start = self.block_size, len(seq.block_table)
        for i, block_id in enumerate(ids[:loaded]):
            j = start + i
            self.pool.cache(block_id, keys[i], seq.token_ids[j * bs:(j + 1) * bs])
        seq.block_table += ids[:loaded]
        self.tier_hit_tokens += loaded * bs
        return loaded

    def _grow(self, seq: Sequence, num_new_tokens: int) -> bool:
        need = (-(-(seq.num_computed_tokens + num_new_tokens) // self.block_size)
                - len(seq.block_table))
        if need > self.pool.num_free:
            return False
        if need > 0:
            seq.block_table += self.pool.allocate(need)
        return True

    def _release(self, seq: Sequence) -> None:
        self.pool.free(seq.block_table[::-1])
        seq.block_table = []
        seq.num_computed_tokens = 0
        seq.num_published_blocks = 0

    def _preempt(self, seq: Sequence) -> None:
        self._release(seq)
        seq.status = SequenceStatus.WAITING
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    def on_computed(self, chunk: ScheduledChunk) -> None:
        """After the runner computed a chunk: advance it and publish its newly full blocks."""
        seq = chunk.seq
        seq.num_computed_tokens += chunk.num_tokens
        bs = self.block_size
        full = seq.num_computed_tokens // bs
        if full > seq.num_published_blocks:
            keys = seq.block_keys(bs, full)
            for i in range(seq.num_published_blocks, full):
                self.pool.cache(seq.block_table[i], keys[i], seq.token_ids[i * bs:(i + 1) * bs])
                if self.kv is not None and not seq.device_only:
                    self.published.append((seq.block_table[i], keys[i]))
            seq.num_published_blocks = full

    def finish(self, seq: Sequence) -> None:
        """Remove a finished or aborted sequence wherever it is and free its blocks."""
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
        elif seq.status is SequenceStatus.WAITING:
            self.waiting.remove(seq)
        self._release(seq)
        seq.status = SequenceStatus.FINISHED
