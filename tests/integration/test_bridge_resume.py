"""Resume through the bridge when its memory is tiny, on the real broker: several executions stream at
once while clients subscribe at random cursors; each client gets every event of its execution after
its cursor exactly once, in order, whether memory still held it, held only part of it, or dropped it.

Records are produced by hand (no executor), so each execution's offsets are known exactly."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete

from schemas.events import TERMINAL_TYPES
from schemas.status import ExecutionStatus
from services.common.errors import Gone
from services.common.kafka import ensure_topics
from services.common.settings import KafkaSettings
from services.common.statusview import StatusView
from services.orchestrator.bridge import Bridge
from services.orchestrator.sinks import Sink

pytestmark = pytest.mark.kafka

EXECUTIONS = 8
TOKENS = 40  # token.delta records per execution, ~400 bytes each: one execution alone is over the memory bound
MEMORY = 12 * 1024


class Recorder(Sink):
    """A client that keeps what it is sent: the offsets of events, and control messages."""

    def __init__(self) -> None:
        super().__init__(max_bytes=1 << 30)
        self.offsets: list[int] = []
        self.controls: list[dict[str, Any]] = []
        self.finished = asyncio.Event()

    def push_event(self, execution_id_json: bytes, offset: int, type_: str, value: bytes) -> None:
        self.offsets.append(offset)
        if type_ in TERMINAL_TYPES:
            self.finished.set()

    def push_control(self, message: dict[str, Any]) -> None:
        self.controls.append(message)
        if message.get("type") in ("end", "error"):
            self.finished.set()


@dataclass
class Execution:
    id: str
    offsets: list[int] = field(default_factory=list)
    status: ExecutionStatus | None = None


@dataclass
class Client:
    execution: Execution
    cursor: int | None
    sink: Recorder
    expected: list[int] = field(default_factory=list)


async def _send(producer: AIOKafkaProducer, topic: str, execution: Execution, type_: str, n: int) -> tuple[int, int]:
    value = orjson.dumps({"type": type_, "execution_id": execution.id, "n": n, "text": "w" * 300})
    headers = [("type", type_.encode()), ("attempt", b"1"), ("tenant_id", b"tenant-a")]
    meta = await producer.send_and_wait(topic, value, key=execution.id.encode(), headers=headers)
    return meta.partition, meta.offset


async def test_resume_at_random_cursors_with_a_tiny_memory_gets_every_event_once_in_order(kafka_settings: KafkaSettings) -> None:
    await ensure_topics(kafka_settings)
    topic = kafka_settings.topics.events
    status = StatusView(kafka_settings)  # not started: the snapshots are applied here, as the executor's would be
    bridge = Bridge(kafka_settings, status, recent_max_bytes=MEMORY)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_settings.bootstrap, acks="all", linger_ms=0)
    rng = random.Random(7)
    executions = [Execution(f"exec-{i}") for i in range(EXECUTIONS)]
    clients: list[Client] = []

    def resume(execution: Execution) -> None:
        assert execution.status is not None
        cursor = rng.choice([None, *execution.offsets])
        client = Client(execution, cursor, Recorder())
        bridge.attach(client.sink)
        bridge.subscribe(client.sink, execution.status, cursor=cursor)
        clients.append(client)

    await bridge.start()
    await producer.start()
    try:
        # Staggered starts, interleaved records; the memory bound is crossed all along.
        for step in range(3 * EXECUTIONS + TOKENS + 2):
            for i, execution in enumerate(executions):
                n = step - 3 * i
                if n < 0 or n > TOKENS + 1:
                    continue
                type_ = "execution.started" if n == 0 else "execution.completed" if n == TOKENS + 1 else "token.delta"
                partition, offset = await _send(producer, topic, execution, type_, n)
                execution.offsets.append(offset)
                if n == 0:
                    execution.status = ExecutionStatus(
                        execution_id=execution.id,
                        tenant_id="tenant-a",
                        state="running",
                        attempt=1,
                        events_topic=topic,
                        events_partition=partition,
                        events_start_offset=offset,
                    )
                    status.apply(execution.status)
                elif n == TOKENS + 1:
                    assert execution.status is not None
                    execution.status = execution.status.model_copy(update={"state": "completed"})
                    status.apply(execution.status)
                if rng.random() < 0.3:
                    resume(execution)
            await asyncio.sleep(0.12)  # the run spans the bridge's 5 s eviction round, where memory was cut before
        for execution in executions:  # and some after they all ended
            for _ in range(3):
                resume(execution)
        async with asyncio.timeout(60):
            for client in clients:
                await client.sink.finished.wait()
    finally:
        await producer.stop()
        await bridge.stop()

    exact = 0
    for client in clients:
        cursor = -1 if client.cursor is None else client.cursor
        expected = [o for o in client.execution.offsets if o > cursor]
        errors = [c for c in client.sink.controls if c.get("type") == "error"]
        assert not errors, errors
        assert client.sink.offsets == expected, (client.execution.id, client.cursor, client.sink.offsets, expected)
        exact += 1
    dropped = bridge._recent.dropped  # the memory bound was crossed while these ran, or this proves nothing
    assert dropped > 0
    print(f"\n{exact} resumes at random cursors over {EXECUTIONS} executions, each exact; {dropped} executions dropped from memory")


async def test_a_cursor_past_the_retention_boundary_is_not_gone(kafka_settings: KafkaSettings) -> None:
    """Only what the subscriber needs must still be in the topic: after cursor N, not from the first event."""
    await ensure_topics(kafka_settings)
    topic = kafka_settings.topics.events
    producer = AIOKafkaProducer(bootstrap_servers=kafka_settings.bootstrap, acks="all")
    await producer.start()
    execution = Execution("exec-old")
    try:
        for n in range(10):
            partition, offset = await _send(producer, topic, execution, "execution.completed" if n == 9 else "token.delta", n)
            execution.offsets.append(offset)
    finally:
        await producer.stop()
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_settings.bootstrap)
    await admin.start()
    try:  # retention, by hand: the first five records are gone
        await admin.delete_records({TopicPartition(topic, partition): RecordsToDelete(execution.offsets[5])})
    finally:
        await admin.close()
    status = StatusView(kafka_settings)
    done = ExecutionStatus(
        execution_id=execution.id,
        tenant_id="tenant-a",
        state="completed",
        attempt=1,
        events_topic=topic,
        events_partition=partition,
        events_start_offset=execution.offsets[0],
    )
    status.apply(done)
    bridge = Bridge(kafka_settings, status)
    await bridge.start()  # after the records: its tail cannot vouch for them
    try:
        with pytest.raises(Gone):
            await bridge.check_retained(done)
        await bridge.check_retained(done, cursor=execution.offsets[6])
        sink = Recorder()
        bridge.attach(sink)
        bridge.subscribe(sink, done, cursor=execution.offsets[6])
        async with asyncio.timeout(30):
            await sink.finished.wait()
    finally:
        await bridge.stop()
    assert sink.offsets == execution.offsets[7:]
