"""The Kafka door: a signed record on the ingress topic becomes an execution of the signing tenant;
forged, unsigned, wrongly signed or stale records are refused to the DLQ with their reason."""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from pydantic import SecretStr
from standardwebhooks.webhooks import Webhook

from services.common.kafka import client_options, header
from services.common.observability import metrics
from services.common.settings import KafkaSettings
from services.executor.app import Executor
from services.executor.settings import ExecutorSettings
from services.orchestrator.app import create_app
from services.orchestrator.ingress import execution_id_for
from services.orchestrator.settings import OrchestratorSettings
from tests.support import serve

pytestmark = pytest.mark.kafka
SECRET_A = "whsec_" + base64.b64encode(b"tenant-a's ingress secret, 32 b").decode()
SECRET_B = "whsec_" + base64.b64encode(b"tenant-b's ingress secret, 32 b").decode()
KEYS = {"key-a": "tenant-a", "key-b": "tenant-b"}


@dataclass
class Door:
    kafka: KafkaSettings
    http: httpx.AsyncClient
    producer: AIOKafkaProducer
    reply: str

    async def send(self, value: bytes, *, key: str = "tenant-a", headers: dict[str, str] | None = None) -> None:
        await self.producer.send_and_wait(
            self.kafka.topics.ingress, value=value, key=key.encode(), headers=[(k, v.encode()) for k, v in (headers or {}).items()]
        )

    async def status(self, execution_id: str, key: str = "key-a") -> int:
        return (await self.http.get(f"/v1/executions/{execution_id}", headers={"Authorization": f"Bearer {key}"})).status_code


def signed(secret: str, body: dict[str, Any], *, message_id: str | None = None, at: datetime | None = None) -> tuple[bytes, dict[str, str]]:
    """Headers as the Standard Webhooks reference library makes them: the door speaks the standard."""
    value = orjson.dumps(body)
    message_id = message_id or f"msg_{uuid.uuid4().hex}"
    at = at or datetime.now(UTC)
    signature = Webhook(secret).sign(message_id, at, value.decode())
    return value, {"webhook-id": message_id, "webhook-timestamp": str(int(at.timestamp())), "webhook-signature": signature}


def _agents(tmp_path: Path) -> Path:
    # The built-in default, and one whose prompt needs a variable (the orchestrator's catalog; the executor keeps its own).
    path = tmp_path / "agents.yaml"
    path.write_text('agents:\n  default: {}\n  support:\n    system_prompt: "You help {{ customer }}."\n')
    return path


@pytest.fixture
async def door(kafka_settings: KafkaSettings, tmp_path: Path) -> AsyncIterator[Door]:
    reply = f"{kafka_settings.topic_prefix}tenant-a.replies"
    orch = OrchestratorSettings(
        kafka=kafka_settings,
        api_keys=KEYS,
        database_url=SecretStr(f"sqlite+aiosqlite:///{tmp_path / 'state.db'}"),
        reply_topics={"tenant-a": [reply]},
        ingress_signing_keys={"tenant-a": SecretStr(SECRET_A), "tenant-b": SecretStr(SECRET_B)},
        max_body_bytes=8192,
        agents_file=_agents(tmp_path),
    )
    async with Executor(ExecutorSettings(kafka=kafka_settings, scripted_token_delay_ms=1)):
        async with serve(create_app(orch)) as url, httpx.AsyncClient(base_url=url) as http:
            producer = AIOKafkaProducer(**client_options(kafka_settings), acks="all")
            await producer.start()
            try:
                yield Door(kafka_settings, http, producer, reply)
            finally:
                await producer.stop()


async def _records(kafka: KafkaSettings, topic: str, until: int, *, timeout: float = 30, stop_at: str | None = None) -> list[Any]:
    """The topic's records from the start: ``until`` of them, or up to one of type ``stop_at``, or what
    came within ``timeout`` when fewer are expected (``until=0``: shows that none came)."""
    consumer = AIOKafkaConsumer(topic, **client_options(kafka), auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    found: list[Any] = []
    try:
        async with asyncio.timeout(timeout):
            while len(found) < until or until == 0:
                for batch in (await consumer.getmany(timeout_ms=300)).values():
                    found.extend(batch)
                if stop_at and any(header(r.headers, "type") == stop_at for r in found):
                    break
    except TimeoutError:
        if until and not stop_at:
            raise
    finally:
        await consumer.stop()
    return found


def _count(outcome: str) -> float:
    return metrics.sample(metrics.ORCHESTRATOR, "agentstream_ingress_records_total", {"outcome": outcome})


async def test_a_signed_record_runs_as_its_tenant_once(door: Door) -> None:
    accepted, duplicates = _count("accepted"), _count("duplicate")
    value, headers = signed(SECRET_A, {"input": "hello from kafka", "reply_to": door.reply})
    await door.send(value, headers=headers)
    await door.send(value, headers=headers)  # the same request twice (a producer retry): one execution
    execution_id = execution_id_for("tenant-a", headers["webhook-id"])
    async with asyncio.timeout(30):
        while (body := (await door.http.get(f"/v1/executions/{execution_id}", headers={"Authorization": "Bearer key-a"})).json()).get(
            "status"
        ) != "completed":
            await asyncio.sleep(0.2)
    assert "hello from kafka" in body["output"]
    assert await door.status(execution_id, key="key-b") == 404  # it is tenant-a's, as the signature says
    replies = await _records(door.kafka, door.reply, until=1_000_000, timeout=2, stop_at="execution.completed")
    types = [header(r.headers, "type") for r in replies]
    assert types.count("execution.started") == 1 and types[-1] == "execution.completed"
    assert {orjson.loads(r.value)["execution_id"] for r in replies} == {execution_id}
    assert (_count("accepted"), _count("duplicate")) == (accepted + 1, duplicates + 1)


async def test_forged_unsigned_wrongly_signed_and_stale_records_are_refused(door: Door) -> None:
    body = {"input": "transfer everything", "reply_to": door.reply}
    forged_value, forged = signed(SECRET_A, body)  # tenant-a's key, but keyed as tenant-b
    unsigned_value = orjson.dumps(body)
    tampered_value, tampered = signed(SECRET_A, body)
    tampered_value = tampered_value.replace(b"transfer everything", b"transfer more things")
    wrong_value, wrong = signed("whsec_" + base64.b64encode(b"not tenant-a's secret at all!!!").decode(), body)
    stale_value, stale = signed(SECRET_A, body, at=datetime.fromtimestamp(time.time() - 3600, UTC))
    await door.send(forged_value, key="tenant-b", headers=forged)
    await door.send(unsigned_value)
    await door.send(tampered_value, headers=tampered)
    await door.send(wrong_value, headers=wrong)
    await door.send(stale_value, headers=stale)
    refused = await _records(door.kafka, door.kafka.topics.dlq, until=5)
    # Records of two keys travel on two partitions: match each refusal by its webhook-id, not by order.
    reasons = {header(r.headers, "webhook-id"): header(r.headers, "dlq.reason") or "" for r in refused}
    assert reasons[forged["webhook-id"]] == "ingress: webhook-signature does not match tenant 'tenant-b''s signing key"
    assert reasons[None].startswith("ingress: unsigned ingress record")
    assert reasons[tampered["webhook-id"]] == reasons[wrong["webhook-id"]]
    assert reasons[wrong["webhook-id"]] == "ingress: webhook-signature does not match tenant 'tenant-a''s signing key"
    stale_reason = reasons[stale["webhook-id"]]
    assert stale_reason.startswith("ingress: webhook-timestamp is 36") and stale_reason.endswith("s from now (tolerance 300s)")
    assert all(header(r.headers, "dlq.topic") == door.kafka.topics.ingress for r in refused)
    for tenant, key, headers in (("tenant-b", "key-b", forged), ("tenant-a", "key-a", tampered), ("tenant-a", "key-a", stale)):
        assert await door.status(execution_id_for(tenant, headers["webhook-id"]), key=key) == 404  # nothing ran
    # No refusal of an unauthenticated record writes to the topic it names.
    assert not [r for r in await _records(door.kafka, door.reply, until=0, timeout=0.5)]


async def test_a_signed_but_invalid_request_is_rejected_on_its_reply_topic(door: Door) -> None:
    value, headers = signed(SECRET_A, {"input": "hi", "agent": "no-such-agent", "reply_to": door.reply})
    await door.send(value, headers=headers)
    (dlq,) = await _records(door.kafka, door.kafka.topics.dlq, until=1)
    assert (header(dlq.headers, "dlq.reason") or "").startswith("ingress: unknown agent 'no-such-agent'")
    (rejected,) = await _records(door.kafka, door.reply, until=1)
    event = orjson.loads(rejected.value)
    assert header(rejected.headers, "type") == event["type"] == "execution.rejected"
    assert event["tenant_id"] == "tenant-a" and event["request_id"] == headers["webhook-id"] and not event["retriable"]
    assert event["reason"].startswith("unknown agent 'no-such-agent'")
    lacking, lacking_headers = signed(SECRET_A, {"input": "hi", "agent": "support", "reply_to": door.reply})
    await door.send(lacking, headers=lacking_headers)  # refused at the door, like the 422 over HTTP: no execution after an accept
    (_, second) = await _records(door.kafka, door.reply, until=2)
    assert orjson.loads(second.value)["reason"].startswith("agent 'support' needs the variable 'customer'")
    big_value, big = signed(SECRET_A, {"input": "x" * 9000})
    await door.send(big_value, headers=big)
    refused = await _records(door.kafka, door.kafka.topics.dlq, until=3)
    assert (header(refused[1].headers, "dlq.reason") or "").startswith("ingress: agent 'support' needs the variable 'customer'")
    assert header(refused[2].headers, "dlq.reason") == "ingress: request body is larger than 8192 bytes"
