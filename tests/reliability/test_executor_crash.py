"""20 rounds of SIGKILL to a random executor while 50 executions stream: nothing is lost.

Every accepted execution reaches exactly one terminal state, and no client sees an event of a
fenced (older) attempt after a newer attempt's ``execution.started``.
"""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
from typing import Any

import httpx
import pytest

from services.common.settings import KafkaSettings
from services.orchestrator.app import create_app
from services.orchestrator.settings import OrchestratorSettings
from tests.support import collect_events, serve, spawn_executor

pytestmark = [pytest.mark.kafka, pytest.mark.reliability]

EXECUTIONS = 50
ROUNDS = 20
EXECUTORS = 3
KEYS = {f"key-{i}": f"tenant-{i}" for i in range(10)}


async def test_sigkill_rounds_lose_nothing(kafka_settings: KafkaSettings) -> None:
    rng = random.Random(2026)
    orch = OrchestratorSettings(kafka=kafka_settings, api_keys=KEYS)
    members: list[subprocess.Popen[bytes]] = [
        spawn_executor(kafka_settings, instance_id=f"member-{i}", token_delay_ms=15, session_timeout_ms=6000) for i in range(EXECUTORS)
    ]
    spawned = EXECUTORS
    try:
        async with serve(create_app(orch)) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
            ws_url = url.replace("http", "ws", 1)
            accepted: dict[str, str] = {}
            for i in range(EXECUTIONS):
                key = f"key-{i % len(KEYS)}"
                r = await http.post(
                    "/v1/executions", json={"input": f"what is {i}*{i}? " + "word " * 120}, headers={"Authorization": f"Bearer {key}"}
                )
                assert r.status_code == 202, r.text
                accepted[r.json()["execution_id"]] = key
            streams = asyncio.gather(*(collect_events(ws_url, key, eid, timeout=420) for eid, key in accepted.items()))

            for _ in range(ROUNDS):
                await asyncio.sleep(rng.uniform(0.5, 2.0))
                victim = rng.randrange(len(members))
                members[victim].send_signal(signal.SIGKILL)
                members[victim].wait(10)
                members[victim] = spawn_executor(
                    kafka_settings, instance_id=f"member-{spawned}", token_delay_ms=15, session_timeout_ms=6000
                )
                spawned += 1

            results: list[list[dict[str, Any]]] = await streams
            statuses = [
                (await http.get(f"/v1/executions/{eid}", headers={"Authorization": f"Bearer {key}"})).json()
                for eid, key in accepted.items()
            ]
    finally:
        for member in members:
            if member.poll() is None:
                member.kill()
                member.wait(10)

    retried = 0
    for items in results:
        terminals = [i for i in items if i["event"]["type"] in {"execution.completed", "execution.failed", "execution.cancelled"}]
        assert len(terminals) == 1 and items[-1] is terminals[0]
        assert terminals[0]["event"]["type"] == "execution.completed"
        newest = 0
        for item in items:
            event = item["event"]
            if event["type"] == "execution.started":
                newest = max(newest, event["attempt"])
            assert event["attempt"] >= newest, "an event of a fenced attempt after the new start"
        retried += newest > 1
    assert [s["status"] for s in statuses] == ["completed"] * EXECUTIONS
    print(f"\n{EXECUTIONS} executions, {ROUNDS} SIGKILL rounds: 0 lost, {retried} ran more than once")
