"""The orchestrator's followers on the real broker: a record whose handling raises a data error is
parked in the DLQ with the reason, and the records after it are applied (today's followers retried
such a record for ever, so every later end stayed unapplied)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from services.common.kafka import event_headers
from services.common.settings import KafkaSettings
from tests.dlq import parked
from tests.e2e.orchestrator.conftest import Launcher, Orch

pytestmark = pytest.mark.kafka

HUGE = 10**19  # fits JSON (u64), not a signed 64-bit column: SQLite raises OverflowError


async def _produce(kafka: KafkaSettings, topic: str, records: list[tuple[str, dict[str, Any], str | None]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap)
    await producer.start()
    try:
        for key, value, type_ in records:
            headers = event_headers(type_=type_, tenant_id="tenant-a") if type_ else []
            await producer.send_and_wait(topic, key=key.encode(), value=orjson.dumps(value), headers=headers)
    finally:
        await producer.stop()


async def _execution(orch: Orch) -> str:
    r = await orch.post("/v1/executions", {"input": "hi"})
    assert r.status_code == 202, r.text
    return str(r.json()["execution_id"])


def _completed(execution_id: str, usage: dict[str, Any]) -> tuple[str, dict[str, Any], str]:
    value = {
        "type": "execution.completed",
        "execution_id": execution_id,
        "tenant_id": "tenant-a",
        "agent_id": "default",
        "attempt": 1,
        "output": f"output of {execution_id}",
        "usage": usage,
    }
    return execution_id, value, "execution.completed"


async def test_events_follower_parks_an_end_it_cannot_store_and_applies_the_next(launch: Launcher, sqlite_url: str) -> None:
    async with launch(sqlite_url, executor=False) as orch:
        huge, wrong_type, later = await _execution(orch), await _execution(orch), await _execution(orch)
        await _produce(
            orch.kafka,
            orch.kafka.topics.events,
            [
                _completed(huge, {"prompt_tokens": HUGE, "completion_tokens": 1, "total_tokens": HUGE}),
                _completed(wrong_type, {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": "abc"}),
                _completed(later, {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}),
            ],
        )
        await orch.wait_for(f"/v1/tasks/{later}", lambda t: t["status"] == "completed", timeout=30)
        reasons = await parked(orch.kafka, "events-follower", 2)
        assert set(reasons) == {huge, wrong_type}, reasons
        assert all(reason for reason in reasons.values())


async def test_jobs_follower_parks_a_completion_it_cannot_store_and_applies_the_next(launch: Launcher, sqlite_url: str) -> None:
    async with launch(sqlite_url, executor=False) as orch:
        jobs = []
        for _ in range(3):
            r = await orch.post("/v1/jobs", {"service": "query"})
            assert r.status_code == 201, r.text
            jobs.append(str(r.json()["task_id"]))
        huge, wrong_type, later = jobs
        base = {"event": "job_completed", "service": "query", "agent_id": "default", "tenant_id": "tenant-a", "result": {"rows": 1}}
        await _produce(
            orch.kafka,
            orch.kafka.topics.jobs_completed,
            [
                (huge, base | {"job_id": huge, "usage": {"prompt_tokens": HUGE}}, None),
                (wrong_type, base | {"job_id": wrong_type, "usage": {"total_tokens": "abc"}}, None),
                (later, base | {"job_id": later, "usage": {"prompt_tokens": 2, "total_tokens": 2}}, None),
            ],
        )
        task = await orch.wait_for(f"/v1/tasks/{later}", lambda t: t["status"] == "completed", timeout=30)
        assert task["result"] == {"rows": 1}
        reasons = await parked(orch.kafka, "jobs-follower", 2)
        assert set(reasons) == {huge, wrong_type}, reasons
