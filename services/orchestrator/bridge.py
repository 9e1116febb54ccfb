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
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Coroutine, Iterable, Iterator, Sequence
from typing import Any, Protocol, TypeAlias

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from pydantic import ValidationError

from schemas.events import TERMINAL_TYPES, EventAdapter, ExecutionCancelled, ExecutionCompleted, ExecutionFailed
from schemas.status import ExecutionStatus
from services.common.errors import Gone, PoisonRecord
from services.common.kafka import client_options, header
from services.common.observability import metrics
from services.common.observability.tracing import delivery_spans
from services.common.reader import Reader
from services.common.settings import KafkaSettings
from services.common.sources import KafkaSource, open_tail
from services.common.statusview import StatusView
from services.common.taskset import TaskSet
from services.orchestrator.sinks import CLOSE_SHUTDOWN, EventItem, Sink

log = logging.getLogger(__name__)

Record: TypeAlias = ConsumerRecord[bytes, bytes]


_STARTED_KEPT = 200_000  # executions whose newest start the tail remembers (~100 bytes each)


class Subscription:
    """One client's view of one execution: catch-up, then live; deduplicated by offset; fenced by attempt.

    ``attempt`` is the newest attempt known to have started: for a client resuming past the newest
    attempt's start, from the status view (``resumed_attempt``), then from every ``execution.started``
    seen, including those at or before the client's cursor. Nothing of an older attempt is delivered
    once a newer one started: not its tokens, not the terminal event a paused executor writes after
    waking, and not to a client resuming past the start. A client reading from the first event sees
    the older attempt up to the newer one's start, as a live client did, so a replay is the same stream.
    """

    def __init__(self, sink: Sink, execution_id: str, *, cursor: int | None, attempt: int = 0) -> None:
        self.sink = sink
        self.execution_id = execution_id
        self.id_json = orjson.dumps(execution_id)
        self.last_offset = cursor if cursor is not None else -1
        self.catching_up = True
        self.buffer: list[EventRecord] = []
        self.attempt = attempt
        self.done = False

    @staticmethod
    def resumed_attempt(status: ExecutionStatus, cursor: int | None) -> int:
        """The attempt a client resuming after ``cursor`` already saw start: the status view's, if the
        cursor is at or past where it started (its ``running`` snapshot is written after that start
        is in the log, and holds its offset); else 0, and the records themselves tell."""
        # A resumed attempt's events start before its own start (at the events it reuses): compare with the latter.
        start = status.attempt_start_offset if status.attempt_start_offset is not None else status.events_start_offset
        return status.attempt if cursor is not None and start is not None and cursor >= start else 0

    def offer(self, record: EventRecord, item: EventItem | None = None) -> None:
        if self.catching_up:
            self.buffer.append(record)
        else:
            self.deliver(record, item)

    def deliver(self, record: EventRecord, item: EventItem | None = None) -> None:
        """``item``: the record as every live subscriber gets it (built once by the bridge); else built here."""
        if self.done:
            return
        type_ = item.type if item is not None else header(record.headers, "type") or ""
        attempt = _attempt(record)
        if type_ == "execution.started":
            self.attempt = max(self.attempt, attempt)
        fenced = attempt < self.attempt  # an older attempt's event, written after a newer one started
        if record.offset <= self.last_offset:
            if type_ in TERMINAL_TYPES and not fenced:
                self.end(type_.removeprefix("execution."))  # the client's cursor is at or past the end: it has seen it all
            return
        self.last_offset = record.offset
        if fenced:
            return
        self.sink.push_shared(item if item is not None else EventItem(self.id_json, record.offset, type_, record.value or b"null"))
        if type_ in TERMINAL_TYPES:
            self.done = True

    def end(self, state: str | None = None) -> None:
        """Finish without a terminal event to deliver (the cursor is past it, or the execution has none,
        like one cancelled while queued): tell the client, so an SSE response or a waiting client ends."""
        if not self.done:
            self.done = True
            self.sink.push_control({"type": "end", "execution_id": self.execution_id, "status": state, "cursor": self.last_offset})


class EventRecord(Protocol):
    """What a subscription reads of a record: a ``ConsumerRecord`` from the tail or a range read, or
    the compact copy memory holds (``Kept``)."""

    @property
    def offset(self) -> int: ...

    @property
    def value(self) -> bytes | None: ...

    @property
    def headers(self) -> Sequence[tuple[str, bytes]]: ...


class Kept:
    """A record as memory holds it for late subscribers: its offset, its value (the same bytes object
    the tail read, not a copy) and only the two headers delivery reads (``type``, ``attempt``), as a
    tuple shared by every record with the same pair. A ``ConsumerRecord`` with its headers was ~39
    allocations; 31,000 of them held for two minutes after 500 streams pinned the orchestrator's heap
    (RSS +60-85 % of idle after the memory was freed: docs/performance.md)."""

    __slots__ = ("headers", "offset", "value")

    def __init__(self, offset: int, value: bytes | None, headers: tuple[tuple[str, bytes], ...]) -> None:
        self.offset, self.value, self.headers = offset, value, headers


_KEPT_OVERHEAD = 100  # a Kept and its offset, beyond the value (its headers are shared)
_SHARED_HEADERS: dict[tuple[str, str | None], tuple[tuple[str, bytes], ...]] = {}
_SHARED_HEADERS_MAX = 4096  # distinct (type, attempt) pairs kept; past it a record gets its own tuple


def _kept(record: Record, type_: str) -> Kept:
    attempt = header(record.headers, "attempt")
    pair = (type_, attempt)
    headers = _SHARED_HEADERS.get(pair)
    if headers is None:
        headers = (("type", type_.encode()),) + ((("attempt", attempt.encode()),) if attempt is not None else ())
        if len(_SHARED_HEADERS) < _SHARED_HEADERS_MAX:
            _SHARED_HEADERS[pair] = headers
    return Kept(record.offset, record.value, headers)


class _Held:
    """What memory holds of one execution: every record of it on one partition from ``records[0]`` on."""

    __slots__ = ("bytes", "partition", "records", "topic")

    def __init__(self, record: Record) -> None:
        self.topic, self.partition = record.topic, record.partition
        self.records: list[Kept] = []
        self.bytes = 0


class RecentRecords:
    """Records of recent executions as the tail saw them, so a late subscriber is served from memory.

    Bounded by time (dropped ``ttl_s`` after their terminal event) and by bytes (checked on every add:
    executions that ended go first, earliest ended first, then the oldest running ones). An execution is
    only ever dropped whole, and one dropped while still running starts over from its next record, so
    what memory holds of an execution is complete from its first held offset on; ``covering`` answers
    only when that reaches back to where a reader must start, and the reader goes to Kafka otherwise.
    """

    def __init__(self, *, ttl_s: float, max_bytes: int) -> None:
        self._ttl = ttl_s
        self._max_bytes = max_bytes
        self._held: dict[str, _Held] = {}  # insertion order: oldest first
        self._ended: dict[str, float] = {}  # insertion order: earliest ended first
        self.bytes = 0
        self.dropped = 0  # executions dropped by the byte bound, for tests and metrics

    def add(self, execution_id: str, record: Record, *, terminal: bool, type_: str = "") -> None:
        held = self._held.get(execution_id)
        if held is not None and (held.topic, held.partition) != (record.topic, record.partition):
            self._drop(execution_id)  # one key is one partition; a second reply topic starts over rather than mixing
            held = None
        if held is None:
            held = self._held[execution_id] = _Held(record)
        kept = _kept(record, type_ or header(record.headers, "type") or "")
        size = len(record.value or b"") + _KEPT_OVERHEAD
        held.records.append(kept)
        held.bytes += size
        self.bytes += size
        if terminal:
            self._ended.pop(execution_id, None)
            self._ended[execution_id] = time.monotonic()
        if self.bytes > self._max_bytes:
            self._shrink()

    def covering(self, execution_id: str, tp: TopicPartition, start: int) -> list[Kept] | None:
        """Every held record of the execution if memory holds all of them on ``tp`` from ``start`` on, else None."""
        held = self._held.get(execution_id)
        if held is None or (held.topic, held.partition) != (tp.topic, tp.partition) or held.records[0].offset > start:
            return None
        return held.records

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        """The tail skipped records on these partitions (a restart from a new position, a seek): what
        memory holds there is no longer known to be whole, so it is dropped."""
        lost = {(tp.topic, tp.partition) for tp in partitions}
        for execution_id, held in list(self._held.items()):
            if (held.topic, held.partition) in lost:
                self._drop(execution_id)

    def evict(self) -> None:
        cutoff = time.monotonic() - self._ttl
        for execution_id, ended in list(self._ended.items()):
            if ended >= cutoff:
                break
            self._drop(execution_id)
        self._shrink()

    def _shrink(self) -> None:
        while self.bytes > self._max_bytes and self._held:
            self._drop(next(iter(self._ended)) if self._ended else next(iter(self._held)))
            self.dropped += 1

    def _drop(self, execution_id: str) -> None:
        self._ended.pop(execution_id, None)
        held = self._held.pop(execution_id, None)
        if held is not None:
            self.bytes -= held.bytes


# How long a catching-up subscription waits for its execution's start before it looks again (it is
# woken at once by the status view, or by the tail when the start comes by: Bridge._dispatch).
START_RECHECK_S = 0.5


def _started_in(buffer: Sequence[EventRecord]) -> bool:
    """The subscription buffered its execution's start while catching up: every event comes live."""
    return any(header(r.headers, "type") == "execution.started" for r in buffer)


def _attempt(record: EventRecord) -> int:
    """The attempt that wrote a record (header; checked numeric by ``_malformed``); 1 if absent."""
    value = header(record.headers, "attempt")
    return int(value) if value is not None and value.isdigit() else 1


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
        # The newest ``execution.started`` attempt the tail saw, per execution: apart from the memory
        # above, which may drop an execution whole; bounded (oldest first out).
        self._started: OrderedDict[str, int] = OrderedDict()
        self._tail_start: dict[TopicPartition, int] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self.reader: Reader | None = None
        self._tasks = TaskSet("bridge", log=log)  # the evict loop, catch-ups
        self._held: list[Sink] = []  # sinks collecting this tail batch's events into one frame each
        status.on_new.append(self._on_new_execution)

    @property
    def subscriber_count(self) -> int:
        return sum(len(s) for s in self._subs.values())

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        source, self._tail_start = await open_tail(self._settings, self._topics, client_id="bridge-tail")
        self._consumer = source.consumer

        async def reopen() -> KafkaSource:  # after the tail died: a new consumer, positioned by the reader
            new, _ = await open_tail(self._settings, self._topics, client_id="bridge-tail")
            self._consumer = new.consumer
            return new

        self.reader = Reader(
            "bridge-tail",
            source,
            self._handle,
            topics=self._settings.topics,
            dlq=self._dlq,
            max_records=5000,
            around_batch=self._batch,
            positions=self._tail_start,
            reopen=reopen,
        )
        self.reader.start()
        metrics.STREAM_SUBSCRIPTIONS.add(self, lambda: [((), float(self.subscriber_count))])
        self._spawn(self._evict_loop(), "bridge-evict")

    async def stop(self) -> None:
        metrics.STREAM_SUBSCRIPTIONS.remove(self)
        for sink in list(self._sinks):
            sink.kill(CLOSE_SHUTDOWN, "server shutting down")
        await self._tasks.stop()
        reader, self.reader, self._consumer = self.reader, None, None
        if reader is not None:
            await reader.stop()

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        self._tasks.spawn(coro, name=name)

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
    def _handle(self, record: Record) -> None:
        """One record of the tail (the reader parks it if this raises, and goes on)."""
        problem = _malformed(record)
        attempt = header(record.headers, "attempt")
        if problem is None and attempt is not None and not attempt.isascii():
            problem = f"event record with a non-numeric `attempt` header {attempt!r}"  # "²".isdigit(), yet int() refuses it
        if problem is not None:
            raise PoisonRecord(problem)
        self._dispatch(record)

    def _dispatch(self, record: Record) -> None:
        assert record.key is not None  # checked by _malformed
        try:
            execution_id = record.key.decode()
        except UnicodeDecodeError:
            raise PoisonRecord("event record whose key (execution_id) is not UTF-8") from None
        type_ = header(record.headers, "type")
        terminal = type_ in TERMINAL_TYPES
        self._recent.add(execution_id, record, terminal=terminal, type_=type_ or "")
        if type_ == "execution.started":
            self._started[execution_id] = max(self._started.pop(execution_id, 0), _attempt(record))
            if len(self._started) > _STARTED_KEPT:
                self._started.popitem(last=False)
        if terminal:
            self._record_terminal(record)
        subs = self._subs.get(execution_id)
        if subs and type_ == "execution.started" and any(sub.catching_up for sub in subs):
            # Subscribers waiting for where the events start (_start_offset) learn it from this record,
            # now: not when the running snapshot reaches the status view (under load, hundreds of ms
            # later, while the first tokens waited in their buffers).
            self.status.poke(execution_id)
        if subs:
            subscribed = tuple(subs)
            item = EventItem(subscribed[0].id_json, record.offset, type_ or "", record.value or b"null")  # one for all of them
            live = False
            for sub in subscribed:
                live = live or not sub.catching_up
                if sub.sink.hold():  # what this fetch batch has for it goes as one frame, at the batch's end (Nagle-like)
                    self._held.append(sub.sink)
                try:
                    sub.offer(record, item)
                except Exception:
                    # One subscription's failure ends it; the record is fine for the others (and not parked).
                    log.exception("subscription to %s failed on %s@%s; ending it", execution_id, record.partition, record.offset)
                    sub.done = True
                    with contextlib.suppress(Exception):
                        sub.sink.push_control({"type": "error", "execution_id": execution_id, "error": "internal error; subscribe again"})
                if sub.done:
                    self._unregister(sub)
            if live and type_ == "token.delta" and record.timestamp:
                # Once per record, not per subscriber: the same moment for all of them (1,000 observes a token cost 5 % of a fan-out).
                metrics.TOKEN_DELIVERY.observe(max(0.0, time.time() - record.timestamp / 1000))

    @contextlib.contextmanager
    def _batch(self, records: list[Record]) -> Iterator[None]:
        """Around one fetch batch (one partition) of the tail: its spans, then every held sink's frame
        (also when the batch ends in an error: a sink left holding would never send again)."""
        try:
            with delivery_spans(records, self._subs):
                yield
        finally:
            held, self._held = self._held, []
            for sink in held:
                sink.flush()

    async def _evict_loop(self) -> None:
        while True:
            await asyncio.sleep(5)
            self._recent.evict()

    def _record_terminal(self, record: Record) -> None:
        """Apply a terminal event to the status view at once, so GET agrees with what clients just saw.

        Not an older attempt's: the end a paused executor writes after a newer attempt started is
        not the execution's end (the tail saw that start in the same partition, before this record).
        """
        try:
            event = EventAdapter.validate_json(record.value or b"")
        except ValidationError:
            return
        current = self.status.get(event.execution_id)
        if current is None or current.terminal:
            return
        if event.attempt < max(current.attempt, self._newest_started(event.execution_id)):
            return
        update: dict[str, object] = {"attempt": event.attempt, "updated_at": event.ts}
        if isinstance(event, ExecutionCompleted):
            update |= {"state": "completed", "output": event.output, "usage": event.usage}
            if event.handed_off_to is not None:  # as the executor's completed snapshot says it (issue 20): this one wins
                update["extra"] = current.extra | {"handed_off_to": event.handed_off_to}
        elif isinstance(event, ExecutionFailed):
            update |= {"state": "failed", "error": event.reason}
        elif isinstance(event, ExecutionCancelled):
            update |= {"state": "cancelled", "error": event.reason}
        else:
            return
        self.status.apply(current.model_copy(update=update))

    def _newest_started(self, execution_id: str) -> int:
        """The newest attempt whose ``execution.started`` the tail has seen (0: none it still remembers)."""
        return self._started.get(execution_id, 0)

    # -- subscriptions --------------------------------------------------------------------
    def subscribe(self, sink: Sink, status: ExecutionStatus, *, cursor: int | None) -> Subscription:
        existing = sink.subscriptions.get(status.execution_id)
        if isinstance(existing, Subscription):
            return existing
        sub = Subscription(sink, status.execution_id, cursor=cursor, attempt=Subscription.resumed_attempt(status, cursor))
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

    async def check_retained(self, status: ExecutionStatus, *, cursor: int | None = None) -> None:
        """Raise Gone if the first event a subscriber needs (the execution's first, or the one after
        ``cursor``) is no longer in the topic."""
        if status.events_start_offset is None or status.events_partition is None or self._consumer is None:
            return
        needed = max(status.events_start_offset, -1 if cursor is None else cursor + 1)
        tp = TopicPartition(status.events_topic or self._settings.topics.events, status.events_partition)
        if tp in self._tail_start and needed >= self._tail_start[tp]:
            return
        first = (await self._consumer.beginning_offsets([tp]))[tp]
        if needed < first:
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
                needed = max(start, sub.last_offset + 1)
                held = self._recent.covering(sub.execution_id, tp, needed)
                if held is not None:
                    holding = sub.sink.hold()  # the whole catch-up from memory in one frame
                    try:
                        for kept in held:  # all of it from `needed` on, as the tail saw it (deliver skips what the cursor passed)
                            sub.deliver(kept)
                    finally:
                        if holding:
                            sub.sink.flush()
                else:  # older than this bridge, or dropped from memory (even in part): the log has it all
                    await self._read_range(sub, tp, needed)
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
            if _started_in(sub.buffer):
                return None
            await self.status.wait_until(
                sub.execution_id,
                lambda s: s.events_start_offset is not None or s.terminal or _started_in(sub.buffer),
                timeout=START_RECHECK_S,
            )

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
                    if record.key == key and _malformed(record) is None:  # the tail parked those: clients never see them
                        sub.deliver(record)
                if await reader.position(tp) >= end:
                    return
        finally:
            await reader.stop()
