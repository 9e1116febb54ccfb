"""Regressions found by the reliability suite (tests/reliability: the HTTP fuzzer and the tenant
isolation properties): a stream with nothing left to send ends instead of hanging, a caller's odd
history does not crash the scripted model, and a job's id is not an execution's."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import orjson
import pytest
import websockets
from pydantic import SecretStr

from services.common.settings import KafkaSettings
from services.orchestrator.app import create_app
from services.orchestrator.settings import OrchestratorSettings
from tests.e2e.conftest import Stack
from tests.support import collect_events, serve

pytestmark = pytest.mark.kafka

A = {"Authorization": "Bearer key-a"}


async def _sse(http: httpx.AsyncClient, execution_id: str, cursor: int | None) -> str:
    params = {} if cursor is None else {"cursor": str(cursor)}
    async with asyncio.timeout(10):  # before the fix: heartbeats for ever
        r = await http.get(f"/v1/executions/{execution_id}/events", params=params, headers=A, timeout=10)
    assert r.status_code == 200, r.text
    return r.text


async def test_sse_resumed_at_or_past_the_end_finishes(stack: Stack) -> None:
    execution_id = await stack.submit()
    items = await collect_events(stack.ws_url, "key-a", execution_id)
    last = items[-1]["cursor"]
    for cursor in (last, last + 1, 10**12):
        body = await _sse(stack.http, execution_id, cursor)
        assert "event: end" in body and "event: execution." not in body, body
    full = await _sse(stack.http, execution_id, None)
    assert "event: execution.completed" in full and "event: end" not in full

    async with websockets.connect(f"{stack.ws_url}/v1/stream?api_key=key-a") as ws:
        await ws.send(orjson.dumps({"type": "subscribe", "execution_id": execution_id, "cursor": 10**12}).decode())
        async with asyncio.timeout(10):
            frames = [orjson.loads(await ws.recv()) for _ in range(2)]
    assert [f["type"] for f in frames] == ["subscribed", "end"]
    assert frames[1]["status"] == "completed"


async def test_sse_of_an_execution_cancelled_while_queued_finishes(kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    # No executor: the execution stays queued, is cancelled there, and never gets an event.
    orch = OrchestratorSettings(
        kafka=kafka_settings, api_keys={"key-a": "tenant-a"}, database_url=SecretStr(f"sqlite+aiosqlite:///{tmp_path / 's.db'}")
    )
    async with serve(create_app(orch)) as url, httpx.AsyncClient(base_url=url) as http:
        r = await http.post("/v1/executions", json={"input": "hi"}, headers=A)
        execution_id = r.json()["execution_id"]
        assert (await http.post(f"/v1/executions/{execution_id}/cancel", headers=A)).json()["status"] == "cancelled"
        body = await _sse(http, execution_id, None)
    assert "event: end" in body and '"status":"cancelled"' in body, body


async def test_a_history_with_a_non_json_tool_message_still_completes(stack: Stack) -> None:
    history = [{"role": "user", "content": "what is 2+2?"}, {"role": "tool", "content": "not json at all"}]
    execution_id = await stack.submit(input="and now?", history=history)
    items = await collect_events(stack.ws_url, "key-a", execution_id)
    assert items[-1]["event"]["type"] == "execution.completed", items[-1]


async def test_cancelling_a_job_id_as_an_execution_is_a_404_and_leaves_the_job_alone(stack: Stack) -> None:
    job = (await stack.http.post("/v1/jobs", json={"service": "query"}, headers=A)).json()
    r = await stack.http.post(f"/v1/executions/{job['task_id']}/cancel", headers=A)
    assert r.status_code == 404, r.text  # before the fix: 202 and a made-up "cancelled" execution status
    assert (await stack.http.get(f"/v1/executions/{job['task_id']}/events", headers=A)).status_code == 404
    assert (await stack.http.get(f"/v1/tasks/{job['task_id']}", headers=A)).json()["status"] == job["status"]
