"""Workflows (issue 20): a named definition of steps (YAML beside the agents), a run's state as the
log keeps it (in the run's status snapshot, ``extra["workflow"]``), and the API's models.

A step runs an agent (``agent``) or calls the Query or Embedding service (``job``); ``needs`` orders
steps (steps whose needs are met run in parallel; a step with several needs is their join);
``when`` branches on an earlier step's output (a step whose condition is false is ``skipped``);
``input`` and the strings of ``payload`` are templates over the run's input and earlier outputs
(``{{ input }}``, ``{{ steps.NAME.output }}``, ``{{ steps.NAME.result.FIELD }}``; see
``services/orchestrator/workflows/templates.py``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from schemas.bounds import Id, JsonObject
from schemas.events import MAX_INPUT_CHARS
from schemas.topics import Priority

MAX_WORKFLOW_STEPS = 32
MAX_TEMPLATE_CHARS = 20_000
MAX_STEP_OUTPUT_CHARS = 16_000  # what a run's snapshot keeps of a step's output (and of a job's result, as JSON)
MAX_STEP_TIMEOUT_S = 86_400.0

StepName = Annotated[str, StringConstraints(min_length=1, max_length=40, pattern=r"^[A-Za-z0-9_\-]+$")]
WorkflowName = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_\-]+$")]
Template = Annotated[str, StringConstraints(max_length=MAX_TEMPLATE_CHARS)]
StepState = Literal["pending", "running", "completed", "failed", "cancelled", "timed_out", "skipped"]
RunState = Literal["running", "completed", "failed", "cancelled"]
STEP_ENDS: frozenset[str] = frozenset({"completed", "failed", "cancelled", "timed_out", "skipped"})
STEP_FAILURES: frozenset[str] = frozenset({"failed", "cancelled", "timed_out"})


class When(BaseModel):
    """A branch: the step runs only if the named earlier step's output (text, case-insensitive)
    contains, does not contain, or equals the value."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    step: StepName
    contains: Annotated[str, StringConstraints(max_length=1000)] | None = None
    not_contains: Annotated[str, StringConstraints(max_length=1000)] | None = None
    equals: Annotated[str, StringConstraints(max_length=1000)] | None = None

    @model_validator(mode="after")
    def _one_test(self) -> When:
        if sum(v is not None for v in (self.contains, self.not_contains, self.equals)) != 1:
            raise ValueError("`when` takes exactly one of contains, not_contains, equals")
        return self

    def holds(self, output: str) -> bool:
        text = output.strip().lower()
        if self.contains is not None:
            return self.contains.lower() in text
        if self.not_contains is not None:
            return self.not_contains.lower() not in text
        assert self.equals is not None
        return text == self.equals.strip().lower()


class StepSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: StepName
    agent: Id | None = None  # an agent step: runs through the executor like any execution
    job: Literal["query", "embedding"] | None = None  # a service step: delegated by the orchestrator
    input: Template = "{{ input }}"  # an agent step's input
    payload: JsonObject = Field(default_factory=dict)  # a job step's input (its strings are templates)
    needs: tuple[StepName, ...] = Field(default=(), max_length=MAX_WORKFLOW_STEPS)
    when: When | None = None
    timeout_s: float | None = Field(default=None, gt=0, le=MAX_STEP_TIMEOUT_S)

    @model_validator(mode="after")
    def _one_kind(self) -> StepSpec:
        if (self.agent is None) == (self.job is None):
            raise ValueError(f"step {self.name!r} needs exactly one of `agent` or `job`")
        return self

    @property
    def kind(self) -> Literal["agent", "query", "embedding"]:
        return self.job if self.job is not None else "agent"


class WorkflowSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: WorkflowName
    description: Annotated[str, StringConstraints(max_length=2000)] = ""
    steps: tuple[StepSpec, ...] = Field(min_length=1, max_length=MAX_WORKFLOW_STEPS)
    output: Template | None = None  # the run's output; default: the output of the last step that completed
    priority: Priority = "standard"


class StepRecord(BaseModel):
    """One step of a run as its snapshot holds it."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    state: StepState = "pending"
    task_id: str | None = None
    output: str | None = None
    result: Any = None
    error: str | None = None
    started_at: float | None = None
    ended_at: float | None = None


class RunRecord(BaseModel):
    """A run's whole state: what the run's status snapshot carries in ``extra["workflow"]``. The
    definition is copied in, so a definition changed during a run does not change the run."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    run_id: str
    tenant_id: str
    spec: WorkflowSpec
    input: str
    variables: dict[str, Any] = Field(default_factory=dict)
    concurrent: int = 0  # the tenant's concurrency limit at start (0: none), for the steps' slots
    state: RunState = "running"
    steps: dict[str, StepRecord] = Field(default_factory=dict)
    cancel_requested: bool = False
    output: str | None = None
    error: str | None = None


# -- the API -------------------------------------------------------------------------------------------
class WorkflowRunRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: Annotated[str, StringConstraints(max_length=MAX_INPUT_CHARS)] = ""
    variables: JsonObject = Field(default_factory=dict)  # handed to every agent step's prompt


class WorkflowRunAccepted(BaseModel):
    run_id: str
    workflow: str
    status_url: str
    stream_url: str = "/v1/stream"


class StepView(BaseModel):
    name: str
    kind: str
    needs: list[str]
    when: When | None = None
    state: StepState
    task_id: str | None = None
    output: str | None = None
    result: Any = None
    error: str | None = None
    started_at: float | None = None
    ended_at: float | None = None


class WorkflowRunView(BaseModel):
    run_id: str
    workflow: str
    status: str
    cancel_requested: bool
    input: str
    output: str | None = None
    error: str | None = None
    steps: list[StepView]
    edges: list[tuple[str, str]]  # (from, to): the graph
    events_partition: int | None = None
    events_start_offset: int | None = None


class WorkflowRunCancel(BaseModel):
    run_id: str
    status: str
    cancel_requested: bool
    cancelled_steps: list[str]


class WorkflowInfo(BaseModel):
    name: str
    description: str
    steps: list[str]


class WorkflowList(BaseModel):
    workflows: list[WorkflowInfo]
