"""Resume under load with a tiny bridge memory: the whole stack (executor, orchestrator, SSE), the
bridge's recent-records memory cut to 1 MiB while several times that streams through it, and clients
that drop their connection at random points and resume with ``Last-Event-ID``. Every client must get
exactly the events the log holds for its execution: none lost, none twice, none out of order.

The truth is the events topic itself, read back from Kafka at the end."""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from aiokafka import AIOKafkaConsumer
from pydantic import SecretStr

from services.common.kafka import partitions_of
from services.common.settings import KafkaSettings
from services.executor.app import Executor
from services.executor.settings import ExecutorSettings
from services.orchestrator.app import create_app
from services.orchestrator.settings import OrchestratorSettings
from tests.e2e.conftest import KEYS
from tests.support import serve

pytestmark = [pytest.mark.kafka, pytest.mark.reliability, pytest.mark.timeout(300)]

EXECUTIONS = 24
WORDS = 4000  # the scripted model echoes the input: ~60 KB of events per execution, ~1.5 MB in all
MEMORY_MB = 1
TERMINAL = {"execution.completed", "execution.failed", "execution.cancelled"}


@dataclass
class Client:
    execution_id: str
    key: str
    offsets: list[int] = field(default_factory=list)
    drops: int = 0
    errors: list[str] = field(default_factory=list)
    done: bool = False


async def follow(http: httpx.AsyncClient, client: Client, rng: random.Random) -> None:
    """Read the SSE stream, hanging up after a random number of events, and resume from the last id."""
    headers = {"Authorization": f"Bearer {client.key}"}
    await asyncio.sleep(rng.uniform(0, 3))  # some start late, when memory has moved on
    while not client.done:
        if client.offsets:
            headers["Last-Event-ID"] = str(client.offsets[-1])
        budget = rng.randint(1, 60)
        async with http.stream("GET", f"/v1/executions/{client.execution_id}/events", headers=headers) as response:
            assert response.status_code == 200, await response.aread()
            event_id: int | None = None
            kind = ""
            async for line in response.aiter_lines():
                if line.startswith("id: "):
                    event_id = int(line[4:])
                elif line.startswith("event: "):
                    kind = line[7:]
                elif line == "" and kind:
                    if kind == "error":
                        client.errors.append(kind)
                    if event_id is not None:
                        client.offsets.append(event_id)
                        budget -= 1
                    if kind in TERMINAL or kind == "end":
                        client.done = True
                        break
                    event_id, kind = None, ""
                    if budget <= 0:
                        break
        if not client.done:
            client.drops += 1
            await asyncio.sleep(rng.uniform(0, 0.3))


async def log_truth(kafka: KafkaSettings) -> tuple[dict[str, list[int]], int]:
    """Every record of the events topic, by execution: offsets in order; and their total value bytes."""
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka.bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = await partitions_of(consumer, kafka.topics.events)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        truth: dict[str, list[int]] = {}
        size = 0
        while [tp for tp in tps if await consumer.position(tp) < end[tp]]:
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                for record in records:
                    truth.setdefault((record.key or b"").decode(), []).append(record.offset)
                    size += len(record.value or b"")
        return truth, size
    finally:
        await consumer.stop()


async def test_resume_under_load_with_a_tiny_bridge_memory(kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    orch = OrchestratorSettings(
        kafka=kafka_settings,
        api_keys=KEYS,
        database_url=SecretStr(f"sqlite+aiosqlite:///{tmp_path / 'state.db'}"),
        bridge_recent_max_mb=MEMORY_MB,
    )
    rng = random.Random(1212)
    text = "what is 2+2? " + " ".join(f"w{i}" for i in range(WORDS))
    started = time.monotonic()
    async with Executor(ExecutorSettings(kafka=kafka_settings, scripted_token_delay_ms=1)):
        async with serve(create_app(orch)) as url, httpx.AsyncClient(base_url=url, timeout=60) as http:
            clients = []
            for i in range(EXECUTIONS):
                key = f"key-{i}"
                r = await http.post("/v1/executions", json={"input": text}, headers={"Authorization": f"Bearer {key}"})
                assert r.status_code == 202, r.text
                clients.append(Client(r.json()["execution_id"], key))
            async with asyncio.timeout(180):
                await asyncio.gather(*(follow(http, c, random.Random(rng.random())) for c in clients))
    elapsed = time.monotonic() - started
    truth, size = await log_truth(kafka_settings)
    lost = duplicated = reordered = 0
    for client in clients:
        want, got = truth[client.execution_id], client.offsets
        lost += len(set(want) - set(got))
        duplicated += len(got) - len(set(got))
        reordered += sum(1 for a, b in itertools.pairwise(got) if b < a)
    events = sum(len(c.offsets) for c in clients)
    drops = sum(c.drops for c in clients)
    print(
        f"\nresume with a {MEMORY_MB} MiB bridge memory: {EXECUTIONS} executions, {size / 1e6:.2f} MB of events, "
        f"{events} events delivered over {drops} dropped connections; lost {lost}, duplicated {duplicated}, "
        f"reordered {reordered}; {elapsed:.1f}s"
    )
    assert size > 2 * MEMORY_MB * 1024 * 1024  # memory could not have held it all
    assert drops > EXECUTIONS
    assert not [c.errors for c in clients if c.errors]
    assert (lost, duplicated, reordered) == (0, 0, 0)
    assert all(c.offsets == truth[c.execution_id] for c in clients)
