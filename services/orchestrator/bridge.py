"""The WebSocket bridge: fans execution events from Kafka out to subscribed clients.

One tail consumer reads every partition of the events topic from where it was at start and routes
records by key (execution_id) to subscriptions, without parsing values: type and attempt travel in
headers, and the value's JSON bytes are spliced into the frame. A subscription first catches up
from the execution's first event (or the client's cursor) with a short-lived reader, buffering live
records meanwhile, then switches to live; records are deduplicated by offset, so every event after
the cursor arrives exactly once and in order. Events of an attempt older than the newest
``execution.started`` seen are dropped.

Sends never happen in the fan-out loop: each connection has a bounded frame queue and one writer
task; a client whose queue overflows is cut off (measured: one slow socket otherwise stalls all).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import TypeAlias

import orjson
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError
from pydantic import ValidationError
from starlette.websockets import WebSocket, WebSocketState

from schemas.events import TERMINAL_TYPES, EventAdapter, ExecutionCancelled, ExecutionCompleted, ExecutionFailed
from schemas.status import ExecutionStatus
from services.common.kafka import header
from services.common.settings import KafkaSettings
from services.common.statusview import StatusView

log = logging.getLogger(__name__)

Record: TypeAlias = ConsumerRecord[bytes, bytes]

CLOSE_SLOW_CONSUMER = 4008
CLOSE_UNAUTHORIZED = 4401
CLOSE_SHUTDOWN = 1001


class Connection:
    """One client socket: a bounded queue of encoded items and a writer that batches them."""

    def __init__(self, websocket: WebSocket, *, max_items: int, send_timeout_s: float) -> None:
        self.websocket = websocket
        self.tenant_id = ""
        self._queue: asyncio.Queue[bytes] = asyncio.Queue(max_items)
        self._send_timeout = send_timeout_s
        self._writer: asyncio.Task[None] | None = None
        self.subscriptions: dict[str, Subscription] = {}
        self.closed = asyncio.Event()
        self.close_reason = ""

    def start(self) -> None:
        self._writer = asyncio.create_task(self._write_loop(), name="ws-writer")

    def push(self, item: bytes) -> None:
        if self.closed.is_set():
            return
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            self.kill(CLOSE_SLOW_CONSUMER, "slow consumer: send buffer overflowed")

    async def send_json(self, message: dict[str, object]) -> None:
        self.push(b"\x00" + orjson.dumps(message))

    def kill(self, code: int, reason: str) -> None:
        if self.closed.is_set():
            return
        self.close_reason = reason
        self.closed.set()
        if self._writer is not None:
            self._writer.cancel()
        asyncio.get_running_loop().create_task(self._close(code, reason))

    async def _close(self, code: int, reason: str) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.websocket.close(code=code, reason=reason), 2.0)

    async def _write_loop(self) -> None:
        queue = self._queue
        while True:
            item = await queue.get()
            items = [item]
            while not queue.empty() and len(items) < 256:
                items.append(queue.get_nowait())
            try:
                for frame in _frames(items):
                    await asyncio.wait_for(self.websocket.send_text(frame), self._send_timeout)
            except TimeoutError:
                self.kill(CLOSE_SLOW_CONSUMER, "slow consumer: send timed out")
                return
            except Exception:
                self.closed.set()
                return

    async def aclose(self) -> None:
        self.closed.set()
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer


def _frames(items: list[bytes]) -> list[str]:
    """Control messages go alone; consecutive events share one ``events`` frame."""
    frames: list[str] = []
    events: list[bytes] = []
    for item in items:
        if item[:1] == b"\x00":
            if events:
                frames.append(_events_frame(events))
                events = []
            frames.append(item[1:].decode())
        else:
            events.append(item)
    if events:
        frames.append(_events_frame(events))
    return frames


def _events_frame(events: list[bytes]) -> str:
    return (b'{"type":"events","events":[' + b",".join(events) + b"]}").decode()


class Subscription:
    def __init__(self, connection: Connection, execution_id: str, *, cursor: int | None) -> None:
        self.connection = connection
        self.execution_id = execution_id
        self._id_json = orjson.dumps(execution_id)
        self.last_offset = cursor if cursor is not None else -1
        self.catching_up = True
        self.buffer: list[Record] = []
        self.attempt = 0
        self.done = False

    def offer(self, record: Record) -> None:
        if self.catching_up:
            self.buffer.append(record)
        else:
            self.deliver(record)

    def deliver(self, record: Record) -> None:
        if self.done or record.offset <= self.last_offset:
            return
        self.last_offset = record.offset
        type_ = header(record.headers, "type") or ""
        attempt = int(header(record.headers, "attempt") or 1)
        if type_ == "execution.started":
            self.attempt = max(self.attempt, attempt)
        if attempt < self.attempt:
            return  # fenced: an older attempt's late event
        self.connection.push(
            b'{"execution_id":'
            + self._id_json
            + b',"cursor":'
            + str(record.offset).encode()
            + b',"event":'
            + (record.value or b"null")
            + b"}"
        )
        if type_ in TERMINAL_TYPES:
            self.done = True


class Bridge:
    def __init__(self, settings: KafkaSettings, status: StatusView) -> None:
        self._settings = settings
        self._topic = settings.topics.events
        self._status = status
        self.status = status
        self._subs: dict[str, set[Subscription]] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._catchups: set[asyncio.Task[None]] = set()

    @property
    def subscriber_count(self) -> int:
        return sum(len(s) for s in self._subs.values())

    async def start(self) -> None:
        consumer = AIOKafkaConsumer(bootstrap_servers=self._settings.bootstrap, enable_auto_commit=False, client_id="bridge-tail")
        await consumer.start()
        tps = await _partitions(consumer, self._topic)
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        for tp in tps:
            await consumer.position(tp)
        self._consumer = consumer
        self._task = asyncio.create_task(self._tail(consumer), name="bridge-tail")

    async def stop(self) -> None:
        for task in [*self._catchups, *([self._task] if self._task else [])]:
            task.cancel()
        for task in [*self._catchups, *([self._task] if self._task else [])]:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._task = None
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    async def _tail(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            try:
                batches = await consumer.getmany(timeout_ms=500, max_records=5000)
            except KafkaError as exc:
                log.warning("bridge tail: %s; retrying", exc)
                await asyncio.sleep(1)
                continue
            for records in batches.values():
                for record in records:
                    if header(record.headers, "type") in TERMINAL_TYPES:
                        self._record_terminal(record)
                    subs = self._subs.get(record.key.decode()) if record.key else None
                    if subs:
                        for sub in tuple(subs):
                            sub.offer(record)
                            if sub.done:
                                self._unregister(sub)

    def _record_terminal(self, record: Record) -> None:
        """Apply a terminal event to the status view at once, so GET agrees with what clients just saw."""
        try:
            event = EventAdapter.validate_json(record.value or b"")
        except ValidationError:
            return
        current = self._status.get(event.execution_id)
        if current is None or current.terminal:
            return
        update: dict[str, object] = {"attempt": max(current.attempt, event.attempt), "updated_at": event.ts}
        if isinstance(event, ExecutionCompleted):
            update |= {"state": "completed", "output": event.output, "usage": event.usage}
        elif isinstance(event, ExecutionFailed):
            update |= {"state": "failed", "error": event.reason}
        elif isinstance(event, ExecutionCancelled):
            update |= {"state": "cancelled", "error": event.reason}
        else:
            return
        self._status.apply(current.model_copy(update=update))

    def subscribe(self, connection: Connection, status: ExecutionStatus, *, cursor: int | None) -> Subscription:
        sub = Subscription(connection, status.execution_id, cursor=cursor)
        self._subs.setdefault(status.execution_id, set()).add(sub)
        connection.subscriptions[status.execution_id] = sub
        task = asyncio.create_task(self._catch_up(sub), name=f"catch-up-{status.execution_id}")
        self._catchups.add(task)
        task.add_done_callback(self._catchups.discard)
        return sub

    def unsubscribe(self, connection: Connection, execution_id: str) -> None:
        sub = connection.subscriptions.pop(execution_id, None)
        if sub is not None:
            self._unregister(sub)

    def _unregister(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.execution_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[sub.execution_id]
        sub.connection.subscriptions.pop(sub.execution_id, None)

    async def _catch_up(self, sub: Subscription) -> None:
        try:
            start = await self._start_offset(sub)
            if start is not None:
                status = self._status.get(sub.execution_id)
                assert status is not None and status.events_partition is not None
                tp = TopicPartition(status.events_topic or self._topic, status.events_partition)
                await self._read_range(sub, tp, max(start, sub.last_offset + 1))
            for record in sorted(sub.buffer, key=lambda r: r.offset):
                sub.deliver(record)
            sub.buffer.clear()
            sub.catching_up = False
            if sub.done:
                self._unregister(sub)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("catch-up of %s failed", sub.execution_id)
            await sub.connection.send_json({"type": "error", "execution_id": sub.execution_id, "error": f"catch-up failed: {exc}"})
            self._unregister(sub)

    async def _start_offset(self, sub: Subscription) -> int | None:
        """Where this execution's events begin; None if every event will arrive live (buffered)."""
        while True:
            status = self._status.get(sub.execution_id)
            if status is not None and status.events_start_offset is not None:
                return status.events_start_offset
            if any(header(r.headers, "type") == "execution.started" for r in sub.buffer):
                return None
            await self._status.wait_until(sub.execution_id, lambda s: s.events_start_offset is not None or s.terminal, timeout=0.5)

    async def _read_range(self, sub: Subscription, tp: TopicPartition, start: int) -> None:
        reader = AIOKafkaConsumer(bootstrap_servers=self._settings.bootstrap, enable_auto_commit=False, client_id="bridge-catch-up")
        await reader.start()
        try:
            reader.assign([tp])
            end = (await reader.end_offsets([tp]))[tp]
            if start >= end:
                return
            reader.seek(tp, start)
            key = sub.execution_id.encode()
            while not sub.done:
                batch = await reader.getmany(tp, timeout_ms=1000, max_records=2000)
                for record in batch.get(tp, ()):
                    if record.offset >= end:
                        return
                    if record.key == key:
                        sub.deliver(record)
                if await reader.position(tp) >= end:
                    return
        finally:
            await reader.stop()

    async def close_connection(self, connection: Connection) -> None:
        for execution_id in list(connection.subscriptions):
            self.unsubscribe(connection, execution_id)
        await connection.aclose()


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> Sequence[TopicPartition]:
    for _ in range(100):
        partitions = consumer.partitions_for_topic(topic)
        if partitions:
            return [TopicPartition(topic, p) for p in sorted(partitions)]
        await consumer._client.force_metadata_update()
        await asyncio.sleep(0.1)
    raise RuntimeError(f"topic {topic} has no partitions")


def websocket_open(websocket: WebSocket) -> bool:
    return websocket.client_state == WebSocketState.CONNECTED
