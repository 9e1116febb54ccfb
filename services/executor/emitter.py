"""Publishes one execution attempt's events in order, coalescing token deltas.

Deltas are buffered and flushed as one ``token.delta`` record when the buffer reaches
``max_chars`` or ``interval`` has passed since its first delta, and before any other event,
so a 500 tok/s model does not mean 500 records/s and order is kept.

With a ``tenure`` (fence.py), every record is sent only while this member still holds the lane
partition the execution came from; a run that lost it raises ``Fenced`` before its next record.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.structs import RecordMetadata

from schemas.events import Envelope, TokenDelta
from services.common.kafka import encode, record_headers, shared_headers
from services.executor.fence import Fenced, Tenure


class EventEmitter:
    def __init__(
        self,
        producer: AIOKafkaProducer,
        *,
        topic: str,
        envelope: dict[str, Any],
        interval_s: float,
        max_chars: int,
        traceparent: str | None = None,
        tenure: Tenure | None = None,
    ) -> None:
        self._producer = producer
        self._tenure = tenure
        self._topic = topic
        self._envelope = envelope
        self._key = str(envelope["execution_id"]).encode()
        self._interval = interval_s
        self._max_chars = max_chars
        # Built once per execution attempt: a record adds only its type, id and time (CloudEvents too).
        self._shared = shared_headers(
            service="executor",
            subject=str(envelope["execution_id"]),
            tenant_id=str(envelope["tenant_id"]),
            attempt=envelope["attempt"],
            traceparent=traceparent,
        )
        self._seq = 0
        self._buffer: list[str] = []
        self._buffered = 0
        self._buffer_step = 0
        self._timer: asyncio.TimerHandle | None = None
        self._lock = asyncio.Lock()
        self._inflight: list[asyncio.Future[RecordMetadata]] = []
        self._flusher: asyncio.Task[None] | None = None
        self.records = 0

    @property
    def envelope(self) -> dict[str, Any]:
        """The execution attempt's envelope fields (tenant, execution, session, agent, attempt)."""
        return dict(self._envelope)

    async def check_tenure(self) -> None:
        """For a record of this attempt sent elsewhere (a job request): wait while the claim is in doubt,
        raise ``Fenced`` if this member lost the execution's partition."""
        if self._tenure is not None and not self._tenure.ok():
            await self._tenure.check()

    async def emit(self, cls: type[Envelope], **fields: Any) -> asyncio.Future[RecordMetadata]:
        async with self._lock:
            await self._flush_locked()
            return await self._send_locked(cls, **fields)

    async def text(self, delta: str, *, step: int) -> None:
        if self._buffer and step != self._buffer_step:
            await self.flush()
        self._buffer.append(delta)
        self._buffered += len(delta)
        self._buffer_step = step
        if self._buffered >= self._max_chars:
            await self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._interval, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._flusher = asyncio.create_task(self._timed_flush())

    async def _timed_flush(self) -> None:
        try:
            await self.flush()
        except Fenced:
            pass  # the run's next record raises it again, where the run handles it

    def discard(self, step: int) -> None:
        """Drop buffered, unsent text of ``step`` (its model call restarts)."""
        if self._buffer and self._buffer_step == step:
            self._buffer.clear()
            self._buffered = 0

    async def flush(self) -> None:
        async with self._lock:
            await self._flush_locked()

    async def _flush_locked(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._buffer:
            return
        text = "".join(self._buffer)
        self._buffer.clear()
        self._buffered = 0
        await self._send_locked(TokenDelta, text=text, step=self._buffer_step)

    async def _send_locked(self, cls: type[Envelope], **fields: Any) -> asyncio.Future[RecordMetadata]:
        if self._tenure is not None and not self._tenure.ok():
            await self._tenure.check()
        self._seq += 1
        event = cls(**self._envelope, seq=self._seq, **fields)
        type_ = fields.get("type") or cls.model_fields["type"].default
        future: asyncio.Future[RecordMetadata] = await self._producer.send(
            self._topic,
            value=encode(event),
            key=self._key,
            headers=record_headers(type_, event.event_id, event.ts, self._shared),
        )
        self._inflight.append(future)
        self.records += 1
        return future

    async def drain(self) -> None:
        """Flush text and wait until the broker acknowledged every record sent so far."""
        await self.flush()
        pending, self._inflight = self._inflight, []
        if pending:
            await asyncio.gather(*pending)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
