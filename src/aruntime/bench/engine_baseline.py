"""`bench engine`'s baseline: transformers `generate` on the same checkpoint, left-padded static
batches in arrival order, each decoding to its longest output; only each request's own output
tokens count."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from aruntime.bench.engine_systems import SystemRun
from aruntime.bench.engine_workload import Request
from aruntime.bench.probes import sync


class TransformersBaseline:
    """Static batching as people run it: left-padded batches in arrival order, each decoded to
    its longest output (min_new_tokens = max_new_tokens), greedy. Loaded once, run per round."""

    def __init__(self, model_dir: Path, device: str) -> None:
        import torch
        import transformers

        transformers.utils.logging.disable_progress_bar()
        # A GGUF file is loaded as transformers loads one: its folder, and the file by name.
        where = ((model_dir.parent, {"gguf_file": model_dir.name}) if model_dir.is_file()
                 else (model_dir, {}))
        # Any: transformers' stubs type `.to` on the loaded model as taking another model
        loaded: Any = transformers.AutoModelForCausalLM.from_pretrained(
            where[0], dtype=torch.float32, **where[1])
        self.model: Any = loaded.to(device).eval()
        if next(self.model.parameters()).dtype != torch.float32:
            raise RuntimeError("the baseline did not load in fp32")
        self.device = device
        self.pad = self.model.config.pad_token_id or 0
        self.version = transformers.__version__
        self.generate([list(range(3, 35))], 4)  # warm-up

    def generate(self, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
        import torch

        width = max(len(p) for p in prompts)
        ids = torch.tensor([[self.pad] * (width - len(p)) + p for p in prompts],
                           device=self.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts],
                            device=self.device)
        with torch.no_grad():
            out = self.model.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                                      max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                      pad_token_id=self.pad)
        sync(self.device)
        tokens: list[list[int]] = out[:, width:].tolist()
        return tokens

    def run(self, requests: list[Request], batch: int) -> SystemRun:
        outputs: dict[str, list[int]] = {}
        rows: list[dict[str, Any]] = []
        prefill = 0
        t0, c0 = time.perf_counter(), time.process_time()
        for b in range(0, len(requests), batch):
            group = requests[b:b + batch]
            tb = time.perf_counter()
            new = self.generate([r.prompt for r in group], max(r.max_tokens for r in group))
            done = time.perf_counter()
            prefill += len(group) * max(len(r.prompt) for r in group)
            for r, tokens in zip(group, new, strict=False):
                outputs[r.id] = tokens[:r.max_tokens]
                rows.append({"id": r.id, "prompt": len(r.prompt), "output": r.max_tokens,
                             "batch": b // batch, "batch_new_tokens": len(tokens),
                             "batch_s": round(done - tb, 4), "e2e_s": round(done - t0, 4)})
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        return SystemRun(f"transformers {self.version} generate, static batch {batch}",
                         wall, cpu, outputs, prefill, rows)
