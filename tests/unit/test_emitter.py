"""Token coalescing without a timer (emitter.py), in memory: a producer whose acknowledgements the test
releases, so "a record of this execution is in flight" is something the test decides."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.structs import RecordMetadata, TopicPartition

from schemas.events import EventAdapter, ExecutionCompleted, ExecutionStarted, TokenDelta
from services.common.kafka import header
from services.executor.emitter import EventEmitter

ENVELOPE = {"tenant_id": "t", "execution_id": "e1", "session_id": None, "agent_id": "default", "attempt": 2}


class HeldProducer:
    """The part of AIOKafkaProducer the emitter uses. Records are kept in send order; each one's
    acknowledgement waits until ``ack()`` (``auto_ack``: acknowledged as it is sent)."""

    def __init__(self, *, auto_ack: bool = False, partition: int = 0) -> None:
        self.sent: list[tuple[bytes, list[tuple[str, bytes]]]] = []
        self.partitions: list[int | None] = []  # each send's explicit partition (None: the key's hash decides)
        self.pending: list[asyncio.Future[RecordMetadata]] = []
        self.auto_ack = auto_ack
        self.partition = partition  # where the key's hash puts the records

    async def send(
        self, topic: str, *, value: bytes, key: bytes, headers: Any, partition: int | None = None
    ) -> asyncio.Future[RecordMetadata]:
        self.sent.append((value, list(headers)))
        self.partitions.append(partition)
        future: asyncio.Future[RecordMetadata] = asyncio.get_running_loop().create_future()
        self.pending.append(future)
        if self.auto_ack:
            self.ack()
        return future

    def ack(self) -> None:
        """Acknowledge every record sent so far."""
        for i, future in enumerate(self.pending):
            if not future.done():
                future.set_result(RecordMetadata("events", self.partition, TopicPartition("events", self.partition), i, -1, 0, -1))

    def texts(self) -> list[str]:
        return [orjson.loads(value)["text"] for value, headers in self.sent if header(headers, "type") == "token.delta"]


def emitter_on(producer: HeldProducer, *, max_chars: int = 1000) -> EventEmitter:
    return EventEmitter(cast(AIOKafkaProducer, producer), topic="events", envelope=dict(ENVELOPE), max_chars=max_chars)


async def until(condition: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.001)


async def test_a_token_with_nothing_in_flight_is_sent_at_once() -> None:
    producer = HeldProducer()
    emitter = emitter_on(producer)
    await emitter.text("hello", step=0)
    assert producer.texts() == ["hello"]  # no timer: it is with the producer when text() returns
    emitter.close()


async def test_tokens_arriving_while_a_record_is_in_flight_go_in_one_record_on_its_ack() -> None:
    producer = HeldProducer()
    emitter = emitter_on(producer)
    await emitter.text("a", step=0)
    for delta in ("b", "c", "d"):
        await emitter.text(delta, step=0)
    await asyncio.sleep(0.01)
    assert producer.texts() == ["a"]  # "a" is not acknowledged yet: the rest waits, batched
    producer.ack()
    await until(lambda: len(producer.texts()) == 2)
    assert producer.texts() == ["a", "bcd"]
    assert (emitter.tokens, emitter.token_records) == (4, 2)  # the records-per-token figure: 0.5
    emitter.close()


async def test_records_after_the_first_acknowledgement_name_its_partition_instead_of_hashing_the_key() -> None:
    producer = HeldProducer(partition=4)
    emitter = emitter_on(producer)
    await emitter.text("a", step=0)
    await emitter.text("b", step=0)  # in flight: buffered
    producer.ack()
    await until(lambda: len(producer.sent) == 2)
    await emitter.emit(ExecutionCompleted, output="ab")
    assert producer.partitions == [None, 4, 4]  # until the first ack the key's hash decides (the same partition)
    emitter.close()


async def test_a_slow_stream_sends_each_token_as_it_comes() -> None:
    producer = HeldProducer(auto_ack=True)  # every record acknowledged before the next token comes
    emitter = emitter_on(producer)
    for delta in ("one", " two", " three"):
        await emitter.text(delta, step=0)
        await asyncio.sleep(0)  # the acknowledgement's callbacks run
    assert producer.texts() == ["one", " two", " three"]
    emitter.close()


async def test_a_full_buffer_goes_out_without_waiting_for_the_ack() -> None:
    producer = HeldProducer()
    emitter = emitter_on(producer, max_chars=4)
    await emitter.text("a", step=0)
    for delta in ("bb", "cc", "d"):
        await emitter.text(delta, step=0)
    assert producer.texts() == ["a", "bbcc"]  # 4 characters: sent although "a" is still in flight
    producer.ack()
    await until(lambda: len(producer.texts()) == 3)
    assert producer.texts()[2] == "d"
    emitter.close()


async def test_order_and_seq_are_kept_and_buffered_text_goes_before_the_terminal_event() -> None:
    producer = HeldProducer()
    emitter = emitter_on(producer)
    await emitter.emit(ExecutionStarted, provider="p", model="m")  # in flight: the first token waits for it
    await emitter.text("x", step=0)
    await emitter.text("y", step=0)
    await emitter.emit(ExecutionCompleted, output="xy")
    producer.ack()
    async with asyncio.timeout(5):
        await emitter.drain()
    events = [EventAdapter.validate_json(value) for value, _ in producer.sent]
    assert [e.type for e in events] == ["execution.started", "token.delta", "execution.completed"]
    assert [e.seq for e in events] == [1, 2, 3]
    assert isinstance(events[1], TokenDelta) and events[1].text == "xy"
    assert all(e.attempt == 2 and e.execution_id == "e1" for e in events)
    assert [header(h, "type") for _, h in producer.sent] == [e.type for e in events]
    emitter.close()


async def test_a_new_step_flushes_the_previous_steps_text_first() -> None:
    producer = HeldProducer()
    emitter = emitter_on(producer)
    await emitter.text("a", step=0)
    await emitter.text("b", step=0)  # buffered behind "a"
    await emitter.text("c", step=1)
    producer.auto_ack = True
    producer.ack()
    async with asyncio.timeout(5):
        await emitter.drain()
    steps = [(orjson.loads(v)["text"], orjson.loads(v)["step"]) for v, _ in producer.sent]
    assert steps == [("a", 0), ("b", 0), ("c", 1)]
    emitter.close()


async def test_text_buffered_when_the_stream_pauses_goes_out_on_the_ack_alone() -> None:
    """No later token and no other event: the acknowledgement is what sends it (a model thinking, a tool)."""
    producer = HeldProducer()
    emitter = emitter_on(producer)
    await emitter.text("first", step=0)
    await emitter.text(" second", step=0)
    producer.ack()
    await until(lambda: producer.texts() == ["first", " second"])
    producer.ack()
    async with asyncio.timeout(5):
        await emitter.drain()
    assert producer.texts() == ["first", " second"]
    emitter.close()
