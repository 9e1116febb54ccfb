"""The OpenAI-compatible door's request fields (what it accepts) and the outline of what it returns.

The door checks requests field by field (``services/orchestrator/openai/``) so that every refusal
is an OpenAI-shaped 400 naming the field; the sets of accepted fields are these models' fields,
and the OpenAPI document shows them. What it returns is built with the official ``openai`` types.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class ChatCompletionRequest(BaseModel):
    model: str = Field(description="An agent's name, or `agent:model` for one of the models the agent allows")
    messages: list[dict[str, Any]] = Field(description="system / developer / user / assistant text messages; the last is the user's input")
    stream: bool | None = None
    stream_options: dict[str, Any] | None = Field(default=None, description="`include_usage`")
    response_format: dict[str, Any] | None = Field(default=None, description="text, json_object or json_schema (validated, retried once)")
    tool_choice: Literal["auto", "none"] | None = Field(
        default=None, description="none: one model turn without the agent's prompt and tools"
    )
    metadata: dict[str, str] | None = Field(default=None, description="`priority`: critical | standard | batch")
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    user: str | None = Field(default=None, description="accepted, not used")
    n: Literal[1] | None = None
    store: bool | None = Field(default=None, description="accepted, not used: every execution is in the log")


class ResponseCreateRequest(BaseModel):
    model: str = Field(description="An agent's name, or `agent:model` for one of the models the agent allows")
    input: str | list[dict[str, Any]] = Field(description="text, or message items; the last is the user's input")
    instructions: str | None = Field(default=None, description="A system message after the agent's prompt")
    stream: bool | None = None
    background: bool | None = Field(default=None, description="answer at once (queued); poll, stream or cancel later")
    previous_response_id: str | None = Field(default=None, description="continue that conversation (a session)")
    store: bool | None = Field(default=None, description="false: no session, cannot be continued")
    metadata: dict[str, str] | None = Field(default=None, description="`priority`: critical | standard | batch")
    text: dict[str, Any] | None = Field(default=None, description="`format`: text, json_object or json_schema")
    tool_choice: Literal["auto", "none"] | None = Field(default=None, description="none (with store=false): one model turn, no tools")
    temperature: float | None = None
    top_p: float | None = None
    max_output_tokens: int | None = None
    truncation: Literal["disabled"] | None = None
    parallel_tool_calls: bool | None = Field(default=None, description="accepted: the agent's tool calls of one turn run concurrently")
    user: str | None = Field(default=None, description="accepted, not used")


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
