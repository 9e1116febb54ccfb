"""The status snapshot kept (compacted) on ``executions.status``, keyed by execution_id."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.events import Usage
from schemas.topics import Priority

State = Literal["queued", "running", "waiting", "completed", "failed", "cancelled", "timed_out"]
TERMINAL_STATES: frozenset[str] = frozenset({"completed", "failed", "cancelled", "timed_out"})
# Snapshots are written by the orchestrator and by executors; a view keeps the highest rank, so a
# late "queued" never overwrites "running", and a newer attempt wins over an older one.
# "waiting" (issue 16): parked for a tool call's approval; not terminal, after "running" of its attempt.
_RANK: dict[str, int] = {"queued": 0, "running": 1, "waiting": 2, "completed": 3, "failed": 3, "cancelled": 3, "timed_out": 3}


def _now() -> datetime:
    return datetime.now(UTC)


class PlanCall(BaseModel):
    """A service call made before submission (an orchestration plan's first rows)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    kind: str
    target: str
    outcome: str
    detail: str | None = None
    started_at: float
    ended_at: float | None = None


class Intake(BaseModel):
    """What the store's row of an accepted execution holds beyond the snapshot: written once, in the
    ``queued`` snapshot, and projected from the log into the task registry (the 202 waits for the
    log only). Later snapshots carry it over (``merged_over``)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    origin: str = "api"
    callback_url: str | None = None
    batch_id: str | None = None
    custom_id: str | None = None
    deadline: float
    input_preview: str | None = None
    accepted_at: float
    plan: tuple[PlanCall, ...] = ()
    no_cache: bool = False  # the request said ``Cache-Control: no-cache``: its service jobs skip the result cache


class ExecutionStatus(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    execution_id: str
    tenant_id: str
    agent_id: str = "default"
    session_id: str | None = None
    priority: Priority = "standard"
    state: State = "queued"
    attempt: int = 0
    events_topic: str = ""
    events_partition: int | None = None
    events_start_offset: int | None = None
    # Where the newest attempt's own ``execution.started`` is. The same as ``events_start_offset``
    # unless the attempt resumed from earlier ones (issue 16): then the events start at theirs.
    attempt_start_offset: int | None = None
    output: str | None = None
    error: str | None = None
    usage: Usage | None = None
    created_at: datetime = Field(default_factory=_now)
    updated_at: datetime = Field(default_factory=_now)
    extra: dict[str, Any] = Field(default_factory=dict)
    intake: Intake | None = None

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    def supersedes(self, other: ExecutionStatus) -> bool:
        """True if this snapshot should replace ``other`` in a view.

        An end is final. Otherwise the newer attempt wins, and within one attempt the later state: a
        snapshot of an older attempt never replaces a newer one, terminal or not, so the end an older
        attempt writes after a newer one started (a paused executor that woke up) is not the
        execution's end. Orchestrator verdicts (timed out, cancelled while queued) copy the newest
        attempt they know.
        """
        if other.terminal:
            return False
        if self.attempt != other.attempt:
            return self.attempt > other.attempt
        return self.terminal or _RANK[self.state] >= _RANK[other.state]

    def merged_over(self, other: ExecutionStatus) -> ExecutionStatus:
        """Keep fields the newer snapshot does not know (where the events start, creation time)."""
        update: dict[str, Any] = {"created_at": other.created_at}
        if self.intake is None and other.intake is not None:
            update["intake"] = other.intake
        if self.events_start_offset is None and other.events_start_offset is not None:
            update |= {
                "events_partition": other.events_partition,
                "events_start_offset": other.events_start_offset,
                "events_topic": other.events_topic,
            }
        if self.attempt_start_offset is None and other.attempt_start_offset is not None and self.attempt == other.attempt:
            update["attempt_start_offset"] = other.attempt_start_offset
        return self.model_copy(update=update)
