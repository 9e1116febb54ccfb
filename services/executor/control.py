"""Tails ``executions.control``: every executor reads all of it (no group), from the end at start.

A cancel request is handed to ``on_cancel``; whoever runs that execution stops it, the others
remember the id for a while in case the request reaches them later (a redelivery).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from pydantic import ValidationError

from schemas.events import ExecutionCancelRequested
from services.common.dlq import park
from services.common.settings import KafkaSettings
from services.common.tail import Batches, close_tail, open_tail, run_tail

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
        # From the end: a cancel sent right after start is seen, older ones are not ours to act on.
        self._consumer, _ = await open_tail(self._settings, [self._topic], client_id=self._client_id)
        self._task = asyncio.create_task(run_tail(self._consumer, self._handle, name="control tail", max_records=500), name="control-tail")

    async def _handle(self, batches: Batches) -> None:
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
        task, consumer, self._task, self._consumer = self._task, self._consumer, None, None
        await close_tail(task, consumer)
