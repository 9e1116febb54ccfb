from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from services.common.settings import KafkaSettings
from services.executor.app import Executor
from services.executor.settings import ExecutorSettings
from services.orchestrator.app import create_app
from services.orchestrator.settings import OrchestratorSettings
from tests.support import serve

KEYS = {"key-a": "tenant-a", "key-b": "tenant-b"} | {f"key-{i}": f"tenant-{i}" for i in range(24)}


@dataclass
class Stack:
    url: str
    kafka: KafkaSettings
    executor: Executor
    http: httpx.AsyncClient
    orchestrator_settings: OrchestratorSettings

    @property
    def ws_url(self) -> str:
        return self.url.replace("http", "ws", 1)

    async def submit(self, key: str = "key-a", **body: object) -> str:
        body.setdefault("input", "what is 6*7?")
        r = await self.http.post("/v1/executions", json=body, headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 202, r.text
        return str(r.json()["execution_id"])


@pytest.fixture
async def stack(kafka_settings: KafkaSettings, tmp_path: Path) -> AsyncIterator[Stack]:
    # A state store of this test's own; a second orchestrator made from these settings shares it, like a replica.
    database_url = SecretStr(f"sqlite+aiosqlite:///{tmp_path / 'state.db'}")
    orch = OrchestratorSettings(kafka=kafka_settings, api_keys=KEYS, database_url=database_url)
    async with Executor(ExecutorSettings(kafka=kafka_settings, scripted_token_delay_ms=1)) as executor:
        async with serve(create_app(orch)) as url, httpx.AsyncClient(base_url=url) as http:
            yield Stack(url=url, kafka=kafka_settings, executor=executor, http=http, orchestrator_settings=orch)
