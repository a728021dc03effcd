"""The server's ASGI app: `build_app` composes a FastAPI app whose state lives on
`app.state.server` (serve/state.py) and whose resources — the evidence log, the metrics registry
with the pool's collectors, the runs journal — open in its lifespan and close with it. The routes
are serve/openai_routes.py's and serve/runs_routes.py's, behind the request limits
(serve/limits.py); `/openapi.json` describes them (serve/openapi.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from opentelemetry.trace import Tracer

from aruntime import __version__, telemetry
from aruntime.agents.tools import Tool
from aruntime.cluster.serving import ServingPool
from aruntime.contracts import DecisionRecord, EvidenceRecord
from aruntime.engine.core_proc import ModelInfo
from aruntime.engine.tokenizer import Tokenizer
from aruntime.evidence.log import EvidenceLog
from aruntime.evidence.signing import DeploymentKey, default_key_path
from aruntime.policy.cedar_authorizer import CedarAuthorizer
from aruntime.policy.decision import Authorizer
from aruntime.policy.identity import Authenticator, NoAuth
from aruntime.policy.quotas import Quotas
from aruntime.policy.reloader import PolicyReloader
from aruntime.serve import openapi
from aruntime.serve.adaptation import open_adaptation, ticking
from aruntime.serve.console.routes import page_router as console_page_router
from aruntime.serve.console.routes import router as console_router
from aruntime.serve.errors import install_error_handlers
from aruntime.serve.flow_models import ServedModels
from aruntime.serve.info_routes import router as info_router
from aruntime.serve.limits import DEFAULT_MAX_BODY_BYTES, RequestLimits
from aruntime.serve.mcp_server import McpEndpoint, build_mcp
from aruntime.serve.metrics import Metrics, PolicyCollector, ServingCollector
from aruntime.serve.openai_routes import router as openai_router
from aruntime.serve.prompt_bound import longest_token_bytes
from aruntime.serve.released_model import ModelEngines
from aruntime.serve.releases_routes import router as releases_router
from aruntime.serve.runs_routes import open_runner
from aruntime.serve.runs_routes import router as runs_router
from aruntime.serve.state import ServerState
from aruntime.serve.tool_parsers import parser_for


def build_app(client: ServingPool, tokenizer: Tokenizer, model_name: str, *,
              model_info: ModelInfo, data_dir: Path, demo: bool = False,
              owns_client: bool = False, signer: DeploymentKey | None = None,
              tracer: Tracer | None = None, tool_call_parser: str | None = None,
              authenticator: Authenticator | None = None,
              authorizer: Authorizer | None = None, quotas: Quotas | None = None,
              tools: Sequence[Tool] = (), policy_reloader: PolicyReloader | None = None,
              max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, route_release: str | None = None,
              model_release: ModelEngines | None = None,
              claims_root: Path | None = None) -> FastAPI:
    """The app; with `owns_client` its lifespan shuts the engine client down on exit. Evidence
    is signed by `signer` (default: the key under `data_dir`); spans go to `tracer` (default:
    the process's); tool calls are read in `tool_call_parser`'s format (default: the
    template's). `authenticator` says who asks (default: nobody, loopback only), `authorizer`
    what they may do (default: the built-in policy; a `policy_reloader`'s own when given),
    `quotas` how much (default: unlimited); `tools` are served over MCP at /mcp; a body
    over `max_body_bytes` is refused unread (413). The router's policy is the route release
    `route_release`'s, when given (a policy release is an authorizer: serve/released_policy.py);
    `model_release` starts its rollouts' candidates beside `client`, stable's engine; the
    console lists the claims under `claims_root` (default: the working directory)."""
    mcp = build_mcp()
    authorizer = _authorizer_of(authorizer, policy_reloader)
    tool_parser = parser_for(tokenizer.chat_template, tool_call_parser)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        data = Path(data_dir)
        key = signer or DeploymentKey.load_or_create(default_key_path(data))
        evidence: EvidenceLog[EvidenceRecord] = EvidenceLog(data / "evidence.jsonl", key)
        decision_log = EvidenceLog(data / "decisions.jsonl", key, contract=DecisionRecord)
        state = ServerState(client, tokenizer, model_name, model_info, demo, Path(data_dir),
                            Metrics(model_name, [
                                # a promoted model release's engine takes over the series
                                ServingCollector(lambda: state.client),
                                PolicyCollector(authorizer, policy_reloader)]),
                            evidence, key,
                            tracer=tracer or telemetry.process_tracer(), tool_parser=tool_parser,
                            authenticator=authenticator or NoAuth(), authorizer=authorizer,
                            quotas=quotas or Quotas(), tools={t.name: t for t in tools},
                            decisions=decision_log,  # and the longest token's bytes, once:
                            longest_token_bytes=longest_token_bytes(tokenizer),
                            claims_root=Path(claims_root or Path.cwd()))
        app.state.server = state
        app.state.runner = open_runner(data, key,  # flows call models as requests do
                                       ServedModels(state, asyncio.get_running_loop()),
                                       state.tracer, state.authorizer)
        open_adaptation(state, app.state.runner.journal, policy_reloader, route_release,
                        model_release)
        try:
            async with mcp.run(), _running(policy_reloader), ticking(state):
                yield
        finally:
            evidence.close()
            decision_log.close()
            app.state.runner.journal.close()
            await _shut_engines(state, client if owns_client else None, model_release)

    return _routed(FastAPI(title="ARuntime", version=__version__, lifespan=lifespan,
                           docs_url=None, redoc_url=None, openapi_url="/openapi.json"),
                   mcp, max_body_bytes)


async def _shut_engines(state: ServerState, owned: ServingPool | None,
                        model_release: ModelEngines | None) -> None:
    """A model release's candidates' engines; then, when the app owns it, the engine it was
    built with and the one serving now (a promoted model release's)."""
    if model_release is not None:
        model_release.close()
    if owned is not None:
        await owned.shutdown()
        if state.client is not owned:
            await state.client.shutdown()


def _routed(app: FastAPI, mcp: Any, max_body_bytes: int) -> FastAPI:
    install_error_handlers(app)
    app.add_middleware(McpEndpoint, manager=mcp)
    for router in (info_router, openai_router, runs_router, releases_router, console_router,
                   console_page_router):
        app.include_router(router)
    openapi.install(app)
    app.add_middleware(RequestLimits, max_body_bytes=max_body_bytes)  # before any route reads
    return app


def _authorizer_of(authorizer: Authorizer | None,
                   reloader: PolicyReloader | None) -> Authorizer:
    if reloader is None:
        return authorizer or CedarAuthorizer()
    if authorizer not in (None, reloader.authorizer):
        raise ValueError("the policy reloader reloads its own authorizer: pass one of them")
    return reloader.authorizer


@asynccontextmanager
async def _running(reloader: PolicyReloader | None) -> AsyncIterator[None]:
    """The reloader's watch, for the life of the app."""
    if reloader is None:
        yield
        return
    reloader.start()
    try:
        yield
    finally:
        reloader.stop()
