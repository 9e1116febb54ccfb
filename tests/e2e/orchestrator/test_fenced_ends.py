"""The orchestrator does not project the end an older attempt writes after a newer attempt started
(a paused executor that woke up): the task row, usage and history take the newest attempt's end."""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from schemas.events import Envelope, ExecutionCompleted, ExecutionStarted, TokenDelta, Usage
from services.common.kafka import encode, event_headers
from tests.e2e.orchestrator.conftest import Launcher

pytestmark = pytest.mark.kafka


async def test_an_older_attempts_late_end_is_not_the_tasks_end(launch: Launcher, sqlite_url: str) -> None:
    async with launch(sqlite_url, executor=False) as orch:
        r = await orch.post("/v1/executions", {"input": "hello"})
        assert r.status_code == 202, r.text
        execution_id = r.json()["execution_id"]
        ids: dict[str, Any] = {"tenant_id": "tenant-a", "execution_id": execution_id}
        log: list[Envelope] = [
            ExecutionStarted(**ids, attempt=1, seq=1),
            TokenDelta(**ids, attempt=1, seq=2, text="old"),
            ExecutionStarted(**ids, attempt=2, seq=1),  # another member took over
            ExecutionCompleted(**ids, attempt=1, seq=3, output="zombie", usage=Usage(total_tokens=1000)),  # the paused one woke up
            TokenDelta(**ids, attempt=2, seq=2, text="new"),
            ExecutionCompleted(**ids, attempt=2, seq=3, output="new", usage=Usage(total_tokens=7)),
        ]
        producer = AIOKafkaProducer(bootstrap_servers=orch.kafka.bootstrap, enable_idempotence=True)
        await producer.start()
        try:
            for event in log:
                type_ = str(type(event).model_fields["type"].default)
                await producer.send_and_wait(
                    orch.kafka.topics.events,
                    key=execution_id.encode(),
                    value=encode(event),
                    headers=event_headers(type_=type_, tenant_id="tenant-a", attempt=event.attempt),
                )
        finally:
            await producer.stop()
        task = await orch.wait_for(f"/v1/tasks/{execution_id}", lambda t: t["status"] != "queued" and t["status"] != "running")
        assert task["status"] == "completed"
        assert task["output"] == "new"
        usage = (await orch.get("/v1/usage")).json()
        assert [row["total_tokens"] for row in usage["rows"]] == [7], usage
