"""The runtime's tools as an MCP server: streamable HTTP at `/mcp` on the API's own port, the
same credentials, Cedar in front (Bedrock AgentCore's gateway shape).

`tools/list` shows only the tools the principal's `list_tools` decision allows; `tools/call`
checks the arguments against the tool's JSON Schema (a misfit is an `isError` result naming
where, for the model to correct: SEP-1303; an unknown tool is JSON-RPC's invalid params), then
decides `call_tool` with the arguments as `context.input`: a denial is an MCP error
(`POLICY_DENIED`) and nothing runs. A tool that fails answers `isError` with its message. Every
decision is a record in the signed decision log (`decisions.jsonl`), with the argument digest,
never the arguments. Stateless: each POST is its own exchange, so a principal is read from each
request's `Authorization` header and no session outlives it.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import anyio
import mcp_types as types
from mcp.server.lowlevel.server import Server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.shared.exceptions import MCPError
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from aruntime.agents.tools import Tool, ToolInputError
from aruntime.contracts import sha256_digest
from aruntime.errors import described
from aruntime.policy.decision import Action, Decision, Resource
from aruntime.policy.identity import Principal
from aruntime.serve.auth import principal, record_decision
from aruntime.serve.errors import AuthenticationError
from aruntime.serve.state import ServerState, state_of

PATH = "/mcp"
POLICY_DENIED = -32003  # in JSON-RPC's range for server-defined errors
IDEMPOTENCY_META = "aruntime/idempotency_key"


def tool_resource(tool: Tool) -> Resource:
    return Resource("Tool", tool.name, {"name": tool.name, "side_effect": tool.side_effect})


def _decide(state: ServerState, who: Principal, action: Action, tool: Tool,
            context: dict[str, Any] | None = None, arg_digest: str | None = None) -> Decision:
    decision = state.authorizer.decide(who, action, tool_resource(tool), context)
    record_decision(state, who, decision, "mcp", arg_digest)
    return decision


def _caller(ctx: Any) -> tuple[ServerState, Principal]:
    request = ctx.request  # the HTTP request of this exchange (a Starlette Request)
    state = state_of(request)
    try:  # the endpoint authenticated it and kept the principal in the request's state
        return state, principal(request)
    except AuthenticationError as exc:
        raise MCPError(types.INVALID_REQUEST, exc.message) from None


def _mcp_tool(tool: Tool) -> types.Tool:
    read_only = not tool.side_effect
    return types.Tool(name=tool.name, description=tool.description or None,
                      input_schema=tool.input_schema, output_schema=tool.output_schema or None,
                      annotations=types.ToolAnnotations(read_only_hint=read_only,
                                                        destructive_hint=tool.side_effect))


async def _list_tools(ctx: Any, params: Any) -> types.ListToolsResult:
    state, who = _caller(ctx)
    return types.ListToolsResult(tools=[
        _mcp_tool(t) for t in state.tools.values()
        if not _decide(state, who, Action.LIST_TOOLS, t).enforced])


async def _call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
    state, who = _caller(ctx)
    tool = state.tools.get(params.name)
    args = params.arguments or {}
    if tool is None:
        raise MCPError(types.INVALID_PARAMS, f"no tool named {params.name!r}")
    try:
        tool.check_input(args)
    except ToolInputError as exc:  # a tool error the model can read and correct (SEP-1303)
        return types.CallToolResult(content=[types.TextContent(text=str(exc))], is_error=True)
    digest = sha256_digest({"tool": tool.name, "args": args})
    decision = _decide(state, who, Action.CALL_TOOL, tool, {"input": args}, digest)
    if decision.enforced:
        why = ", ".join(decision.determining) or "no policy permits it (default deny)"
        raise MCPError(POLICY_DENIED, f"policy denies call_tool on {tool.name} to {who.id}: "
                                      f"{why}", {"policy_version": decision.policy_version})
    meta: dict[str, Any] = dict(params.meta or {})
    key = str(meta.get(IDEMPOTENCY_META) or uuid.uuid4().hex)
    try:
        output = await anyio.to_thread.run_sync(tool.invoke, args, key)
        tool.check_output(output)
    except Exception as exc:  # the tool's failure is the caller's to read, not a protocol error
        return types.CallToolResult(content=[types.TextContent(text=described(exc))],
                                    is_error=True)
    return types.CallToolResult(content=[types.TextContent(text=json.dumps(output))],
                                structured_content=output)


def build_mcp() -> StreamableHTTPSessionManager:
    """The MCP server's session manager; run it inside the app's lifespan."""
    server: Server[Any] = Server("aruntime", on_list_tools=_list_tools, on_call_tool=_call_tool)
    return StreamableHTTPSessionManager(server, json_response=True, stateless=True)


class McpEndpoint:
    """ASGI middleware: requests to `/mcp` are authenticated (a 401 in OpenAI's shape without a
    good credential) and go to the MCP session manager; the rest to the app."""

    def __init__(self, app: ASGIApp, manager: StreamableHTTPSessionManager) -> None:
        self.app = app
        self.manager = manager

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or (path != PATH and not path.startswith(PATH + "/")):
            await self.app(scope, receive, send)
            return
        try:  # once per request: the principal stays in the scope's state for the handlers
            principal(Request(scope))
        except AuthenticationError as err:
            body = json.dumps(err.body()).encode()
            await send({"type": "http.response.start", "status": err.status_code,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"www-authenticate", b"Bearer")]})
            await send({"type": "http.response.body", "body": body})
            return
        await self.manager.handle_request(scope, receive, send)
