"""Restart the orchestrator (and its bridge) while a stream runs: sessions, the task registry and
idempotency keys survive, and clients resume their streams from their cursors on the new process."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import websockets
from pydantic import SecretStr

from services.common.settings import KafkaSettings
from services.executor.app import Executor
from services.executor.settings import ExecutorSettings
from services.orchestrator.app import create_app
from services.orchestrator.settings import OrchestratorSettings
from tests.support import collect_events, serve

pytestmark = [pytest.mark.kafka, pytest.mark.reliability]
AUTH = {"Authorization": "Bearer key-a"}
TERMINAL = {"execution.completed", "execution.failed", "execution.cancelled"}


async def test_orchestrator_restart_keeps_state_and_streams_resume(kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    settings = OrchestratorSettings(
        kafka=kafka_settings, api_keys={"key-a": "tenant-a"}, database_url=SecretStr(f"sqlite+aiosqlite:///{tmp_path / 'state.db'}")
    )
    body = {"input": "what is 7*6? " + "word " * 250}
    seen: list[dict[str, Any]] = []
    async with Executor(ExecutorSettings(kafka=kafka_settings, scripted_token_delay_ms=15)):
        async with serve(create_app(settings)) as first, httpx.AsyncClient(base_url=first) as http:
            session = (await http.post("/v1/sessions", json={}, headers=AUTH)).json()
            chat = (await http.post(f"/v1/sessions/{session['session_id']}/chat", json={"content": "1+1"}, headers=AUTH)).json()
            r = await http.post("/v1/executions", json=body, headers={**AUTH, "Idempotency-Key": "restart-1"})
            assert r.status_code == 202, r.text
            execution_id = r.json()["execution_id"]
            async with websockets.connect(f"{first.replace('http', 'ws', 1)}/v1/stream?api_key=key-a") as ws:
                await ws.send(orjson.dumps({"type": "subscribe", "execution_id": execution_id}).decode())
                async with asyncio.timeout(30):
                    while len(seen) < 5:
                        seen.extend(orjson.loads(await ws.recv()).get("events", ()))
        # The first orchestrator (and its bridge) is gone; a new process comes up on the same store.
        async with serve(create_app(settings)) as second, httpx.AsyncClient(base_url=second) as http:
            assert seen[-1]["event"]["type"] not in TERMINAL
            rest = await collect_events(second.replace("http", "ws", 1), "key-a", execution_id, cursor=seen[-1]["cursor"])
            replay = await collect_events(second.replace("http", "ws", 1), "key-a", execution_id)
            again = await http.post("/v1/executions", json=body, headers={**AUTH, "Idempotency-Key": "restart-1"})
            other = await http.post("/v1/executions", json={"input": "else"}, headers={**AUTH, "Idempotency-Key": "restart-1"})
            task = await http.get(f"/v1/tasks/{execution_id}", headers=AUTH)
            got_session = await http.get(f"/v1/sessions/{session['session_id']}", headers=AUTH)
            await collect_events(second.replace("http", "ws", 1), "key-a", chat["execution_id"])
            async with asyncio.timeout(20):
                while True:
                    messages = (await http.get(f"/v1/sessions/{session['session_id']}/messages", headers=AUTH)).json()
                    roles = [m["role"] for m in messages["messages"]]
                    if "assistant" in roles:
                        break
                    await asyncio.sleep(0.2)

    assert seen + rest == replay, "the resumed stream is not exactly the missing suffix"
    assert replay[-1]["event"]["type"] == "execution.completed"
    assert again.status_code in (200, 202) and again.json()["execution_id"] == execution_id
    assert other.status_code == 409
    assert task.status_code == 200 and task.json()["status"] in {"completed", "running", "queued"}
    assert got_session.status_code == 200
    assert roles[:2] == ["user", "assistant"]
