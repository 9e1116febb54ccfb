"""Records we write are CloudEvents in Kafka binary mode: read back from the real broker, the
CloudEvents SDK's Kafka binding parses each into an event whose attributes are ours."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRecord
from cloudevents.core.base import BaseCloudEvent
from cloudevents.core.bindings.kafka import KafkaMessage, from_binary_event

from services.common.settings import KafkaSettings
from tests.fakes.openai_server import FakeToolCall, Reply
from tests.integration.executor_harness import TENANT, Harness, running_executor

pytestmark = pytest.mark.kafka


@pytest.fixture
async def harness(kafka_settings: KafkaSettings) -> AsyncIterator[Harness]:
    async with running_executor(kafka_settings) as h:
        yield h


def cloud_event(record: ConsumerRecord[bytes, bytes]) -> BaseCloudEvent:
    """What a CloudEvents consumer makes of the record (the SDK wants one value per header)."""
    headers = dict(record.headers)
    assert len(headers) == len(record.headers), f"a header appears twice: {record.headers}"
    return from_binary_event(KafkaMessage(headers=headers, key=record.key, value=record.value or b""))


async def records_of(
    kafka: KafkaSettings, topic: str, key: bytes, *, until: Any, timeout: float = 20.0
) -> list[ConsumerRecord[bytes, bytes]]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=kafka.bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    found: list[ConsumerRecord[bytes, bytes]] = []
    try:
        async with asyncio.timeout(timeout):
            while not (found and until(found)):
                for records in (await consumer.getmany(timeout_ms=100)).values():
                    found += [r for r in records if r.key == key]
    finally:
        await consumer.stop()
    return found


async def test_every_event_and_status_record_of_an_execution_is_a_binary_mode_cloud_event(harness: Harness) -> None:
    harness.fake.script(
        "tool-model",
        Reply(text=["Let me ", "compute."], tool_calls=[FakeToolCall("calculator", '{"expression": "2+3"}', id="c1")]),
        Reply(text=["5"]),
    )
    execution_id = await harness.submit("tools", "2+3?")
    key = execution_id.encode()
    events = await records_of(
        harness.kafka, harness.kafka.topics.events, key, until=lambda rs: rs[-1].headers[0] == ("type", b"execution.completed")
    )
    types = set()
    for record in events:
        value = orjson.loads(record.value or b"")
        event = cloud_event(record)
        assert event.get_specversion() == "1.0"
        assert event.get_id() == value["event_id"]
        assert event.get_type() == value["type"]
        assert event.get_source() == f"/agentstream/executor/tenants/{TENANT}"
        assert event.get_subject() == execution_id
        time = event.get_time()
        assert isinstance(time, datetime) and time == datetime.fromisoformat(value["ts"])
        assert event.get_datacontenttype() == "application/json"
        assert event.get_data() == value
        types.add(value["type"])
    assert {"execution.started", "token.delta", "tool.call.started", "tool.call.completed", "execution.completed"} <= types
    assert len({cloud_event(r).get_id() for r in events}) == len(events)  # source + id: one event each

    snapshots = await records_of(harness.kafka, harness.kafka.topics.status, key, until=lambda rs: b'"completed"' in (rs[-1].value or b""))
    for record in snapshots:
        event = cloud_event(record)
        assert event.get_type() == "execution.status"
        assert event.get_subject() == execution_id
        assert event.get_source() == f"/agentstream/executor/tenants/{TENANT}"
        data = event.get_data()
        assert isinstance(data, dict) and data["state"] in {"running", "completed"}
    assert len({cloud_event(r).get_id() for r in snapshots}) == len(snapshots)
