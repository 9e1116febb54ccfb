"""An idle reader does not poll the broker in a tight loop (issue 14: an idle stack is quiet), and its
long poll still hands over a record as soon as one arrives. On the real broker; the fetch requests
are counted where aiokafka's fetcher hands them to its client, the one place every request passes."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from schemas.topics import Topics
from services.common.reader import Reader
from services.common.settings import KafkaSettings
from services.common.sources import KafkaSource, Record, open_group, open_tail

pytestmark = pytest.mark.kafka

IDLE_S = 3.0  # aiokafka's default (a fetch every 500 ms) makes about 6 requests in this window


def count_fetches(source: KafkaSource) -> list[int]:
    """Count the consumer's Fetch requests (its client's ``send``, wrapped on this one instance)."""
    client: Any = source.consumer._client
    send: Callable[..., Awaitable[Any]] = client.send
    counted = [0]

    async def counting(node_id: int, request: Any, *args: Any, **kwargs: Any) -> Any:
        if type(request).__name__.startswith("FetchRequest"):
            counted[0] += 1
        return await send(node_id, request, *args, **kwargs)

    client.send = counting
    return counted


async def _topic(settings: KafkaSettings) -> str:
    topic = f"{settings.topic_prefix}idle"
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()
    return topic


async def _idle_then_one_record(settings: KafkaSettings, topic: str, source: KafkaSource) -> tuple[int, list[Record]]:
    fetches = count_fetches(source)
    got: list[Record] = []
    reader = Reader("idle-test", source, got.append, topics=Topics(prefix=settings.topic_prefix), dlq=None)
    reader.start()
    try:
        async with asyncio.timeout(30):
            while not reader.running:  # its first (empty) fetch came back
                await asyncio.sleep(0.05)
        before = fetches[0]
        await asyncio.sleep(IDLE_S)  # the behaviour under test is what an idle reader does in a while
        idle = fetches[0] - before
        producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(topic, b"{}", key=b"k")
        finally:
            await producer.stop()
        async with asyncio.timeout(30):
            while not got:
                await asyncio.sleep(0.02)
        return idle, got
    finally:
        await reader.stop()


def _quiet(settings: KafkaSettings) -> KafkaSettings:
    # The knob an operator turns for a quieter idle stack (settings.py says what it costs, and why the
    # default stays at aiokafka's 500 ms): readers must honour it, and still get a record at once.
    return settings.model_copy(update={"fetch_max_wait_ms": 5_000})


async def test_an_idle_tail_makes_at_most_two_fetches_in_three_seconds(kafka_settings: KafkaSettings) -> None:
    kafka_settings = _quiet(kafka_settings)
    topic = await _topic(kafka_settings)
    source, _ = await open_tail(kafka_settings, [topic], client_id="idle-tail")
    idle, got = await _idle_then_one_record(kafka_settings, topic, source)
    assert idle <= 2
    assert [r.value for r in got] == [b"{}"]


async def test_an_idle_group_member_makes_at_most_two_fetches_in_three_seconds(kafka_settings: KafkaSettings) -> None:
    kafka_settings = _quiet(kafka_settings)
    topic = await _topic(kafka_settings)
    source = await open_group(kafka_settings, topic, group=f"{kafka_settings.topic_prefix}idle-group", client_id="idle-member")
    idle, got = await _idle_then_one_record(kafka_settings, topic, source)
    assert idle <= 2
    assert [r.value for r in got] == [b"{}"]
