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


# -- the external services' wire (``POST {service}/jobs``), shared by the orchestrator's client and
#    the reference services in ``examples/services``.
class JobSubmission(BaseModel):
    """``POST {service}/jobs``: the job id is the orchestrator's, so a retried POST names the same job."""

    job_id: str
    tenant_id: str
    service: str
    input: dict[str, Any]
    deadline: str  # ISO 8601 with its zone, e.g. 2026-01-01T00:00:00+00:00


class JobAccepted(BaseModel):
    """The service's answer (2xx): it names our job id, so we know it took this job."""

    job_id: str
    status: Literal["accepted"] = "accepted"


class QueryInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: str = Field(min_length=1, max_length=2000)
    top_k: int = Field(default=3, ge=1, le=10)


class EmbeddingInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    texts: list[str] = Field(min_length=1, max_length=64)


class Document(BaseModel):
    id: str
    text: str
    title: str = ""
    score: float = 0.0


class QueryResult(BaseModel):
    answer: str
    documents: list[Document] = Field(max_length=50)


class EmbeddingResult(BaseModel):
    model: str
    embeddings: list[list[float]] = Field(min_length=1)


SERVICE_INPUTS: dict[str, type[BaseModel]] = {"query": QueryInput, "embedding": EmbeddingInput}
