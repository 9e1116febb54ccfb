"""What the orchestrator writes (the request on its lane, status snapshots, a cancel, tenant records)
are CloudEvents in Kafka binary mode, as the CloudEvents SDK's Kafka binding reads them."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from cloudevents.core.bindings.kafka import KafkaMessage, from_binary_event

from services.common.settings import KafkaSettings
from tests.e2e.orchestrator.conftest import Launcher

pytestmark = pytest.mark.kafka


async def _records(kafka: KafkaSettings, topic: str, *, expect: int, timeout: float = 15) -> list[ConsumerRecord[bytes, bytes]]:
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka.bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        while not consumer.partitions_for_topic(topic):
            await consumer._client.force_metadata_update()
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        out: list[ConsumerRecord[bytes, bytes]] = []
        async with asyncio.timeout(timeout):
            while len(out) < expect:
                for records in (await consumer.getmany(timeout_ms=200)).values():
                    out += records
        return out
    finally:
        await consumer.stop()


async def test_requests_snapshots_cancels_and_tenant_records_carry_cloudevents_headers(launch: Launcher, sqlite_url: str) -> None:
    async with launch(sqlite_url, executor=False) as orch:
        execution_id = (await orch.post("/v1/executions", {"input": "hi"})).json()["execution_id"]
        assert (await orch.post(f"/v1/executions/{execution_id}/cancel")).status_code == 202
        topics = orch.kafka.topics
        lane = await _records(orch.kafka, topics.lane("standard"), expect=1)
        status = [r for r in await _records(orch.kafka, topics.status, expect=2) if r.key == execution_id.encode()]
        control = await _records(orch.kafka, topics.control, expect=1)
        tenants = [r for r in await _records(orch.kafka, topics.tenants, expect=2) if r.key == b"tenant-a"]
    seen: dict[str, str] = {}
    for record in [*lane, *status, *control]:
        event = from_binary_event(KafkaMessage(headers=dict(record.headers), key=record.key, value=record.value or b""))
        value = orjson.loads(record.value or b"")
        assert event.get_specversion() == "1.0" and event.get_datacontenttype() == "application/json"
        assert event.get_source() == "/agentstream/orchestrator/tenants/tenant-a"
        assert event.get_subject() == execution_id
        assert event.get_data() == value
        if "event_id" in value:  # an event of the envelope: its own id and time
            assert event.get_id() == value["event_id"] and event.get_type() == value["type"]
        seen[event.get_id()] = event.get_type()
    assert sorted(seen.values()) == ["execution.cancel_requested", "execution.requested", "execution.status", "execution.status"]
    assert tenants, "the orchestrator announces its tenants at start"
    tenant = from_binary_event(KafkaMessage(headers=dict(tenants[-1].headers), key=tenants[-1].key, value=tenants[-1].value or b""))
    assert tenant.get_type() == "tenant.record" and tenant.get_subject() == "tenant-a"
