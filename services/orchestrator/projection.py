"""The task registry as a projection of the log: a 202 waits for Kafka only.

An accepted execution's ``queued`` snapshot on the status topic carries its ``Intake`` (callback,
origin, batch, deadline, input preview, the plan calls made before submission). ``Projection``, a
group reader on the status topic with its own consumer group, writes the rows: one transaction per
fetched batch (group commit), insert-if-absent, so a replay after a crash or a rebalance is
harmless, and offsets are committed only after the batch's transaction (``Reader``'s
``before_commit``). A crash between the acknowledgement and the projection leaves nothing
half-done: the projection catches up from its committed offset.

An execution's end may arrive (events topic, another reader) before its row: ``ensure_row`` creates
the row from the status view in the end's own transaction (``finalize``), so an end is never lost
nor applied to nothing (the view knows every execution accepted here at once: it is applied at
submit). An id the view does not know, or knows without its intake, is not ours here, and ignored:
the view keeps an intake once it has seen one (snapshots of one execution share a partition, so the
queued snapshot with the intake comes before any other), so one it lacks now will never come, and
waiting for it would hold back every record behind a forged one (the reader fuzz).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from schemas.status import ExecutionStatus
from services.common.errors import PoisonRecord
from services.common.reader import Reader
from services.common.sources import Batches, Record, open_group
from services.common.statusview import StatusView
from services.orchestrator.cancel import WITHDRAWN
from services.orchestrator.store import tasks
from services.orchestrator.store.tables import service_calls
from services.orchestrator.store.tables import tasks as tasks_table
from services.orchestrator.store.tasks import Task
from services.orchestrator.transient import transient

if TYPE_CHECKING:
    from services.orchestrator.lifecycle import Lifecycle

log = logging.getLogger(__name__)


def _row(status: ExecutionStatus) -> dict[str, Any]:
    intake = status.intake
    assert intake is not None
    return {
        "id": status.execution_id,
        "kind": "execution",
        "origin": intake.origin,
        "tenant_id": status.tenant_id,
        "session_id": status.session_id,
        "agent_id": status.agent_id,
        "service": None,
        "batch_id": intake.batch_id,
        "custom_id": intake.custom_id,
        "priority": status.priority,
        "state": "queued",
        "deadline": intake.deadline,
        "callback_url": intake.callback_url,
        "created_at": intake.accepted_at,
        "updated_at": intake.accepted_at,
        "input_preview": intake.input_preview,
    }


def _calls(status: ExecutionStatus) -> list[dict[str, Any]]:
    intake = status.intake
    assert intake is not None
    base: dict[str, Any] = {
        "execution_id": status.execution_id,
        "tenant_id": status.tenant_id,
        "job_id": None,
        "request_id": None,
        "meta": None,
    }
    calls = [
        base
        | {"kind": c.kind, "target": c.target, "outcome": c.outcome, "detail": c.detail, "started_at": c.started_at, "ended_at": c.ended_at}
        for c in intake.plan
    ]
    calls.append(
        base
        | {
            "kind": "execution",
            "target": status.agent_id,
            "outcome": "pending",
            "detail": None,
            "started_at": intake.accepted_at,
            "ended_at": None,
        }
    )
    return calls


async def project_rows(conn: AsyncConnection, statuses: Sequence[ExecutionStatus]) -> int:
    """Insert the rows (and plan rows) of these snapshots' executions unless they exist: one
    statement for the rows, one for the plans, whatever their number. Returns how many were new.
    Idempotent: a plan is written only with its new row (``RETURNING`` names the rows inserted)."""
    fresh = {s.execution_id: s for s in statuses if s.intake is not None}
    if not fresh:
        return 0
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(tasks_table).on_conflict_do_nothing(index_elements=["id"]).returning(tasks_table.c.id)
    inserted = [row[0] for row in await conn.execute(stmt, [_row(s) for s in fresh.values()])]
    calls = [call for execution_id in inserted for call in _calls(fresh[execution_id])]
    if calls:
        await conn.execute(service_calls.insert(), calls)
    return len(inserted)


async def ensure_row(conn: AsyncConnection, status: ExecutionStatus) -> bool:
    """``project_rows`` of one execution: True if its row was inserted now."""
    return await project_rows(conn, [status]) == 1


async def ensure_row_from_view(conn: AsyncConnection, view: StatusView, execution_id: str) -> bool:
    """``ensure_row`` from what the status view knows. An execution the view does not know, or knows
    without its intake (a forged snapshot, or one whose queued snapshot was compacted away), is none
    of ours: nothing to write, False. Not retried: the intake will not come later, and an unknown id
    must not hold back the records behind it for the retries' 16 s."""
    status = view.get(execution_id)
    if status is None or status.intake is None:
        return False
    return await ensure_row(conn, status)


async def row_of(conn: AsyncConnection, view: StatusView, execution_id: str, *, tenant_id: str | None = None) -> Task | None:
    """The task's row; for a live execution not projected yet, written now from the status view
    (read-repair, idempotent like the projection), so a read right after the 202 finds it."""
    task = await tasks.get(conn, execution_id, tenant_id=tenant_id)
    if task is not None:
        return task
    status = view.get(execution_id)
    if status is None or status.intake is None or (tenant_id is not None and status.tenant_id != tenant_id):
        return None
    if status.terminal:
        return None  # its end wrote the row (finalize): missing now means deleted, not to be brought back
    await ensure_row(conn, status)
    return await tasks.get(conn, execution_id, tenant_id=tenant_id)


def live_task(view: StatusView, execution_id: str, *, tenant_id: str | None = None) -> Task | None:
    """The row an accepted execution will have, from the status view, for reads right after the 202
    (before the projection wrote it). None if the view does not know it (or not for this tenant)."""
    status = view.get(execution_id)
    if status is None or status.intake is None or (tenant_id is not None and status.tenant_id != tenant_id):
        return None
    intake = status.intake
    return Task(
        id=status.execution_id,
        kind="execution",
        origin=intake.origin,
        tenant_id=status.tenant_id,
        session_id=status.session_id,
        agent_id=status.agent_id,
        service=None,
        batch_id=intake.batch_id,
        custom_id=intake.custom_id,
        priority=status.priority,
        state=status.state,
        deadline=intake.deadline,
        callback_url=intake.callback_url,
        output=status.output,
        result=None,
        error=status.error,
        usage=status.usage.model_dump() if status.usage is not None else None,
        created_at=intake.accepted_at,
        updated_at=status.updated_at.timestamp(),
        attempt=status.attempt,
        input_preview=intake.input_preview,
    )


class Projection:
    """Writes the task registry from the status topic (see the module's docstring)."""

    name = "projection"

    def __init__(self, lifecycle: Lifecycle, *, group: str | None = None, retry_first_s: float = 0.2, retry_max_s: float = 5.0) -> None:
        self._lifecycle = lifecycle
        kafka = lifecycle.settings.kafka
        self._topic = kafka.topics.status
        self._group = group or f"{kafka.topic_prefix}orchestrator-projection"
        self._pending: list[tuple[Record, ExecutionStatus]] = []
        self._retry_first_s = retry_first_s
        self._retry_max_s = retry_max_s
        self.projected = 0  # rows this reader inserted (a replayed snapshot inserts none)
        self.applied = 0  # snapshots whose batch transaction committed (inserted or already there)
        self.reader: Reader | None = None

    async def start(self) -> None:
        kafka = self._lifecycle.settings.kafka
        client_id = f"orchestrator-{self.name}"
        source = await open_group(kafka, self._topic, group=self._group, client_id=client_id)
        self.reader = Reader(
            self.name,
            source,
            self._collect,
            topics=kafka.topics,
            dlq=self._lifecycle.producer,
            transient=transient,
            max_records=250,  # a batch's decode and rows stall the event loop the HTTP requests share
            before_commit=self._flush,
            reopen=lambda: open_group(kafka, self._topic, group=self._group, client_id=client_id),
        )
        self.reader.start()

    async def stop(self) -> None:
        reader, self.reader = self.reader, None
        if reader is not None:
            await reader.stop()
        self._pending.clear()

    def _collect(self, record: Record) -> None:
        # Only decoding here (a bad record is parked at once); the writes wait for the whole batch.
        if record.value is None or (b'"intake"' not in record.value and b'"withdrawn"' not in record.value):
            return  # a tombstone, or a snapshot that adds nothing to the row (running, terminal)
        try:
            status = ExecutionStatus.model_validate_json(record.value)
        except ValidationError as exc:
            raise PoisonRecord(f"invalid status snapshot: {exc}") from exc
        if status.intake is not None or _withdrawn(status):
            self._pending.append((record, status))

    async def _flush(self, _batches: Batches) -> None:
        pending, self._pending = self._pending, []
        if not pending:
            return
        delay = self._retry_first_s
        while True:  # the store down or locked: wait for it, never commit past rows not written
            try:
                await self._write(pending)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not transient(exc):
                    await self._write_each(pending)
                    return
                log.warning("projection: the store failed (%s); writing %d rows again in %.1fs", exc, len(pending), delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._retry_max_s)

    async def _write(self, pending: list[tuple[Record, ExecutionStatus]]) -> None:
        # A withdrawn snapshot always follows its queued one (one key, one partition): insert, then delete.
        withdrawn = [status.execution_id for _, status in pending if _withdrawn(status)]
        async with self._lifecycle.store.begin() as conn:
            inserted = await project_rows(conn, [status for _, status in pending if not _withdrawn(status)])
            if withdrawn:
                await tasks.delete(conn, withdrawn)
                await conn.execute(service_calls.delete().where(service_calls.c.execution_id.in_(withdrawn)))
        self.projected += inserted
        self.applied += len(pending)

    async def _write_each(self, pending: list[tuple[Record, ExecutionStatus]]) -> None:
        # A data error in one row failed the batch's transaction: one transaction a row, the bad one parked.
        assert self.reader is not None
        for record, status in pending:
            try:
                await self._write([(record, status)])
            except Exception as exc:
                await self.reader.park(record, f"cannot project: {type(exc).__name__}: {exc}")


def _withdrawn(status: ExecutionStatus) -> bool:
    return status.terminal and bool(status.extra.get(WITHDRAWN))
