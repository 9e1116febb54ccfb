"""A materialized view of the compacted ``executions.status`` topic.

Both services read it from the beginning at start and tail it: the orchestrator answers status and
ownership from it, executors learn the attempt number and whether an execution is already terminal.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from aiokafka import AIOKafkaProducer, TopicPartition
from pydantic import ValidationError

from schemas.status import ExecutionStatus
from services.common.errors import PoisonRecord
from services.common.kafka import encode
from services.common.reader import Reader
from services.common.settings import KafkaSettings
from services.common.sources import Batches, Record, open_tail, reopen_tail

log = logging.getLogger(__name__)


class StatusView:
    def __init__(self, settings: KafkaSettings, *, dlq: AIOKafkaProducer | None = None, name: str = "status-view") -> None:
        self._settings = settings
        self._dlq = dlq
        self._name = name
        self._topic = settings.topics.status
        self._items: dict[str, ExecutionStatus] = {}
        # Indexes, so no per-request or per-sweep scan grows with every execution the view holds:
        # a session's executions (by tenant and session), and the ones parked ``waiting``.
        self._by_session: dict[tuple[str, str], list[str]] = {}
        self._waiting: dict[str, ExecutionStatus] = {}
        self.reader: Reader | None = None
        self._end: dict[TopicPartition, int] = {}
        self._pending: set[TopicPartition] = set()
        self._caught_up = asyncio.Event()
        # Who waits for a change of which execution (wait_until): woken by apply(), whoever applies
        # (the tail, the bridge, our own writes); one execution's change wakes only its waiters.
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        # Called with the first snapshot of every execution this view learns of (e.g. session followers).
        self.on_new: list[Callable[[ExecutionStatus], None]] = []

    def get(self, execution_id: str) -> ExecutionStatus | None:
        return self._items.get(execution_id)

    def for_session(self, tenant_id: str, session_id: str) -> list[ExecutionStatus]:
        """The session's executions, oldest first."""
        found = [self._items[i] for i in self._by_session.get((tenant_id, session_id), ())]
        return sorted(found, key=lambda s: s.created_at)

    def waiting(self) -> list[ExecutionStatus]:
        """Executions parked for an approval (issue 16): what the sweeper applies deadlines to."""
        return list(self._waiting.values())

    def matching(self, predicate: Callable[[ExecutionStatus], bool]) -> list[ExecutionStatus]:
        """Every snapshot the predicate holds for (workflow runs rebuild from it: issue 20)."""
        return [s for s in self._items.values() if predicate(s)]

    def __len__(self) -> int:
        return len(self._items)

    def apply(self, status: ExecutionStatus) -> bool:
        """Merge a snapshot (from the topic or our own write); True if it changed the view."""
        current = self._items.get(status.execution_id)
        if current is None:
            self._put(status)
            if status.session_id is not None:
                self._by_session.setdefault((status.tenant_id, status.session_id), []).append(status.execution_id)
            self._wake(status.execution_id)
            for listener in self.on_new:
                listener(status)
            return True
        if status.supersedes(current):
            self._put(status.merged_over(current))
            self._wake(status.execution_id)
            return True
        update: dict[str, object] = {}
        if current.intake is None and status.intake is not None:
            # An older snapshot with the intake after a newer one without (our own queued snapshot,
            # applied at its acknowledgement, after the executor's running one came in by the tail):
            # keep the intake, the execution's end needs it to write its row.
            update["intake"] = status.intake
        if current.events_start_offset is None and status.events_start_offset is not None and status.attempt == current.attempt:
            # The running snapshot after the end (the bridge applies a terminal event from the events
            # tail, which can be ahead of the status tail): keep where the events start, or a client
            # subscribing after the end is told it ended without any event.
            update |= {
                "events_topic": status.events_topic,
                "events_partition": status.events_partition,
                "events_start_offset": status.events_start_offset,
                "attempt_start_offset": status.attempt_start_offset,
            }
        if update:
            self._put(current.model_copy(update=update))
        return False

    def _put(self, status: ExecutionStatus) -> None:
        self._items[status.execution_id] = status
        if status.state == "waiting":
            self._waiting[status.execution_id] = status
        else:
            self._waiting.pop(status.execution_id, None)

    def poke(self, execution_id: str) -> None:
        """Make the execution's waiters check their predicate again (it may look beyond the view)."""
        self._wake(execution_id)

    def _wake(self, execution_id: str) -> None:
        for waiter in self._waiters.pop(execution_id, ()):
            if not waiter.done():
                waiter.set_result(None)

    async def wait_until(
        self, execution_id: str, predicate: Callable[[ExecutionStatus], bool], *, timeout: float
    ) -> ExecutionStatus | None:
        """Wait until the execution's snapshot satisfies ``predicate`` (or timeout); return the latest."""

        loop = asyncio.get_running_loop()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):  # not wait_for: no Task per wait (1,000 subscribers wait at once)
                while True:
                    current = self._items.get(execution_id)
                    if current is not None and predicate(current):
                        break
                    waiter: asyncio.Future[None] = loop.create_future()
                    self._waiters.setdefault(execution_id, []).append(waiter)
                    try:
                        await waiter
                    finally:
                        waiters = self._waiters.get(execution_id)
                        if waiters is not None and waiter in waiters:  # timed out or cancelled: not woken
                            waiters.remove(waiter)
                            if not waiters:
                                del self._waiters[execution_id]
        return self._items.get(execution_id)

    async def start(self) -> None:
        source, start = await open_tail(self._settings, [self._topic], client_id=self._name, from_beginning=True)
        try:
            self._end = await source.consumer.end_offsets(list(start)) if start else {}
        except BaseException:
            await source.close()
            raise
        self._pending = {tp for tp, offset in self._end.items() if offset > start.get(tp, 0)}
        if not self._pending:
            self._caught_up.set()
        self.reader = Reader(
            self._name,
            source,
            self._handle,
            topics=self._settings.topics,
            dlq=self._dlq,
            max_records=500,
            after_batch=self._after_batch,
            positions=start,
            reopen=reopen_tail(self._settings, [self._topic], client_id=self._name, from_beginning=True),
        )
        self.reader.start()
        await asyncio.wait_for(self._caught_up.wait(), 60)

    def _handle(self, record: Record) -> None:
        if record.value is None:
            return  # a tombstone: compaction's, nothing to apply
        try:
            status = ExecutionStatus.model_validate_json(record.value)
        except ValidationError as exc:
            raise PoisonRecord(f"invalid status snapshot: {exc}") from exc
        self.apply(status)

    async def _after_batch(self, batches: Batches) -> None:
        if self._pending and self.reader is not None:
            for tp in list(self._pending):
                if await self.reader.position(tp) >= self._end[tp]:
                    self._pending.discard(tp)
            if not self._pending:
                self._caught_up.set()

    async def stop(self) -> None:
        reader, self.reader = self.reader, None
        if reader is not None:
            await reader.stop()


def status_record(status: ExecutionStatus) -> tuple[bytes, bytes]:
    return status.execution_id.encode(), encode(status)
