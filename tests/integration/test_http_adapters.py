"""The executor's HTTP adapters against real servers on 127.0.0.1: agent service, HTTP tools, Tool Registry."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import ipaddress
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from schemas.agents import AgentSpec
from services.common.agents import AgentCatalog, AgentCatalogError, AgentServiceUnavailable, HttpAgents, StaticAgents
from services.executor.httptools import HttpTool, ToolRegistry
from services.executor.loop import LoopSettings, _invoke
from services.executor.providers.base import ToolSpec
from services.executor.providers.registry import PROVIDER_NAMES
from services.executor.settings import RetrySettings, TimeoutSettings
from services.executor.tools import ToolError
from tests.support import serve

SECRET = b"shared-secret"


@dataclasses.dataclass
class Backend:
    """Agent service + HTTP tool + Tool Registry in one Starlette app, recording what it saw."""

    agent_hits: int = 0
    tool_calls: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    failures_left: int = 0
    invocations: int = 0

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/agents/{name}", self.agent),
                Route("/lookup", self.lookup, methods=["POST"]),
                Route("/tools", self.list_tools),
                Route("/tools/{name}/invoke", self.invoke, methods=["POST"]),
            ]
        )

    async def agent(self, request: Request) -> Response:
        self.agent_hits += 1
        name = request.path_params["name"]
        if name == "support":
            return JSONResponse({"name": "support", "provider": "openai", "model": "gpt-4o-mini", "fallback": ["groq"]})
        if name == "weird":
            return JSONResponse({"name": "weird", "provider": "telepathy"})
        return JSONResponse({"error": "no such agent"}, status_code=404)

    async def lookup(self, request: Request) -> Response:
        body = await request.body()
        timestamp = request.headers["x-agentstream-timestamp"]
        expected = "v1=" + hmac.new(SECRET, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, request.headers["x-agentstream-signature"]) or abs(time.time() - int(timestamp)) > 300:
            return JSONResponse({"error": "bad signature"}, status_code=401)
        if self.failures_left:
            self.failures_left -= 1
            return JSONResponse({"error": "busy"}, status_code=503)
        payload = orjson.loads(body)
        self.tool_calls.append(payload)
        return JSONResponse({"result": {"found": payload["arguments"]["q"].upper()}})

    async def list_tools(self, request: Request) -> Response:
        return JSONResponse(
            [
                {
                    "name": "weather",
                    "description": "Weather.",
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
                },
                {"name": "broken", "parameters": {"type": "nonsense"}},
            ]
        )

    async def invoke(self, request: Request) -> Response:
        self.invocations += 1
        payload = orjson.loads(await request.body())
        if request.path_params["name"] != "weather":
            return JSONResponse({"error": "unknown tool"})
        return JSONResponse({"result": f"sunny in {payload['arguments']['city']}"})


@pytest.fixture
async def backend() -> AsyncIterator[tuple[Backend, str]]:
    backend = Backend()
    async with serve(backend.app()) as url:
        yield backend, url


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5) as c:
        yield c


async def test_agent_service_fetches_and_caches(backend: tuple[Backend, str]) -> None:
    server, url = backend
    source = HttpAgents(url, ttl_s=60, providers=PROVIDER_NAMES)
    try:
        catalog = AgentCatalog(StaticAgents({"local": AgentSpec(name="local")}), source)
        assert (await catalog.get("local")) == AgentSpec(name="local")
        spec = await catalog.get("support")
        assert spec is not None and spec.fallback == ("groq",)
        await catalog.get("support")
        assert server.agent_hits == 1  # cached
        assert await catalog.get("missing") is None
        with pytest.raises(AgentCatalogError, match="unknown provider 'telepathy'"):
            await catalog.get("weird")
    finally:
        await source.aclose()


async def test_agent_service_unreachable_is_a_clear_retriable_error() -> None:
    source = HttpAgents("http://127.0.0.1:9", ttl_s=0, timeout_s=1)
    try:
        with pytest.raises(AgentServiceUnavailable, match=r"agent service at http://127\.0\.0\.1:9 is unreachable") as info:
            await source.get("support")
        assert info.value.retriable
    finally:
        await source.aclose()


async def test_agent_service_down_serves_the_stale_entry() -> None:
    server = Backend()
    async with serve(server.app()) as url:
        source = HttpAgents(url, ttl_s=0)
        assert await source.get("support") is not None
    try:
        # The service is gone now; the entry we had still serves.
        spec = await source.get("support")
        assert spec is not None and spec.name == "support"
    finally:
        await source.aclose()


async def test_http_tool_request_is_signed_and_answered(backend: tuple[Backend, str], client: httpx.AsyncClient) -> None:
    server, url = backend
    spec = ToolSpec(name="lookup", description="", parameters={"type": "object", "properties": {"q": {"type": "string"}}})
    tool = HttpTool(spec, f"{url}/lookup", client=client, secret=SECRET, allow_private=True)
    assert await tool({"q": "abc"}) == {"found": "ABC"}
    assert server.tool_calls == [{"tool": "lookup", "arguments": {"q": "abc"}}]
    unsigned = HttpTool(spec, f"{url}/lookup", client=client, secret=b"wrong", allow_private=True)
    with pytest.raises(ToolError, match="HTTP 401"):
        await unsigned({"q": "abc"})


async def test_http_tool_retriable_failures_are_retried_a_bounded_number_of_times(
    backend: tuple[Backend, str], client: httpx.AsyncClient
) -> None:
    server, url = backend
    spec = ToolSpec(name="lookup", description="", parameters={"type": "object"})
    tool = HttpTool(spec, f"{url}/lookup", client=client, secret=SECRET, allow_private=True)
    settings = LoopSettings(retry=RetrySettings(), timeouts=TimeoutSettings(), tool_timeout_s=2, tool_retries=2, tool_retry_backoff_s=0.01)
    server.failures_left = 2
    assert await _invoke(tool, {"q": "x"}, timeout_s=2, settings=settings) == {"found": "X"}
    server.failures_left = 3
    with pytest.raises(ToolError, match="HTTP 503") as info:
        await _invoke(tool, {"q": "x"}, timeout_s=2, settings=settings)
    assert info.value.retriable


async def test_tool_registry_lists_and_invokes(backend: tuple[Backend, str], client: httpx.AsyncClient) -> None:
    _, url = backend
    registry = ToolRegistry(url, client=client, allow_private=True)
    tools = await registry.list()
    assert list(tools) == ["weather"]  # the entry with a broken schema is skipped
    assert await tools["weather"]({"city": "Oslo"}) == "sunny in Oslo"
    with pytest.raises(ToolError, match="unknown tool"):
        await registry.invoke("nope", {})


async def test_tool_registry_on_loopback_is_refused_unless_allowed(client: httpx.AsyncClient) -> None:
    from services.executor.tools import ToolDefinitionError

    with pytest.raises(ToolDefinitionError, match="loopback"):
        ToolRegistry("http://127.0.0.1:1", client=client)


def _name_resolving_to_loopback() -> str | None:
    """A name (not ``localhost``, which registration refuses) that this machine resolves to loopback."""
    for name in ("localhost.", socket.gethostname(), "ip6-localhost"):
        try:
            infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
        except OSError:
            continue
        if infos and all(ipaddress.ip_address(str(info[4][0])).is_loopback for info in infos):
            return name
    return None


async def test_tool_registry_invoke_refuses_a_name_that_resolves_to_loopback(
    backend: tuple[Backend, str], client: httpx.AsyncClient
) -> None:
    """A name passes registration (checked per call); ``invoke`` must check what it resolves to."""
    server, url = backend
    name = _name_resolving_to_loopback()
    if name is None:
        pytest.skip("no name other than localhost resolves to loopback here")
    registry = ToolRegistry(f"http://{name}:{url.rsplit(':', 1)[1]}", client=client)
    with pytest.raises(ToolError, match="private or loopback"):
        await registry.invoke("weather", {"city": "Oslo"})
    assert server.invocations == 0
