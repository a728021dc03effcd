"""The server's side of releases and rollouts: the registry and controller on the server's
journal, their tick, and the offline evaluation of a prompt version through the server's own
path (what each request is served with is serve/release_uses.py's).

Unattended promotion needs a policy bundle whose signature verified under a trusted key
(`serve --policy DIR --policy-key KEY`, or `--release policy=NAME --policy-key KEY`) that
permits `promote_unattended` on the release kind to the controller; the built-in policy never
is one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from aruntime.adapt.artifact import (
    Kind,
    ReleaseError,
    decode_prompt,
    decode_retrieval,
    decode_route,
)
from aruntime.adapt.controller import Assignment, RolloutController
from aruntime.adapt.registry import Registry
from aruntime.adapt.request_releases import RequestReleases, Use
from aruntime.adapt.rollout import RolloutStore
from aruntime.adapt.versions import Versions, decoded
from aruntime.durable.sql_journal import SqlJournal
from aruntime.policy.decision import Action, Resource
from aruntime.policy.identity import Principal
from aruntime.policy.reloader import PolicyReloader
from aruntime.route_policy import RoutePolicy
from aruntime.serve.release_uses import with_releases
from aruntime.serve.released_model import ModelEngines
from aruntime.serve.released_policy import ReleasedPolicy
from aruntime.serve.tool_specs import NO_TOOLS

if TYPE_CHECKING:
    from aruntime.serve.state import ServerState

logger = logging.getLogger(__name__)
TICK_S = 0.5
EVAL_MAX_TOKENS = 64  # an evaluation case's answer
CONTROLLER = Principal("aruntime-controller", "system", frozenset({"controller"}), via="internal")


def open_adaptation(state: ServerState, journal: SqlJournal,
                    reloader: PolicyReloader | None, route_release: str | None = None,
                    model_release: ModelEngines | None = None) -> None:
    """The registry and controller on the server's journal, and the server's own releases
    attached to it (each stable version verified now, or no server); called on the server's
    loop, where offline evaluations run their requests."""
    registry = Registry(journal, state.data_dir / "releases", state.signer)
    loop = asyncio.get_running_loop()
    if isinstance(state.authorizer, ReleasedPolicy):
        state.authorizer.attach(registry)
    if route_release is not None:
        state.route = released_route(registry, route_release)

    def unattended(kind: Kind) -> bool:
        if not _verified_policy(state, reloader):
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
    if model_release is not None:
        model_release.attach(state)
        state.models = model_release
    state.prompts = RequestReleases(state.adaptation, Kind.PROMPT, decoded(decode_prompt))
    state.retrievals = RequestReleases(state.adaptation, Kind.RETRIEVAL,
                                       decoded(decode_retrieval))


def released_route(registry: Registry, name: str) -> Versions[RoutePolicy]:
    """The route release `name`'s versions, its stable one verified now."""
    routes = Versions(registry, name, Kind.ROUTE, decoded(decode_route))
    routes.at(routes.stable())
    return routes


def _verified_policy(state: ServerState, reloader: PolicyReloader | None) -> bool:
    """Whether the policy in force is a bundle whose signature verified under a trusted key
    (a signature nobody checked permits nothing)."""
    if isinstance(state.authorizer, ReleasedPolicy):
        return state.authorizer.verified
    return reloader is not None and reloader.trusted is not None and reloader.bundle.signed


async def _answer(state: ServerState, name: str, version: str,
                  messages: list[dict[str, Any]]) -> str:
    from aruntime.serve import protocol as p
    from aruntime.serve.generation import collect, plan
    from aruntime.serve.prompt_bound import chat_prompt

    req = p.ChatCompletionRequest.model_validate(
        {"model": state.model_name, "messages": messages, "max_tokens": EVAL_MAX_TOKENS,
         "temperature": 0})
    kind = state.adaptation.registry.kind_of(name)
    value: Any
    if kind is Kind.PROMPT:
        value = state.prompts.at(name, version)
    elif kind is Kind.RETRIEVAL:
        value = state.retrievals.at(name, version)
    else:
        raise ReleaseError(f"an evaluation set answers through a prompt or a retrieval "
                           f"release; {name} holds {kind} releases")
    full, _ = with_releases(p.chat_messages(req.messages),
                            {kind: Use(Assignment(name, version), value)})
    prompt = await asyncio.to_thread(chat_prompt, state.tokenizer, full, NO_TOOLS,
                                     state.tool_parser, state.longest_token_bytes,
                                     state.info.max_model_len)
    gen = plan(state, req, "eval", [prompt], "messages", messages=full)
    gen.shadow = True  # an evaluation's answer is nobody's: no evidence record of its own
    await collect(state, gen)
    return gen.choices[0].text


def _tick(state: ServerState) -> None:
    state.adaptation.tick()
    if state.models is not None:  # the engines a model release's rollouts want
        state.models.sync()


@asynccontextmanager
async def ticking(state: ServerState) -> AsyncIterator[None]:
    """The controller's loop, for the life of the app."""
    async def loop() -> None:
        while True:
            await asyncio.sleep(TICK_S)  # a period, not a wait for something to happen
            try:
                await asyncio.to_thread(_tick, state)
            except Exception:  # one bad tick must not stop the rollouts
                logger.exception("the rollout controller's tick failed")

    task = asyncio.create_task(loop())
    try:
        yield
    finally:
        task.cancel()
