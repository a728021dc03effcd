"""An external MCP server's tools, as tools a flow calls: `ctx.call_tool(tool, args)` then
gives them what it gives a local tool — JSON-Schema validation in and out, the policy's
`call_tool` decision for the run's principal, the journal, the idempotency key (sent in the
call's `_meta` as `aruntime/idempotency_key`), evidence.

    toolbox = McpToolbox("http://tools.internal:8000/mcp", headers={"Authorization": "Bearer …"})
    refund = toolbox.get("refund")
    ctx.call_tool(refund, {"order": "o1", "amount": 5})

A flow step is synchronous: each call runs the official `mcp` client on a private event loop,
under a timeout. A tool that declares itself read-only (`readOnlyHint`) and not destructive is
called as a pure tool; any other is called as a side effect, with its key.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from aruntime.agents.tools import Tool, ToolOutputError

CALL_TIMEOUT_S = 60.0
IDEMPOTENCY_META = "aruntime/idempotency_key"


class McpToolError(RuntimeError):
    """The remote server refused or failed a call (its MCP error or `isError` result)."""


class McpToolbox:
    def __init__(self, url: str, *, headers: Mapping[str, str] | None = None,
                 timeout_s: float = CALL_TIMEOUT_S) -> None:
        self.url = url
        self.headers = dict(headers or {})
        self.timeout_s = timeout_s
        self._tools: dict[str, Tool] | None = None

    def tools(self) -> list[Tool]:
        """The remote's tools (listed once), as `Tool`s that call it."""
        if self._tools is None:
            listed = self._run(self._list())
            self._tools = {t.name: self._tool(t) for t in listed}
        return list(self._tools.values())

    def get(self, name: str) -> Tool:
        found = {t.name: t for t in self.tools()}.get(name)
        if found is None:
            raise KeyError(f"the MCP server at {self.url} lists no tool {name!r}")
        return found

    def _tool(self, remote: Any) -> Tool:
        hints = remote.annotations
        pure = bool(hints and hints.read_only_hint and not hints.destructive_hint)
        name = remote.name
        if pure:
            def call(args: dict[str, Any]) -> Any:
                return self._run(self._call(name, args, None))
        else:
            def call(args: dict[str, Any], idempotency_key: str) -> Any:  # type: ignore[misc]
                return self._run(self._call(name, args, idempotency_key))
        return Tool(name, call, dict(remote.input_schema), dict(remote.output_schema or {}),
                    side_effect=not pure, description=remote.description or "")

    def _client(self) -> Any:
        import httpx2
        from mcp import Client
        from mcp.client.streamable_http import streamable_http_client

        http = httpx2.AsyncClient(headers=self.headers, timeout=self.timeout_s)
        return Client(streamable_http_client(self.url, http_client=http))

    async def _list(self) -> list[Any]:
        async with self._client() as client:
            return list((await client.list_tools()).tools)

    async def _call(self, name: str, args: dict[str, Any], key: str | None) -> Any:
        from mcp.shared.exceptions import MCPError

        meta = {IDEMPOTENCY_META: key} if key is not None else None
        try:
            async with self._client() as client:
                result = await client.call_tool(name, args, meta=meta)
        except* MCPError as group:  # raised through the client's task group
            exc: BaseException = group
            while isinstance(exc, BaseExceptionGroup):  # groups may nest
                exc = exc.exceptions[0]
            assert isinstance(exc, MCPError)
            raise McpToolError(f"MCP tool {name}: {exc.message} (code {exc.code})") from None
        if result.is_error:
            text = " ".join(getattr(c, "text", "") for c in result.content)
            raise McpToolError(f"MCP tool {name} failed: {text}")
        if result.structured_content is None:
            raise ToolOutputError(f"MCP tool {name} returned no structured content")
        return result.structured_content

    def _run(self, coro: Any) -> Any:
        """On a loop of its own: a flow's thread may have none, or one it must not block."""
        return asyncio.run(asyncio.wait_for(coro, self.timeout_s))
