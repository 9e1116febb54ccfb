"""Agents name MCP servers in the agents file; what cannot work is refused when the file is read."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from pydantic import SecretStr

from schemas.agents import AgentSpec, McpServer
from services.common.agents import AgentCatalogError, load_agents
from services.executor.mcptools import McpTools
from services.executor.settings import ExecutorSettings

FILE = """
agents:
  researcher:
    provider: openai
    model: gpt-4o-mini
    tools: [calculator]
    mcp_servers:
      - name: github
        url: https://mcp.example.com/mcp
        secret_headers: {Authorization: github-token}
      - name: files
        command: npx
        args: ["-y", "@modelcontextprotocol/server-filesystem", "/srv/docs"]
        tools: [read_file, list_directory]
"""


def test_the_agents_file_names_http_and_stdio_servers(tmp_path: Path) -> None:
    path = tmp_path / "agents.yaml"
    path.write_text(FILE)
    [github, files] = load_agents(path)["researcher"].mcp_servers
    assert github.url == "https://mcp.example.com/mcp" and github.secret_headers == {"Authorization": "github-token"}
    assert files.stdio and files.command == "npx" and files.tools == ("read_file", "list_directory")


@pytest.mark.parametrize(
    ("server", "problem"),
    [
        ("{name: x, url: 'http://a/mcp', command: cat}", "either url"),
        ("{name: x}", "either url"),
        ("{name: x, url: 'http://a/mcp', args: [a]}", "for stdio servers"),
        ("{name: x, command: cat, headers: {A: b}}", "for HTTP servers"),
        ("{name: x, url: 'http://a/mcp', headers: {'Bad Header': b}}", "not an HTTP header name"),
        ("{name: 'a.b', url: 'http://a/mcp'}", "name"),
        ("{name: x, url: 'http://a/mcp', secret_headers: {A: 'no spaces'}}", "not a secret name"),
    ],
)
def test_what_cannot_work_is_refused_when_the_file_is_read(tmp_path: Path, server: str, problem: str) -> None:
    path = tmp_path / "agents.yaml"
    path.write_text(f"agents:\n  a:\n    mcp_servers: [{server}]\n")
    with pytest.raises(AgentCatalogError, match=problem):
        load_agents(path)


def test_two_servers_of_one_agent_cannot_share_a_name(tmp_path: Path) -> None:
    path = tmp_path / "agents.yaml"
    path.write_text("agents:\n  a:\n    mcp_servers: [{name: x, url: 'http://a/mcp'}, {name: x, command: cat}]\n")
    with pytest.raises(AgentCatalogError, match="share a name"):
        load_agents(path)


async def test_a_secret_that_is_not_configured_makes_the_server_unavailable_with_that_reason() -> None:
    server = McpServer(name="gh", url="https://mcp.example.com/mcp", secret_headers={"Authorization": "gh-token"})
    agent = AgentSpec(name="a", mcp_servers=(server,))
    mcp = McpTools(ExecutorSettings(mcp_secrets={"other-tenant/gh-token": SecretStr("Bearer not-yours")}))
    try:
        tools, notices = await mcp.tools_for(agent, "tenant-a")
    finally:
        await mcp.aclose()
    assert tools == {} and mcp.opened == 0
    assert len(notices) == 1 and "secret 'gh-token' is not configured" in notices[0]


async def test_a_server_that_accepts_but_never_answers_is_unavailable_after_the_connect_timeout() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)  # takes the request, never answers
        await reader.read()  # until the client gives up and closes
        writer.close()

    listener = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    agent = AgentSpec(name="a", mcp_servers=(McpServer(name="mute", url=f"http://127.0.0.1:{port}/mcp"),))
    mcp = McpTools(ExecutorSettings(allow_private_tool_urls=True, mcp_connect_timeout_s=0.5))
    try:
        tools, notices = await mcp.tools_for(agent, "tenant-a")
    finally:
        await mcp.aclose()
        listener.close()
        await listener.wait_closed()
    assert tools == {} and len(notices) == 1 and "did not answer within 0.5s" in notices[0], notices
