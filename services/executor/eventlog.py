"""Reading one execution's earlier events back from its events topic, for a resume (checkpoint.py).

Group-less and one-shot: a consumer assigned to the execution's partition reads from where its
events start to the partition's end as of the read, keeps the records keyed by the execution whose
``type`` header a rebuild needs, and parses nothing (token deltas are skipped on the header).
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaTimeoutError

from services.common.kafka import client_options, header, start_client
from services.common.settings import KafkaSettings
from services.executor.checkpoint import READ_TYPES, LoggedRecord


class EventLog(Protocol):
    async def records(self, topic: str, partition: int, start: int, execution_id: str) -> list[LoggedRecord]: ...


class KafkaEventLog:
    def __init__(self, settings: KafkaSettings, *, client_id: str, timeout_s: float = 30.0) -> None:
        self._settings = settings
        self._client_id = client_id
        self._timeout_s = timeout_s

    async def records(self, topic: str, partition: int, start: int, execution_id: str) -> list[LoggedRecord]:
        try:
            async with asyncio.timeout(self._timeout_s):
                return await self._read(TopicPartition(topic, partition), start, execution_id.encode())
        except TimeoutError as exc:  # retriable: the attempt runs again once the broker answers
            raise KafkaTimeoutError(f"reading the events of {execution_id} took over {self._timeout_s:g}s") from exc

    async def _read(self, tp: TopicPartition, start: int, key: bytes) -> list[LoggedRecord]:
        consumer = AIOKafkaConsumer(**client_options(self._settings), enable_auto_commit=False, client_id=self._client_id)
        await start_client(consumer, self._settings)
        try:
            consumer.assign([tp])
            first = (await consumer.beginning_offsets([tp]))[tp]
            end = (await consumer.end_offsets([tp]))[tp]
            found: list[LoggedRecord] = []
            if max(start, first) >= end:
                return found
            consumer.seek(tp, max(start, first))  # before ``first``: retention took them, nothing to reuse
            while await consumer.position(tp) < end:
                batch = await consumer.getmany(tp, timeout_ms=1000, max_records=2000)
                for record in batch.get(tp, ()):
                    if record.offset >= end:
                        return found
                    type_ = header(record.headers, "type")
                    if record.key == key and type_ in READ_TYPES and record.value is not None:
                        found.append(LoggedRecord(record.offset, type_ or "", _attempt(record.headers), record.value))
            return found
        finally:
            await consumer.stop()


def _attempt(headers: list[tuple[str, bytes]] | None) -> int:
    value = header(headers, "attempt")
    return int(value) if value and value.isdigit() and len(value) < 10 else 1
