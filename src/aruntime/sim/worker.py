"""One simulated engine: a prefill queue, a running decode batch and a prefix cache, stepped as
the engine steps (chunked prefill batched with one token per running sequence).

One event per step while prompts are being prefilled. A decode-only batch does not change until
a sequence finishes or new work arrives, so it runs as one "jump" of k equal steps; new work cuts
the jump at the end of the step in flight. Within a jump a step costs what its first step costs
(context growth over a jump is small beside the context itself)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from aruntime.sim.costs import Costs
from aruntime.sim.prefix_cache import PrefixCache
from aruntime.sim.trace import SimRequest


@dataclass(slots=True)
class Prefill:
    index: int
    request: SimRequest
    predicted_uncached: int
    computed: int = 0
    started: bool = False
    table: list[int] = field(default_factory=list)  # its KV blocks, as the engine's block table


@dataclass(slots=True)
class Decode:
    index: int
    remaining: int  # output tokens still to produce
    context: int
    table: list[int] | None = None  # its KV blocks here (None: not kept, as on a decode worker)


@dataclass(slots=True)
class StepPlan:
    start: float
    cost: float  # seconds per step with the worker's share of the machine to itself
    steps: int  # > 1 only for a decode-only jump
    chunks: list[tuple[Prefill, int]] = field(default_factory=list)
    left: float = 0.0  # unshared seconds of work still to do, as of `updated`
    updated: float = 0.0
    rate: float = 1.0  # unshared seconds done per second now (< 1 while cores are shared)

    def work_done(self, now: float) -> float:
        return self.cost * self.steps - (self.left - (now - self.updated) * self.rate)

    def advance(self, now: float, rate: float) -> float:
        """Account the work done until now, go on at `rate`; returns the new end time."""
        self.left -= (now - self.updated) * self.rate
        self.updated, self.rate = now, rate
        return now + self.left / rate


class Worker:
    def __init__(self, wid: int, role: str, costs: Costs, cache: PrefixCache,
                 max_batched_tokens: int, max_seqs: int, block_tokens: int) -> None:
        self.wid, self.role, self.costs, self.cache = wid, role, costs, cache
        self.block_tokens = block_tokens
        self.max_batched_tokens, self.max_seqs = max_batched_tokens, max_seqs
        self.queue: deque[Prefill] = deque()
        self.running: list[Decode] = []
        self.waiting: deque[Decode] = deque()  # decodes beyond max_seqs
        self.pending_tokens = 0  # uncached tokens of prompts routed here, first token not out
        self.plan: StepPlan | None = None
        self.gen = 0  # bumps when a planned step is cut, so its stale event is ignored
        self.incoming = 0  # decode worker: prompts whose KV is still in transfer here
        self.link_free = 0.0  # when this worker's outgoing KV link is next idle
        self.hit_tokens = 0
        self.idle = True  # no step since it last had nothing to do: the next one wakes it

    def predicted_hit_tokens(self, r: SimRequest) -> int:
        return self.cache.peek(r.usable_keys) * r.block_tokens

    def enqueue_prefill(self, index: int, r: SimRequest) -> None:
        job = Prefill(index, r, r.input_len - self.predicted_hit_tokens(r))
        self.pending_tokens += job.predicted_uncached
        self.queue.append(job)

    def enqueue_decode(self, d: Decode) -> None:
        self.waiting.append(d)

    def cut(self, now: float) -> float | None:
        """New work arrived during a jump: end it after the step in flight. Returns the new end
        time (the caller re-posts the step event), or None when nothing changed."""
        p = self.plan
        if p is None or p.steps <= 1:
            return None
        work = p.work_done(now)
        done = min(p.steps, int(work / p.cost) + 1)
        if done >= p.steps:
            return None
        p.steps = done
        p.left, p.updated = done * p.cost - work, now
        self.gen += 1
        return now + p.left / p.rate

    def plan_step(self, now: float) -> StepPlan | None:
        """Choose the next step's work and cost; None when there is nothing to do."""
        while self.waiting and len(self.running) < self.max_seqs:
            self.running.append(self.waiting.popleft())
        c = self.costs
        decode_s = c.decode_s(len(self.running), sum(d.context for d in self.running)) \
            if self.running else 0.0
        budget = self.max_batched_tokens - len(self.running)
        slots = self.max_seqs - len(self.running)
        plan = StepPlan(now, 0.0, 1)
        extra = 0.0
        for job in self.queue:
            if budget <= 0 or slots <= 0:
                break
            if not job.started:
                extra += self._start(job)
            n = min(budget, job.request.input_len - job.computed)
            extra += c.chunk_s(n, job.computed)
            plan.chunks.append((job, n))
            budget -= n
            slots -= 1
        extra += c.weights_s(len(self.running) + sum(n for _, n in plan.chunks))
        if not plan.chunks:
            if not self.running:
                self.idle = True
                return None
            plan.steps = min(d.remaining for d in self.running)
        if self.idle:
            extra += c.wake_s / plan.steps  # the first step pays it, in a jump of equal steps
            self.idle = False
        plan.cost = c.step_s0 + decode_s + extra
        plan.left, plan.updated = plan.cost * plan.steps, now
        self.plan = plan
        return plan

    def _start(self, job: Prefill) -> float:
        """The prefix hit is taken when the prompt's first chunk is scheduled; host-tier blocks
        are restored to the device first. Returns what starting it adds to the step: the
        per-prompt cost and the restore."""
        r = job.request
        job.table, host = self.cache.take(r.usable_keys)
        job.computed = len(job.table) * r.block_tokens
        host_tokens = host * r.block_tokens
        self.hit_tokens += job.computed
        self.pending_tokens += (r.input_len - job.computed) - job.predicted_uncached
        job.predicted_uncached = r.input_len - job.computed
        job.started = True
        restore = self.costs.restore_s("host", host_tokens) if host_tokens else 0.0
        return self.costs.prefill_seq_s + restore

    def finish_step(self) -> tuple[list[Prefill], list[Decode]]:
        """Apply the planned step. Returns prompts whose prefill completed (their first token is
        out) and decodes that finished."""
        p = self.plan
        assert p is not None
        self.plan = None
        done: list[Decode] = []
        steps = p.steps
        for d in self.running:
            d.remaining -= steps
            d.context += steps
            if d.table is not None:
                self._grow(d.table, d.context)
            if d.remaining <= 0:
                done.append(d)
                if d.table is not None:
                    self.cache.release(d.table)
        if done:
            self.running = [d for d in self.running if d.remaining > 0]
        prefilled = []
        for job, n in p.chunks:
            r = job.request
            job.computed += n
            self._grow(job.table, job.computed)
            keys = r.full_keys
            for i in range((job.computed - n) // r.block_tokens,
                           min(job.computed // r.block_tokens, len(keys))):
                self.cache.publish(job.table, i, keys[i])
            if job.computed >= r.input_len:
                prefilled.append(job)
                self.pending_tokens -= job.predicted_uncached
        if prefilled:  # the step's chunks came from the head of the queue, in order
            head = [self.queue.popleft() for _ in p.chunks]
            self.queue.extendleft(reversed([j for j in head if j.computed < j.request.input_len]))
        return prefilled, done

    def _grow(self, table: list[int], tokens: int) -> None:
        """Blocks for `tokens` tokens of KV, taken as the engine takes them."""
        need = -(-tokens // self.block_tokens) - len(table)
        if need > 0:
            table += self.cache.allocate(need)

    def decode_after_prefill(self, job: Prefill) -> Decode | None:
        """What a prompt whose first token is out does next here: decode (colocated, with its
        blocks), or nothing (its last token is out, or its KV goes to a decode worker), which
        frees its blocks."""
        r = job.request
        if r.output_len > 1 and self.role == "both":
            return Decode(job.index, r.output_len - 1, r.input_len + 1, job.table)
        self.cache.release(job.table)
        return None
