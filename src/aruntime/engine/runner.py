"""Owns the model, the paged KV memory and the tensors of one step.

Turns a plain SchedulerOutput into a flattened token batch (single-token steps first, then
prefill chunks), runs the model, and returns logits for the chunks that sample, and for the
prompt positions of requests that asked for prompt logprobs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch

from aruntime.engine.attention import (
    AttentionBatch,
    DecodeGroup,
    NativeDecode,
    NativeDecodeInputs,
    PrefillSegment,
)
from aruntime.engine.backends.graph import run_graph
from aruntime.engine.backends.parts import PartDispatch
from aruntime.engine.config import EngineConfig, ModelConfig
from aruntime.engine.model import LlamaForCausalLM
from aruntime.engine.scheduler import ScheduledChunk, SchedulerOutput
from aruntime.engine.sequence import Sequence
from aruntime.kv.block_format import BlockPayload, StaleBlockError

if TYPE_CHECKING:
    from aruntime.engine.parallel.pipeline import PipelineStage

PromptLogits = tuple[Sequence, int, torch.Tensor]  # (seq, first position, a row per position)


class StepSender(Protocol):
    """Rank 0's side of a tensor-parallel group (engine/parallel/group.py)."""

    def send(self, step: PlainStep) -> None: ...


class TPCollectives(Protocol):
    """One rank's groups (engine/parallel/group.py's Collectives)."""

    stage: int  # its pipeline stage, of pp
    pp: int
    tp_rank: int  # its shard of the stage, of tp
    tp: int

    def peer(self, stage: int) -> int: ...
    def reduce(self, t: torch.Tensor) -> None: ...
    def gather(self, t: torch.Tensor) -> list[torch.Tensor]: ...
    def isend(self, t: torch.Tensor, dst: int, tag: int) -> Any: ...
    def recv(self, t: torch.Tensor, src: int, tag: int = 0) -> None: ...
    def wait(self, work: Any, what: str) -> None: ...


@dataclass(slots=True)
class PlainStep:
    """One step's inputs as plain lists, free of the scheduler's objects: what the runner turns
    into tensors, and what rank 0 of a tensor-parallel group sends the other ranks."""

    token_ids: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    slots: list[int] = field(default_factory=list)  # cache slot of each new token
    prefills: list[tuple[int, int, int, list[int]]] = field(default_factory=list)  # row,
    # tokens, start, block table of each prefill chunk
    decode_tables: list[list[int]] = field(default_factory=list)
    decode_lens: list[int] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)  # logits rows: sampling, then prompt ones

def blocks_of(kv_cache: torch.Tensor, block_ids: list[int]) -> torch.Tensor:
    """These blocks of a KV pool, [blocks, layers, 2, kv_heads, block_size, head_dim]."""
    return kv_cache[:, :, :, block_ids].permute(3, 0, 1, 2, 4, 5).contiguous()


def payload_of(t: torch.Tensor) -> BlockPayload:
    """A tensor's bytes, copied to host memory, as a block's payload."""
    data = t.to("cpu").contiguous()
    # bytes through a uint8 view: numpy has no bfloat16
    return BlockPayload(bytearray(data.view(torch.uint8).numpy()),
                        str(data.dtype).removeprefix("torch."), tuple(data.shape))


def block_tensors(payloads: list[BlockPayload], shape: tuple[int, ...],
                  dtype: torch.dtype) -> list[torch.Tensor]:
    """Payloads as tensors over their bytes; StaleBlockError (before any is made) when one is
    of another layout than `shape` of `dtype`."""
    name = str(dtype).removeprefix("torch.")
    for payload in payloads:
        if payload.shape != shape or payload.dtype != name:
            raise StaleBlockError(f"block of shape {payload.shape} {payload.dtype}, "
                                  f"expected {shape} {name}")
    return [torch.frombuffer(p.data if isinstance(p.data, bytearray) else bytearray(p.data),
                             dtype=dtype).view(shape) for p in payloads]


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but torch sees no CUDA device")
    return torch.device(name)


class ModelRunner:
    def __init__(self, config: EngineConfig, model_config: ModelConfig,
                 weights: dict[str, torch.Tensor], max_positions: int,
                 collectives: TPCollectives | None = None) -> None:
        """With `collectives`, this rank's shard of the model and of the KV pool."""
        self.device = resolve_device(config.device)
        self.dtype = DTYPES[config.dtype]
        self.block_size = config.block_size
        mc = model_config
        if collectives is not None:
            self.model, weights, mc = _parallel_model(mc, weights, max_positions, collectives)
        else:
            self.model = LlamaForCausalLM(mc, max_positions)
        self.model.load_weights(weights)
        self.stage: PipelineStage | None = None  # a pipeline stage's part of each step
        if collectives is not None and config.pipeline_parallel > 1:
            from aruntime.engine.parallel.pipeline import PipelineStage

            self.stage = PipelineStage(self.model, collectives, model_config.vocab_size, config)
        self.model.to(self.device, self.dtype).eval()
        self.model.rotary.to(self.device, torch.float32)
        per_block = mc.kv_bytes_per_token(self.dtype.itemsize) * config.block_size
        self.num_blocks = config.kv_cache_bytes // per_block
        if self.num_blocks < 1:
            raise ValueError(f"--kv-cache-bytes {config.kv_cache_bytes} is below one KV block "
                             f"({per_block} bytes for this model)")
        self.kv_cache = torch.zeros(mc.num_hidden_layers, 2, mc.num_key_value_heads,
                                    self.num_blocks, config.block_size, mc.head_dim,
                                    dtype=self.dtype, device=self.device)
        self._scratch = torch.empty(0, dtype=self.dtype, device=self.device)
        self._block_views: tuple[torch.Tensor, ...] | None = None  # one view per block
        # The C decode kernel where it applies (fp32 on CPU); grouped SDPA over gathered KV else.
        native_ok = (self.device.type == "cpu" and self.dtype == torch.float32
                     and config.native_kernels)
        self.native = NativeDecode.create() if native_ok else None
        self.dispatch: PartDispatch | None = None  # compiled backends (LLMEngine builds it)
        self.group: StepSender | None = None  # rank 0 of a tensor-parallel group sends each step

    def read_blocks(self, block_ids: list[int]) -> list[BlockPayload]:
        """Each block's KV for every layer, [layers, 2, kv_heads, block_size, head_dim]."""
        return [payload_of(b) for b in blocks_of(self.kv_cache, block_ids).cpu()]

    def write_blocks(self, block_ids: list[int], payloads: list[BlockPayload]) -> None:
        """Restore blocks in one batched copy: per-block dispatch would cost a third of it.
        Nothing to restore is nothing to do (a load whose every block was stale)."""
        if not payloads:
            return
        sources = block_tensors(payloads, tuple(self.kv_cache[:, :, :, 0].shape), self.dtype)
        if self._block_views is None:
            self._block_views = self.kv_cache.unbind(3)
        torch._foreach_copy_([self._block_views[i] for i in block_ids], sources)

    @torch.inference_mode()
    def execute(self, out: SchedulerOutput,
                ) -> tuple[list[ScheduledChunk], torch.Tensor, list[PromptLogits]]:
        """Run one step. Returns the chunks that sample, in the order of the logits rows, and
        the prompt logits asked for (see `_prompt_span`)."""
        bs = self.block_size
        # Single-token steps first, longest context first, so similar lengths sit together.
        chunks = sorted(out.chunks, key=lambda c: (c.num_tokens != 1, -(c.start + c.num_tokens)))
        step = PlainStep()
        sample_rows: list[int] = []
        sampling: list[ScheduledChunk] = []
        spans: list[tuple[Sequence, int, int, int]] = []  # seq, first position, row, count
        for c in chunks:
            seq, row = c.seq, len(step.token_ids)
            span = range(c.start, c.start + c.num_tokens)
            step.token_ids += seq.token_ids[c.start:c.start + c.num_tokens]
            step.positions += span
            table = seq.block_table
            step.slots += [table[p // bs] * bs + p % bs for p in span]
            length = c.start + c.num_tokens
            num_blocks = -(-length // bs)
            if c.num_tokens == 1:
                step.decode_tables.append(table[:num_blocks])
                step.decode_lens.append(length)
            else:
                step.prefills.append((row, c.num_tokens, c.start, table[:num_blocks]))
            if c.samples:
                sample_rows.append(row + c.num_tokens - 1)
                sampling.append(c)
            first, end = _prompt_span(c)
            if end > first:
                spans.append((seq, first, row + first - c.start, end - first))
        step.rows = sample_rows + [r + j for _, _, r, n in spans for j in range(n)]
        logits = self.run(step)
        return sampling, logits[:len(sample_rows)], _prompt_logits(spans, logits, len(sample_rows))

    def run(self, step: PlainStep) -> torch.Tensor:
        """The model over one step's plain inputs: the logits of `step.rows`. What every
        tensor-parallel rank runs, rank 0 having sent the step to the others first."""
        if self.group is not None:
            self.group.send(step)
        if self.stage is not None:
            return self._run_stage(step)
        tokens, batch = self._batch(step)
        tables, lens = step.decode_tables, step.decode_lens
        name = None if self.dispatch is None else self.dispatch.choose(
            "prefill" if batch.prefills else "decode", len(step.token_ids),
            max(lens) if lens and not batch.prefills else None)
        if name is not None and not batch.prefills and len(step.rows) == len(step.token_ids):
            # every row a decode that samples: the backend's whole-step graph, if it has one
            logits, name = self._graph_step(name, tokens, batch, tables)
            if logits is not None:
                return logits
        self._decode_inputs(batch, tables, lens)
        dispatch = None if name is None else self.dispatch.for_step(name)  # type: ignore[union-attr]
        out: torch.Tensor = self.model(tokens, batch, self._rows(step), dispatch)
        return out

    def _run_stage(self, step: PlainStep) -> torch.Tensor:
        """A pipeline stage's part of the step, in micro-batches: on rank 0 the logits, on the
        other ranks nothing (an empty tensor)."""
        from aruntime.engine.parallel.pipeline import micro_steps

        assert self.stage is not None
        parts, place = micro_steps(step, self.stage.parts, self.stage.min_tokens)
        for tag, part in enumerate(parts):
            tokens, batch = self._batch(part)
            self._decode_inputs(batch, part.decode_tables, part.decode_lens)
            self.stage.part(tag, tokens, batch, self._rows(part))
        logits = self.stage.finish([len(p.rows) for p in parts])
        if logits is None:
            return torch.empty(0)
        return logits[torch.tensor(place, dtype=torch.long)]

    def _rows(self, step: PlainStep) -> torch.Tensor:
        return torch.tensor(step.rows, dtype=torch.long, device=self.device)

    def _batch(self, step: PlainStep) -> tuple[torch.Tensor, AttentionBatch]:
        """The step's tokens, and its attention inputs but the decodes'."""
        dev = self.device
        batch = AttentionBatch(self.kv_cache, torch.tensor(step.positions, dtype=torch.long,
                                                           device=dev),
                               torch.tensor(step.slots, dtype=torch.long, device=dev),
                               native=self.native)
        batch.prefills = [self._segment(*p) for p in step.prefills]
        return torch.tensor(step.token_ids, dtype=torch.long, device=dev), batch

    def _decode_inputs(self, batch: AttentionBatch, tables: list[list[int]],
                       lens: list[int]) -> None:
        if tables and self.native is not None:
            batch.native_inputs = self._native_inputs(tables, lens)
        elif tables:
            self._decode_groups(batch, tables, lens)

    def _graph_step(self, name: str, tokens: torch.Tensor, batch: AttentionBatch,
                    tables: list[list[int]]) -> tuple[torch.Tensor | None, str]:
        """The decode step in one call of `name`'s graph: (its logits, `name`); (None, the
        backend to run it on instead) when it has none, or when it fails (eager from then on)."""
        assert self.dispatch is not None
        graph = self.dispatch.graph_of(name)
        if graph is None:
            return None, name
        try:
            return run_graph(graph, self.model, self.kv_cache, tokens, batch.positions,
                             batch.slot_mapping, tables, self.block_size), name
        except Exception as exc:  # a runtime failing at serving time
            return None, self.dispatch.drop(name, "the decode graph", exc)

    def _segment(self, row: int, num_tokens: int, start: int,
                 table: list[int]) -> PrefillSegment:
        if start == 0:
            return PrefillSegment(row, num_tokens, 0, None, None)
        dev = self.device
        q_pos = torch.arange(start, start + num_tokens, device=dev)
        mask = torch.arange(start + num_tokens, device=dev)[None, :] <= q_pos[:, None]
        return PrefillSegment(row, num_tokens, start,
                              torch.tensor(table, dtype=torch.long, device=dev), mask)

    def _native_inputs(self, tables: list[list[int]], lens: list[int]) -> NativeDecodeInputs:
        width = max(len(t) for t in tables)
        padded = [t + [0] * (width - len(t)) for t in tables]
        return NativeDecodeInputs(len(tables), torch.tensor(padded, dtype=torch.int32),
                                  torch.tensor(lens, dtype=torch.int32))

    def _decode_groups(self, batch: AttentionBatch, tables: list[list[int]],
                       lens: list[int]) -> None:
        """Split the (longest-first) decode rows into groups padded to at most 4/3 of their
        shortest member: gathering padding costs as much as gathering context."""
        dev, bs = self.device, self.block_size
        start, need = 0, 0
        while start < len(tables):
            width = len(tables[start])
            end = start + 1
            while end < len(tables) and 4 * len(tables[end]) >= 3 * width:
                end += 1
            padded = [t + [0] * (width - len(t)) for t in tables[start:end]]  # block 0: filler
            lengths = torch.tensor(lens[start:end], device=dev)
            mask = torch.arange(width * bs, device=dev)[None, :] < lengths[:, None]
            batch.decodes.append(DecodeGroup(
                start, end - start, width,
                torch.tensor(padded, dtype=torch.long, device=dev).view(-1),
                mask[None, :, None, :]))
            need = max(need, (end - start) * width)
            start = end
        _, _, kv_heads, _, _, d = self.kv_cache.shape
        need *= 2 * kv_heads * bs * d
        if self._scratch.numel() < need:  # grows to the largest group seen, then is reused
            self._scratch = torch.empty(need, dtype=self.dtype, device=dev)
        batch.scratch = self._scratch


def _parallel_model(mc: ModelConfig, weights: dict[str, torch.Tensor], max_positions: int,
                    c: TPCollectives) -> tuple[LlamaForCausalLM, dict[str, torch.Tensor],
                                               ModelConfig]:
    """A rank's model — its stage's layers, its shard of them — its weights, and the config
    its KV pool is sized by."""
    from aruntime.engine.parallel.pipeline import stage_config, stage_weights
    from aruntime.engine.parallel.shard import Shard, local_config, local_weights, vocab_rows
    from aruntime.engine.parallel.tp_parts import tp_parts_of

    staged = stage_config(mc, c.pp)
    weights = stage_weights(weights, mc, c.stage, c.pp)
    if c.tp == 1:
        return LlamaForCausalLM(staged, max_positions), weights, staged
    shard = Shard(c.tp_rank, c.tp)
    local = local_config(staged, shard)
    model = LlamaForCausalLM(local, max_positions, head_rows=vocab_rows(mc, c.tp),
                             parts=tp_parts_of(local, c.reduce, c.gather, mc.vocab_size))
    return model, local_weights(weights, staged, shard), local


def _prompt_logits(spans: list[tuple[Sequence, int, int, int]], logits: torch.Tensor,
                   at: int) -> list[PromptLogits]:
    """Each span's rows of the logits, which follow the sampling rows from `at` on."""
    out = []
    for seq, first, _, n in spans:
        out.append((seq, first, logits[at:at + n]))
        at += n
    return out


def _prompt_span(c: ScheduledChunk) -> tuple[int, int]:
    """The chunk's positions whose logits give prompt logprobs: those before the last prompt
    token (its logits sample the first output), until the request has produced output."""
    seq = c.seq
    if seq.params.prompt_logprobs is None or seq.num_output_tokens:
        return 0, 0
    return c.start, min(c.start + c.num_tokens, seq.num_prompt_tokens - 1)
