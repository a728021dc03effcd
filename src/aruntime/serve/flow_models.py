"""The model calls of flows this server runs take the server's own path: the body a
`/v1/completions` request would have, admitted, routed over the server's engine client, observed
in its metrics and written to its evidence log. The run's evidence then names the model that
answered, its revision and the request's id in the request log."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from aruntime.agents.models import Models, run_on
from aruntime.serve import protocol as p
from aruntime.serve.generation import admit_slo, collect, plan

if TYPE_CHECKING:
    from aruntime.serve.state import ServerState


class ServedModels(Models):
    """Called on the thread a flow runs on (the server runs flows on its thread pool); the
    request itself runs on `loop`, the server's, where the engine client lives."""

    def __init__(self, state: ServerState, loop: asyncio.AbstractEventLoop) -> None:
        self.state = state
        self.loop = loop

    def complete(self, prompt: str, *, max_tokens: int, temperature: float,
                 seed: int | None) -> dict[str, Any]:
        body = p.CompletionRequest(model=self.state.model_name, prompt=prompt,
                                   max_tokens=max_tokens, temperature=temperature, seed=seed)
        return run_on(self.loop, self._complete(body))

    async def _complete(self, req: p.CompletionRequest) -> dict[str, Any]:
        state = self.state
        gen = plan(state, req, "flow", p.completion_prompts(req.prompt, state.tokenizer),
                   "prompt")
        admit_slo(state, gen)
        await collect(state, gen)
        [choice] = gen.choices
        return {"text": choice.text, "token_ids": choice.token_ids,
                "finish_reason": choice.finish_reason, "model": state.model_name,
                "model_revision": state.info.revision, "request_id": gen.id}
