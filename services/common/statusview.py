"""A materialized view of the compacted ``executions.status`` topic.

Both services read it from the beginning at start and tail it: the orchestrator answers status and
ownership from it, executors learn the attempt number and whether an execution is already terminal.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from pydantic import ValidationError

from schemas.status import ExecutionStatus
from services.common.dlq import park
from services.common.kafka import encode
from services.common.settings import KafkaSettings
from services.common.tail import Batches, close_tail, open_tail, run_tail

log = logging.getLogger(__name__)


class StatusView:
    def __init__(self, settings: KafkaSettings, *, dlq: AIOKafkaProducer | None = None, name: str = "status-view") -> None:
        self._settings = settings
        self._dlq = dlq
        self._name = name
        self._topic = settings.topics.status
        self._items: dict[str, ExecutionStatus] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._end: dict[TopicPartition, int] = {}
        self._pending: set[TopicPartition] = set()
        self._caught_up = asyncio.Event()
        self._changed = asyncio.Condition()
        # Called with the first snapshot of every execution this view learns of (e.g. session followers).
        self.on_new: list[Callable[[ExecutionStatus], None]] = []

    def get(self, execution_id: str) -> ExecutionStatus | None:
        return self._items.get(execution_id)

    def for_session(self, tenant_id: str, session_id: str) -> list[ExecutionStatus]:
        """The session's executions, oldest first."""
        found = [s for s in self._items.values() if s.session_id == session_id and s.tenant_id == tenant_id]
        return sorted(found, key=lambda s: s.created_at)

    def __len__(self) -> int:
        return len(self._items)

    def apply(self, status: ExecutionStatus) -> bool:
        """Merge a snapshot (from the topic or our own write); True if it changed the view."""
        current = self._items.get(status.execution_id)
        if current is None:
            self._items[status.execution_id] = status
            for listener in self.on_new:
                listener(status)
            return True
        if status.supersedes(current):
            self._items[status.execution_id] = status.merged_over(current)
            return True
        return False

    async def wait_until(
        self, execution_id: str, predicate: Callable[[ExecutionStatus], bool], *, timeout: float
    ) -> ExecutionStatus | None:
        """Wait until the execution's snapshot satisfies ``predicate`` (or timeout); return the latest."""

        def ready() -> bool:
            current = self._items.get(execution_id)
            return current is not None and predicate(current)

        async def _wait() -> None:
            async with self._changed:
                await self._changed.wait_for(ready)

        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(_wait(), timeout)
        return self._items.get(execution_id)

    async def start(self) -> None:
        consumer, _ = await open_tail(self._settings, [self._topic], client_id=self._name, from_beginning=True)
        self._consumer = consumer
        self._end = await consumer.end_offsets(list(consumer.assignment())) if consumer.assignment() else {}
        self._pending = {tp for tp, offset in self._end.items() if offset > 0}
        if not self._pending:
            self._caught_up.set()
        self._task = asyncio.create_task(run_tail(consumer, self._handle, name="status view"), name="status-view")
        await asyncio.wait_for(self._caught_up.wait(), 60)

    async def _handle(self, batches: Batches) -> None:
        changed = False
        for records in batches.values():
            for record in records:
                if record.value is None:
                    continue
                try:
                    changed |= self.apply(ExecutionStatus.model_validate_json(record.value))
                except ValidationError as exc:
                    await park(self._dlq, self._settings.topics, record, f"invalid status snapshot: {exc}", consumer=self._name)
        if self._pending and self._consumer is not None:
            for tp in list(self._pending):
                if await self._consumer.position(tp) >= self._end[tp]:
                    self._pending.discard(tp)
            if not self._pending:
                self._caught_up.set()
        if changed:
            async with self._changed:
                self._changed.notify_all()

    async def stop(self) -> None:
        task, consumer, self._task, self._consumer = self._task, self._consumer, None, None
        await close_tail(task, consumer)


def status_record(status: ExecutionStatus) -> tuple[bytes, bytes]:
    return status.execution_id.encode(), encode(status)
