"""Task registry: external jobs over /ws/task_updates and the jobs.completed topic; timeouts."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
import websockets
from aiokafka import AIOKafkaProducer

from tests.e2e.orchestrator.conftest import SERVICE_TOKEN, Launcher, Orch

pytestmark = pytest.mark.kafka


async def _next_update(ws: Any, task_id: str) -> dict[str, Any]:
    async with asyncio.timeout(10):
        while True:
            update = orjson.loads(await ws.recv())
            if update.get("task_id") == task_id:
                return dict(update)


async def _job(orch: Orch, **body: Any) -> str:
    r = await orch.post("/v1/jobs", {"service": "query", **body})
    assert r.status_code == 201, r.text
    return str(r.json()["task_id"])


async def test_job_completed_over_websocket_only_for_in_flight_jobs_of_that_tenant(launch: Launcher, database_url: str) -> None:
    async with launch(database_url, executor=False) as orch:
        session_id = (await orch.post("/v1/sessions", {})).json()["session_id"]
        job_id = await _job(orch, session_id=session_id, job_id="job-1")
        assert (await orch.post("/v1/jobs", {"service": "query", "job_id": "job-1"})).status_code == 409
        assert (await orch.post("/v1/jobs", {"service": "query", "session_id": session_id}, key="key-b")).status_code == 404
        async with (
            websockets.connect(f"{orch.ws_url}/v1/tasks/stream?api_key=key-a") as client,
            websockets.connect(f"{orch.ws_url}/ws/task_updates", additional_headers={"Authorization": f"Bearer {SERVICE_TOKEN}"}) as svc,
        ):
            assert orjson.loads(await client.recv()) == {"type": "subscribed"}
            message = {"event": "job_completed", "service": "query", "job_id": job_id, "tenant_id": "tenant-a", "agent_id": "default"}
            for wrong in ({"job_id": "nope"}, {"tenant_id": "tenant-b"}, {"service": "embedding"}, {"event": "job_started"}):
                await svc.send(orjson.dumps(message | wrong).decode())
                reply = orjson.loads(await svc.recv())
                assert reply["type"] == "rejected", (wrong, reply)
            await svc.send("{not json")
            assert orjson.loads(await svc.recv())["type"] == "rejected"
            await svc.send(orjson.dumps(message | {"result": {"rows": 3}}).decode())
            assert orjson.loads(await svc.recv()) == {"type": "accepted", "job_id": job_id, "status": "completed"}
            update = await _next_update(client, job_id)
            assert update["status"] == "completed" and update["result"] == {"rows": 3} and update["session_id"] == session_id
            await svc.send(orjson.dumps(message | {"result": {"rows": 4}}).decode())  # not in flight any more
            assert orjson.loads(await svc.recv())["type"] == "rejected"
        task = (await orch.get(f"/v1/tasks/{job_id}")).json()
        assert task["status"] == "completed" and task["result"] == {"rows": 3}
        assert (await orch.get(f"/v1/tasks/{job_id}", key="key-b")).status_code == 404
        messages = (await orch.get(f"/v1/sessions/{session_id}/messages")).json()["messages"]
        assert [(m["role"], m["name"], m["content"]) for m in messages] == [("tool", "query", '{"rows":3}')]


async def test_bad_service_token_is_closed_4401(launch: Launcher, sqlite_url: str) -> None:
    async with launch(sqlite_url, executor=False) as orch:
        async with websockets.connect(f"{orch.ws_url}/ws/task_updates?token=wrong") as ws:
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401


async def test_job_completed_on_the_jobs_topic(launch: Launcher, sqlite_url: str) -> None:
    async with launch(sqlite_url, executor=False) as orch:
        job_id = await _job(orch)
        foreign = await _job(orch)
        producer = AIOKafkaProducer(bootstrap_servers=orch.kafka.bootstrap)
        await producer.start()
        try:
            topic = orch.kafka.topics.jobs_completed
            base = {"event": "job_completed", "service": "query", "agent_id": "default"}
            await producer.send_and_wait(topic, key=b"x", value=b"{garbage")
            await producer.send_and_wait(
                topic, key=foreign.encode(), value=orjson.dumps(base | {"job_id": foreign, "tenant_id": "tenant-b"})
            )
            await producer.send_and_wait(
                topic, key=job_id.encode(), value=orjson.dumps(base | {"job_id": job_id, "tenant_id": "tenant-a", "result": 7})
            )
        finally:
            await producer.stop()
        task = await orch.wait_for(f"/v1/tasks/{job_id}", lambda t: t["status"] == "completed")
        assert task["result"] == 7
        assert (await orch.get(f"/v1/tasks/{foreign}")).json()["status"] == "queued"  # foreign tenant: not applied


async def test_expired_work_is_timed_out_and_subscribers_told(launch: Launcher, sqlite_url: str) -> None:
    async with launch(sqlite_url, executor=False, execution_timeout_s=0.5) as orch:
        async with websockets.connect(f"{orch.ws_url}/v1/tasks/stream?api_key=key-a") as client:
            await client.recv()
            job_id = await _job(orch, timeout_s=0.3)
            execution_id = (await orch.post("/v1/executions", {"input": "hi"})).json()["execution_id"]
            assert (await _next_update(client, job_id))["status"] == "timed_out"
            assert (await _next_update(client, execution_id))["status"] == "timed_out"
        view = await orch.wait_for(f"/v1/executions/{execution_id}", lambda v: v["status"] == "timed_out")
        assert "deadline" in view["error"] or view["status"] == "timed_out"
        assert (await orch.post(f"/v1/executions/{execution_id}/cancel")).status_code == 409
