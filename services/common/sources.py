"""Where a reader's records come from: a small protocol, the Kafka consumer behind it, and an
in-memory log with the same behaviour for fast tests of the reader's logic (like httpx's
``MockTransport``: a real implementation, not a patched method).

Group-less readers (status views, the executors' control and jobs.updates tails, the bridge) are
opened with ``open_tail``: every partition of their topics, from the beginning or the end, start
positions resolved before it returns. Group readers (the orchestrator's followers) with
``open_group``: partitions come from the group, progress is committed by the reader after handling.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeAlias

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.structs import OffsetAndMetadata

from services.common.kafka import client_options, partitions_of, start_client
from services.common.settings import KafkaSettings

Record: TypeAlias = ConsumerRecord[bytes, bytes]
Batches: TypeAlias = dict[TopicPartition, list[Record]]


class RecordSource(Protocol):
    """What a ``Reader`` needs of a consumer."""

    async def fetch(self, *, max_records: int, timeout_ms: int) -> Batches: ...

    async def position(self, tp: TopicPartition) -> int: ...

    def assignment(self) -> set[TopicPartition]:
        """The partitions this source reads now (a group member's change on rebalances)."""

    def seek(self, tp: TopicPartition, offset: int) -> None:
        """Read ``tp`` again from ``offset`` (ignored for a partition no longer assigned)."""

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Record progress (next offset to read) for a group; a no-op without one."""

    async def close(self) -> None: ...


class KafkaSource:
    def __init__(self, consumer: AIOKafkaConsumer, *, group: bool) -> None:
        self.consumer = consumer
        self._group = group

    async def fetch(self, *, max_records: int, timeout_ms: int) -> Batches:
        batches: Batches = await self.consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
        return batches

    async def position(self, tp: TopicPartition) -> int:
        offset: int = await self.consumer.position(tp)
        return offset

    def assignment(self) -> set[TopicPartition]:
        assigned: set[TopicPartition] = self.consumer.assignment()
        return assigned

    def seek(self, tp: TopicPartition, offset: int) -> None:
        if tp in self.consumer.assignment():
            self.consumer.seek(tp, offset)

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        if self._group and offsets:
            await self.consumer.commit({tp: OffsetAndMetadata(offset, "") for tp, offset in offsets.items()})

    async def close(self) -> None:
        await self.consumer.stop()


# How often aiokafka's fetch routine wakes when nothing happened. Its default, 200 ms, is a safety
# net: a fetch's answer, a consumed batch, a seek and an assignment change each wake it at once.
# Idle, every consumer's routine woke five times a second for nothing (an idle stack's event-loop
# callbacks fell from about 490 to 360 a second with 1 s, orchestrator and executor together).
CONSUMER_TIMEOUT_MS = 1000


async def open_tail(
    settings: KafkaSettings, topics: Sequence[str], *, client_id: str, from_beginning: bool = False
) -> tuple[KafkaSource, dict[TopicPartition, int]]:
    """A started consumer without a group, assigned every partition of ``topics``, positioned at their
    beginning or end; returned with each partition's start position (resolved now, so nothing
    produced after this returns is missed)."""
    consumer = AIOKafkaConsumer(
        **client_options(settings),
        enable_auto_commit=False,
        client_id=client_id,
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
        consumer_timeout_ms=CONSUMER_TIMEOUT_MS,
    )
    await start_client(consumer, settings)
    try:
        tps = [tp for topic in topics for tp in await partitions_of(consumer, topic)]
        consumer.assign(tps)
        if from_beginning:
            await consumer.seek_to_beginning(*tps)
        else:
            await consumer.seek_to_end(*tps)
        return KafkaSource(consumer, group=False), {tp: await consumer.position(tp) for tp in tps}
    except BaseException:
        await consumer.stop()
        raise


def reopen_tail(
    settings: KafkaSettings, topics: Sequence[str], *, client_id: str, from_beginning: bool = False
) -> Callable[[], Awaitable[KafkaSource]]:
    """How a reader gets a new tail consumer after its loop died (it then seeks to where it was)."""

    async def reopen() -> KafkaSource:
        source, _ = await open_tail(settings, topics, client_id=client_id, from_beginning=from_beginning)
        return source

    return reopen


async def open_group(
    settings: KafkaSettings,
    topic: str,
    *,
    group: str,
    client_id: str,
    assigned_within_s: float | None = 30.0,
    listener: ConsumerRebalanceListener | None = None,
    **options: Any,
) -> KafkaSource:
    """A started member of ``group`` on ``topic``, returned once it has partitions (once it joined, with
    or without, when ``assigned_within_s`` is None). A new group starts at the beginning: what happened
    while no member ran is not lost. ``options`` go to the consumer."""
    consumer = AIOKafkaConsumer(
        **client_options(settings),
        group_id=group,
        client_id=client_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **{"fetch_max_wait_ms": settings.fetch_max_wait_ms, "consumer_timeout_ms": CONSUMER_TIMEOUT_MS, **options},
    )
    consumer.subscribe([topic], listener=listener)
    await start_client(consumer, settings)
    if assigned_within_s is None:
        return KafkaSource(consumer, group=True)
    try:
        async with asyncio.timeout(assigned_within_s):
            while not consumer.assignment():
                await asyncio.sleep(0.05)
    except BaseException:
        await consumer.stop()
        raise
    return KafkaSource(consumer, group=True)


class MemorySource:
    """An in-memory log with a consumer's behaviour: per-partition offsets, positions, seeks, commits.

    ``append`` adds a record; ``fail_fetch`` makes the next fetches raise (broker trouble, or a
    reader that dies); ``fetch`` waits up to its timeout for new records, like ``getmany``.
    """

    def __init__(self, log: dict[TopicPartition, list[Record]] | None = None) -> None:
        self.log: dict[TopicPartition, list[Record]] = log if log is not None else {}
        self.positions: dict[TopicPartition, int] = dict.fromkeys(self.log, 0)
        self.committed: dict[TopicPartition, int] = {}
        self.commits = 0  # commit calls
        self.closed = False
        self._failures: list[BaseException] = []
        self._arrived = asyncio.Event()

    def append(
        self, topic: str, value: bytes | None, *, key: bytes | None = None, partition: int = 0, headers: Sequence[tuple[str, bytes]] = ()
    ) -> Record:
        tp = TopicPartition(topic, partition)
        records = self.log.setdefault(tp, [])
        self.positions.setdefault(tp, 0)
        record: Record = ConsumerRecord(
            topic=topic,
            partition=partition,
            offset=len(records),
            timestamp=int(time.time() * 1000),
            timestamp_type=0,
            key=key,
            value=value,
            checksum=None,
            serialized_key_size=len(key or b""),
            serialized_value_size=len(value or b""),
            headers=tuple(headers),
        )
        records.append(record)
        self._arrived.set()
        return record

    def fail_fetch(self, *errors: BaseException) -> None:
        self._failures.extend(errors)

    def reopened(self) -> MemorySource:
        """A new consumer of the same log, at its beginning (like a new client)."""
        return MemorySource(self.log)

    async def fetch(self, *, max_records: int, timeout_ms: int) -> Batches:
        if self.closed:
            raise RuntimeError("fetch on a closed source")  # as aiokafka's ConsumerStoppedError
        if self._failures:
            raise self._failures.pop(0)
        batches = self._take(max_records)
        if not batches:
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), timeout_ms / 1000)
            except TimeoutError:
                return {}
            batches = self._take(max_records)
        return batches

    def _take(self, max_records: int) -> Batches:
        batches: Batches = {}
        left = max_records
        for tp, records in self.log.items():
            start = self.positions.setdefault(tp, 0)
            chunk = records[start : start + left]
            if chunk:
                batches[tp] = chunk
                self.positions[tp] = start + len(chunk)
                left -= len(chunk)
            if left <= 0:
                break
        return batches

    async def position(self, tp: TopicPartition) -> int:
        return self.positions.get(tp, 0)

    def assignment(self) -> set[TopicPartition]:
        return set(self.positions)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        if tp in self.positions:
            self.positions[tp] = offset

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits += 1
        self.committed.update(offsets)

    async def close(self) -> None:
        self.closed = True


class MemoryProducer:
    """The DLQ end of the in-memory seam: keeps what is sent; ``error`` makes every send raise it."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]]]] = []
        self.error: BaseException | None = None

    async def send_and_wait(
        self, topic: str, value: bytes | None = None, key: bytes | None = None, *, headers: list[tuple[str, bytes]] | None = None
    ) -> Any:
        if self.error is not None:
            raise self.error
        self.sent.append((topic, key, value, list(headers or ())))
        return None
