"""A materialized view of the compacted ``executions.status`` topic.

Both services read it from the beginning at start and tail it: the orchestrator answers status and
ownership from it, executors learn the attempt number and whether an execution is already terminal.

The view holds every execution the topic holds, so it is the largest thing in a long-lived process.
A snapshot as a pydantic object is nine objects the cyclic collector tracks (the model, its
``__dict__``, its fields-set, and the same for its intake and plan); at 16,000 executions a full
collection walked 150,000 of them, 150 ms each time, the intake's whole p99 (docs/performance.md).
So only the most recently used snapshots (``HOT``) stay objects; the rest are packed to their JSON
bytes, which the collector does not track, and decoded again when asked for (~15 µs).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
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

# How many snapshots stay decoded (most recently applied or read first). Every live execution of a
# busy replica fits (500 streams at once are 500); a full collection walks ~9 objects per entry.
HOT = 1024
# Own writes remembered until read back (the tail reads them within milliseconds).
OWN_MAX = 8192
_pack = ExecutionStatus.__pydantic_serializer__.to_json
_unpack = ExecutionStatus.model_validate_json


class StatusView:
    def __init__(self, settings: KafkaSettings, *, dlq: AIOKafkaProducer | None = None, name: str = "status-view", hot: int = HOT) -> None:
        self._settings = settings
        self._dlq = dlq
        self._name = name
        self._topic = settings.topics.status
        # Every execution is in exactly one of the two: decoded (least recently used first) or packed.
        self._hot: OrderedDict[str, ExecutionStatus] = OrderedDict()
        self._cold: dict[str, bytes] = {}
        self._hot_max = max(1, hot)
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
        # Our own acknowledged writes, by (partition, offset): applied at their acknowledgement, so the
        # tail skips them when it reads them back instead of decoding and merging them a second time.
        self._own: dict[tuple[int, int], None] = {}
        # Called with the first snapshot of every execution this view learns of (e.g. session followers).
        self.on_new: list[Callable[[ExecutionStatus], None]] = []

    def get(self, execution_id: str) -> ExecutionStatus | None:
        hot = self._hot.get(execution_id)
        if hot is not None:
            self._hot.move_to_end(execution_id)
            return hot
        packed = self._cold.pop(execution_id, None)
        if packed is None:
            return None
        status = _unpack(packed)
        self._keep(status)
        return status

    def __contains__(self, execution_id: str) -> bool:
        """Whether the view knows the execution (no decoding: what the existence checks use)."""
        return execution_id in self._hot or execution_id in self._cold

    def _peek(self, execution_id: str) -> ExecutionStatus | None:
        """The snapshot without making it recently used (scans)."""
        hot = self._hot.get(execution_id)
        if hot is not None:
            return hot
        packed = self._cold.get(execution_id)
        return None if packed is None else _unpack(packed)

    def for_session(self, tenant_id: str, session_id: str) -> list[ExecutionStatus]:
        """The session's executions, oldest first."""
        found = [s for i in self._by_session.get((tenant_id, session_id), ()) if (s := self._peek(i)) is not None]
        return sorted(found, key=lambda s: s.created_at)

    def waiting(self) -> list[ExecutionStatus]:
        """Executions parked for an approval (issue 16): what the sweeper applies deadlines to."""
        return list(self._waiting.values())

    def matching(self, predicate: Callable[[ExecutionStatus], bool]) -> list[ExecutionStatus]:
        """Every snapshot the predicate holds for (workflow runs rebuild from it: issue 20)."""
        found = [s for s in self._hot.values() if predicate(s)]
        return found + [s for packed in self._cold.values() if predicate(s := _unpack(packed))]

    def __len__(self) -> int:
        return len(self._hot) + len(self._cold)

    def apply(self, status: ExecutionStatus) -> bool:
        """Merge a snapshot (from the topic or our own write); True if it changed the view."""
        current = self.get(status.execution_id)
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

    def applied_write(self, status: ExecutionStatus, partition: int, offset: int) -> bool:
        """Apply our own snapshot, which the broker acknowledged at ``partition``/``offset``."""
        self.own_write(partition, offset)
        return self.apply(status)

    def own_write(self, partition: int, offset: int) -> None:
        """A snapshot this process applied and the broker acknowledged there: the tail skips it."""
        own = self._own
        own[(partition, offset)] = None
        if len(own) > OWN_MAX:  # read back before its acknowledgement came, or a tail that stopped: forget the oldest
            del own[next(iter(own))]

    def _put(self, status: ExecutionStatus) -> None:
        self._keep(status)
        if status.state == "waiting":
            self._waiting[status.execution_id] = status
        else:
            self._waiting.pop(status.execution_id, None)

    def _keep(self, status: ExecutionStatus) -> None:
        """Hold the snapshot decoded, as the most recently used; pack the least recently used one."""
        hot = self._hot
        hot[status.execution_id] = status
        hot.move_to_end(status.execution_id)
        if len(hot) > self._hot_max:
            old_id, old = hot.popitem(last=False)
            self._cold[old_id] = _pack(old)

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
                    current = self.get(execution_id)
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
        return self.get(execution_id)

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
        if self._own and self._own.pop((record.partition, record.offset), 0) is None:
            return  # our own write, applied at its acknowledgement
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
