"""Agent definitions: what both services agree an agent is."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.bounds import MAX_HANDOFF_TARGETS, AgentName
from schemas.outputs import OutputSchema

MAX_MCP_SERVERS = 16
_HEADER_NAME = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,128}$"  # an HTTP token (RFC 9110)
_SECRET_NAME = r"^[A-Za-z0-9_.\-]{1,64}$"


class McpServer(BaseModel):
    """An MCP server whose tools an agent offers the model as ``{name}__{tool}``.

    Either ``url`` (streamable HTTP) or ``command`` (stdio: the executor starts it as a subprocess).
    Credentials never come from a request: ``secret_headers`` / ``secret_env`` name secrets of the
    executor's settings (``AGENTSTREAM_EXECUTOR_MCP_SECRETS``), looked up as ``{tenant}/{secret}`` first,
    then ``{secret}``, so each tenant can have its own.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,32}$")
    url: str | None = Field(default=None, max_length=2048)
    command: str | None = Field(default=None, min_length=1, max_length=1024)
    args: tuple[str, ...] = Field(default=(), max_length=64)
    env: dict[str, str] = Field(default_factory=dict, max_length=64)
    headers: dict[str, str] = Field(default_factory=dict, max_length=32)
    secret_headers: dict[str, str] = Field(default_factory=dict, max_length=32)  # header -> secret name
    secret_env: dict[str, str] = Field(default_factory=dict, max_length=32)  # variable -> secret name
    tools: tuple[str, ...] | None = Field(default=None, max_length=256)  # only these (server's names); None: all
    timeout_s: float | None = Field(default=None, gt=0, le=3600)  # per call; None: the agent's tool timeout

    @model_validator(mode="after")
    def _one_transport(self) -> McpServer:
        if (self.url is None) == (self.command is None):
            raise ValueError(f"MCP server {self.name!r}: give either url (streamable HTTP) or command (stdio), not both or neither")
        if self.command is None and (self.args or self.env or self.secret_env):
            raise ValueError(f"MCP server {self.name!r}: args, env and secret_env are for stdio servers (command)")
        if self.url is None and (self.headers or self.secret_headers):
            raise ValueError(f"MCP server {self.name!r}: headers and secret_headers are for HTTP servers (url)")
        for header in (*self.headers, *self.secret_headers):
            if not re.match(_HEADER_NAME, header):
                raise ValueError(f"MCP server {self.name!r}: {header!r} is not an HTTP header name")
        for secret in (*self.secret_headers.values(), *self.secret_env.values()):
            if not re.match(_SECRET_NAME, secret):
                raise ValueError(f"MCP server {self.name!r}: {secret!r} is not a secret name ({_SECRET_NAME})")
        return self

    @property
    def stdio(self) -> bool:
        return self.command is not None


class ApprovalPolicy(BaseModel):
    """Tool calls a human approves before they run (issue 16): ``tools`` names them, or ``"all"``.

    The execution waits (parked in the log, holding no slot) until a decision is posted or
    ``timeout_s`` passes; then ``default`` applies, as a ``tool.call.approval_decided`` event."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tools: tuple[str, ...] | Literal["all"] = Field(default="all")
    timeout_s: float = Field(default=3600.0, gt=0, le=30 * 86400)
    default: Literal["reject", "approve"] = "reject"

    def requires(self, tool: str) -> bool:
        return self.tools == "all" or tool in self.tools


class AgentSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$")
    provider: str = "scripted"
    model: str = "scripted-1"
    params: dict[str, Any] = Field(default_factory=dict)
    system_prompt: str = "You are a helpful assistant."
    tools: tuple[str, ...] = ("calculator", "clock")
    max_steps: int = Field(default=4, ge=1, le=50)
    timeout_s: float = Field(default=120.0, gt=0)  # the whole execution
    first_token_timeout_s: float | None = Field(default=None, gt=0)  # per model call; None: executor setting
    tool_timeout_s: float | None = Field(default=None, gt=0)  # per tool call; None: executor setting
    # Providers to try, in order, when the agent's own fails: "groq" or "groq:llama-3.1-8b-instant".
    fallback: tuple[str, ...] = ()
    # Other models of the same provider a request may pick (``model: "agent:model"`` on the OpenAI door).
    models: tuple[str, ...] = ()
    # A JSON Schema every final answer must match (a request's own schema takes precedence).
    output_schema: OutputSchema | None = None
    # MCP servers whose tools the model is offered besides ``tools`` (services/executor/mcptools.py).
    mcp_servers: tuple[McpServer, ...] = Field(default=(), max_length=MAX_MCP_SERVERS)
    # Tool calls that wait for a human's decision before they run (services/executor/approvals.py).
    approval: ApprovalPolicy | None = None
    # Agents this one may hand the conversation to (issue 20): the model is offered the built-in
    # ``transfer_to_agent`` tool naming them (services/executor/handoffs.py).
    handoffs: tuple[AgentName, ...] = Field(default=(), max_length=MAX_HANDOFF_TARGETS)

    @model_validator(mode="after")
    def _unique_mcp_names(self) -> AgentSpec:
        names = [server.name for server in self.mcp_servers]
        if len(names) != len(set(names)):
            raise ValueError(f"agent {self.name!r}: two MCP servers share a name: {sorted(names)}")
        if len(self.handoffs) != len(set(self.handoffs)) or self.name in self.handoffs:
            raise ValueError(f"agent {self.name!r}: handoffs must name other agents, each once: {list(self.handoffs)}")
        return self
