"""The bridge's tail as a Reader over the in-memory source: poison is parked, the rest dispatched."""

from __future__ import annotations

import asyncio

from aiokafka import TopicPartition

from services.common.kafka import event_headers, header
from services.common.reader import Reader
from services.common.settings import KafkaSettings
from services.common.sources import MemoryProducer, MemorySource
from services.common.statusview import StatusView
from services.orchestrator.bridge import Bridge


async def test_poison_on_the_tail_is_parked_and_the_records_after_it_are_dispatched() -> None:
    settings = KafkaSettings(topic_prefix="unit.")
    bridge = Bridge(settings, StatusView(settings))
    source, producer = MemorySource(), MemoryProducer()
    topic = settings.topics.events
    good = event_headers(type_="token.delta", tenant_id="t")
    source.append(topic, b'{"n": 1}', key=b"ex-1", headers=good)
    source.append(topic, b'{"n": 2}', key=b"\xff\xfe", headers=good)
    source.append(topic, b'{"n": 3}', key=b"ex-1", headers=[("type", b"token.delta"), ("attempt", "²".encode())])
    source.append(topic, b'{"n": 4}', key=b"ex-1", headers=event_headers(type_="execution.completed", tenant_id="t"))
    reader = Reader("bridge-tail", source, bridge._handle, topics=settings.topics, dlq=producer, fetch_timeout_ms=20)
    reader.start()
    try:
        async with asyncio.timeout(3):
            while len(producer.sent) < 2 or len(bridge._recent.covering("ex-1", TopicPartition(topic, 0), 0) or ()) < 2:
                await asyncio.sleep(0.005)
    finally:
        await reader.stop()
    assert [r.value for r in bridge._recent.covering("ex-1", TopicPartition(topic, 0), 0) or ()] == [b'{"n": 1}', b'{"n": 4}']
    assert [header(h, "dlq.reason") for _, _, _, h in producer.sent] == [
        "event record whose key (execution_id) is not UTF-8",
        "event record with a non-numeric `attempt` header '²'",
    ]
    assert reader.restarts == 0
