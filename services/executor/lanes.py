"""The executor's lane consumers: one supervised ``Reader`` per lane topic, all in one consumer group.

One reader per lane, not one over the three topics: a lane whose handler waits for an execution
slot (``PrioritySlots``) stops only its own reader, so a full batch lane never holds back critical
work. The readers do not commit after a batch (``commit_after_batch=False``): a lane record is
finished when its execution ended, out of order, and the executor commits the contiguous watermark
of finished records itself (``commit``, from ``Executor._finish``).

``open`` makes the lane's ``RecordSource``: ``open_group`` on the broker, a ``MemorySource`` in
the unit tests of the lane handling (tests/unit/test_lanes.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener

from schemas.topics import Topics
from services.common.dlq import Publisher
from services.common.reader import Handler, Reader, Retry
from services.common.settings import KafkaSettings
from services.common.sources import KafkaSource, RecordSource, open_group

LaneOpener = Callable[[str, ConsumerRebalanceListener], Awaitable[RecordSource]]

MAX_POLL_RECORDS = 50  # per fetch: a lane's records wait for slots one at a time anyway


def group_opener(settings: KafkaSettings, *, group: str, client_id: str, session_timeout_ms: int) -> LaneOpener:
    """How the executor opens a lane on the broker: a member of ``group`` with the lane's rebalance listener."""

    async def open_lane(lane: str, listener: ConsumerRebalanceListener) -> RecordSource:
        return await open_group(
            settings,
            lane,
            group=group,
            client_id=client_id,
            # Started once joined, with or without partitions: a second executor on a one-partition
            # lane gets none until the first leaves, and must start all the same.
            assigned_within_s=None,
            listener=listener,
            max_poll_records=MAX_POLL_RECORDS,
            session_timeout_ms=session_timeout_ms,
            # Short: a rebalance (three lane consumers join per executor) completes once every member
            # has heard of it on a heartbeat, so this paces how fast an executor starts.
            heartbeat_interval_ms=300,
        )

    return open_lane


class Lanes:
    def __init__(
        self,
        handle: Handler,
        *,
        listeners: Mapping[str, ConsumerRebalanceListener],
        open: LaneOpener,
        topics: Topics,
        dlq: Publisher | None,
        name: str,
        retry: Retry | None = None,
        fetch_timeout_ms: int = 1000,
    ) -> None:
        self._handle = handle
        self.listeners = dict(listeners)
        self._open = open
        self._topics = topics
        self.dlq = dlq
        self._name = name
        self._retry = retry or Retry()
        self._fetch_timeout_ms = fetch_timeout_ms
        self.readers: dict[str, Reader] = {}

    async def start(self) -> None:
        try:
            for lane, listener in self.listeners.items():
                source = await self._open(lane, listener)
                reader = Reader(
                    f"{self._name}-{lane.rsplit('.', 1)[-1]}",
                    source,
                    self._handle,
                    topics=self._topics,
                    dlq=self.dlq,
                    retry=self._retry,
                    max_records=MAX_POLL_RECORDS,
                    fetch_timeout_ms=self._fetch_timeout_ms,
                    commit_after_batch=False,
                )
                self.readers[lane] = reader
                reader.start()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        readers, self.readers = list(self.readers.values()), {}
        for reader in readers:
            await reader.stop()

    def assignment(self) -> set[TopicPartition]:
        return {tp for reader in self.readers.values() for tp in reader.source.assignment()}

    def owns(self, tp: TopicPartition) -> bool:
        reader = self.readers.get(tp.topic)
        return reader is not None and tp in reader.source.assignment()

    async def commit(self, tp: TopicPartition, offset: int) -> None:
        """Commit ``offset`` (the next to read) for ``tp``, if its lane still has it; may raise KafkaError."""
        reader = self.readers.get(tp.topic)
        if reader is not None and tp in reader.source.assignment():
            await reader.source.commit({tp: offset})

    def consumers(self) -> list[AIOKafkaConsumer]:
        """The lanes' Kafka consumers (none over in-memory sources)."""
        return [reader.source.consumer for reader in self.readers.values() if isinstance(reader.source, KafkaSource)]
