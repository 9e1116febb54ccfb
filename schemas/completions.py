"""A plain completion (no agent loop, no tools) that streams through the same pipe as an execution.

The orchestrator turns a :class:`CompletionRequest` into an ``execution.requested`` with
``mode="completion"``; the executor streams one model turn (``token.delta`` events, retries and
fallback included) and ends with ``execution.completed``, from which :class:`CompletionResponse` is made.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from schemas.bounds import JsonObject
from schemas.events import MAX_INPUT_CHARS, ExecutionCompleted, ExecutionRequested, Message, Usage
from schemas.topics import Priority


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: str = Field(min_length=1, max_length=MAX_INPUT_CHARS)
    agent: str = Field(default="default", min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.\-]+$")  # provider, model, fallback
    messages: list[Message] = Field(default_factory=list, max_length=1000)  # earlier turns, system prompt included
    params: JsonObject = Field(default_factory=dict)  # temperature, max_tokens, ... over the agent's
    priority: Priority = "standard"

    def to_requested(self, *, tenant_id: str, execution_id: str, session_id: str | None = None) -> ExecutionRequested:
        return ExecutionRequested(
            tenant_id=tenant_id,
            execution_id=execution_id,
            session_id=session_id,
            agent_id=self.agent,
            input=self.input,
            priority=self.priority,
            history=tuple(self.messages),
            mode="completion",
            params=self.params,
        )


class CompletionResponse(BaseModel):
    execution_id: str
    output: str
    usage: Usage = Field(default_factory=Usage)

    @classmethod
    def from_event(cls, event: ExecutionCompleted) -> CompletionResponse:
        return cls(execution_id=event.execution_id, output=event.output, usage=event.usage)
