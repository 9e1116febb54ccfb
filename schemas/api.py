"""HTTP request and response models of the public API."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from schemas.events import Message, Usage
from schemas.status import State
from schemas.topics import Priority


class ExecutionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: str = Field(min_length=1, max_length=200_000)
    agent: str = Field(default="default", min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.\-]+$")
    priority: Priority = "standard"
    variables: dict[str, Any] = Field(default_factory=dict)
    history: list[Message] = Field(default_factory=list, max_length=1000)
    session_id: str | None = Field(default=None, max_length=128)


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


class ErrorBody(BaseModel):
    error: str
    detail: Any = None
