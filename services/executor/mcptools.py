"""Tools from MCP servers (the official ``mcp`` SDK): an agent's ``mcp_servers`` as a tool source.

Each server's tools are offered to the model as ``{server}__{tool}`` with the server's JSON Schemas
(checked like every tool's, bounded in number and size). A call is a ``tools/call`` on a session
kept open per server and credentials: sessions are reused across calls and executions, and one
that died (the server restarted, the subprocess exited, the transport failed) is opened again on
the next call. Its progress notifications become ``tool.call.progress`` events of the call.

A server that is down never fails the executor's start nor the execution: a call to it is a
retriable tool error for the model (so the loop's retries apply), and when its tools were never
listed the model is told in a system message that the server is unavailable. Credentials come
only from the executor's settings (``mcp_secrets``), named by the agent file, per tenant first.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import re
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import httpx2
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import CONNECTION_CLOSED, INTERNAL_ERROR, REQUEST_TIMEOUT, CallToolResult, Implementation, TextContent

from schemas.agents import AgentSpec, McpServer
from schemas.bounds import json_problem
from schemas.events import ToolCallProgress
from services.common.taskset import TaskSet
from services.common.urlguard import SystemResolver
from services.executor.fence import Fenced
from services.executor.httptools import _check_resolved, check_url
from services.executor.providers.base import ToolSpec
from services.executor.settings import ExecutorSettings
from services.executor.tools import Tool, ToolContext, ToolDefinitionError, ToolError, check_schema, current_tool_call

log = logging.getLogger(__name__)

MAX_TOOLS_PER_SERVER = 128
MAX_LISTING_PAGES = 10
MAX_DESCRIPTION_CHARS = 2048
MAX_RESULT_CHARS = 1 << 20  # what one call may answer (text and structured content), like HTTP tools
MAX_PROGRESS_EVENTS = 256  # per call: a chatty server cannot flood the events topic
MAX_DETAIL_CHARS = 1000
_MODEL_TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # what OpenAI-compatible APIs accept
_CLIENT_INFO = Implementation(name="agentstream", version="0.1.0")
# How the SDK's transports report that the session is gone (not an answer of the server's): the
# connection closed, no answer in time, a 5xx, or the server no longer knowing the session (it restarted).
_TRANSPORT_CODES = frozenset({CONNECTION_CLOSED, REQUEST_TIMEOUT, INTERNAL_ERROR})


def _session_lost(exc: MCPError) -> bool:
    return exc.code in _TRANSPORT_CODES or exc.message == "Session terminated"


class McpUnavailable(ToolError):
    """The server cannot be reached (or its session cannot be opened); retriable."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retriable=True)


def _reason(exc: BaseException) -> str:
    """The first leaf of an exception group (the SDK's task groups wrap what went wrong), in one line."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    text = str(exc).strip() or repr(exc)
    return f"{type(exc).__name__}: {text[:300]}"


@dataclass(frozen=True)
class Endpoint:
    """One server as one tenant reaches it: the agent file's entry and the credentials from settings."""

    server: McpServer
    headers: tuple[tuple[str, str], ...] = ()
    env: tuple[tuple[str, str], ...] = ()

    @property
    def key(self) -> str:
        # Sessions are shared by everyone with the same server and credentials; the key keeps no secret in the clear.
        return hashlib.sha256(repr((self.server.model_dump_json(), self.headers, self.env)).encode()).hexdigest()


def resolve(server: McpServer, tenant_id: str, secrets: dict[str, str]) -> Endpoint:
    """The server's credentials for this tenant: ``{tenant}/{secret}`` first, then ``{secret}``."""

    def secret(name: str) -> str:
        value = secrets.get(f"{tenant_id}/{name}", secrets.get(name))
        if value is None:
            raise McpUnavailable(f"MCP server {server.name!r}: secret {name!r} is not configured (AGENTSTREAM_EXECUTOR_MCP_SECRETS)")
        return value

    headers = {**server.headers, **{header: secret(name) for header, name in server.secret_headers.items()}}
    env = {**server.env, **{variable: secret(name) for variable, name in server.secret_env.items()}}
    return Endpoint(server, tuple(sorted(headers.items())), tuple(sorted(env.items())))


class McpSession:
    """One open MCP session, owned by a task of its own: the SDK's task groups must be entered and left
    in one task, while calls come from every execution's tool tasks."""

    def __init__(self, endpoint: Endpoint, *, connect_timeout_s: float, allow_private: bool) -> None:
        self.endpoint = endpoint
        self.name = endpoint.server.name
        self._connect_timeout_s = connect_timeout_s
        self._allow_private = allow_private
        self._lock = asyncio.Lock()
        self._client: Client | None = None
        self._runner: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()
        self.listing: dict[str, ToolSpec] | None = None  # server's tool name -> spec offered to the model
        self.listed_at = 0.0
        self.opened = 0  # sessions opened so far: 1 while the first one lives

    @property
    def alive(self) -> bool:
        return self._client is not None and self._runner is not None and not self._runner.done()

    async def open(self) -> Client:
        async with self._lock:
            if self.alive and self._client is not None:
                return self._client
            await self._stop_runner()
            server = self.endpoint.server
            if server.url is not None and not self._allow_private:
                try:
                    await _check_resolved(server.url, SystemResolver())
                except ToolError as exc:
                    raise McpUnavailable(f"MCP server {self.name!r}: {exc}") from exc
            ready: asyncio.Future[Client] = asyncio.get_running_loop().create_future()
            self._closing = asyncio.Event()
            self._runner = asyncio.create_task(self._run(ready), name=f"mcp-{self.name}")
            try:
                async with asyncio.timeout(self._connect_timeout_s):
                    self._client = await asyncio.shield(ready)
                self.opened += 1
            except TimeoutError:
                await self._stop_runner()
                if ready.done() and not ready.cancelled():
                    ready.exception()  # retrieved: it failed after we stopped waiting, nobody else will look
                raise McpUnavailable(f"MCP server {self.name!r} did not answer within {self._connect_timeout_s:g}s") from None
            except Exception as exc:
                await self._stop_runner()
                raise McpUnavailable(f"MCP server {self.name!r} is unavailable: {_reason(exc)}") from exc
            return self._client

    async def _run(self, ready: asyncio.Future[Client]) -> None:
        server = self.endpoint.server
        try:
            async with contextlib.AsyncExitStack() as stack:
                if server.url is not None:
                    timeout = httpx2.Timeout(self._connect_timeout_s, read=300.0)  # a call's stream may stay open long
                    http = await stack.enter_async_context(httpx2.AsyncClient(headers=dict(self.endpoint.headers), timeout=timeout))
                    transport: Any = streamable_http_client(server.url, http_client=http)
                else:
                    params = StdioServerParameters(command=server.command or "", args=list(server.args), env=dict(self.endpoint.env))
                    transport = stdio_client(params, errlog=sys.stderr)
                client = await stack.enter_async_context(Client(transport, cache=None, client_info=_CLIENT_INFO))
                if not ready.done():
                    ready.set_result(client)
                await self._closing.wait()
        except asyncio.CancelledError:
            if not ready.done():
                ready.cancel()
            raise
        except BaseException as exc:  # the transport died or never came up: this session is over
            if not ready.done():
                ready.set_exception(exc if isinstance(exc, Exception) else RuntimeError(_reason(exc)))
            else:
                log.warning("MCP server %r: session ended: %s", self.name, _reason(exc))
        finally:
            self._client = None

    async def _stop_runner(self) -> None:
        runner, self._runner = self._runner, None
        self._client = None
        if runner is None:
            return
        self._closing.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(runner), 2.0)  # a clean close: DELETE the session, end the subprocess
        if not runner.done():
            runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)

    async def close(self) -> None:
        async with self._lock:
            await self._stop_runner()

    async def discard(self, client: Client) -> None:
        """After a transport failure: the next call opens a new session (unless another did already)."""
        async with self._lock:
            if self._client is client:
                await self._stop_runner()

    async def list_tools(self) -> dict[str, ToolSpec]:
        client = await self.open()
        specs: dict[str, ToolSpec] = {}
        cursor: str | None = None
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                for _ in range(MAX_LISTING_PAGES):
                    page = await client.list_tools(cursor=cursor)
                    for tool in page.tools:
                        if len(specs) >= MAX_TOOLS_PER_SERVER:
                            log.warning("MCP server %r lists more than %d tools; the rest are not offered", self.name, MAX_TOOLS_PER_SERVER)
                            return specs
                        spec = self._spec(tool.name, tool.description, tool.input_schema)
                        if spec is not None:
                            specs[tool.name] = spec
                    cursor = page.next_cursor
                    if not cursor:
                        break
        except TimeoutError:
            await self.discard(client)
            raise McpUnavailable(f"MCP server {self.name!r} did not list its tools within {self._connect_timeout_s:g}s") from None
        except MCPError as exc:
            if _session_lost(exc):
                await self.discard(client)
            raise McpUnavailable(f"MCP server {self.name!r} cannot list its tools: {exc.message}") from exc
        except Exception as exc:
            await self.discard(client)
            raise McpUnavailable(f"MCP server {self.name!r} is unavailable: {_reason(exc)}") from exc
        return specs

    def _spec(self, name: str, description: str | None, schema: Any) -> ToolSpec | None:
        exposed = f"{self.name}__{name}"
        try:
            if not _MODEL_TOOL_NAME.match(exposed):
                raise ToolDefinitionError(f"tool name {exposed!r} is not a valid model tool name (letters, digits, _ and -, 64 at most)")
            problem = json_problem(schema)
            if problem is not None:
                raise ToolDefinitionError(f"tool {exposed!r}: input schema out of bounds: {problem}")
            parameters = check_schema(exposed, schema)
        except ToolDefinitionError as exc:
            log.warning("MCP server %r: skipping a tool: %s", self.name, exc)  # one bad tool does not hide the others
            return None
        return ToolSpec(name=exposed, description=(description or "")[:MAX_DESCRIPTION_CHARS], parameters=parameters)

    async def call(self, name: str, arguments: dict[str, Any], ctx: ToolContext | None) -> Any:
        client = await self.open()
        progress = _Progress(ctx) if ctx is not None else None
        try:
            result = await client.call_tool(name, arguments, progress_callback=progress)
        except MCPError as exc:
            if _session_lost(exc):
                await self.discard(client)
                raise McpUnavailable(f"MCP server {self.name!r} is unreachable: {exc.message}") from exc
            # A JSON-RPC error the server answered (unknown tool, bad arguments): the session is fine.
            raise ToolError(f"MCP server {self.name!r} refused the call: {exc.message}") from exc
        except (TimeoutError, asyncio.CancelledError):
            raise
        except Exception as exc:
            await self.discard(client)
            raise McpUnavailable(f"MCP server {self.name!r} is unreachable: {_reason(exc)}") from exc
        return _result(self.name, name, result)


class _Progress:
    """MCP progress notifications of one call -> ``tool.call.progress`` events (bounded in number)."""

    def __init__(self, ctx: ToolContext) -> None:
        self._ctx = ctx
        self._sent = 0

    async def __call__(self, progress: float, total: float | None, message: str | None) -> None:
        if self._sent >= MAX_PROGRESS_EVENTS:
            return
        self._sent += 1
        ctx = self._ctx
        try:
            await ctx.emitter.emit(
                ToolCallProgress,
                call_id=ctx.call_id,
                tool=ctx.tool,
                status="progress",
                detail=(message or "")[:MAX_DETAIL_CHARS],
                progress=_finite(progress),
                total=_finite(total),
                step=ctx.step,
            )
        except Fenced:
            pass  # the run's next record raises it again, where the run handles it
        except Exception:  # a progress event lost is no reason to break the server's session
            log.warning("MCP progress of call %s not published", ctx.call_id, exc_info=True)


def _finite(value: float | None) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def _result(server: str, tool: str, result: CallToolResult) -> Any:
    """Structured content if the tool gave some, else its text (one block) or its blocks; an error
    result is the model's tool error with the server's text."""
    texts = [block.text for block in result.content if isinstance(block, TextContent)]
    size = sum(len(t) for t in texts)
    if size > MAX_RESULT_CHARS:
        raise ToolError(f"MCP tool {server}__{tool} answered {size} characters; more than {MAX_RESULT_CHARS} is refused")
    if result.is_error:
        raise ToolError(f"MCP tool {server}__{tool} failed: {' '.join(texts)[:2000] or 'no reason given'}")
    if result.structured_content is not None:
        return result.structured_content
    if len(result.content) == 1 and texts:
        return texts[0]
    return [block.model_dump(mode="json", exclude_none=True, by_alias=True) for block in result.content]


class McpTool:
    def __init__(self, spec: ToolSpec, remote: str, session: McpSession, *, timeout_s: float | None) -> None:
        self.spec = spec
        self.timeout_s = timeout_s  # None: the agent's (or executor's) tool timeout
        self._remote = remote
        self._session = session

    async def __call__(self, arguments: dict[str, Any]) -> Any:
        return await self._session.call(self._remote, arguments, current_tool_call.get())


class McpTools:
    """The executor's MCP sessions, shared by executions; at most ``mcp_max_sessions`` open (LRU)."""

    def __init__(self, settings: ExecutorSettings) -> None:
        self._secrets = {name: value.get_secret_value() for name, value in settings.mcp_secrets.items()}
        self._connect_timeout_s = settings.mcp_connect_timeout_s
        self._ttl_s = settings.mcp_listing_ttl_s
        self._max = settings.mcp_max_sessions
        self._allow_private = settings.allow_private_tool_urls
        self._sessions: OrderedDict[str, McpSession] = OrderedDict()
        self._closing = TaskSet("mcp-closing", log=log)  # evicted sessions closing

    async def tools_for(self, spec: AgentSpec, tenant_id: str) -> tuple[dict[str, Tool], list[str]]:
        """The tools of the agent's servers for this tenant, and a notice per server whose tools cannot
        be offered (for the model). Never raises for a server that is down."""
        results = await asyncio.gather(*(self._tools_of(server, tenant_id) for server in spec.mcp_servers))
        tools: dict[str, Tool] = {}
        notices: list[str] = []
        for found, notice in results:
            tools |= found
            if notice:
                notices.append(notice)
        return tools, notices

    async def _tools_of(self, server: McpServer, tenant_id: str) -> tuple[dict[str, Tool], str]:
        try:
            if server.url is not None:
                check_url(server.url, allow_private=self._allow_private)
            session = self._session(resolve(server, tenant_id, self._secrets))
        except (ToolError, ToolDefinitionError) as exc:
            return {}, f"The tools of MCP server {server.name!r} are not available: {exc}"
        if session.listing is None or time.monotonic() - session.listed_at > self._ttl_s:
            try:
                session.listing = await session.list_tools()
                session.listed_at = time.monotonic()
            except ToolError as exc:
                if session.listing is None:  # never listed: its tools (and their schemas) are unknown
                    log.warning("%s", exc)
                    return {}, f"The tools of MCP server {server.name!r} are not available: {exc}"
                log.warning("%s; offering its tools as last listed", exc)  # calls then fail clearly, or work again
        allowed = set(server.tools) if server.tools is not None else None
        tools: dict[str, Tool] = {
            spec.name: McpTool(spec, remote, session, timeout_s=server.timeout_s)
            for remote, spec in session.listing.items()
            if allowed is None or remote in allowed
        }
        return tools, ""

    @property
    def opened(self) -> int:
        """Sessions opened so far (of the servers still known): calls reuse one until it dies."""
        return sum(session.opened for session in self._sessions.values())

    def _session(self, endpoint: Endpoint) -> McpSession:
        key = endpoint.key
        session = self._sessions.get(key)
        if session is None:
            session = self._sessions[key] = McpSession(
                endpoint, connect_timeout_s=self._connect_timeout_s, allow_private=self._allow_private
            )
            while len(self._sessions) > self._max:
                _, evicted = self._sessions.popitem(last=False)
                self._closing.spawn(evicted.close(), name=f"mcp-close-{evicted.endpoint.server.name}")
        self._sessions.move_to_end(key)
        return session

    async def aclose(self) -> None:
        sessions, self._sessions = list(self._sessions.values()), OrderedDict()
        # Each close is bounded (McpSession.close): wait for the evicted ones to end, never cancel them
        # (a close cancelled mid-way would leave its session's runner behind).
        await asyncio.gather(*(s.close() for s in sessions), self._closing.stop(grace_s=None), return_exceptions=True)
