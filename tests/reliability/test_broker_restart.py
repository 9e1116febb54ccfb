"""Stop and restart Kafka under load: requests during the outage get 503, never a 202 that is then
lost; every 202-accepted execution completes; the services reconnect by themselves."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from services.common.localkafka import LocalKafka
from services.common.settings import KafkaSettings
from services.executor.app import Executor
from services.executor.settings import ExecutorSettings
from services.orchestrator.app import create_app
from services.orchestrator.settings import OrchestratorSettings
from tests.support import serve

pytestmark = [pytest.mark.kafka, pytest.mark.reliability, pytest.mark.timeout(400)]
AUTH = {"Authorization": "Bearer key-a"}


async def test_broker_restart_under_load(own_broker: LocalKafka, own_kafka: KafkaSettings, tmp_path: Path) -> None:
    orch = OrchestratorSettings(
        kafka=own_kafka,
        api_keys={"key-a": "tenant-a"},
        database_url=SecretStr(f"sqlite+aiosqlite:///{tmp_path / 'state.db'}"),
        # This test is about Kafka, not about the tenant's limits: lift them out of the way.
        requests_per_minute=1_000_000,
        concurrent_executions=100_000,
    )
    accepted: list[str] = []
    codes: dict[int, int] = {}
    outage = asyncio.Event()
    refused_during_outage = 0
    reasons: dict[str, int] = {}  # 503s after Kafka came back, by reason

    async with Executor(ExecutorSettings(kafka=own_kafka, scripted_token_delay_ms=5)):
        async with serve(create_app(orch)) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
            stop_loading = asyncio.Event()
            accepted_after_restart = 0

            async def load() -> None:
                nonlocal refused_during_outage, accepted_after_restart
                i = 0
                while not stop_loading.is_set():
                    r = await http.post("/v1/executions", json={"input": f"{i}+{i}"}, headers=AUTH)
                    codes[r.status_code] = codes.get(r.status_code, 0) + 1
                    if r.status_code == 202:
                        accepted.append(r.json()["execution_id"])
                        accepted_after_restart += back.is_set()
                    elif r.status_code == 503 and outage.is_set():
                        refused_during_outage += 1
                    elif r.status_code == 503 and back.is_set():
                        reasons[r.json().get("error", "")] = reasons.get(r.json().get("error", ""), 0) + 1
                    i += 1
                    await asyncio.sleep(0.05)

            back = asyncio.Event()
            loaders = [asyncio.create_task(load()) for _ in range(4)]
            await asyncio.sleep(4)
            outage.set()
            print(f"stopping Kafka; codes so far {codes}", flush=True)
            await asyncio.to_thread(own_broker.stop)
            await asyncio.sleep(8)
            print(f"starting Kafka; codes so far {codes}", flush=True)
            await asyncio.to_thread(own_broker.start)
            outage.clear()
            back.set()
            print(f"Kafka is back; codes so far {codes}", flush=True)
            await asyncio.sleep(10)
            print(
                f"10 s after: codes {codes}; 503 reasons since {reasons}", flush=True
            )  # the services reconnect by themselves and accept again
            stop_loading.set()
            await asyncio.gather(*loaders)

            async def completed(execution_id: str) -> bool:
                r = await http.get(f"/v1/executions/{execution_id}", headers=AUTH)
                return r.status_code == 200 and r.json()["status"] == "completed"

            pending = list(accepted)
            try:
                async with asyncio.timeout(180):
                    while pending:
                        done = await asyncio.gather(*(completed(e) for e in pending))
                        pending = [e for e, ok in zip(pending, done, strict=True) if not ok]
                        if pending:
                            print(f"{len(pending)} of {len(accepted)} not completed yet; codes so far {codes}", flush=True)
                            await asyncio.sleep(2)
            except TimeoutError:
                stuck = [(await http.get(f"/v1/executions/{e}", headers=AUTH)).json() for e in pending]
                raise AssertionError(f"accepted but never completed: {stuck}") from None

    assert set(codes) <= {202, 503}, codes  # never a 500, never another failure
    assert refused_during_outage > 0
    assert accepted_after_restart > 20
    print(f"\nbroker restart: {len(accepted)} accepted ({accepted_after_restart} after it), all completed; {codes.get(503, 0)} refused")
