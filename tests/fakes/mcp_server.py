"""An MCP server written with the ``mcp`` SDK (MCPServer, the SDK's FastMCP), for the MCP tool tests.

Tools: ``add`` (a result), ``count`` (progress notifications, then a result), ``fail`` (an error result),
``whoami`` (the credential it was sent: the Authorization header over HTTP, ``MCP_TOKEN`` over stdio),
``trace`` (the trace context in the request's ``_meta``),
``sleep``. Over streamable HTTP: ``app()`` is the ASGI app (tests serve it on loopback). Over stdio:
``python -m tests.fakes.mcp_server`` (the executor starts it as a subprocess).
"""

from __future__ import annotations

import asyncio
import os

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from starlette.types import ASGIApp


def server() -> MCPServer:
    mcp = MCPServer("agentstream-test")

    @mcp.tool(description="Add two integers.")
    def add(a: int, b: int) -> int:
        return a + b

    @mcp.tool(description="Count to n, reporting progress at each step.")
    async def count(n: int, ctx: Context) -> str:
        for i in range(1, n + 1):
            await ctx.report_progress(i, n, f"step {i} of {n}")
        return f"counted to {n}"

    @mcp.tool(description="Always fails.")
    def fail(reason: str) -> str:
        raise ToolError(reason)  # its message is the error result's text

    @mcp.tool(description="The credential this call came with.")
    def whoami(ctx: Context) -> str:
        headers = ctx.headers
        if headers is not None:
            return headers.get("authorization", "")
        return os.environ.get("MCP_TOKEN", "")

    @mcp.tool(description="The W3C trace context the call came with (in its _meta).")
    def trace(ctx: Context) -> str:
        meta = ctx.request_context.meta or {}
        return str(meta.get("traceparent", ""))

    @mcp.tool(description="Sleep a while.")
    async def sleep(seconds: float) -> str:
        await asyncio.sleep(seconds)
        return "slept"

    return mcp


def app() -> ASGIApp:
    return server().streamable_http_app()


if __name__ == "__main__":
    server().run("stdio")
