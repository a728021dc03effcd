"""Model calls from flows, through ARuntime's own engine in this process.

The engine loads on the first call (a flow that calls no model never imports torch); the result
names the checkpoint and its revision digest, which the run's evidence records.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aruntime.engine.llm_engine import LLMEngine
    from aruntime.engine.tokenizer import Tokenizer


class LocalModels:
    def __init__(self, model_dir: Path | None = None) -> None:
        self.model_dir = model_dir  # None: the built-in demo model
        self._engine: LLMEngine | None = None
        self._tokenizer: Tokenizer | None = None

    def _load(self) -> tuple[LLMEngine, Tokenizer]:
        if self._engine is None or self._tokenizer is None:
            from aruntime.engine.config import EngineConfig
            from aruntime.engine.demo import ensure_demo_model
            from aruntime.engine.llm_engine import LLMEngine
            from aruntime.engine.tokenizer import Tokenizer

            model = self.model_dir or ensure_demo_model("small")
            self._engine = LLMEngine(EngineConfig(model=str(model), device="cpu"))
            self._tokenizer = Tokenizer.from_dir(model)
            self.model_dir = Path(model)
        return self._engine, self._tokenizer

    def complete(self, prompt: str, max_tokens: int, temperature: float,
                 seed: int | None) -> dict[str, Any]:
        from aruntime.engine.sampling import SamplingParams

        engine, tokenizer = self._load()
        ids = tokenizer.encode(prompt)
        out = engine.generate([ids], SamplingParams(max_tokens=max_tokens,
                                                    temperature=temperature, seed=seed))[0]
        assert self.model_dir is not None
        return {"text": tokenizer.decode(out.new_token_ids), "token_ids": out.new_token_ids,
                "finish_reason": out.finish_reason, "model": self.model_dir.name,
                "model_revision": str(engine.revision)}
