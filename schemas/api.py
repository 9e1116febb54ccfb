"""HTTP request and response models of the public API."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.bounds import MAX_TOKENS, Id, JsonObject, TopicName
from schemas.events import MAX_INPUT_CHARS, Message, Role, Usage
from schemas.outputs import OutputSchema
from schemas.status import State
from schemas.topics import Priority


class ExecutionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: str = Field(min_length=1, max_length=MAX_INPUT_CHARS)
    agent: str = Field(default="default", min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.\-]+$")
    priority: Priority = "standard"
    variables: JsonObject = Field(default_factory=dict)
    history: list[Message] = Field(default_factory=list, max_length=1000)
    session_id: Id | None = None
    callback_url: str | None = Field(default=None, max_length=2048)
    reply_to: TopicName | None = Field(default=None, description="A reply topic from the tenant's allowlist")
    output_schema: OutputSchema | None = Field(default=None, description="A JSON Schema the final answer must match")


class ExecutionAccepted(BaseModel):
    execution_id: str
    status: State = "queued"
    events_url: str
    stream_url: str


class ExecutionView(BaseModel):
    execution_id: str
    agent: str
    priority: Priority
    status: State
    attempt: int
    session_id: str | None = None
    output: str | None = None
    error: str | None = None
    usage: Usage | None = None
    created_at: str
    updated_at: str
    callbacks: list[CallbackDelivery] = Field(default_factory=list)
    handed_off_to: str | None = Field(default=None, description="The agent whose answer the output is, when a handoff changed it")


class ExecutionSummary(BaseModel):
    """One row of ``GET /v1/executions``: what the task registry knows, without the output."""

    execution_id: str
    agent: str
    priority: Priority
    status: State
    attempt: int
    origin: str = Field(description="api | chat | batch | kafka | schedule: the door it came through")
    input_preview: str | None = Field(default=None, description="The first 200 characters of the input")
    session_id: str | None = None
    batch_id: str | None = None
    schedule_id: str | None = Field(default=None, description="The schedule that fired it (origin `schedule`)")
    error: str | None = None
    usage: Usage | None = None
    created_at: str
    updated_at: str


class ExecutionList(BaseModel):
    executions: list[ExecutionSummary]
    next_cursor: str | None = Field(default=None, description="Pass as `cursor` for the next (older) page; null: the last page")


class AgentInfo(BaseModel):
    name: str
    provider: str
    model: str
    tools: list[str]
    fallback: list[str] = Field(default_factory=list)
    models: list[str] = Field(default_factory=list)
    variables: list[str] = Field(description="Template variables its prompt reads: give them in `variables` (`input` and `agent` are ours)")
    max_steps: int
    structured_output: bool = Field(description="Whether the agent has an output schema of its own")
    handoffs: list[str] = Field(default_factory=list, description="Agents it may hand the conversation to (transfer_to_agent)")


class AgentList(BaseModel):
    agents: list[AgentInfo]


class ErrorBody(BaseModel):
    error: str
    detail: Any = None


class StreamCommand(BaseModel):
    """A client's message on the ``/v1/stream`` WebSocket: subscribe to an execution (after ``cursor``)
    or a session, or unsubscribe.

    Ids are any strings here: one that no id could be (``schemas.bounds.Id``) is simply not found, as
    in a URL path. The cursor is checked (``Cursor``) once the execution is known to be the caller's,
    so an error never says more about an id than "not found"."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    type: Literal["subscribe", "unsubscribe"]
    execution_id: str | None = Field(default=None, max_length=100_000)
    session_id: str | None = Field(default=None, max_length=100_000)
    cursor: Any = None


# -- sessions and chat ------------------------------------------------------------------------

SessionPolicy = Literal["reject", "enqueue", "interrupt"]
SessionRunState = Literal["idle", "running"]
MessageStatus = Literal["done", "pending"]
DeliveryState = Literal["pending", "delivered", "failed"]
TaskKind = Literal["execution", "job"]
UsageGroup = Literal["tenant", "agent", "session"]


class SessionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    agent: str = Field(default="default", min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.\-]+$")
    # What a chat message does while the session's previous one still runs (default: the server's).
    policy: SessionPolicy | None = None
    metadata: JsonObject = Field(default_factory=dict)


class SessionState(BaseModel):
    session_id: str
    agent: str
    policy: SessionPolicy
    state: SessionRunState
    active_execution_id: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    created_at: str
    updated_at: str


class SessionList(BaseModel):
    sessions: list[SessionState]
    next_cursor: str | None = Field(default=None, description="Pass as `cursor` for the next (older) page; null: the last page")


class ToolCallRecord(BaseModel):
    call_id: str
    tool: str
    arguments: Any = None
    result: Any = None
    error: str | None = None


class SessionMessage(BaseModel):
    seq: int
    role: Role
    content: str
    name: str | None = None
    execution_id: str | None = None
    status: MessageStatus = "done"
    tool_calls: list[ToolCallRecord] | None = None
    created_at: str


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    content: str = Field(min_length=1, max_length=MAX_INPUT_CHARS)
    variables: JsonObject = Field(default_factory=dict)
    priority: Priority = "standard"
    callback_url: str | None = Field(default=None, max_length=2048)
    instructions: str | None = Field(default=None, max_length=200_000, description="System instructions after the agent's prompt")
    output_schema: OutputSchema | None = Field(default=None, description="A JSON Schema the final answer must match")
    params: dict[str, Any] = Field(default_factory=dict, max_length=32, description="Model parameters over the agent's")
    model: str | None = Field(default=None, max_length=128, description="One of the agent's `models` instead of its own")


class ChatResponse(BaseModel):
    session_id: str
    # None when the message was enqueued behind the running execution (policy "enqueue").
    execution_id: str | None
    status: Literal["queued", "enqueued"]
    message_seq: int
    interrupted_execution_id: str | None = None
    events_url: str | None = None
    stream_url: str = "/v1/stream"


# -- cancel, batches, jobs, usage -------------------------------------------------------------


class CancelResponse(BaseModel):
    execution_id: str
    status: str
    cancel_requested: bool


class BatchItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: str = Field(min_length=1, max_length=MAX_INPUT_CHARS)
    agent: str = Field(default="default", min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.\-]+$")
    variables: JsonObject = Field(default_factory=dict)
    custom_id: str | None = Field(default=None, max_length=128)


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[BatchItem] = Field(min_length=1)
    priority: Priority = "batch"
    callback_url: str | None = Field(default=None, max_length=2048)


class BatchAccepted(BaseModel):
    batch_id: str
    execution_ids: list[str]
    status: Literal["running"] = "running"


class BatchResult(BaseModel):
    execution_id: str
    custom_id: str | None = None
    status: str
    output: str | None = None
    error: str | None = None
    usage: Usage | None = None


class CallbackDelivery(BaseModel):
    delivery_id: str
    url: str
    state: DeliveryState
    attempts: int
    last_status: int | None = None
    last_error: str | None = None
    next_attempt_at: str | None = None


class BatchView(BaseModel):
    batch_id: str
    status: Literal["running", "completed"]
    priority: Priority
    total: int
    counts: dict[str, int]
    results: list[BatchResult]
    callbacks: list[CallbackDelivery] = Field(default_factory=list)
    created_at: str
    completed_at: str | None = None


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    service: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.\-]+$")
    job_id: str | None = Field(default=None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    agent: str = Field(default="default", min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.\-]+$")
    session_id: Id | None = None
    timeout_s: float | None = Field(default=None, gt=0, le=86_400)


class TaskUsage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached: bool = False  # answered from the orchestrator's result cache: it cost nothing


class TaskView(BaseModel):
    task_id: str
    kind: TaskKind
    service: str | None = None
    agent: str
    session_id: str | None = None
    batch_id: str | None = None
    status: str
    deadline: str
    result: Any = None
    output: str | None = None
    error: str | None = None
    created_at: str
    updated_at: str
    usage: TaskUsage | None = None  # a job's: the service's tokens, or zero and ``cached`` for a result cache hit


class UsageRow(BaseModel):
    tenant: str | None = None
    agent: str | None = None
    session: str | None = None
    executions: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class UsageReport(BaseModel):
    group_by: UsageGroup
    since: str | None = None
    until: str | None = None
    rows: list[UsageRow]


# -- admin ------------------------------------------------------------------------------------


class TenantLimits(BaseModel):
    model_config = ConfigDict(extra="forbid")

    requests_per_minute: int | None = Field(default=None, ge=0, le=MAX_TOKENS)
    tokens_per_minute: int | None = Field(default=None, ge=0, le=MAX_TOKENS)
    concurrent: int | None = Field(default=None, ge=0, le=MAX_TOKENS)


class TenantCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenant_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    name: str = Field(default="", max_length=200)
    limits: TenantLimits = Field(default_factory=TenantLimits)


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="", max_length=200)


class ApprovalRequest(BaseModel):
    """``POST /v1/executions/{id}/approvals/{call_id}``: the decision on a tool call waiting for approval."""

    model_config = ConfigDict(extra="forbid")

    decision: Literal["approve", "reject"]
    reason: str = Field(default="", max_length=4096)
    arguments: JsonObject | None = None  # approve with these arguments instead of the model's


class ApprovalResponse(BaseModel):
    execution_id: str
    call_id: str
    decision: Literal["approve", "reject"]
    reason: str = ""
    arguments: dict[str, Any] | None = None
    by: Literal["user", "deadline"] = "user"


class InputReply(BaseModel):
    """``POST /v1/executions/{id}/inputs/{call_id}``: the user's answer to an ``ask_user`` question."""

    model_config = ConfigDict(extra="forbid")

    text: str = Field(max_length=MAX_INPUT_CHARS)


class InputAnswer(BaseModel):
    execution_id: str
    call_id: str
    text: str
    by: Literal["user", "deadline"] = "user"
