"""What an external service reports when a job ends: over ``/ws/task_updates`` or on ``jobs.completed``.

Both paths validate the message through :class:`JobCompletion`, with the bounds of
``schemas/bounds.py``: a refused message names the field, and nothing out of range reaches the store.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.bounds import Id, JsonValue
from schemas.events import Usage


class JobCompletion(BaseModel):
    """``{"event": "job_completed", service, job_id, tenant_id, result?, error?, usage?}``, or a
    ``job.completed`` envelope (its ``type`` stands for ``event``)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    event: Literal["job_completed", "job.completed"]
    job_id: Id
    tenant_id: Id
    service: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.\-]+$")
    agent_id: Id | None = None
    result: JsonValue = None
    error: str | None = Field(default=None, max_length=10_000)
    usage: Usage | None = None

    @model_validator(mode="before")
    @classmethod
    def _type_is_event(cls, data: Any) -> Any:
        if isinstance(data, dict) and "event" not in data and "type" in data:
            return {**data, "event": data["type"]}
        return data

    def reported_usage(self) -> Usage | None:
        """``usage``, or the one a query service puts in its result; ValueError if that one is invalid."""
        if self.usage is not None:
            return self.usage
        if isinstance(self.result, dict) and self.result.get("usage") is not None:
            return Usage.model_validate(self.result["usage"])
        return None
