"""Tails ``executions.control``: every executor reads all of it (no group), from the end at start.

A cancel request is handed to ``on_cancel``; whoever runs that execution stops it, the others
remember the id for a while in case the request reaches them later (a redelivery).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from pydantic import ValidationError

from schemas.events import ExecutionCancelRequested
from services.common.dlq import park
from services.common.settings import KafkaSettings

log = logging.getLogger(__name__)


class ControlTail:
    def __init__(
        self,
        settings: KafkaSettings,
        *,
        on_cancel: Callable[[ExecutionCancelRequested], None],
        client_id: str,
        dlq: AIOKafkaProducer | None = None,
    ) -> None:
        self._settings = settings
        self._dlq = dlq
        self._topic = settings.topics.control
        self._on_cancel = on_cancel
        self._client_id = client_id
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        consumer = AIOKafkaConsumer(bootstrap_servers=self._settings.bootstrap, enable_auto_commit=False, client_id=self._client_id)
        await consumer.start()
        self._consumer = consumer
        partitions = consumer.partitions_for_topic(self._topic)
        for _ in range(50):
            if partitions:
                break
            await asyncio.sleep(0.1)
            await consumer._client.force_metadata_update()  # the topic was just created
            partitions = consumer.partitions_for_topic(self._topic)
        tps = [TopicPartition(self._topic, p) for p in sorted(partitions or ())]
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        for tp in tps:  # resolve the end offset now, so a cancel sent right after start is seen
            await consumer.position(tp)
        self._task = asyncio.create_task(self._run(consumer), name="control-tail")

    async def _run(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            try:
                batches = await consumer.getmany(timeout_ms=200, max_records=500)
            except KafkaError as exc:
                log.warning("control tail: %s; retrying", exc)
                await asyncio.sleep(1)
                continue
            for records in batches.values():
                for record in records:
                    try:
                        raw = orjson.loads(record.value or b"null")
                        if not isinstance(raw, dict) or raw.get("type") != "execution.cancel_requested":
                            continue  # other control messages are not ours
                        request = ExecutionCancelRequested.model_validate(raw)
                    except (orjson.JSONDecodeError, ValidationError) as exc:
                        await park(self._dlq, self._settings.topics, record, f"invalid control record: {exc}", consumer=self._client_id)
                        continue
                    self._on_cancel(request)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
