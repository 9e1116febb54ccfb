"""Publishes one execution attempt's events in order, coalescing token deltas the way Nagle does.

A delta goes out at once when no record of this execution is in flight to the broker (sent, not
yet acknowledged); deltas that arrive while one is in flight are buffered and go out as one
``token.delta`` record when it is acknowledged (or when the buffer reaches ``max_chars``), and
before any other event, so order is kept. A slow stream pays no timer, and a fast or loaded one
(a broker that acknowledges slowly) batches more: a 500 tok/s model does not mean 500 records/s.

Token values are built from a per-execution template (records.py), not a pydantic model each.

With a ``tenure`` (fence.py), every record is sent only while this member still holds the lane
partition the execution came from; a run that lost it raises ``Fenced`` before its next record.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.structs import RecordMetadata

from schemas.events import Envelope
from services.common.kafka import encode, record_headers, shared_headers
from services.executor.fence import Tenure
from services.executor.records import EventIds, TokenRecords


class EventEmitter:
    def __init__(
        self,
        producer: AIOKafkaProducer,
        *,
        topic: str,
        envelope: dict[str, Any],
        max_chars: int,
        traceparent: str | None = None,
        tenure: Tenure | None = None,
    ) -> None:
        self._producer = producer
        self._tenure = tenure
        self._topic = topic
        self._envelope = envelope
        self._key = str(envelope["execution_id"]).encode()
        self._max_chars = max_chars
        # Built once per execution attempt: a record adds only its type, id and time (CloudEvents too).
        self._shared = shared_headers(
            service="executor",
            subject=str(envelope["execution_id"]),
            tenant_id=str(envelope["tenant_id"]),
            attempt=envelope["attempt"],
            traceparent=traceparent,
        )
        self._tokens = TokenRecords(envelope)
        self._token_ids = EventIds()
        # The partition the key hashes to, from the first acknowledgement on: aiokafka's partitioner
        # is murmur2 in pure Python (~3-5 % of the executor's CPU at 100 streams, once per record).
        self._partition: int | None = None
        self._seq = 0
        self._buffer: list[str] = []
        self._buffered = 0
        self._buffer_step = 0
        self._lock = asyncio.Lock()
        self._inflight: list[asyncio.Future[RecordMetadata]] = []
        self._last: asyncio.Future[RecordMetadata] | None = None  # the newest record sent
        self._waiting = False  # a flush is due when ``_last`` is acknowledged
        self._flusher: asyncio.Task[None] | None = None
        self._failed: Exception | None = None  # what a flush on an acknowledgement raised
        self.records = 0
        self.token_records = 0
        self.tokens = 0  # deltas handed to ``text``: token_records / tokens is the records per token

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
        """Send one event after the buffered text; returns its acknowledgement (not awaited here)."""
        async with self._lock:
            await self._flush_locked()
            await self.check_tenure()
            self._seq += 1
            event = cls(**self._envelope, seq=self._seq, **fields)
            return await self._send(fields.get("type") or cls.model_fields["type"].default, encode(event), event.event_id, event.ts)

    async def text(self, delta: str, *, step: int) -> None:
        self.tokens += 1
        if self._buffer and step != self._buffer_step:
            await self.flush()
        self._buffer.append(delta)
        self._buffered += len(delta)
        self._buffer_step = step
        if self._buffered >= self._max_chars or not self._in_flight():
            await self.flush()
        else:
            self._arm()

    def _in_flight(self) -> bool:
        return self._last is not None and not self._last.done()

    def _arm(self) -> None:
        """Buffered text goes out when the record in flight is acknowledged (at once if none is)."""
        if not self._buffer or self._waiting:
            return
        if self._last is not None and not self._last.done():
            self._waiting = True
            self._last.add_done_callback(self._on_ack)
        elif self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush_on_ack())

    def _on_ack(self, _: asyncio.Future[RecordMetadata]) -> None:
        self._waiting = False
        if self._flusher is None or self._flusher.done():  # a running flusher re-arms when it is done
            self._arm()

    async def _flush_on_ack(self) -> None:
        try:
            await self.flush()
        except Exception as exc:  # Fenced or a failed send: drain() raises it, where the run handles it
            self._failed = self._failed or exc
            return
        self._arm()  # text that arrived while this record was sent

    def discard(self, step: int) -> None:
        """Drop buffered, unsent text of ``step`` (its model call restarts)."""
        if self._buffer and self._buffer_step == step:
            self._buffer.clear()
            self._buffered = 0

    async def flush(self) -> None:
        async with self._lock:
            await self._flush_locked()

    async def _flush_locked(self) -> None:
        if not self._buffer:
            return
        await self.check_tenure()
        text = "".join(self._buffer)
        self._buffer.clear()
        self._buffered = 0
        self._seq += 1
        self.token_records += 1
        event_id, ts = self._token_ids.next(), datetime.now(UTC)
        value = self._tokens.value(text=text, seq=self._seq, step=self._buffer_step, event_id=event_id, ts=ts)
        await self._send("token.delta", value, event_id, ts)

    async def _send(self, type_: str, value: bytes, event_id: uuid.UUID | str, ts: datetime) -> asyncio.Future[RecordMetadata]:
        """The one place a record of this execution goes to the producer (and gets its headers)."""
        future: asyncio.Future[RecordMetadata] = await self._producer.send(
            self._topic,
            value=value,
            key=self._key,
            partition=self._partition,
            headers=record_headers(type_, event_id, ts, self._shared),
        )
        if self._partition is None:
            future.add_done_callback(self._learn_partition)
        if len(self._inflight) >= 512:  # a long stream: keep only what drain() still has to wait for or report
            self._inflight = [f for f in self._inflight if not f.done() or f.cancelled() or f.exception() is not None]
        self._inflight.append(future)
        self._last = future
        self.records += 1
        return future

    def _learn_partition(self, future: asyncio.Future[RecordMetadata]) -> None:
        if not future.cancelled() and future.exception() is None:
            self._partition = future.result().partition

    async def drain(self) -> None:
        """Flush text and wait until the broker acknowledged every record sent so far."""
        await self.flush()
        if self._failed is not None:
            raise self._failed
        pending, self._inflight = self._inflight, []
        if pending:
            await asyncio.gather(*pending)

    def close(self) -> None:
        flusher, self._flusher = self._flusher, None
        if flusher is not None and not flusher.done():
            flusher.cancel()
        self._buffer.clear()
        self._buffered = 0
