"""A SIGKILLed executor's execution completes on another member, with the attempt fence visible."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import httpx
import orjson
import pytest
import websockets
from aiokafka import AIOKafkaProducer

from schemas.events import ExecutionRequested
from services.common.settings import KafkaSettings
from services.executor.app import Executor
from services.executor.settings import ExecutorSettings
from services.orchestrator.app import create_app
from services.orchestrator.settings import OrchestratorSettings
from tests.support import collect_events, serve, spawn_executor

pytestmark = pytest.mark.kafka
SESSION_TIMEOUT_MS = 6000


async def test_sigkill_mid_stream_moves_the_execution_to_another_member(kafka_settings: KafkaSettings) -> None:
    orch = OrchestratorSettings(kafka=kafka_settings, api_keys={"key-a": "tenant-a"})
    doomed = spawn_executor(kafka_settings, instance_id="doomed", session_timeout_ms=SESSION_TIMEOUT_MS)
    try:
        async with serve(create_app(orch)) as url, httpx.AsyncClient(base_url=url) as http:
            r = await http.post(
                "/v1/executions", json={"input": "what is 8*8? " + "word " * 300}, headers={"Authorization": "Bearer key-a"}
            )
            assert r.status_code == 202
            execution_id = r.json()["execution_id"]
            seen: list[dict[str, Any]] = []
            ws_url = url.replace("http", "ws", 1)
            async with websockets.connect(f"{ws_url}/v1/stream?api_key=key-a") as ws:
                await ws.send(orjson.dumps({"type": "subscribe", "execution_id": execution_id}).decode())
                async with asyncio.timeout(60):
                    while sum(1 for i in seen if i["event"]["type"] == "token.delta" and i["event"]["step"] == 1) < 3:
                        frame = orjson.loads(await ws.recv())
                        seen.extend(frame.get("events", ()))
                    doomed.send_signal(signal.SIGKILL)  # mid-stream, before any terminal event
                    doomed.wait(10)
                    successor = ExecutorSettings(
                        kafka=kafka_settings, instance_id="successor", scripted_token_delay_ms=1, session_timeout_ms=SESSION_TIMEOUT_MS
                    )
                    async with Executor(successor) as survivor:
                        while seen[-1]["event"]["type"] not in {"execution.completed", "execution.failed"}:
                            frame = orjson.loads(await ws.recv())
                            seen.extend(frame.get("events", ()))
                        async with asyncio.timeout(5):  # the terminal status is written right after the event
                            while survivor.completed != 1:
                                await asyncio.sleep(0.05)

                        # The same request delivered again (a replayed offset): already terminal, never run again.
                        producer = AIOKafkaProducer(bootstrap_servers=kafka_settings.bootstrap)
                        await producer.start()
                        try:
                            again = ExecutionRequested(tenant_id="tenant-a", execution_id=execution_id, input="again")
                            await producer.send_and_wait(kafka_settings.topics.lane("standard"), value=again.model_dump_json().encode())
                        finally:
                            await producer.stop()
                        await asyncio.sleep(2)
                        async with asyncio.timeout(5):  # the terminal status is written right after the event
                            while survivor.completed != 1:
                                await asyncio.sleep(0.05)
            status = (await http.get(f"/v1/executions/{execution_id}", headers={"Authorization": "Bearer key-a"})).json()
            replay = await collect_events(ws_url, "key-a", execution_id)
    finally:
        if doomed.poll() is None:
            doomed.kill()
    starts = [i for i in seen if i["event"]["type"] == "execution.started"]
    assert [s["event"]["attempt"] for s in starts] == [1, 2]
    second_start = seen.index(starts[1])
    assert all(i["event"]["attempt"] == 2 for i in seen[second_start:]), "an old attempt's event after the new start"
    assert seen[-1]["event"]["type"] == "execution.completed"
    assert status["status"] == "completed" and status["attempt"] == 2
    assert replay == seen  # a replay shows the same fenced stream
