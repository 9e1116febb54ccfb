"""The bridge: fans execution events from Kafka out to subscribed clients (WebSocket and SSE).

One tail consumer reads every partition of the events topic (and of the allowed reply topics) from
where they were at start, and routes records by key (execution_id) to subscriptions, without
parsing values: type and attempt travel in headers, and the value's JSON bytes are spliced into
what the client gets. The tail also keeps the records of recent executions in memory, so a late
subscriber to an execution the bridge saw from its first event is served without touching Kafka.

A subscription first catches up from the execution's first event (or the client's cursor) — from
that memory, or with a short-lived reader when the execution began before this bridge did —
buffering live records meanwhile, then switches to live. Deliveries are deduplicated by offset, so
every event after the cursor arrives exactly once and in order. Events of an attempt older than
the newest ``execution.started`` seen are dropped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine, Iterable
from typing import Any, TypeAlias

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from pydantic import ValidationError

from schemas.events import TERMINAL_TYPES, EventAdapter, ExecutionCancelled, ExecutionCompleted, ExecutionFailed
from schemas.status import ExecutionStatus
from services.common.dlq import park
from services.common.kafka import client_options, header
from services.common.observability import metrics
from services.common.observability.tracing import delivery_spans
from services.common.settings import KafkaSettings
from services.common.statusview import StatusView
from services.common.tail import Batches, open_tail, run_tail
from services.orchestrator.sinks import CLOSE_SHUTDOWN, Sink

log = logging.getLogger(__name__)

Record: TypeAlias = ConsumerRecord[bytes, bytes]


class Gone(Exception):
    """The execution's events are past the topic's retention (HTTP 410)."""


class Subscription:
    def __init__(self, sink: Sink, execution_id: str, *, cursor: int | None) -> None:
        self.sink = sink
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
            if record.timestamp and header(record.headers, "type") == "token.delta":
                metrics.TOKEN_DELIVERY.observe(max(0.0, time.time() - record.timestamp / 1000))
            self.deliver(record)

    def deliver(self, record: Record) -> None:
        if self.done:
            return
        if record.offset <= self.last_offset:
            type_ = header(record.headers, "type") or ""
            if type_ in TERMINAL_TYPES:
                self.end(type_.removeprefix("execution."))  # the client's cursor is at or past the end: it has seen it all
            return
        self.last_offset = record.offset
        type_ = header(record.headers, "type") or ""
        attempt = int(header(record.headers, "attempt") or 1)
        if type_ == "execution.started":
            self.attempt = max(self.attempt, attempt)
        if attempt < self.attempt:
            return  # fenced: an older attempt's late event
        self.sink.push_event(self._id_json, record.offset, type_, record.value or b"null")
        if type_ in TERMINAL_TYPES:
            self.done = True

    def end(self, state: str | None = None) -> None:
        """Finish without a terminal event to deliver (the cursor is past it, or the execution has none,
        like one cancelled while queued): tell the client, so an SSE response or a waiting client ends."""
        if not self.done:
            self.done = True
            self.sink.push_control({"type": "end", "execution_id": self.execution_id, "status": state, "cursor": self.last_offset})


class RecentRecords:
    """Records of recent executions as the tail saw them, dropped a while after they end."""

    def __init__(self, *, ttl_s: float, max_bytes: int) -> None:
        self._ttl = ttl_s
        self._max_bytes = max_bytes
        self._records: dict[str, list[Record]] = {}
        self._ended: dict[str, float] = {}
        self._bytes = 0

    def add(self, execution_id: str, record: Record, *, terminal: bool) -> None:
        self._records.setdefault(execution_id, []).append(record)
        self._bytes += len(record.value or b"")
        if terminal:
            self._ended[execution_id] = time.monotonic()

    def get(self, execution_id: str) -> list[Record] | None:
        return self._records.get(execution_id)

    def evict(self) -> None:
        cutoff = time.monotonic() - self._ttl
        for execution_id, ended in list(self._ended.items()):
            if ended < cutoff or self._bytes > self._max_bytes:
                self._drop(execution_id)
        while self._bytes > self._max_bytes and self._records:
            self._drop(next(iter(self._records)))  # oldest first (dicts keep insertion order)

    def _drop(self, execution_id: str) -> None:
        self._ended.pop(execution_id, None)
        for record in self._records.pop(execution_id, ()):
            self._bytes -= len(record.value or b"")


def _malformed(record: Record) -> str | None:
    """What makes a record unfit to forward, checked without parsing its value (clients parse it)."""
    if not record.key:
        return "event record without a key (execution_id)"
    if not header(record.headers, "type"):
        return "event record without a `type` header"
    attempt = header(record.headers, "attempt")
    if attempt is not None and not attempt.isdigit():
        return f"event record with a non-numeric `attempt` header {attempt!r}"
    value = record.value or b""
    if value[:1] != b"{" or value.rstrip()[-1:] != b"}":
        return "event record whose value is not a JSON object"
    return None


class Bridge:
    def __init__(
        self,
        settings: KafkaSettings,
        status: StatusView,
        *,
        dlq: AIOKafkaProducer | None = None,
        reply_topics: Iterable[str] = (),
        recent_ttl_s: float = 120.0,
        recent_max_bytes: int = 256 * 1024 * 1024,
    ) -> None:
        self._settings = settings
        self._dlq = dlq
        self._topics = sorted({settings.topics.events, *reply_topics})
        self.status = status
        self._subs: dict[str, set[Subscription]] = {}
        self._sessions: dict[tuple[str, str], set[Sink]] = {}
        self._sinks: set[Sink] = set()
        self._recent = RecentRecords(ttl_s=recent_ttl_s, max_bytes=recent_max_bytes)
        self._tail_start: dict[TopicPartition, int] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        status.on_new.append(self._on_new_execution)

    @property
    def subscriber_count(self) -> int:
        return sum(len(s) for s in self._subs.values())

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        consumer, self._tail_start = await open_tail(self._settings, self._topics, client_id="bridge-tail")
        self._consumer = consumer
        self._spawn(run_tail(consumer, self._handle, name="bridge tail", max_records=5000), "bridge-tail")
        metrics.STREAM_SUBSCRIPTIONS.add(self, lambda: [((), float(self.subscriber_count))])
        self._spawn(self._evict_loop(), "bridge-evict")

    async def stop(self) -> None:
        metrics.STREAM_SUBSCRIPTIONS.remove(self)
        for sink in list(self._sinks):
            sink.kill(CLOSE_SHUTDOWN, "server shutting down")
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def attach(self, sink: Sink) -> None:
        self._sinks.add(sink)

    def detach(self, sink: Sink) -> None:
        for execution_id in list(sink.subscriptions):
            self.unsubscribe(sink, execution_id)
        for session_id in sink.sessions:
            watchers = self._sessions.get((sink.tenant_id, session_id))
            if watchers is not None:
                watchers.discard(sink)
                if not watchers:
                    del self._sessions[(sink.tenant_id, session_id)]
        sink.sessions.clear()
        self._sinks.discard(sink)

    # -- the tail -------------------------------------------------------------------------
    async def _handle(self, batches: Batches) -> None:
        for records in batches.values():
            rejected: list[tuple[Record, str]] = []
            with delivery_spans(records, self._subs):
                for record in records:
                    problem = _malformed(record)
                    if problem is None:
                        self._dispatch(record)
                    else:
                        rejected.append((record, problem))
            for record, problem in rejected:
                await park(self._dlq, self._settings.topics, record, problem, consumer="bridge-tail")

    def _dispatch(self, record: Record) -> None:
        execution_id = record.key.decode()  # a key is there: checked by _malformed
        terminal = header(record.headers, "type") in TERMINAL_TYPES
        self._recent.add(execution_id, record, terminal=terminal)
        if terminal:
            self._record_terminal(record)
        subs = self._subs.get(execution_id)
        if subs:
            for sub in tuple(subs):
                sub.offer(record)
                if sub.done:
                    self._unregister(sub)

    async def _evict_loop(self) -> None:
        while True:
            await asyncio.sleep(5)
            self._recent.evict()

    def _record_terminal(self, record: Record) -> None:
        """Apply a terminal event to the status view at once, so GET agrees with what clients just saw."""
        try:
            event = EventAdapter.validate_json(record.value or b"")
        except ValidationError:
            return
        current = self.status.get(event.execution_id)
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
        self.status.apply(current.model_copy(update=update))

    # -- subscriptions --------------------------------------------------------------------
    def subscribe(self, sink: Sink, status: ExecutionStatus, *, cursor: int | None) -> Subscription:
        existing = sink.subscriptions.get(status.execution_id)
        if isinstance(existing, Subscription):
            return existing
        sub = Subscription(sink, status.execution_id, cursor=cursor)
        self._subs.setdefault(status.execution_id, set()).add(sub)
        sink.subscriptions[status.execution_id] = sub
        self._spawn(self._catch_up(sub), f"catch-up-{status.execution_id}")
        return sub

    def subscribe_session(self, sink: Sink, session_id: str) -> list[ExecutionStatus]:
        """Follow every execution of a session: those there are now, and those that start later."""
        self._sessions.setdefault((sink.tenant_id, session_id), set()).add(sink)
        sink.sessions.add(session_id)
        current = self.status.for_session(sink.tenant_id, session_id)
        for status in current:
            self.subscribe(sink, status, cursor=None)
        return current

    def _on_new_execution(self, status: ExecutionStatus) -> None:
        if status.session_id is None:
            return
        for sink in tuple(self._sessions.get((status.tenant_id, status.session_id), ())):
            sink.push_control({"type": "session.execution", "session_id": status.session_id, "execution_id": status.execution_id})
            self.subscribe(sink, status, cursor=None)

    def unsubscribe(self, sink: Sink, execution_id: str) -> None:
        sub = sink.subscriptions.pop(execution_id, None)
        if isinstance(sub, Subscription):
            self._unregister(sub)

    def _unregister(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.execution_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[sub.execution_id]
        if sub.sink.subscriptions.get(sub.execution_id) is sub:
            del sub.sink.subscriptions[sub.execution_id]

    async def check_retained(self, status: ExecutionStatus) -> None:
        """Raise Gone if the execution's first event is no longer in the topic."""
        if status.events_start_offset is None or status.events_partition is None or self._consumer is None:
            return
        tp = TopicPartition(status.events_topic or self._settings.topics.events, status.events_partition)
        if tp in self._tail_start and status.events_start_offset >= self._tail_start[tp]:
            return
        first = (await self._consumer.beginning_offsets([tp]))[tp]
        if status.events_start_offset < first:
            raise Gone(f"the events of execution {status.execution_id} are past the topic's retention")

    async def _catch_up(self, sub: Subscription) -> None:
        try:
            # Terminal now: its end event (if it has one) is in the log already, acknowledged before the snapshot.
            ended = self.status.get(sub.execution_id)
            start = await self._start_offset(sub)
            if start is not None:
                status = self.status.get(sub.execution_id)
                assert status is not None and status.events_partition is not None
                tp = TopicPartition(status.events_topic or self._settings.topics.events, status.events_partition)
                recent = self._recent.get(sub.execution_id)
                if recent is not None and start >= self._tail_start.get(tp, 1 << 62):
                    for record in recent:  # everything since its first event, as the tail saw it
                        sub.deliver(record)
                else:
                    await self._read_range(sub, tp, max(start, sub.last_offset + 1))
            for record in sorted(sub.buffer, key=lambda r: r.offset):
                sub.deliver(record)
            sub.buffer.clear()
            sub.catching_up = False
            if ended is not None and ended.terminal:
                sub.end(ended.state)  # nothing after the cursor: without this an SSE response would never end
            if sub.done:
                self._unregister(sub)
        except asyncio.CancelledError:
            raise
        except Gone as exc:
            sub.done = True
            sub.sink.push_control({"type": "error", "execution_id": sub.execution_id, "code": 410, "error": str(exc)})
            self._unregister(sub)
        except Exception as exc:
            log.exception("catch-up of %s failed", sub.execution_id)
            sub.done = True
            sub.sink.push_control({"type": "error", "execution_id": sub.execution_id, "error": f"catch-up failed: {exc}"})
            self._unregister(sub)

    async def _start_offset(self, sub: Subscription) -> int | None:
        """Where this execution's events begin; None if every event will arrive live (buffered)."""
        while True:
            status = self.status.get(sub.execution_id)
            if status is not None and status.events_start_offset is not None:
                return status.events_start_offset
            if status is not None and status.terminal:
                return None  # ended before any event (cancelled while queued, timed out): nothing to read
            if any(header(r.headers, "type") == "execution.started" for r in sub.buffer):
                return None
            await self.status.wait_until(sub.execution_id, lambda s: s.events_start_offset is not None or s.terminal, timeout=0.5)

    async def _read_range(self, sub: Subscription, tp: TopicPartition, start: int) -> None:
        reader = AIOKafkaConsumer(**client_options(self._settings), enable_auto_commit=False, client_id="bridge-catch-up")
        await reader.start()
        try:
            reader.assign([tp])
            first = (await reader.beginning_offsets([tp]))[tp]
            if start < first:
                raise Gone(f"the events of execution {sub.execution_id} are past the topic's retention")
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
