"""Cancel, idempotency, rate limits (in-process and Redis across two replicas), usage."""

from __future__ import annotations

import asyncio
import uuid

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import SecretStr

from services.common.kafka import header
from services.common.settings import KafkaSettings
from tests.databases import REDIS_URL
from tests.e2e.orchestrator.conftest import Launcher

pytestmark = pytest.mark.kafka


async def _read_all(
    kafka: KafkaSettings, topic: str, *, expect: int, timeout: float = 10
) -> list[tuple[bytes | None, dict[str, object], str | None]]:
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka.bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        while not consumer.partitions_for_topic(topic):
            await consumer._client.force_metadata_update()
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        out: list[tuple[bytes | None, dict[str, object], str | None]] = []
        async with asyncio.timeout(timeout):
            while len(out) < expect:
                for records in (await consumer.getmany(timeout_ms=200)).values():
                    out += [(r.key, orjson.loads(r.value or b"{}"), header(r.headers, "type")) for r in records]
        return out
    finally:
        await consumer.stop()


async def test_cancel_before_start_is_final_and_twice_harmless(launch: Launcher, sqlite_url: str) -> None:
    async with launch(sqlite_url, executor=False) as orch:
        execution_id = (await orch.post("/v1/executions", {"input": "hi"})).json()["execution_id"]
        assert (await orch.post(f"/v1/executions/{execution_id}/cancel", key="key-b")).status_code == 404
        r = await orch.post(f"/v1/executions/{execution_id}/cancel")
        assert r.status_code == 202 and r.json() == {"execution_id": execution_id, "status": "cancelled", "cancel_requested": True}
        r = await orch.post(f"/v1/executions/{execution_id}/cancel")
        assert r.status_code == 200 and r.json()["status"] == "cancelled" and not r.json()["cancel_requested"]
        assert (await orch.get(f"/v1/executions/{execution_id}")).json()["status"] == "cancelled"
        control = await _read_all(orch.kafka, orch.kafka.topics.control, expect=1)
        assert control[0][0] == execution_id.encode() and control[0][2] == "execution.cancel_requested"
        assert control[0][1]["execution_id"] == execution_id and control[0][1]["tenant_id"] == "tenant-a"
        snapshots = [v for k, v, _ in await _read_all(orch.kafka, orch.kafka.topics.status, expect=2) if k == execution_id.encode()]
        assert [s["state"] for s in snapshots] == ["queued", "cancelled"]
        assert (await orch.post("/v1/executions/nope/cancel")).status_code == 404


async def test_cancel_of_a_running_execution_publishes_to_control(launch: Launcher, sqlite_url: str) -> None:
    async with launch(sqlite_url, executor=False) as orch:
        execution_id = (await orch.post("/v1/executions", {"input": "hi"})).json()["execution_id"]
        # An executor reports it running (as the executor does, on the status topic).
        status = orch.settings.kafka.topics.status
        from aiokafka import AIOKafkaProducer

        producer = AIOKafkaProducer(bootstrap_servers=orch.kafka.bootstrap)
        await producer.start()
        try:
            snapshot = {"execution_id": execution_id, "tenant_id": "tenant-a", "state": "running", "attempt": 1}
            await producer.send_and_wait(status, key=execution_id.encode(), value=orjson.dumps(snapshot))
        finally:
            await producer.stop()
        await orch.wait_for(f"/v1/executions/{execution_id}", lambda v: v["status"] == "running")
        r = await orch.post(f"/v1/executions/{execution_id}/cancel")
        assert r.status_code == 202 and r.json()["status"] == "cancelling"
        (record,) = await _read_all(orch.kafka, orch.kafka.topics.control, expect=1)
        assert record[2] == "execution.cancel_requested"


async def test_idempotency_key_same_payload_same_execution_durable_across_restart(launch: Launcher, database_url: str) -> None:
    body = {"input": "what is 2+2?", "priority": "critical"}
    async with launch(database_url, executor=False) as orch:
        first = await orch.post("/v1/executions", body, headers={"Idempotency-Key": "k-1"})
        assert first.status_code == 202
        again = await orch.post("/v1/executions", {"priority": "critical", "input": "what is 2+2?"}, headers={"Idempotency-Key": "k-1"})
        assert again.status_code == 202 and again.json() == first.json()
        assert again.headers["idempotent-replayed"] == "true"
        other = await orch.post("/v1/executions", {"input": "something else"}, headers={"Idempotency-Key": "k-1"})
        assert other.status_code == 409 and "different request" in other.json()["error"]
        # Keys are per tenant: tenant-b's k-1 is its own.
        assert (await orch.post("/v1/executions", body, key="key-b", headers={"Idempotency-Key": "k-1"})).json() != first.json()
        # A failed request does not burn its key.
        bad = await orch.post("/v1/executions", {"input": ""}, headers={"Idempotency-Key": "k-2"})
        assert bad.status_code == 422
        assert (await orch.post("/v1/executions", body, headers={"Idempotency-Key": "k-2"})).status_code == 202
    async with launch(database_url, executor=False) as orch:
        replay = await orch.post("/v1/executions", body, headers={"Idempotency-Key": "k-1"})
        assert replay.status_code == 202 and replay.json() == first.json()


async def test_rate_limits_answer_429_with_retry_after(launch: Launcher, sqlite_url: str) -> None:
    async with launch(sqlite_url, executor=False, requests_per_minute=3, concurrent_executions=100) as orch:
        assert [(await orch.post("/v1/executions", {"input": "hi"})).status_code for _ in range(3)] == [202] * 3
        r = await orch.post("/v1/executions", {"input": "hi"})
        assert r.status_code == 429 and 1 <= int(r.headers["retry-after"]) <= 60 and "requests per minute" in r.json()["error"]
        assert (await orch.post("/v1/executions", {"input": "hi"}, key="key-b")).status_code == 202  # per tenant


async def test_concurrency_limit_frees_a_slot_when_an_execution_ends(launch: Launcher, sqlite_url: str) -> None:
    async with launch(sqlite_url, executor=False, concurrent_executions=2) as orch:
        ids = [(await orch.post("/v1/executions", {"input": "hi"})).json()["execution_id"] for _ in range(2)]
        r = await orch.post("/v1/executions", {"input": "hi"})
        assert r.status_code == 429 and "retry-after" in r.headers and "concurrency" in r.json()["error"]
        assert (await orch.post(f"/v1/executions/{ids[0]}/cancel")).status_code == 202
        assert (await orch.post("/v1/executions", {"input": "hi"})).status_code == 202


async def test_two_replicas_share_one_redis_limit(launch: Launcher, database_url: str) -> None:
    shared = {"redis_url": SecretStr(REDIS_URL), "redis_key_prefix": f"t{uuid.uuid4().hex[:8]}:", "requests_per_minute": 6}
    async with launch(database_url, executor=False, **shared) as one, launch(database_url, executor=False, **shared) as two:
        codes = [(await (one if i % 2 else two).post("/v1/executions", {"input": "hi"})).status_code for i in range(12)]
        assert codes.count(202) == 6 and codes.count(429) == 6
        assert codes[:6] == [202] * 6


async def test_tokens_per_minute_from_reported_usage(launch: Launcher, sqlite_url: str) -> None:
    async with launch(sqlite_url, tokens_per_minute=1) as orch:
        execution_id = (await orch.post("/v1/executions", {"input": "what is 3*3?"})).json()["execution_id"]
        await orch.wait_for(f"/v1/executions/{execution_id}", lambda v: v["status"] == "completed")
        async with asyncio.timeout(10):
            while (r := await orch.post("/v1/executions", {"input": "hi"})).status_code != 429:
                await asyncio.sleep(0.05)  # usage is counted when the orchestrator applies the completion
        assert "tokens per minute" in r.json()["error"] and int(r.headers["retry-after"]) >= 1


async def test_usage_by_tenant_agent_and_session(launch: Launcher, database_url: str) -> None:
    async with launch(database_url) as orch:
        ids = [
            (await orch.post("/v1/executions", {"input": f"what is {i}*7?", "session_id": "s-1"})).json()["execution_id"] for i in (1, 2)
        ]
        views = [await orch.wait_for(f"/v1/executions/{i}", lambda v: v["status"] == "completed") for i in ids]
        total = sum(v["usage"]["total_tokens"] for v in views)
        assert total > 0
        async with asyncio.timeout(10):
            while not (rows := (await orch.get("/v1/usage")).json()["rows"]) or rows[0]["executions"] < 2:
                await asyncio.sleep(0.05)
        assert rows == [
            {
                "tenant": "tenant-a",
                "agent": None,
                "session": None,
                "executions": 2,
                "prompt_tokens": sum(v["usage"]["prompt_tokens"] for v in views),
                "completion_tokens": sum(v["usage"]["completion_tokens"] for v in views),
                "total_tokens": total,
            }
        ]
        by_agent = (await orch.get("/v1/usage", group_by="agent")).json()["rows"]
        assert [(r["agent"], r["total_tokens"]) for r in by_agent] == [("default", total)]
        by_session = (await orch.get("/v1/usage", group_by="session")).json()["rows"]
        assert [(r["session"], r["executions"]) for r in by_session] == [("s-1", 2)]
        assert (await orch.get("/v1/usage", key="key-b")).json()["rows"] == []
        assert (await orch.get("/v1/usage", since="2999-01-01T00:00:00Z")).json()["rows"] == []
        assert (await orch.get("/v1/usage", group_by="model")).status_code == 422
        assert (await orch.get("/v1/usage", since="yesterday")).status_code == 422
