"""The engine: schedule → execute → update, one iteration per `step()` (vLLM v1's shape).

Not thread-safe: one thread owns it (the engine core process's loop, or InprocClient's thread).
Every block that moves between the device and a store beyond it goes through the KV connector
(`self.kv`): tier restores, write-through, and the handoff between disaggregated workers.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import msgspec
import torch

from aruntime.engine.block_pool import BlockPool
from aruntime.engine.config import EngineConfig
from aruntime.engine.guided import GuidedDecoder, GuidedMatcher
from aruntime.engine.loader import load_checkpoint
from aruntime.engine.logits_processors import LogitsProcessors
from aruntime.engine.loop_board import BoardReader
from aruntime.engine.outputs import EngineStats, RequestOutput, TierStats, TokenLogprob
from aruntime.engine.parallel.group import ParallelGroup
from aruntime.engine.parallel.launch import RankLauncher
from aruntime.engine.runner import ModelRunner, PromptLogits
from aruntime.engine.sampler import logprobs_of, prompt_logprobs_of, sample
from aruntime.engine.sampling import SamplingParams
from aruntime.engine.scheduler import ScheduledChunk, Scheduler
from aruntime.engine.sequence import Sequence
from aruntime.engine.step_gate import StepGate
from aruntime.engine.stopping import StopChecker
from aruntime.kv.connector import DeviceBlocks
from aruntime.kv.events import EventBuffer, KVEventBatch
from aruntime.kv.keys import (
    NO_SCOPE,
    SHARED_NAMESPACE,
    BlockKey,
    CacheScope,
    KeyScheme,
    request_keys,
)
from aruntime.kv.tier_connector import TierConnector
from aruntime.kv.tiered_cache import TieredKVCache

logger = logging.getLogger(__name__)


class LLMEngine:
    def __init__(self, config: EngineConfig, rank_launcher: RankLauncher | None = None) -> None:
        """`rank_launcher`: where a parallel group's other ranks start (default: processes of
        this machine)."""
        ckpt = load_checkpoint(config.model)
        self.config = config
        self.tokenizer = ckpt.tokenizer
        self.model_config = mc = ckpt.config
        self.revision = ckpt.revision
        max_len = min(config.max_model_len or mc.max_position_embeddings,
                      mc.max_position_embeddings)
        if mc.sliding_window:  # within the window, sliding attention is full attention
            max_len = min(max_len, mc.sliding_window)
        self.group = (ParallelGroup(config, max_len, rank_launcher) if config.ranks > 1
                      else None)
        self.runner = ModelRunner(config, mc, ckpt.weights(config.kbs_url), max_len,
                                  self.group.collectives if self.group else None)
        self.runner.group = self.group
        self.device = str(self.runner.device)
        # A sequence that cannot fit the whole pool could never be scheduled: cap the context.
        self.max_model_len = min(max_len, self.runner.num_blocks * config.block_size)
        self.events = EventBuffer() if config.kv.publishes else None
        self.pool = BlockPool(self.runner.num_blocks, config.enable_prefix_caching, self.events)
        self.key_scheme = KeyScheme(config.block_size, self.revision)
        self.kv = TierConnector.open(self.key_scheme, config.kv, self._device_blocks(),
                                     self.events)
        self.scheduler = Scheduler(self.pool, config.block_size, config.max_num_seqs,
                                   config.max_num_batched_tokens, self.kv)
        eos = set(mc.eos_token_ids)
        if self.tokenizer.eos_token_id is not None:
            eos.add(self.tokenizer.eos_token_id)
        self.eos_ids = frozenset(eos)
        self.seqs: dict[str, Sequence] = {}
        self._stops: dict[str, StopChecker] = {}
        self._generators: dict[str, torch.Generator] = {}
        self._prompt_lps: dict[str, list[TokenLogprob | None]] = {}  # until the first output
        self.processors = LogitsProcessors(mc.vocab_size, self.eos_ids, self.runner.device)
        self.guided = GuidedDecoder(self.tokenizer, mc.vocab_size, self.eos_ids)
        self._matchers: dict[str, GuidedMatcher] = {}
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self.gate = self._step_gate(config)
        self._use_backends(config)  # its gate steps the engine

    def _use_backends(self, config: EngineConfig) -> None:
        """The dense parts on the backends `config.backends` names, each through the gate."""
        if config.backends == "eager":
            return
        from aruntime import paths
        from aruntime.engine.backends.greedy_gate import greedy_gate
        from aruntime.engine.backends.parts import build_dispatch
        from aruntime.engine.backends.table import table_path

        root = Path(config.backends_dir) if config.backends_dir else paths.data_dir() / "backends"
        dispatch = build_dispatch(config.backends, self.runner.model, root,
                                  table_path(root, self.revision, config.dtype), self.revision)
        if dispatch is not None:
            greedy_gate(self, dispatch)

    def _device_blocks(self) -> DeviceBlocks:
        """The KV pool as the connector sees it: whole blocks, a parallel group's gathered."""
        if self.group is None:
            return self.runner
        from aruntime.engine.parallel.kv_shards import WholeBlocks

        c = self.config
        return WholeBlocks(self.runner.kv_cache, self.model_config, c.tensor_parallel,
                           c.pipeline_parallel, self.group)

    @staticmethod
    def _step_gate(config: EngineConfig) -> StepGate | None:
        if config.loop_board is None:
            return None
        return StepGate(BoardReader(config.loop_board), torch.get_num_threads())

    @property
    def tiers(self) -> TieredKVCache | None:
        """The stores under the KV connector, with their counters (None: no store beyond the
        device was asked for)."""
        return self.kv.tiers if self.kv is not None else None

    def add_request(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams,
                    arrival_time: float | None = None, scope: CacheScope = NO_SCOPE) -> None:
        """`scope` keys the request's blocks: in its tenant's namespace, no other tenant can hit
        them; its leading shared-prefix tokens (whole blocks) are keyed in the shared namespace,
        so a common prefix published on purpose is reused across tenants."""
        if request_id in self.seqs:
            raise ValueError(f"request id {request_id!r} is already in the engine")
        if not prompt_token_ids:
            raise ValueError("the prompt is empty")
        if len(prompt_token_ids) >= self.max_model_len:
            raise ValueError(f"the prompt has {len(prompt_token_ids)} tokens; this model's "
                             f"context is {self.max_model_len} tokens, output included")
        vocab = self.model_config.vocab_size
        if any(not 0 <= t < vocab for t in prompt_token_ids):
            raise ValueError(f"prompt token ids must be in [0, {vocab})")
        # Both may raise: the grammar compiles before anything is held, the processors check
        # logit_bias ids before they store anything.
        matcher = self.guided.matcher(params.guided) if params.guided is not None else None
        self.processors.add(request_id, prompt_token_ids, params)
        if matcher is not None:
            self._matchers[request_id] = matcher
        seq = Sequence(request_id, prompt_token_ids, params,
                       self.key_scheme.root(scope.tenant_salt), arrival_time,
                       self.key_scheme.root(SHARED_NAMESPACE),
                       scope.shared_prefix_tokens // self.config.block_size)
        seq.device_only = scope.device_only
        self.seqs[request_id] = seq
        self._stops[request_id] = StopChecker(self.tokenizer, params, self.eos_ids,
                                              self.max_model_len, len(prompt_token_ids))
        if params.prompt_logprobs is not None:
            self._prompt_lps[request_id] = [None]  # the first token has no context
        if params.seed is not None:
            self._generators[request_id] = torch.Generator(
                self.runner.device).manual_seed(params.seed)
        self.scheduler.add(seq)
        self.prompt_tokens_total += len(prompt_token_ids)

    def _reusable_keys(self, prompt_token_ids: list[int], scope: CacheScope) -> list[BlockKey]:
        """Keys of the prompt's blocks a prefix lookup may reuse: every full block but one
        holding the last token, which is always computed (its logits give the first token)."""
        keys = request_keys(self.key_scheme, prompt_token_ids, scope)
        return keys[:(len(prompt_token_ids) - 1) // self.config.block_size]

    def export_prefix(self, prompt_token_ids: list[int],
                      scope: CacheScope = NO_SCOPE) -> list[bytes]:
        """A prefill worker's handoff out: the prompt's reusable blocks cached on the device,
        encoded with their keys by the KV connector (kv/block_format.py), in order up to the
        first not cached. Call after the prompt ran, before its blocks are evicted; the engine
        needs a connector (a disaggregated worker's `KVConfig(staged=True)` gives it one)."""
        if self.kv is None:
            raise RuntimeError("exporting KV needs the KV connector (KVConfig(staged=True))")
        keys = self._reusable_keys(prompt_token_ids, scope)
        ids = self.pool.lookup(keys, prompt_token_ids, self.config.block_size)
        return self.kv.export(list(zip(ids, keys, strict=False)))

    def import_prefix(self, prompt_token_ids: list[int], blobs: list[bytes],
                      scope: CacheScope = NO_SCOPE) -> int:
        """A decode worker's handoff in: stage another engine's `export_prefix` of this prompt
        in the KV connector's staged store, where the prompt's prefix lookup will load it from.
        Blocks cached on the device already count as held; staging stops at the first blob that
        is not this prompt's block under this engine's scheme (another model, tenant, or a
        corrupt copy). Returns the prompt's leading blocks now held here."""
        staged = self.kv.staged() if self.kv is not None else None
        if staged is None or not self.pool.enable_caching:
            return 0
        keys = self._reusable_keys(prompt_token_ids, scope)
        held = len(self.pool.lookup(keys[:len(blobs)], prompt_token_ids,
                                    self.config.block_size))
        return held + staged.stage(keys[held:len(blobs)], blobs[held:])

    def abort_request(self, request_id: str) -> None:
        seq = self.seqs.get(request_id)
        if seq is not None:
            self._drop(seq)

    def close(self) -> None:
        """The other tensor-parallel ranks told to exit (nothing else holds a process)."""
        if self.group is not None:
            self.group.close()
            self.group = None

    def recover_group(self) -> None:
        """After a parallel rank was lost (RankLostError from `step`): every request dropped
        (the caller fails them), the group's other ranks restarted, and the blocks they held
        forgotten. Raises when the group cannot start again."""
        if self.group is None:
            raise RuntimeError("this engine runs no parallel group")
        for seq in list(self.seqs.values()):
            self._drop(seq)
        self.group.restart()
        self.pool.forget_all()
        logger.warning("the parallel group restarted (%d so far); its requests were failed",
                       self.group.restarts)

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_work()

    def step(self) -> list[RequestOutput]:
        if self.gate is not None and self.scheduler.has_work():
            self.gate.before_step()
        sched = self.scheduler.schedule()
        if not sched.chunks:
            return []
        sampling, logits, prompt = self.runner.execute(sched)
        self._computed(sched.chunks)
        self._prompt_logprobs(prompt)
        return self._sample(sampling, logits)

    def _computed(self, chunks: list[ScheduledChunk]) -> None:
        """Advance the chunks just computed; newly full blocks go through the connector."""
        for chunk in chunks:
            self.scheduler.on_computed(chunk)
        if self.kv is not None and self.scheduler.published:
            self.kv.save(self.scheduler.published)
            self.scheduler.published.clear()

    def _prompt_logprobs(self, spans: list[PromptLogits]) -> None:
        """Collect prompt logprobs span by span; positions computed again after a preemption
        are skipped."""
        for seq, first, logits in spans:
            got = self._prompt_lps[seq.request_id]
            skip = len(got) - 1 - first
            assert skip >= 0, "prompt positions are computed in order, from 0 (no prefix hit)"
            nxt = seq.token_ids[first + 1 + skip:first + 1 + logits.shape[0]]
            if nxt:
                assert seq.params.prompt_logprobs is not None  # the runner's rule
                got += prompt_logprobs_of(logits[skip:], nxt, seq.params.prompt_logprobs)

    def _sample(self, sampling: list[ScheduledChunk], logits: torch.Tensor,
                ) -> list[RequestOutput]:
        if not sampling:
            return []
        seqs = [c.seq for c in sampling]
        ids = [s.request_id for s in seqs]
        processed = self.processors.apply(logits, ids)
        if self._matchers:  # the grammar's mask last, so no bias can re-admit a banned token
            processed = self.guided.mask(processed, [self._matchers.get(i) for i in ids])
        tokens = sample(processed, [s.params for s in seqs],
                        [self._generators.get(s.request_id) for s in seqs])
        self.processors.record(ids, tokens)
        now = time.time()
        return [self._append(seq, tok, logits[i], now)
                for i, (seq, tok) in enumerate(zip(seqs, tokens, strict=True))]

    def _append(self, seq: Sequence, token: int, logits_row: torch.Tensor,
                now: float) -> RequestOutput:
        seq.token_ids.append(token)
        self.generation_tokens_total += 1
        if seq.first_token_time is None:
            seq.first_token_time = now
        stop = self._stops[seq.request_id]
        text = stop.push(token, seq.num_output_tokens)
        if (matcher := self._matchers.get(seq.request_id)) is not None:
            matcher.accept(token)
            if matcher.done and stop.finish_reason is None:
                text += stop.finish("stop")
        lp = None
        if seq.params.logprobs is not None:
            lp = [logprobs_of(logits_row, token, seq.params.logprobs)]
        out = RequestOutput(
            request_id=seq.request_id, new_token_ids=[token], new_text=text,
            finished=stop.finish_reason is not None, finish_reason=stop.finish_reason,
            stop_reason=stop.stop_reason, logprobs=lp, num_prompt_tokens=seq.num_prompt_tokens,
            prompt_logprobs=self._prompt_lps.pop(seq.request_id, None),
            num_cached_tokens=seq.num_cached_tokens, arrival_time=seq.arrival_time,
            scheduled_time=seq.scheduled_time, first_token_time=seq.first_token_time,
            finish_time=now if stop.finish_reason else None)
        if out.finished:
            self._drop(seq)
        return out

    def _drop(self, seq: Sequence) -> None:
        self.scheduler.finish(seq)
        del self.seqs[seq.request_id]
        self._stops.pop(seq.request_id, None)
        self._generators.pop(seq.request_id, None)
        self.processors.drop(seq.request_id)
        self._prompt_lps.pop(seq.request_id, None)
        self._matchers.pop(seq.request_id, None)

    def drain_kv_events(self, worker_id: str) -> KVEventBatch | None:
        """The KV events since the last call (None when events are off or nothing happened)."""
        return self.events.drain(worker_id) if self.events is not None else None

    def stats(self) -> EngineStats:
        s = self.scheduler
        return EngineStats(
            num_running=len(s.running), num_waiting=len(s.waiting),
            num_preempted_total=s.num_preemptions, kv_usage=self.pool.usage(),
            num_blocks=self.pool.num_blocks, num_free_blocks=self.pool.num_free,
            prefix_query_tokens_total=s.prefix_query_tokens,
            prefix_hit_tokens_total=s.prefix_hit_tokens,
            prompt_tokens_total=self.prompt_tokens_total,
            generation_tokens_total=self.generation_tokens_total,
            tier_hit_tokens_total=s.tier_hit_tokens,
            rank_restarts_total=self.group.restarts if self.group is not None else 0,
            tiers=self._tier_stats())

    def _tier_stats(self) -> list[TierStats]:
        if self.kv is None:
            return []
        kv = self.kv
        return [TierStats(name, c.hits, c.misses, c.stale, c.evictions, c.stored_bytes,
                          c.load_seconds_sum, list(c.load_buckets),
                          kv.restore_bytes.get(name, 0), kv.restore_seconds.get(name, 0.0))
                for name, c in kv.tiers.counters.items()]

    def generate(self, prompts: list[list[int]],
                 params: SamplingParams | list[SamplingParams]) -> list[RequestOutput]:
        """Offline batch: run every prompt to completion; one accumulated output each, in order."""
        plist = params if isinstance(params, list) else [params] * len(prompts)
        ids = [f"gen-{time.monotonic_ns()}-{i}" for i in range(len(prompts))]
        results = {rid: RequestOutput(rid, [], "") for rid in ids}
        for rid, prompt, p in zip(ids, prompts, plist, strict=False):
            self.add_request(rid, prompt, p)
        while self.has_unfinished_requests():
            for delta in self.step():
                acc = results[delta.request_id]
                logprobs = (acc.logprobs or []) + delta.logprobs if delta.logprobs else acc.logprobs
                results[delta.request_id] = msgspec.structs.replace(
                    delta, new_token_ids=acc.new_token_ids + delta.new_token_ids,
                    new_text=acc.new_text + delta.new_text, logprobs=logprobs,
                    prompt_logprobs=acc.prompt_logprobs or delta.prompt_logprobs)
        return [results[rid] for rid in ids]
