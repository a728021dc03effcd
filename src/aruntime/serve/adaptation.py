"""The server's side of releases and rollouts: the registry and controller on the server's
journal, their tick, a request's released prompt (`aruntime.prompt`), the sample each request
gives its rollout, and shadow mirroring — the candidate answers a copy of the request after the
user's answer is complete, and that answer is dropped.

Unattended promotion needs a signed policy bundle (`serve --policy DIR --policy-key KEY`) that
permits `promote_unattended` on the release kind to the controller; the built-in policy never
is one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from aruntime.adapt.artifact import Kind, ReleaseError
from aruntime.adapt.controller import RolloutController
from aruntime.adapt.prompts import PromptReleases, PromptUse
from aruntime.adapt.registry import Registry
from aruntime.adapt.rollout import RolloutStore
from aruntime.adapt.samples import Sample
from aruntime.contracts import EvidenceRecord
from aruntime.durable.sql_journal import SqlJournal
from aruntime.policy.decision import Action, Resource
from aruntime.policy.identity import Principal
from aruntime.policy.reloader import PolicyReloader
from aruntime.serve.errors import InvalidRequestError
from aruntime.serve.tool_specs import NO_TOOLS

if TYPE_CHECKING:
    from fastapi import Request

    from aruntime.serve import protocol as p
    from aruntime.serve.generation import Generation
    from aruntime.serve.state import ServerState

logger = logging.getLogger(__name__)
TICK_S = 0.5
EVAL_MAX_TOKENS = 64  # an evaluation case's answer
CONTROLLER = Principal("aruntime-controller", "system", frozenset({"controller"}), via="internal")


def open_adaptation(state: ServerState, journal: SqlJournal,
                    reloader: PolicyReloader | None) -> None:
    """The registry and controller on the server's journal; called on the server's loop, where
    offline evaluations run their requests."""
    registry = Registry(journal, state.data_dir / "releases", state.signer)
    loop = asyncio.get_running_loop()

    def unattended(kind: Kind) -> bool:
        if reloader is None or not reloader.bundle.signed:
            return False
        # in no tenant: a rule that lets principals act within their own (the built-in one)
        # never covers it; only a rule naming `promote_unattended` does
        decision = state.authorizer.decide(CONTROLLER, Action.PROMOTE_UNATTENDED,
                                           Resource("Release", kind.value, {"kind": kind.value}),
                                           {"tenant": ""})
        return decision.allowed

    def answer(name: str, version: str, messages: list[dict[str, Any]]) -> str:
        """An evaluation case through one prompt version (on the controller's thread)."""
        from aruntime.agents.models import run_on

        return run_on(loop, _answer(state, name, version, messages))

    state.adaptation = RolloutController(registry, RolloutStore(journal, state.signer),
                                         unattended=unattended, answer=answer)
    state.prompts = PromptReleases(state.adaptation)


async def _answer(state: ServerState, name: str, version: str,
                  messages: list[dict[str, Any]]) -> str:
    from aruntime.serve import protocol as p
    from aruntime.serve.generation import collect, plan
    from aruntime.serve.prompt_bound import chat_prompt

    req = p.ChatCompletionRequest.model_validate(
        {"model": state.model_name, "messages": messages, "max_tokens": EVAL_MAX_TOKENS,
         "temperature": 0})
    full = with_prompt(p.chat_messages(req.messages), state.prompts.text(name, version))
    prompt = await asyncio.to_thread(chat_prompt, state.tokenizer, full, NO_TOOLS,
                                     state.tool_parser, state.longest_token_bytes,
                                     state.info.max_model_len)
    gen = plan(state, req, "eval", [prompt], "messages", messages=full)
    gen.shadow = True  # an evaluation's answer is nobody's: no evidence record of its own
    await collect(state, gen)
    return gen.choices[0].text


@asynccontextmanager
async def ticking(state: ServerState) -> AsyncIterator[None]:
    """The controller's loop, for the life of the app."""
    async def loop() -> None:
        while True:
            await asyncio.sleep(TICK_S)  # a period, not a wait for something to happen
            try:
                await asyncio.to_thread(state.adaptation.tick)
            except Exception:  # one bad tick must not stop the rollouts
                logger.exception("the rollout controller's tick failed")

    task = asyncio.create_task(loop())
    try:
        yield
    finally:
        task.cancel()


def resolve_prompt(state: ServerState, request: Request, tenant: str,
                   req: p._GenerationRequest) -> PromptUse | None:
    extra = req.aruntime or {}
    ref = extra.get("prompt")
    if ref is None:
        return None
    if not isinstance(ref, str) or not ref:
        raise InvalidRequestError("aruntime.prompt is NAME or NAME@ALIAS",
                                  param="aruntime.prompt")
    session = extra.get("session") or req.user or getattr(request.state, "request_id", None) \
        or str(id(request))
    try:
        return state.prompts.resolve(ref, tenant, str(session))
    except ReleaseError as exc:
        raise InvalidRequestError(str(exc), param="aruntime.prompt",
                                  code="release_unavailable") from None


def with_prompt(messages: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    """The release's system prompt before the request's own messages."""
    return [{"role": "system", "content": text}, *messages]


def released(state: ServerState, use: PromptUse | None) -> dict[str, str]:
    """What serves a request, each named as a release (kind -> name@version)."""
    out = {"model": f"{state.model_name}@{state.info.revision}",
           "policy": f"policy@{state.authorizer.version}"}
    router = getattr(state.client, "policy", None)
    if isinstance(router, str):
        out["route"] = f"router@{router}"
    if use is not None:
        out["prompt"] = use.ref
    return out


def record_sample(state: ServerState, gen: Generation, record: EvidenceRecord) -> None:
    use = gen.prompt_use
    if use is None or use.assignment.rollout_id is None:
        return
    version = use.assignment.shadow if gen.shadow else use.assignment.version
    ok = all(r != "abort" for r in record.finish_reasons)
    refused = any(not d.allowed for d in gen.decisions)
    state.adaptation.record(use.assignment.rollout_id, Sample(
        str(version), ok, record.timings.ttft_s, record.timings.tpot_s, refused))


def record_failure(state: ServerState, use: PromptUse | None) -> None:
    """A request that failed before it ran counts against the version it was assigned."""
    if use is not None and use.assignment.rollout_id is not None:
        state.adaptation.record(use.assignment.rollout_id,
                                Sample(use.assignment.version, False))
