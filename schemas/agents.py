"""Agent definitions: what both services agree an agent is."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from schemas.outputs import OutputSchema


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
