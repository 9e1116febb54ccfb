"""Readers on the real broker: a poison record on the events topic does not stop the bridge, a
record near the broker's size limit still gets its (bounded) DLQ copy, and a reader that dies is
restarted, counted, and shown by ``/health/ready`` meanwhile."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from pydantic import SecretStr

from services.common import dlq
from services.common.kafka import event_headers, header
from services.common.observability import metrics
from services.common.settings import KafkaSettings
from services.executor.app import Executor
from services.executor.settings import ExecutorSettings
from services.orchestrator.app import create_app
from services.orchestrator.settings import OrchestratorSettings
from tests.dlq import parked, parked_records
from tests.e2e.conftest import KEYS, Stack
from tests.support import collect_events, serve

pytestmark = pytest.mark.kafka


async def _send(kafka: KafkaSettings, key: bytes, value: bytes, *, type_: str = "token.delta") -> None:
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap, max_request_size=2 << 20)
    await producer.start()
    try:
        await producer.send_and_wait(kafka.topics.events, key=key, value=value, headers=event_headers(type_=type_, tenant_id="tenant-a"))
    finally:
        await producer.stop()


async def test_a_key_that_is_not_utf8_is_parked_and_the_bridge_keeps_streaming(stack: Stack) -> None:
    await _send(stack.kafka, b"\xff\xfe\xfd", b'{"type": "token.delta", "text": "x"}')
    execution_id = await stack.submit(input="what is 2*3?")
    items = await collect_events(stack.ws_url, "key-a", execution_id, timeout=20)
    assert items[-1]["event"]["type"] == "execution.completed"
    reasons = await parked(stack.kafka, "bridge-tail", 1)
    assert list(reasons.values()) == ["event record whose key (execution_id) is not UTF-8"]


async def test_a_record_near_the_size_limit_gets_a_bounded_dlq_copy_that_reaches_the_dlq(stack: Stack) -> None:
    # As large as the broker takes (max.message.bytes 1048588): its copy with the DLQ headers would not be.
    size = 1_048_150  # room for its headers (type, tenant, attempt and the CloudEvents ones)
    await _send(stack.kafka, b"ex-big", b"x" * size)  # a value that is not a JSON object: parked by the bridge
    [record] = await parked_records(stack.kafka, "bridge-tail", 1)
    assert record.key == b"ex-big" and len(record.value or b"") == dlq.MAX_VALUE_BYTES
    assert header(record.headers, "dlq.value_size") == str(size) and header(record.headers, "dlq.truncated") == "value"
    assert header(record.headers, "dlq.reason") == "event record whose value is not a JSON object"
    assert header(record.headers, "type") == "token.delta"  # the original headers are kept
    # ... and the bridge goes on.
    execution_id = await stack.submit(input="what is 2*4?")
    items = await collect_events(stack.ws_url, "key-a", execution_id, timeout=20)
    assert items[-1]["event"]["type"] == "execution.completed"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
async def services(kafka_settings: KafkaSettings, tmp_path: Path) -> AsyncIterator[tuple[Executor, object, httpx.AsyncClient, str]]:
    orch = OrchestratorSettings(kafka=kafka_settings, api_keys=KEYS, database_url=SecretStr(f"sqlite+aiosqlite:///{tmp_path / 's.db'}"))
    settings = ExecutorSettings(kafka=kafka_settings, scripted_token_delay_ms=1, metrics_port=_free_port())
    app = create_app(orch)
    async with Executor(settings) as executor, serve(app) as url, httpx.AsyncClient(base_url=url) as http:
        yield executor, app.state.agentstream, http, url


async def _until_ready(http: httpx.AsyncClient, url: str, want: int, *, timeout: float = 20) -> dict[str, object]:
    async with asyncio.timeout(timeout):
        while True:
            r = await http.get(url)
            if r.status_code == want:
                body: dict[str, object] = r.json()
                return body
            await asyncio.sleep(0.02)


async def test_a_reader_that_dies_is_restarted_counted_and_shown_by_health_ready(
    services: tuple[Executor, object, httpx.AsyncClient, str],
) -> None:
    executor, state, http, url = services
    body = await _until_ready(http, "/health/ready", 200)
    assert body["readers"] == {
        "orchestrator-status-view": "running",
        "bridge-tail": "running",
        "projection": "running",
        "events-follower": "running",
        "jobs-follower": "running",
        "coordinator": "running",
        "orchestrator-task-feed": "running",
        "orchestrator-schedules": "running",
        "orchestrator-cache-feed": "running",
    }
    bridge = state.bridge  # type: ignore[attr-defined]
    before = metrics.sample(metrics.COMMON, "agentstream_reader_restarts_total", {"reader": "bridge-tail"})

    # The tail's consumer stops under it (as a client in a bad state would): its fetches now raise.
    await bridge.reader.source.close()
    body = await _until_ready(http, "/health/ready", 503)
    assert body["not_running"] == ["bridge-tail"] and body["readers"]["bridge-tail"] == "restarting"  # type: ignore[index]
    await _until_ready(http, "/health/ready", 200)
    assert metrics.sample(metrics.COMMON, "agentstream_reader_restarts_total", {"reader": "bridge-tail"}) == before + 1
    scrape = (await http.get("/metrics")).text
    assert 'agentstream_reader_up{reader="bridge-tail"} 1.0' in scrape

    # Live streaming works again, on the new consumer.
    r = await http.post("/v1/executions", json={"input": "what is 3*3?"}, headers={"Authorization": "Bearer key-a"})
    assert r.status_code == 202, r.text
    items = await collect_events(url.replace("http", "ws", 1), "key-a", r.json()["execution_id"], timeout=20)
    assert items[-1]["event"]["type"] == "execution.completed"

    # The executor's health shows its readers the same way.
    assert executor.metrics_server is not None
    executor_ready = f"{executor.metrics_server.url}/health/ready"
    body = await _until_ready(http, executor_ready, 200)
    control = f"{executor.settings.instance_id}-control"
    assert body["readers"][control] == "running"  # type: ignore[index]
    assert executor.control.reader is not None
    await executor.control.reader.source.close()
    body = await _until_ready(http, executor_ready, 503)
    assert body["readers"][control] == "restarting"  # type: ignore[index]
    await _until_ready(http, executor_ready, 200)
