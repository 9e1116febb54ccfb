"""Tails ``executions.control``: every executor reads all of it (no group), from the end at start.

A cancel request is handed to ``on_cancel``; whoever runs that execution stops it, the others
remember the id for a while in case the request reaches them later (a redelivery).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import orjson
from aiokafka import AIOKafkaProducer
from pydantic import ValidationError

from schemas.events import ExecutionCancelRequested
from services.common.errors import PoisonRecord
from services.common.reader import Reader, start_tail_reader
from services.common.settings import KafkaSettings
from services.common.sources import Record

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
        self.reader: Reader | None = None

    async def start(self) -> None:
        # From the end: a cancel sent right after start is seen, older ones are not ours to act on.
        self.reader = await start_tail_reader(self._settings, [self._topic], self._handle, name=self._client_id, dlq=self._dlq)

    def _handle(self, record: Record) -> None:
        try:
            raw = orjson.loads(record.value or b"null")
            if not isinstance(raw, dict) or raw.get("type") != "execution.cancel_requested":
                return  # other control messages are not ours
            request = ExecutionCancelRequested.model_validate(raw)
        except (orjson.JSONDecodeError, ValidationError) as exc:
            raise PoisonRecord(f"invalid control record: {exc}") from exc
        self._on_cancel(request)

    async def stop(self) -> None:
        reader, self.reader = self.reader, None
        if reader is not None:
            await reader.stop()
