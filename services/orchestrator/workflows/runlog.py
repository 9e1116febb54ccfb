"""How a workflow run is on the log: its events in the run's partition of the events topic (key: the
run id) and its record in ``extra["workflow"]`` of the run's snapshot on the status topic, and the
order they are written in. The driver (driver.py) decides what to write; this module writes it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaProducer
from pydantic import ValidationError

from schemas.events import Envelope, ExecutionCancelled, ExecutionCompleted, ExecutionFailed
from schemas.status import ExecutionStatus
from schemas.workflows import RunRecord
from services.common.kafka import encode, envelope_headers, status_headers
from services.common.settings import KafkaSettings
from services.common.statusview import StatusView
from services.orchestrator.workflows.steps import RUN_PREFIX, agent_label

RUN_KEY = "workflow"  # the run's record in its snapshot's ``extra``


def record_of(status: ExecutionStatus) -> RunRecord | None:
    raw = status.extra.get(RUN_KEY)
    if not isinstance(raw, dict):
        return None
    try:
        return RunRecord.model_validate(raw)
    except ValidationError:
        return None


def is_run(status: ExecutionStatus) -> bool:
    return status.execution_id.startswith(RUN_PREFIX) and RUN_KEY in status.extra


def version_of(status: ExecutionStatus) -> int:
    value = status.extra.get("version", 0)
    return value if isinstance(value, int) else 0


def envelope(run: RunRecord) -> dict[str, Any]:
    """The envelope fields of the run's own events: the run id stands for the execution id."""
    return {"tenant_id": run.tenant_id, "execution_id": run.run_id, "agent_id": agent_label(run)}


def end_event(run: RunRecord) -> Envelope:
    if run.state == "completed":
        return ExecutionCompleted(**envelope(run), output=run.output or "")
    if run.state == "cancelled":
        return ExecutionCancelled(**envelope(run), reason=run.error or "cancelled by request")
    return ExecutionFailed(**envelope(run), reason=run.error or "a step failed")


class RunLog:
    def __init__(self, producer: AIOKafkaProducer, kafka: KafkaSettings, status: StatusView) -> None:
        self._producer = producer
        self._topics = kafka.topics
        self._status = status
        self._written: dict[str, ExecutionStatus] = {}  # our newest snapshot of each open run (``current``)

    def current(self, run_id: str) -> ExecutionStatus | None:
        """The run's newest snapshot: the view's, or the one written here last if that is newer.
        The view merges snapshots of one state in the order it applies them, so our own older
        snapshot, read back from the topic after a newer one was applied, would take its place for a
        moment; ``version`` (in ``extra``) orders a run's snapshots."""
        viewed = self._status.get(run_id)
        written = self._written.get(run_id)
        if written is None or viewed is None:
            return viewed or written
        # Kept while the run is open (one snapshot per open run): the tail may still bring an older one.
        return viewed if viewed.terminal or version_of(viewed) >= version_of(written) else written

    def forget(self, run_id: str) -> None:
        self._written.pop(run_id, None)

    async def write(self, status: ExecutionStatus, run: RunRecord, events: list[Envelope]) -> None:
        """The run's events (in order, one partition), then its snapshot: a driver that stops in
        between writes them again after its restart (at least once, each with its ``seq``), never a
        snapshot whose events are missing; and the bridge's contract holds (a terminal snapshot comes
        after the end event). At the end the record goes first in a snapshot still ``running``: the
        bridge applies a terminal event to the status view by copying the snapshot it has, and a view
        takes no snapshot after an end, so that copy must already hold the final record."""
        seq = int(status.extra.get("seq", 0))
        numbered = [event.model_copy(update={"seq": seq + i + 1}) for i, event in enumerate(events)]
        seq += len(numbered)
        terminal = {"completed": "completed", "failed": "failed", "cancelled": "cancelled"}.get(run.state)
        snapshot = status.model_copy(
            update={
                "state": "running",
                "output": run.output,
                "error": run.error,
                "updated_at": datetime.now(UTC),
                "extra": {RUN_KEY: run.model_dump(mode="json"), "seq": seq, "version": version_of(status) + 1},
            }
        )
        if terminal is not None:
            await self.send_status(snapshot)
        for event in numbered:
            await self.send_event(event)
        if terminal is not None:
            snapshot = snapshot.model_copy(update={"state": terminal, "extra": {**snapshot.extra, "version": version_of(snapshot) + 1}})
        await self.send_status(snapshot)

    async def send_event(self, event: Envelope) -> Any:
        return await self._producer.send_and_wait(
            self._topics.events,
            value=encode(event),
            key=event.execution_id.encode(),
            headers=envelope_headers(event, service="orchestrator"),
        )

    async def send_status(self, status: ExecutionStatus) -> None:
        await self._producer.send_and_wait(
            self._topics.status, value=encode(status), key=status.execution_id.encode(), headers=status_headers(status, "orchestrator")
        )
        self._status.apply(status)
        if status.terminal:
            self._written.pop(status.execution_id, None)
        else:
            self._written[status.execution_id] = status
