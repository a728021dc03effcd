"""The model calls of flows this server runs take the server's own path: the body a
`/v1/completions` request would have, admitted, routed over the server's engine client, observed
in its metrics and written to its evidence log. The run's evidence then names the model that
answered, its revision and the request's id in the request log; its span (`text_completion
{model}`, serve/tracing.py) is a child of the run's `invoke_agent` span."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind

from aruntime.agents.models import Models, run_on
from aruntime.serve import protocol as p
from aruntime.serve import tracing
from aruntime.serve.generation import admit_slo, collect, plan
from aruntime.serve.prompt_bound import completion_prompts

if TYPE_CHECKING:
    from aruntime.serve.state import ServerState


class ServedModels(Models):
    """Called on the thread a flow runs on (the server runs flows on its thread pool); the
    request itself runs on `loop`, the server's, where the engine client lives."""

    def __init__(self, state: ServerState, loop: asyncio.AbstractEventLoop) -> None:
        self.state = state
        self.loop = loop

    @property
    def name(self) -> str:
        return self.state.model_name

    def complete(self, prompt: str, *, max_tokens: int, temperature: float,
                 seed: int | None, tenant: str = "default") -> dict[str, Any]:
        body = p.CompletionRequest(model=self.state.model_name, prompt=prompt,
                                   max_tokens=max_tokens, temperature=temperature, seed=seed,
                                   aruntime={"tenant": tenant})
        # tokenized here, on the flow's thread: a long prompt never holds the server's loop
        state = self.state
        prompts = completion_prompts(state.tokenizer, prompt, 1, state.longest_token_bytes,
                                     state.info.max_model_len)
        # the flow's context (its run's span) does not cross to the loop's thread by itself
        return run_on(self.loop, self._complete(body, prompts, otel_context.get_current()))

    async def _complete(self, req: p.CompletionRequest, prompts: list[list[int]],
                        parent: Context) -> dict[str, Any]:
        state = self.state
        gen = plan(state, req, "flow", prompts, "prompt")
        tracing.begin(state, gen, parent, kind=SpanKind.INTERNAL)  # the server's own call
        try:
            admit_slo(state, gen)
        except Exception as exc:  # refused: no evidence record, a failed span
            tracing.fail(gen, exc)
            tracing.end(state, gen)
            raise
        await collect(state, gen)
        [choice] = gen.choices
        return {"text": choice.text, "token_ids": choice.token_ids,
                "finish_reason": choice.finish_reason, "model": state.model_name,
                "model_revision": state.info.revision, "request_id": gen.id}
