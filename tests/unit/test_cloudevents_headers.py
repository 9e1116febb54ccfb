"""The DLQ copy of a record stays a CloudEvent: ours keeps its event's attributes, a foreign one gets its own."""

from __future__ import annotations

from aiokafka import ConsumerRecord
from cloudevents.core.base import BaseCloudEvent
from cloudevents.core.bindings.kafka import KafkaMessage, from_binary_event

from schemas.events import TokenDelta
from services.common import dlq
from services.common.kafka import envelope_headers, header


def _record(value: bytes, headers: list[tuple[str, bytes]]) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord("events", 2, 7, 0, 0, b"ex-1", value, None, 4, len(value), headers)


def _parse(headers: list[tuple[str, bytes]], value: bytes | None) -> BaseCloudEvent:
    assert len(dict(headers)) == len(headers), f"a header appears twice: {headers}"
    return from_binary_event(KafkaMessage(headers=dict(headers), key=b"ex-1", value=value or b""))


def test_a_parked_record_of_ours_keeps_its_event_id_type_and_source() -> None:
    event = TokenDelta(tenant_id="t", execution_id="ex-1", text="hi")
    value = event.model_dump_json().encode()
    _, copy, headers = dlq.dlq_copy(_record(value, envelope_headers(event, service="executor")), "bad", consumer="bridge-tail")
    parsed = _parse(headers, copy)
    assert parsed.get_id() == str(event.event_id) and parsed.get_type() == "token.delta"
    assert parsed.get_source() == "/agentstream/executor/tenants/t"


def test_a_parked_foreign_record_becomes_a_dlq_cloud_event_and_keeps_its_own_type_header() -> None:
    _, copy, headers = dlq.dlq_copy(_record(b'{"x": 1}', [("type", b"their.type")]), "bad", consumer="exec 1/status")
    parsed = _parse(headers, copy)
    assert parsed.get_type() == "dlq.record" and parsed.get_subject() == "ex-1"
    assert parsed.get_source() == "/agentstream/dlq/exec%201%2Fstatus"
    assert header(headers, "type") == "their.type"
