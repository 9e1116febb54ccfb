"""MCP servers as a tool source: a real MCP server written with the ``mcp`` SDK (tests/fakes/mcp_server.py),
over streamable HTTP on loopback and over stdio as a subprocess, driven through the executor on the real
broker, the model being the real OpenAI SDK against the fake server."""

from __future__ import annotations

import contextlib
import json
import sys
import uuid
from typing import Any

import pytest
from mcp.server.mcpserver import MCPServer
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

from schemas.agents import AgentSpec, McpServer
from schemas.events import ExecutionRequested
from schemas.tenants import TenantRecord
from services.common.agents import AgentCatalogError, HttpAgents
from services.common.kafka import encode, header
from services.common.observability.settings import install_provider
from services.common.settings import KafkaSettings
from tests.fakes.mcp_server import app
from tests.fakes.openai_server import FakeToolCall, Reply
from tests.integration.executor_harness import announce_tenant, running_executor, types_of
from tests.integration.test_cloudevents import records_of
from tests.support import serve

pytestmark = pytest.mark.kafka

PORT = 8571  # a port of this helper's range, so the same server can come back on it
DOWN_PORT = 8599  # nothing listens here
SECRETS = {"files-token": SecretStr("Bearer for-everyone"), "tenant-a/files-token": SecretStr("Bearer tenant-a")}


def http_agent(url: str, **server: Any) -> AgentSpec:
    files = McpServer(name="files", url=url, headers={"X-Team": "research"}, secret_headers={"Authorization": "files-token"}, **server)
    return AgentSpec(name="mcp", provider="openai", model="mcp-model", tools=("calculator",), mcp_servers=(files,))


def completed(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {e["call_id"]: e for e in events if e["type"] == "tool.call.completed"}


def tool_messages(body: dict[str, Any]) -> dict[str, Any]:
    return {m["tool_call_id"]: json.loads(m["content"]) for m in body["messages"] if m["role"] == "tool"}


async def test_http_server_tools_are_offered_called_and_report_progress_with_the_tenants_credential(kafka_settings: KafkaSettings) -> None:
    async with (
        serve(app()) as base,
        running_executor(kafka_settings, agents={"mcp": http_agent(f"{base}/mcp")}, allow_private_tool_urls=True, mcp_secrets=SECRETS) as h,
    ):
        calls = [
            FakeToolCall("files__add", '{"a": 2, "b": 3}', id="add"),
            FakeToolCall("files__count", '{"n": 3}', id="count"),
            FakeToolCall("files__whoami", "{}", id="who"),
            FakeToolCall("files__fail", '{"reason": "disk full"}', id="fail"),
        ]
        h.fake.script("mcp-model", Reply(tool_calls=calls), Reply(text=["done"]))
        events = await h.events(await h.submit("mcp", "go"))
        assert types_of(events)[-1] == "execution.completed"
        first, second = h.fake.bodies("mcp-model")
        offered = {t["function"]["name"]: t["function"] for t in first["tools"]}
        assert {"calculator", "files__add", "files__count", "files__fail", "files__whoami", "files__sleep"} <= set(offered)
        assert offered["files__add"]["parameters"]["properties"]["a"]["type"] == "integer"  # the server's own JSON Schema
        assert offered["files__add"]["description"] == "Add two integers."
        ends = completed(events)
        assert ends["add"]["result"] == {"result": 5} and ends["add"]["error"] is None
        assert ends["count"]["result"] == {"result": "counted to 3"}
        assert ends["who"]["result"] == {"result": "Bearer tenant-a"}  # the tenant's own secret, from settings
        assert ends["fail"]["result"] is None and "disk full" in ends["fail"]["error"]  # an error result, for the model
        progress = [e for e in events if e["type"] == "tool.call.progress" and e["call_id"] == "count"]
        assert [(e["progress"], e["total"], e["detail"], e["status"]) for e in progress] == [
            (1.0, 3.0, "step 1 of 3", "progress"),
            (2.0, 3.0, "step 2 of 3", "progress"),
            (3.0, 3.0, "step 3 of 3", "progress"),
        ]
        assert all(e["tool"] == "files__count" for e in progress)
        assert tool_messages(second)["add"] == {"result": {"result": 5}}
        assert "disk full" in tool_messages(second)["fail"]["error"]


async def test_a_server_that_is_down_is_a_notice_for_the_model_and_the_execution_goes_on(kafka_settings: KafkaSettings) -> None:
    agent = http_agent(f"http://127.0.0.1:{DOWN_PORT}/mcp")
    async with running_executor(
        kafka_settings, agents={"mcp": agent}, allow_private_tool_urls=True, mcp_secrets=SECRETS, mcp_connect_timeout_s=2
    ) as h:
        h.fake.script("mcp-model", Reply(tool_calls=[FakeToolCall("calculator", '{"expression": "1+1"}', id="c")]), Reply(text=["ok"]))
        events = await h.events(await h.submit("mcp", "go"))
        assert types_of(events)[-1] == "execution.completed"
        body = h.fake.bodies("mcp-model")[0]
        assert [t["function"]["name"] for t in body["tools"]] == ["calculator"]
        notices = [m["content"] for m in body["messages"] if m["role"] == "system" and "MCP server 'files'" in m["content"]]
        assert len(notices) == 1 and "not available" in notices[0] and "unavailable" in notices[0], notices


async def test_a_server_that_went_down_is_a_clear_tool_error_and_its_session_is_reopened_when_it_is_back(
    kafka_settings: KafkaSettings,
) -> None:
    agent = http_agent(f"http://127.0.0.1:{PORT}/mcp")
    async with contextlib.AsyncExitStack() as server:
        await server.enter_async_context(serve(app(), port=PORT))
        async with running_executor(
            kafka_settings, agents={"mcp": agent}, allow_private_tool_urls=True, mcp_secrets=SECRETS, mcp_connect_timeout_s=2
        ) as h:
            add = Reply(tool_calls=[FakeToolCall("files__add", '{"a": 1, "b": 1}', id="add")])
            h.fake.script("mcp-model", add, Reply(text=["one"]))
            assert completed(await h.events(await h.submit("mcp", "go")))["add"]["result"] == {"result": 2}
            # A call that times out (the harness's tool timeout is 0.5 s) leaves the session usable.
            h.fake.script("mcp-model", Reply(tool_calls=[FakeToolCall("files__sleep", '{"seconds": 5}', id="s")]), add, Reply(text=["x"]))
            events = await h.events(await h.submit("mcp", "go"))
            assert "timed out" in (completed(events)["s"]["error"] or "") and completed(events)["add"]["result"] == {"result": 2}
            assert h.executor.mcp.opened == 1  # one session for the listing and every call so far
            await server.aclose()  # the server goes away; its tools were listed

            h.fake.script("mcp-model", add, Reply(text=["two"]))
            events = await h.events(await h.submit("mcp", "go"))
            assert types_of(events)[-1] == "execution.completed"
            error = completed(events)["add"]["error"]
            assert error is not None and "MCP server 'files'" in error and ("unreachable" in error or "unavailable" in error), error

            async with serve(app(), port=PORT):  # back (a new process would be the same: a new session)
                h.fake.script("mcp-model", add, Reply(text=["three"]))
                events = await h.events(await h.submit("mcp", "go"))
                assert completed(events)["add"]["result"] == {"result": 2}
                assert h.executor.mcp.opened == 2  # the dead session was replaced by a new one


async def test_stdio_server_runs_as_a_subprocess_with_its_secret_in_its_environment(kafka_settings: KafkaSettings) -> None:
    local = McpServer(name="local", command=sys.executable, args=("-m", "tests.fakes.mcp_server"), secret_env={"MCP_TOKEN": "local-token"})
    agent = AgentSpec(name="stdio", provider="openai", model="stdio-model", tools=(), mcp_servers=(local,))
    secrets = {"local-token": SecretStr("from-settings")}
    async with running_executor(kafka_settings, agents={"stdio": agent}, mcp_secrets=secrets, mcp_connect_timeout_s=20) as h:
        calls = [FakeToolCall("local__whoami", "{}", id="who"), FakeToolCall("local__count", '{"n": 2}', id="count")]
        h.fake.script("stdio-model", Reply(tool_calls=calls), Reply(text=["done"]))
        events = await h.events(await h.submit("stdio", "go"), timeout=40)
        assert types_of(events)[-1] == "execution.completed"
        ends = completed(events)
        assert ends["who"]["result"] == {"result": "from-settings"}
        assert ends["count"]["result"] == {"result": "counted to 2"}
        assert [e["progress"] for e in events if e["type"] == "tool.call.progress"] == [1.0, 2.0]


async def test_tools_whose_names_or_schemas_cannot_be_offered_are_left_out_and_the_rest_stay(kafka_settings: KafkaSettings) -> None:
    odd = MCPServer("odd")

    @odd.tool(name="x" * 70, description="A name no model API takes once prefixed.")
    def long_name() -> str:
        return "never"

    @odd.tool(name="ok", description="Fine.")
    def ok() -> str:
        return "fine"

    async with (
        serve(odd.streamable_http_app()) as base,
        running_executor(
            kafka_settings,
            agents={"mcp": http_agent(f"{base}/mcp", tools=("ok", "x" * 70))},
            allow_private_tool_urls=True,
            mcp_secrets=SECRETS,
        ) as h,
    ):
        h.fake.script("mcp-model", Reply(tool_calls=[FakeToolCall("files__ok", "{}", id="ok")]), Reply(text=["done"]))
        events = await h.events(await h.submit("mcp", "go"))
        assert completed(events)["ok"]["result"] == {"result": "fine"}
        assert [t["function"]["name"] for t in h.fake.bodies("mcp-model")[0]["tools"]] == ["calculator", "files__ok"]


async def test_the_agent_service_may_not_name_a_stdio_server() -> None:
    local = McpServer(name="local", command="/bin/sh", args=("-c", "echo pwned"))
    body = AgentSpec(name="evil", mcp_servers=(local,)).model_dump_json()
    service = Starlette(routes=[Route("/agents/evil", lambda _: Response(body, media_type="application/json"))])
    async with serve(service) as base:
        agents = HttpAgents(base)
        try:
            with pytest.raises(AgentCatalogError, match="stdio MCP servers"):
                await agents.get("evil")
        finally:
            await agents.aclose()


async def test_the_call_carries_the_executions_trace_context_to_the_server(kafka_settings: KafkaSettings) -> None:
    install_provider("agentstream-tests")  # an SDK provider, as a service with tracing on has (once per process)
    async with (
        serve(app()) as base,
        running_executor(kafka_settings, agents={"mcp": http_agent(f"{base}/mcp")}, allow_private_tool_urls=True, mcp_secrets=SECRETS) as h,
    ):
        h.fake.script("mcp-model", Reply(tool_calls=[FakeToolCall("files__trace", "{}", id="t")]), Reply(text=["done"]))
        execution_id = await h.submit("mcp", "go")
        events = await h.events(execution_id)
        sent = completed(events)["t"]["result"]["result"]
        records = await records_of(h.kafka, h.kafka.topics.events, execution_id.encode(), until=lambda rs: len(rs) >= len(events))
    started = next(r for r in records if header(r.headers, "type") == "execution.started")
    execution_trace = header(started.headers, "traceparent")
    assert execution_trace and sent.startswith("00-"), (execution_trace, sent)
    assert sent.split("-")[1] == execution_trace.split("-")[1]  # the same trace: the MCP call is a span of the execution's
    assert sent.split("-")[2] != execution_trace.split("-")[2]  # its own span (the tool call's child)


async def test_each_tenant_calls_with_its_own_credential_over_its_own_session(kafka_settings: KafkaSettings) -> None:
    async with (
        serve(app()) as base,
        running_executor(kafka_settings, agents={"mcp": http_agent(f"{base}/mcp")}, allow_private_tool_urls=True, mcp_secrets=SECRETS) as h,
    ):
        await announce_tenant(h.producer, h.kafka, TenantRecord(tenant_id="tenant-b"))
        who = Reply(tool_calls=[FakeToolCall("files__whoami", "{}", id="who")])
        h.fake.script("mcp-model", who, Reply(text=["a"]))
        assert completed(await h.events(await h.submit("mcp", "go")))["who"]["result"] == {"result": "Bearer tenant-a"}
        h.fake.script("mcp-model", who, Reply(text=["b"]))
        request = ExecutionRequested(tenant_id="tenant-b", execution_id=uuid.uuid4().hex, agent_id="mcp", input="go")
        await h.producer.send_and_wait(h.kafka.topics.lane("standard"), key=b"tenant-b", value=encode(request))
        assert completed(await h.events(request.execution_id))["who"]["result"] == {"result": "Bearer for-everyone"}
        assert h.executor.mcp.opened == 2  # one session per credential: tenant-b never rides on tenant-a's
