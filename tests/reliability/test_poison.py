"""Poison and malformed records on every topic the services consume: each lands in the DLQ with a
reason, is counted in metrics, and every consumer keeps going."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from services.common.kafka import header
from services.common.observability.metrics import DLQ_RECORDS
from tests.e2e.conftest import Stack
from tests.support import collect_events

pytestmark = [pytest.mark.kafka, pytest.mark.reliability]

POISON: list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]] = [
    (b"tenant-a", b"{not json", []),
    (b"x", b"\xff\xfe\x00binary", [("type", b"execution.requested")]),
    (b"x", b'{"type": "execution.requested", "input": 5}', []),
    (b"x", b"[1, 2, 3]", [("type", b"token.delta"), ("attempt", b"one")]),
    (None, b'{"type": "token.delta"}', []),
]


async def test_poison_on_every_consumed_topic_is_parked_and_nothing_stalls(stack: Stack) -> None:
    topics = stack.kafka.topics
    consumed = [
        *topics.lanes,
        topics.control,
        topics.status,
        topics.events,
        topics.jobs_completed,
        topics.jobs_requested,
        topics.jobs_updates,
    ]
    before = {t: DLQ_RECORDS.labels(topic=t)._value.get() for t in consumed}
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka.bootstrap)
    await producer.start()
    try:
        for topic in consumed:
            for key, value, headers in POISON:
                if key is None and topic == topics.status:
                    continue  # a compacted topic refuses records without a key: the broker is the guard
                await producer.send_and_wait(topic, key=key, value=value, headers=headers)
    finally:
        await producer.stop()

    # Every consumer keeps going: a whole execution still travels the pipe.
    execution_id = await stack.submit(input="what is 5*5?")
    items = await collect_events(stack.ws_url, "key-a", execution_id)
    assert items[-1]["event"]["type"] == "execution.completed"

    parked: dict[str, set[str]] = {}
    consumer = AIOKafkaConsumer(topics.dlq, bootstrap_servers=stack.kafka.bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        async with asyncio.timeout(30):
            while {t for t in consumed if t in parked} != set(consumed):
                for records in (await consumer.getmany(timeout_ms=1000)).values():
                    for record in records:
                        reason = header(record.headers, "dlq.reason") or ""
                        assert reason, "a DLQ record without a reason"
                        parked.setdefault(header(record.headers, "dlq.topic") or "", set()).add(
                            header(record.headers, "dlq.consumer") or ""
                        )
    except TimeoutError:
        missing = sorted(t for t in consumed if t not in parked)
        raise AssertionError(f"no DLQ record for {missing}; got {parked}") from None
    finally:
        await consumer.stop()
    for topic in consumed:
        assert DLQ_RECORDS.labels(topic=topic)._value.get() > before[topic], f"DLQ records of {topic} not counted"
    print("\nDLQ readers by topic:", {t.removeprefix(topics.prefix): sorted(c) for t, c in parked.items()})
