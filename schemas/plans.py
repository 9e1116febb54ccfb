"""Orchestration plans (``GET /v1/executions/{id}/plan``): the service calls made for an execution."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

CallKind = Literal["agent_config", "history_load", "execution", "job", "late_completion"]


class ServiceCall(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    seq: int
    kind: CallKind
    target: str  # the agent, session or service
    job_id: str | None = None
    outcome: str  # pending | running | ok | completed | failed | timed_out | cancelled | ignored
    detail: str | None = None
    started_at: str
    ended_at: str | None = None
    duration_ms: float | None = None
    meta: dict[str, Any] | None = None


class OrchestrationPlan(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    execution_id: str
    calls: list[ServiceCall]
