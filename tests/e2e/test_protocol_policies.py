"""What applies on /v1/executions applies on the AG-UI and A2A doors too: the caller's trace
(``traceparent``) on every event of the execution, and the priority lane."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest
from a2a.client import ClientConfig, create_client
from a2a.types import Message, Part, Role, SendMessageRequest
from aiokafka import AIOKafkaConsumer, ConsumerRecord
from google.protobuf.struct_pb2 import Struct

from services.common.kafka import header
from tests.e2e.conftest import Stack
from tests.e2e.test_agui import run_input

pytestmark = pytest.mark.kafka
AUTH = {"Authorization": "Bearer key-a"}


def trace(n: str) -> str:
    return f"00-{n * 32}-{'cd' * 8}-01"


async def trace_ids(stack: Stack, execution_ids: set[str]) -> dict[str, set[str]]:
    """The trace id of every event of each execution, read from the events topic until each ended."""
    consumer = AIOKafkaConsumer(stack.kafka.topics.events, bootstrap_servers=stack.kafka.bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        records: list[ConsumerRecord[bytes, bytes]] = []
        ended: set[str] = set()
        async with asyncio.timeout(30):
            while ended != execution_ids:
                batch = await consumer.getmany(timeout_ms=500)
                for r in (r for rs in batch.values() for r in rs):
                    key = (r.key or b"").decode()
                    if key in execution_ids:
                        records.append(r)
                        if header(r.headers, "type") == "execution.completed":
                            ended.add(key)
    finally:
        await consumer.stop()
    out: dict[str, set[str]] = {e: set() for e in execution_ids}
    for r in records:
        out[(r.key or b"").decode()].add((header(r.headers, "traceparent") or "").split("-")[1])
    return out


async def test_traceparent_and_priority_go_through_both_doors(stack: Stack) -> None:
    agui = await stack.http.post(
        "/v1/agui/default", json=run_input(forwardedProps={"priority": "batch"}), headers=AUTH | {"traceparent": trace("a")}
    )
    assert agui.status_code == 200
    agui_execution = agui.headers["x-agentstream-execution-id"]
    metadata = Struct()
    metadata.update({"priority": "critical"})
    request = SendMessageRequest(
        message=Message(message_id=uuid.uuid4().hex, role=Role.ROLE_USER, parts=[Part(text="what is 6*7?")]), metadata=metadata
    )
    async with httpx.AsyncClient(headers=AUTH | {"traceparent": trace("b")}, timeout=60) as http:
        client = await create_client(f"{stack.url}/v1/a2a/default", client_config=ClientConfig(httpx_client=http, streaming=False))
        try:
            [answer] = [r async for r in client.send_message(request)]
        finally:
            await client.close()
    a2a_execution = answer.task.id
    assert await trace_ids(stack, {agui_execution, a2a_execution}) == {agui_execution: {"a" * 32}, a2a_execution: {"b" * 32}}
    for execution_id, priority in ((agui_execution, "batch"), (a2a_execution, "critical")):
        view = (await stack.http.get(f"/v1/executions/{execution_id}", headers=AUTH)).json()
        assert view["priority"] == priority
