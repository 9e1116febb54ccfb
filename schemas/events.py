"""Event envelope and every event type (design contract). Frozen, discriminated on ``type``.

Changes are additive with defaults; unknown fields are ignored; a breaking change is a new type name.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from schemas.bounds import (
    MAX_HANDOFF_REASON_CHARS,
    MAX_INT32,
    MAX_TOKENS,
    AgentName,
    Attempt,
    Cursor,
    Id,
    JsonObject,
    JsonValue,
    Seq,
    TokenCount,
    TopicName,
)
from schemas.outputs import OutputSchema
from schemas.topics import Priority

SCHEMA_VERSION = 1
MAX_INPUT_CHARS = 200_000
MAX_STEPS = 1_000  # an agent's max_steps, and a step number on the wire
MAX_TURN_TOOL_CALLS = 128  # tool calls one model turn may ask for
MAX_CALL_ID_CHARS = 256
MAX_TOOL_NAME_CHARS = 128


def _now() -> datetime:
    return datetime.now(UTC)


class Usage(BaseModel):
    """Token counts: integers from 0 to ``MAX_TOKENS`` (schemas/bounds.py); anything else is refused."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    prompt_tokens: TokenCount = 0
    completion_tokens: TokenCount = 0
    total_tokens: TokenCount = 0

    def __add__(self, other: Usage) -> Usage:
        # Saturating: the sum of many turns' valid counts stays a valid count.
        return Usage(
            prompt_tokens=min(self.prompt_tokens + other.prompt_tokens, MAX_TOKENS),
            completion_tokens=min(self.completion_tokens + other.completion_tokens, MAX_TOKENS),
            total_tokens=min(self.total_tokens + other.total_tokens, MAX_TOKENS),
        )


class Envelope(BaseModel):
    """Fields every record value carries."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    schema_version: int = SCHEMA_VERSION
    event_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    tenant_id: Id
    execution_id: Id
    session_id: Id | None = None
    agent_id: Id = "default"
    attempt: Attempt = 1
    seq: Seq = 0
    ts: datetime = Field(default_factory=_now)


Role = Literal["system", "user", "assistant", "tool"]
JobStatus = Literal["accepted", "completed", "failed", "timed_out", "cancelled"]


class Message(BaseModel):
    """One chat message of the history handed to an execution."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    role: Role
    content: str = ""
    name: str | None = None
    tool_call_id: str | None = None


class ExecutionRequested(Envelope):
    type: Literal["execution.requested"] = "execution.requested"
    input: str = Field(max_length=MAX_INPUT_CHARS)
    priority: Priority = "standard"
    variables: JsonObject = Field(default_factory=dict)
    history: tuple[Message, ...] = ()
    reply_to: TopicName | None = None
    deadline: datetime | None = None
    # "completion": one model turn over history + input, no agent system prompt, no tools.
    mode: Literal["agent", "completion"] = "agent"
    params: JsonObject = Field(default_factory=dict)  # model parameters over the agent's (completion mode)
    # The OpenAI door (issue 17): one of the agent's ``models`` instead of its own, extra system
    # instructions after the agent's prompt, and a JSON Schema the final answer must match.
    model: str | None = Field(default=None, max_length=128)
    instructions: str | None = Field(default=None, max_length=200_000)
    output_schema: OutputSchema | None = None


class ExecutionStarted(Envelope):
    type: Literal["execution.started"] = "execution.started"
    provider: str = ""
    model: str = ""
    structured: bool = False  # the final answer must match an output schema (the OpenAI door sends it whole)


class TokenDelta(Envelope):
    type: Literal["token.delta"] = "token.delta"
    text: str
    step: int = 0


class ToolCallStarted(Envelope):
    type: Literal["tool.call.started"] = "tool.call.started"
    call_id: str
    tool: str
    arguments: JsonObject = Field(default_factory=dict)
    step: int = 0


class ToolCallCompleted(Envelope):
    type: Literal["tool.call.completed"] = "tool.call.completed"
    call_id: str
    tool: str
    result: JsonValue = None
    error: str | None = None
    duration_ms: float = 0.0
    step: int = 0


class TurnToolCall(BaseModel):
    """One tool call a model turn asked for, as the model wrote it (arguments unparsed)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    id: str = Field(max_length=MAX_CALL_ID_CHARS)
    name: str = Field(max_length=MAX_TOOL_NAME_CHARS)
    arguments: str = Field(default="", max_length=MAX_INPUT_CHARS)


class TurnCompleted(Envelope):
    """A model turn that asked for tools ended: the step's checkpoint, written (and acknowledged)
    before any of its tools runs. With the step's ``tool.call.completed`` events it is what a later
    attempt rebuilds the transcript from (services/executor/checkpoint.py); clients may ignore it."""

    type: Literal["turn.completed"] = "turn.completed"
    step: int = Field(default=0, ge=0, le=MAX_STEPS)
    text: str = Field(default="", max_length=MAX_INPUT_CHARS)
    tool_calls: tuple[TurnToolCall, ...] = Field(default=(), max_length=MAX_TURN_TOOL_CALLS)
    usage: Usage = Field(default_factory=Usage)


class ExecutionResumed(Envelope):
    """This attempt continues from the events of earlier ones instead of starting over.

    Steps before ``from_step`` are done (their ``token.delta`` and tool events, written by
    ``reused_attempts``, stand); events of ``from_step`` and later written before this attempt's
    ``execution.started`` are void (a turn cut off mid-stream runs again). ``rerun_calls``: tool calls
    of the checkpointed step that had started but not completed; they run again with the same
    idempotency key. ``reused_calls``: completed tool calls whose results are reused (never run again).
    """

    type: Literal["execution.resumed"] = "execution.resumed"
    from_step: int = Field(default=0, ge=0, le=MAX_STEPS)
    previous_attempt: Attempt = 0
    reused_attempts: tuple[Attempt, ...] = Field(default=(), max_length=MAX_STEPS)
    reused_from_offset: Cursor = -1  # where the reused events start (events partition of this execution)
    reused_calls: int = Field(default=0, ge=0, le=MAX_INT32)
    rerun_calls: tuple[str, ...] = Field(default=(), max_length=MAX_TURN_TOOL_CALLS)


class ToolCallApprovalRequested(Envelope):
    """A tool call of ``step`` waits for a human's decision before it runs (the agent's ``approval``).

    The execution is ``waiting``: parked in the log, on no executor. ``POST
    /v1/executions/{id}/approvals/{call_id}`` decides; at ``deadline`` the agent's ``default`` applies."""

    type: Literal["tool.call.approval_requested"] = "tool.call.approval_requested"
    call_id: str = Field(max_length=MAX_CALL_ID_CHARS)
    tool: str = Field(max_length=MAX_TOOL_NAME_CHARS)
    arguments: JsonObject = Field(default_factory=dict)
    step: int = Field(default=0, ge=0, le=MAX_STEPS)
    deadline: datetime
    default: Literal["approve", "reject"] = "reject"


class ToolCallApprovalDecided(Envelope):
    """The decision on a tool call that waited for approval: ``approve`` (with ``arguments`` if the
    approver edited them) runs it; ``reject`` makes ``reason`` the tool's result the model sees.
    ``by``: ``user`` (posted) or ``deadline`` (the default applied). The first decision in the log wins."""

    type: Literal["tool.call.approval_decided"] = "tool.call.approval_decided"
    call_id: str = Field(max_length=MAX_CALL_ID_CHARS)
    step: int = Field(default=0, ge=0, le=MAX_STEPS)
    decision: Literal["approve", "reject"]
    reason: str = Field(default="", max_length=4096)
    arguments: JsonObject | None = None
    by: Literal["user", "deadline"] = "user"


class InputRequested(Envelope):
    """The agent asks the user (the built-in ``ask_user`` tool) and the execution waits, parked in the
    log like an approval. ``POST /v1/executions/{id}/inputs/{call_id}`` answers; at ``deadline`` the
    call ends with an error (no answer) and the model continues."""

    type: Literal["input.requested"] = "input.requested"
    call_id: str = Field(max_length=MAX_CALL_ID_CHARS)
    question: str = Field(default="", max_length=4096)
    step: int = Field(default=0, ge=0, le=MAX_STEPS)
    deadline: datetime


class InputProvided(Envelope):
    """The user's answer to an ``input.requested`` (``by`` "user"), or none by its deadline (``by`` "deadline")."""

    type: Literal["input.provided"] = "input.provided"
    call_id: str = Field(max_length=MAX_CALL_ID_CHARS)
    step: int = Field(default=0, ge=0, le=MAX_STEPS)
    text: str = Field(default="", max_length=MAX_INPUT_CHARS)
    by: Literal["user", "deadline"] = "user"


class ExecutionRestarted(Envelope):
    """A step's model call starts over (retry, or fallback to another provider).

    If ``text_discarded``, the ``token.delta`` text already sent for ``step`` is void: a client drops
    it and renders what follows instead.
    """

    type: Literal["execution.restarted"] = "execution.restarted"
    step: int = 0
    reason: str = ""
    provider: str = ""
    model: str = ""
    previous_provider: str = ""
    previous_model: str = ""
    fallback: bool = False
    text_discarded: bool = False
    delay_s: float = 0.0


class AgentHandoff(Envelope):
    """The agent handed the conversation to another (issue 20): ``to_agent`` (its prompt, model and
    tools) runs the rest of the execution, from ``step`` + 1, and its answer is the output. Written
    by the executor before the ``transfer_to_agent`` call's ``tool.call.completed``, so a resumed
    attempt (checkpoint.py) continues with ``to_agent``. The envelope's ``agent_id`` stays the
    requested agent; ``execution.completed`` names the agent that answered (``handed_off_to``)."""

    type: Literal["agent.handoff"] = "agent.handoff"
    call_id: str = Field(max_length=MAX_CALL_ID_CHARS)
    from_agent: AgentName
    to_agent: AgentName
    reason: str = Field(default="", max_length=MAX_HANDOFF_REASON_CHARS)
    step: int = Field(default=0, ge=0, le=MAX_STEPS)
    handoffs: int = Field(default=1, ge=1, le=MAX_INT32)  # how many handoffs this execution has made, this one included
    provider: str = Field(default="", max_length=128)  # what runs from here on (execution.started said the first agent's)
    model: str = Field(default="", max_length=128)


class ExecutionCompleted(Envelope):
    type: Literal["execution.completed"] = "execution.completed"
    output: str
    usage: Usage = Field(default_factory=Usage)
    # The agent whose answer ``output`` is, when a handoff (``agent.handoff``) changed it: the
    # orchestrator makes it the session's agent, so the next message runs it.
    handed_off_to: AgentName | None = None


class ExecutionFailed(Envelope):
    type: Literal["execution.failed"] = "execution.failed"
    reason: str
    retriable: bool = False


class ExecutionCancelled(Envelope):
    type: Literal["execution.cancelled"] = "execution.cancelled"
    reason: str = "cancelled by request"


class ExecutionRejected(Envelope):
    """An ingress request the orchestrator refused (invalid, over a limit, not allowed); sent to the
    request's ``reply_to`` when the tenant may use it. Nothing ran; ``retriable`` says whether the same
    request may succeed later (a rate limit) or needs changing."""

    type: Literal["execution.rejected"] = "execution.rejected"
    reason: str
    retriable: bool = False
    request_id: str = ""  # the ingress record's webhook-id


class ExecutionCancelRequested(Envelope):
    type: Literal["execution.cancel_requested"] = "execution.cancel_requested"


class JobCompleted(Envelope):
    type: Literal["job.completed"] = "job.completed"
    job_id: Id
    service: str
    result: JsonValue = None


class ToolCallProgress(Envelope):
    """Progress of a running tool call: a delegated job was requested, accepted (``job_id``), ended;
    or an MCP server's progress notification (``status`` "progress", ``progress`` of ``total``)."""

    type: Literal["tool.call.progress"] = "tool.call.progress"
    call_id: str
    tool: str
    job_id: str = ""
    status: str = ""  # requested | accepted | completed | failed | timed_out | cancelled | progress
    detail: str = ""
    step: int = 0
    progress: float | None = Field(default=None, allow_inf_nan=False)  # MCP: how far (grows with each notification)
    total: float | None = Field(default=None, allow_inf_nan=False)  # MCP: out of what, when the server knows


class JobRequested(Envelope):
    """An executor asks the orchestrator to delegate work to an external service (``jobs.requested``).

    ``request_id`` is unique per tool call attempt; the orchestrator delegates each one once.
    """

    type: Literal["job.requested"] = "job.requested"
    request_id: str
    service: str  # query | embedding
    payload: JsonObject = Field(default_factory=dict)
    call_id: str = ""
    timeout_s: float | None = None
    # Skip the orchestrator's result cache for this request (its fresh result replaces the entry).
    no_cache: bool = False


class JobUpdated(Envelope):
    """What became of a delegated job (``jobs.updates``): accepted with its ``job_id``, then one end."""

    type: Literal["job.updated"] = "job.updated"
    request_id: str
    job_id: str = ""
    service: str = ""
    status: JobStatus
    result: JsonValue = None
    error: str | None = None
    usage: Usage | None = None
    cached: bool = False  # answered from the orchestrator's result cache: no call to the service, no tokens


class WorkflowRunStarted(Envelope):
    """A workflow run began (issue 20): the first record of the run's own partition (key: the run id)."""

    type: Literal["workflow.run.started"] = "workflow.run.started"
    workflow: str
    steps: tuple[str, ...] = ()


class WorkflowStepStarted(Envelope):
    """A step of a run was submitted: ``task_id`` is its execution (follow its own events there) or job."""

    type: Literal["workflow.step.started"] = "workflow.step.started"
    step: str
    kind: str
    task_id: Id


class WorkflowStepCompleted(Envelope):
    type: Literal["workflow.step.completed"] = "workflow.step.completed"
    step: str
    task_id: Id | None = None
    output: str | None = None


class WorkflowStepFailed(Envelope):
    """A step ended without an output: failed, cancelled, timed out, or skipped (its branch not taken)."""

    type: Literal["workflow.step.failed"] = "workflow.step.failed"
    step: str
    task_id: Id | None = None
    status: str
    reason: str = ""


class WorkflowCancelRequested(Envelope):
    """A run's cancel, in the run's partition: the replica that drives the run (the events follower
    member holding that partition) applies it."""

    type: Literal["workflow.run.cancel_requested"] = "workflow.run.cancel_requested"


Event = Annotated[
    ExecutionRequested
    | ExecutionStarted
    | TokenDelta
    | ToolCallStarted
    | ToolCallCompleted
    | ExecutionRestarted
    | TurnCompleted
    | ExecutionResumed
    | ToolCallApprovalRequested
    | ToolCallApprovalDecided
    | InputRequested
    | InputProvided
    | AgentHandoff
    | ExecutionCompleted
    | ExecutionFailed
    | ExecutionCancelled
    | ExecutionRejected
    | ExecutionCancelRequested
    | JobCompleted
    | ToolCallProgress
    | JobRequested
    | JobUpdated
    | WorkflowRunStarted
    | WorkflowStepStarted
    | WorkflowStepCompleted
    | WorkflowStepFailed
    | WorkflowCancelRequested,
    Field(discriminator="type"),
]

EventAdapter: TypeAdapter[Event] = TypeAdapter(Event)

TERMINAL_TYPES = frozenset({"execution.completed", "execution.failed", "execution.cancelled"})
