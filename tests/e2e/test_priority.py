"""Under saturation a critical execution starts before earlier standard ones, and batch work yields."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from services.common.settings import KafkaSettings
from services.executor.app import Executor
from services.executor.settings import ExecutorSettings
from services.orchestrator.app import create_app
from services.orchestrator.settings import OrchestratorSettings
from tests.support import collect_events, serve

pytestmark = pytest.mark.kafka
AUTH = {"Authorization": "Bearer key-a"}


async def test_critical_overtakes_queued_standard_and_batch(kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    orch = OrchestratorSettings(
        kafka=kafka_settings, api_keys={"key-a": "tenant-a"}, database_url=SecretStr(f"sqlite+aiosqlite:///{tmp_path / 's.db'}")
    )
    # One slot: every execution but the running one waits for it.
    executor = ExecutorSettings(kafka=kafka_settings, max_concurrency=1, scripted_token_delay_ms=5)
    async with Executor(executor), serve(create_app(orch)) as url, httpx.AsyncClient(base_url=url) as http:

        async def submit(priority: str, words: int) -> str:
            r = await http.post("/v1/executions", json={"input": "1+1 " + "w " * words, "priority": priority}, headers=AUTH)
            assert r.status_code == 202, r.text
            return str(r.json()["execution_id"])

        first = await submit("standard", 150)  # takes the slot for ~1 s
        batch = [await submit("batch", 5) for _ in range(2)]
        standard = [await submit("standard", 5) for _ in range(2)]
        critical = await submit("critical", 5)
        ws = url.replace("http", "ws", 1)
        started: dict[str, datetime] = {}
        for execution_id in [first, *batch, *standard, critical]:
            items = await collect_events(ws, "key-a", execution_id, timeout=60)
            assert items[-1]["event"]["type"] == "execution.completed"
            started[execution_id] = datetime.fromisoformat(items[0]["event"]["ts"])
    order = sorted(started, key=started.__getitem__)
    assert order[0] == first
    assert order[1] == critical, "the critical execution did not start first after the running one"
    assert max(order.index(s) for s in standard) < min(order.index(b) for b in batch), "batch work did not yield to standard"
