"""Topic names: the only place they are spelled. A prefix (default ``agentstream.``) scopes them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Priority = Literal["critical", "standard", "batch"]
PRIORITIES: tuple[Priority, ...] = ("critical", "standard", "batch")


@dataclass(frozen=True)
class Topics:
    prefix: str = "agentstream."

    def lane(self, priority: Priority) -> str:
        return f"{self.prefix}executions.{priority}"

    @property
    def lanes(self) -> tuple[str, ...]:
        return tuple(self.lane(p) for p in PRIORITIES)

    @property
    def events(self) -> str:
        return f"{self.prefix}executions.events"

    @property
    def control(self) -> str:
        return f"{self.prefix}executions.control"

    @property
    def status(self) -> str:
        return f"{self.prefix}executions.status"

    @property
    def jobs_completed(self) -> str:
        return f"{self.prefix}jobs.completed"

    @property
    def jobs_requested(self) -> str:
        """Executors -> orchestrator: ``job.requested`` (key execution_id)."""
        return f"{self.prefix}jobs.requested"

    @property
    def jobs_updates(self) -> str:
        """Orchestrator -> executors: ``job.updated`` of delegated jobs (key execution_id); every executor tails it."""
        return f"{self.prefix}jobs.updates"

    @property
    def ingress(self) -> str:
        """Producers other than the orchestrator -> orchestrator: signed ``execution.requested`` (key tenant_id)."""
        return f"{self.prefix}executions.ingress"

    @property
    def task_updates(self) -> str:
        """Orchestrator replicas -> each other: ``task.updated`` for ``/v1/tasks/stream`` (key tenant_id)."""
        return f"{self.prefix}tasks.updates"

    @property
    def cache_invalidations(self) -> str:
        """Orchestrator replicas -> each other: ``cache.invalidated`` of one tenant's cached results (key tenant_id)."""
        return f"{self.prefix}cache.invalidations"

    @property
    def dlq(self) -> str:
        return f"{self.prefix}dlq"

    @property
    def tenants(self) -> str:
        """Orchestrator -> executors: ``TenantRecord`` per tenant (key tenant_id), compacted; a tombstone removes one."""
        return f"{self.prefix}tenants"

    @property
    def schedules(self) -> str:
        """Orchestrator replicas: schedule definitions (key schedule id) and slot claims, compacted (schemas/schedules.py)."""
        return f"{self.prefix}schedules"

    def all(self) -> tuple[str, ...]:
        return (
            *self.lanes,
            self.events,
            self.ingress,
            self.control,
            self.status,
            self.jobs_completed,
            self.dlq,
            self.jobs_requested,
            self.jobs_updates,
            self.tenants,
            self.task_updates,
            self.cache_invalidations,
            self.schedules,
        )
