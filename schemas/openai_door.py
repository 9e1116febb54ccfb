"""The OpenAI-compatible door's request fields (what it accepts) and the outline of what it returns.

The door validates every request with these models (types and bounds; a 400 naming the field),
then checks what a type cannot say (roles, the last message, schemas) in ``services/orchestrator/openai/``;
the fields it accepts are exactly these models' fields, and the OpenAPI document shows them.
What it returns is built with the official ``openai`` types.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class ChatCompletionRequest(BaseModel):
    model: str = Field(description="An agent's name, or `agent:model` for one of the models the agent allows")
    messages: list[dict[str, Any]] = Field(
        max_length=1000, description="system / developer / user / assistant text messages; the last is the user's input"
    )
    stream: bool | None = None
    stream_options: dict[str, Any] | None = Field(default=None, description="`include_usage`")
    response_format: dict[str, Any] | None = Field(default=None, description="text, json_object or json_schema (validated, retried once)")
    tool_choice: Literal["auto", "none"] | None = Field(
        default=None, description="none: one model turn without the agent's prompt and tools"
    )
    metadata: dict[str, str] | None = Field(default=None, description="`priority`: critical | standard | batch")
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    stop: str | list[str] | None = Field(default=None, max_length=4)
    seed: int | None = Field(default=None, ge=-(2**63), lt=2**63)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    user: str | None = Field(default=None, max_length=256, description="accepted, not used")
    n: Literal[1] | None = None
    store: bool | None = Field(default=None, description="accepted, not used: every execution is in the log")


class ResponseCreateRequest(BaseModel):
    model: str = Field(description="An agent's name, or `agent:model` for one of the models the agent allows")
    input: str | list[dict[str, Any]] = Field(max_length=200_000, description="text, or message items; the last is the user's input")
    instructions: str | None = Field(default=None, max_length=200_000, description="A system message after the agent's prompt")
    stream: bool | None = None
    background: bool | None = Field(default=None, description="answer at once (queued); poll, stream or cancel later")
    previous_response_id: str | None = Field(default=None, max_length=133, description="continue that conversation (a session)")
    store: bool | None = Field(default=None, description="false: no session, cannot be continued")
    metadata: dict[str, str] | None = Field(default=None, description="`priority`: critical | standard | batch")
    text: dict[str, Any] | None = Field(default=None, description="`format`: text, json_object or json_schema")
    tool_choice: Literal["auto", "none"] | None = Field(default=None, description="none (with store=false): one model turn, no tools")
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    max_output_tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    truncation: Literal["disabled"] | None = None
    parallel_tool_calls: bool | None = Field(default=None, description="accepted: the agent's tool calls of one turn run concurrently")
    user: str | None = Field(default=None, max_length=256, description="accepted, not used")


class ChatCompletionObject(BaseModel):
    """``chat.completion`` (streamed: ``chat.completion.chunk`` events, then ``[DONE]``)."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[dict[str, Any]]
    usage: dict[str, int]


class ResponseObject(BaseModel):
    """``response`` (streamed: Responses events whose ``sequence_number`` is the resume cursor)."""

    id: str
    object: Literal["response"] = "response"
    created_at: float
    model: str
    status: Literal["queued", "in_progress", "completed", "failed", "cancelled"]
    output: list[dict[str, Any]]
    usage: dict[str, Any] | None = None
    error: dict[str, Any] | None = None


class ModelObject(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]


class ResponseDeleted(BaseModel):
    id: str
    object: Literal["response.deleted"] = "response.deleted"
    deleted: bool
