"""The executor checks what a lane record asks it to run, whoever wrote it (real broker, real stack).

A record naming another tenant's execution id, a ``reply_to`` outside the tenant's allowlist, no key, a key
that is not the record's tenant, an unknown tenant, empty ids: each is refused to the DLQ with its
reason; a queued execution of that same tenant ends as failed where its client sees it; other
tenants' executions are not touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from pydantic import SecretStr

from schemas.events import ExecutionRequested
from schemas.tenants import TenantRecord
from schemas.topics import Priority
from services.common.kafka import encode, header
from services.common.settings import KafkaSettings
from services.executor.app import Executor
from services.executor.settings import ExecutorSettings
from services.orchestrator.app import create_app
from services.orchestrator.settings import OrchestratorSettings
from tests.support import collect_events, serve

pytestmark = pytest.mark.kafka
KEYS = {"key-a": "tenant-a", "key-b": "tenant-b", "key-c": "tenant-c"}
ADMIN = "admin-secret"


@dataclass
class Lanes:
    kafka: KafkaSettings
    executor: Executor
    http: httpx.AsyncClient
    url: str
    producer: AIOKafkaProducer

    async def submit(self, key: str, **body: Any) -> str:
        r = await self.http.post("/v1/executions", json=body, headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 202, r.text
        return str(r.json()["execution_id"])

    async def get(self, key: str, path: str) -> dict[str, Any]:
        return dict((await self.http.get(path, headers={"Authorization": f"Bearer {key}"})).json())

    async def produce(self, request: ExecutionRequested | bytes, *, key: bytes | None, lane: Priority = "standard") -> None:
        value = request if isinstance(request, bytes) else encode(request)
        await self.producer.send_and_wait(self.kafka.topics.lane(lane), key=key, value=value)


@contextlib.asynccontextmanager
async def start_lanes(kafka: KafkaSettings, tmp_path: Path, **executor: Any) -> AsyncIterator[Lanes]:
    orch = OrchestratorSettings(
        kafka=kafka,
        api_keys=KEYS,
        database_url=SecretStr(f"sqlite+aiosqlite:///{tmp_path / 'state.db'}"),
        reply_topics={"tenant-a": [f"{kafka.topic_prefix}replies.a"]},
        admin_token=SecretStr(ADMIN),
    )
    async with Executor(ExecutorSettings(kafka=kafka, **({"scripted_token_delay_ms": 1} | executor))) as ex:
        async with serve(create_app(orch)) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
            producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap, acks="all")
            await producer.start()
            try:
                yield Lanes(kafka, ex, http, url, producer)
            finally:
                await producer.stop()


@pytest.fixture
async def lanes(kafka_settings: KafkaSettings, tmp_path: Path) -> AsyncIterator[Lanes]:
    async with start_lanes(kafka_settings, tmp_path) as value:
        yield value


async def dlq_reasons(kafka: KafkaSettings, count: int, *, timeout: float = 20) -> list[tuple[bytes | None, str, bytes]]:
    """The first ``count`` DLQ records: (key, reason, value)."""
    consumer = AIOKafkaConsumer(kafka.topics.dlq, bootstrap_servers=kafka.bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    found: list[tuple[bytes | None, str, bytes]] = []
    try:
        async with asyncio.timeout(timeout):
            while len(found) < count:
                for records in (await consumer.getmany(timeout_ms=200)).values():
                    found += [(r.key, header(r.headers, "dlq.reason") or "", r.value or b"") for r in records]
    finally:
        await consumer.stop()
    return found


async def test_a_record_naming_another_tenants_execution_is_refused(kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    # One slot: B's request waits behind C's, and a critical record gets the slot first.
    async with start_lanes(kafka_settings, tmp_path, scripted_token_delay_ms=10, max_concurrency=1) as lanes:
        await lanes.submit("key-c", input="what is 1+1? " + "slow " * 100)
        victim = await lanes.submit("key-b", input="what is 2+2? bee bee bee")
        async with asyncio.timeout(10):
            while lanes.executor.status.get(victim) is None:
                await asyncio.sleep(0.02)
        hijack = ExecutionRequested(tenant_id="tenant-a", execution_id=victim, input="what is 3+3? hijacked by a")
        await lanes.produce(hijack, key=b"tenant-a", lane="critical")

        events = await collect_events(lanes.url.replace("http", "ws", 1), "key-b", victim, timeout=60)
        (key, reason, _), *_ = await dlq_reasons(kafka_settings, 1)
        status = await lanes.get("key-b", f"/v1/executions/{victim}")
    assert key == b"tenant-a" and "belongs to another tenant" in reason
    assert {e["event"]["tenant_id"] for e in events} == {"tenant-b"}
    assert events[-1]["event"]["type"] == "execution.completed"
    assert "bee" in events[-1]["event"]["output"] and "hijacked" not in events[-1]["event"]["output"]
    assert status["status"] == "completed" and "hijacked" not in status["output"]


async def test_a_reply_to_outside_the_allowlist_fails_the_execution_visibly(lanes: Lanes) -> None:
    # The orchestrator's allowlist still has the topic; the executors' tenant record no longer does
    # (a changed configuration, or a record written by someone else): the executor's check decides.
    allowed = f"{lanes.kafka.topic_prefix}replies.a"
    record = TenantRecord(tenant_id="tenant-a", reply_topics=())
    await lanes.producer.send_and_wait(lanes.kafka.topics.tenants, key=b"tenant-a", value=encode(record))
    async with asyncio.timeout(10):
        while (known := lanes.executor.tenants.get("tenant-a")) is None or known.reply_topics:
            await asyncio.sleep(0.02)

    execution_id = await lanes.submit("key-a", input="what is 4+4?", reply_to=allowed)
    events = await collect_events(lanes.url.replace("http", "ws", 1), "key-a", execution_id, timeout=30)
    (key, reason, _), *_ = await dlq_reasons(lanes.kafka, 1)
    async with asyncio.timeout(10):
        while (await lanes.get("key-a", f"/v1/tasks/{execution_id}"))["status"] in ("queued", "running"):
            await asyncio.sleep(0.05)
    status = await lanes.get("key-a", f"/v1/executions/{execution_id}")
    task = await lanes.get("key-a", f"/v1/tasks/{execution_id}")
    await asyncio.sleep(1)  # not retried: no second DLQ copy, nothing run
    again = await dlq_reasons(lanes.kafka, 1)
    assert key == b"tenant-a" and "not in tenant 'tenant-a'" in reason and allowed in reason
    assert [e["event"]["type"] for e in events] == ["execution.failed"]
    assert allowed in events[0]["event"]["reason"]
    assert status["status"] == "failed" and allowed in (status["error"] or "")
    assert task["status"] == "failed"
    assert len(again) == 1 and lanes.executor.completed == 0


async def test_records_without_a_proper_key_tenant_or_ids_are_refused(lanes: Lanes) -> None:
    def request(tenant: str, execution_id: str | None = None) -> ExecutionRequested:
        # model_construct: empty ids are refused by the shared bounds, so only an unvalidated model holds them
        return ExecutionRequested.model_construct(
            tenant_id=tenant, execution_id=execution_id if execution_id is not None else uuid.uuid4().hex, input="1+1"
        )

    bad = [
        (request("tenant-a"), None, "without a key"),
        (request("tenant-a"), b"tenant-b", "the key must be the tenant_id"),
        (request("tenant-zz"), b"tenant-zz", "unknown tenant 'tenant-zz'"),
        (request("tenant-a", ""), b"tenant-a", "String should have at least 1 character"),
        (request(""), b"", "without a key"),
        (request("tenant-a"), b"\xff\xfe", "not UTF-8"),
    ]
    for r, key, _ in bad:
        await lanes.produce(r, key=key)
    good = await lanes.submit("key-a", input="what is 5+5?")  # the lane goes on behind them
    events = await collect_events(lanes.url.replace("http", "ws", 1), "key-a", good, timeout=30)
    parked = await dlq_reasons(lanes.kafka, len(bad))
    assert events[-1]["event"]["type"] == "execution.completed"
    by_value = {value: reason for _, reason, value in parked}
    for r, _, expected in bad:
        assert expected in by_value[encode(r)], (expected, by_value[encode(r)])
    assert lanes.executor.completed == 1
    assert all(lanes.executor.status.get(r.execution_id) is None for r, _, _ in bad if r.execution_id)


async def test_a_tenant_created_through_the_admin_api_runs_at_once(lanes: Lanes) -> None:
    """The orchestrator announces a new tenant on the tenants topic before answering 201."""
    admin = {"Authorization": f"Bearer {ADMIN}"}
    assert (await lanes.http.post("/v1/admin/tenants", json={"tenant_id": "acme"}, headers=admin)).status_code == 201
    secret = (await lanes.http.post("/v1/admin/tenants/acme/keys", json={}, headers=admin)).json()["api_key"]
    execution_id = await lanes.submit(secret, input="what is 6+6?")
    events = await collect_events(lanes.url.replace("http", "ws", 1), secret, execution_id, timeout=30)
    assert events[-1]["event"]["type"] == "execution.completed"
    known = lanes.executor.tenants.get("acme")
    assert known is not None and not known.disabled


async def test_a_refusal_the_dlq_cannot_take_does_not_hold_the_partitions_commits(lanes: Lanes) -> None:
    """A ~1 MB invalid record: its DLQ copy (reason and origin headers added) is larger than a request
    may be, so parking it fails; the record is still finished, and the partition's commits move on."""
    big = b'{"type": "execution.requested", "tenant_id": "tenant-a", "input": "' + b"x" * 1_048_300 + b'"}'
    producer = AIOKafkaProducer(bootstrap_servers=lanes.kafka.bootstrap, acks="all", max_request_size=1_100_000)
    await producer.start()
    try:
        meta = await producer.send_and_wait(lanes.kafka.topics.lane("standard"), key=b"tenant-a", value=big)
    finally:
        await producer.stop()
    good = await lanes.submit("key-a", input="what is 7+7?")  # same key: same partition, behind the big one
    events = await collect_events(lanes.url.replace("http", "ws", 1), "key-a", good, timeout=30)
    assert events[-1]["event"]["type"] == "execution.completed"
    tp = TopicPartition(meta.topic, meta.partition)
    (consumer,) = [c for c in lanes.executor.consumers() if tp in c.assignment()]
    async with asyncio.timeout(10):
        while ((await consumer.committed(tp)) or 0) <= meta.offset + 1:
            await asyncio.sleep(0.1)


async def test_work_of_a_tenant_the_executors_do_not_know_fails_visibly(lanes: Lanes) -> None:
    """The orchestrator accepts tenant-b's work, but the executors' tenants topic lost tenant-b (a
    tombstone): refused as an unknown tenant, and its client sees why instead of waiting for the sweeper."""
    await lanes.producer.send_and_wait(lanes.kafka.topics.tenants, key=b"tenant-b", value=None)
    async with asyncio.timeout(10):
        while lanes.executor.tenants.get("tenant-b") is not None:
            await asyncio.sleep(0.02)
    execution_id = await lanes.submit("key-b", input="what is 8+8?")
    events = await collect_events(lanes.url.replace("http", "ws", 1), "key-b", execution_id, timeout=30)
    (key, reason, _), *_ = await dlq_reasons(lanes.kafka, 1)
    assert key == b"tenant-b" and "unknown tenant 'tenant-b'" in reason
    assert [e["event"]["type"] for e in events] == ["execution.failed"]
    assert (await lanes.get("key-b", f"/v1/executions/{execution_id}"))["status"] == "failed"
