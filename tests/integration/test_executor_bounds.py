"""Tool arguments and results out of bounds (schemas/bounds.py) on a real executor: the call fails with
the reason as the model's result, the execution goes on and ends, and every event it emits passes the
schema the orchestrator and the bridge parse with."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from schemas.agents import AgentSpec
from schemas.events import EventAdapter, ExecutionRequested
from schemas.tenants import TenantRecord
from services.common.kafka import encode
from services.common.settings import KafkaSettings
from services.executor.app import Executor
from services.executor.providers.base import ToolSpec
from services.executor.tools import Tool, builtin_tools
from tests.fakes.openai_server import FakeOpenAI, FakeToolCall, Reply
from tests.integration.executor_harness import TENANT, announce_tenant, executor_settings, read_events

pytestmark = pytest.mark.kafka


class Deep:
    """A tool whose service answers with JSON nested ``depth`` levels deep."""

    spec = ToolSpec(name="deep", description="Answers deeply.", parameters={"type": "object", "properties": {"depth": {"type": "integer"}}})

    async def __call__(self, arguments: dict[str, Any]) -> Any:
        value: Any = "bottom"
        for _ in range(int(arguments.get("depth", 1))):
            value = {"a": value}
        return value


@pytest.fixture
async def run(kafka_settings: KafkaSettings) -> AsyncIterator[tuple[FakeOpenAI, AIOKafkaProducer]]:
    async with FakeOpenAI() as fake:
        tools: dict[str, Tool] = builtin_tools() | {"deep": Deep()}
        agents = {"tools": AgentSpec(name="tools", provider="openai", model="tool-model", tools=("calculator", "deep"))}
        async with Executor(executor_settings(kafka_settings, fake), tools=tools, agents=agents):
            producer = AIOKafkaProducer(bootstrap_servers=kafka_settings.bootstrap, acks="all")
            await producer.start()
            try:
                await announce_tenant(producer, kafka_settings, TenantRecord(tenant_id=TENANT))  # or the lanes refuse its work
                yield fake, producer
            finally:
                await producer.stop()


@pytest.mark.parametrize(
    "call, reason",
    [
        (FakeToolCall("deep", '{"depth": 300}', id="d"), "nested deeper than 32"),
        (FakeToolCall("deep", '{"depth": 220}', id="d"), "nested deeper than 32"),
        (FakeToolCall("calculator", '{"expression": "(10**100)**100"}', id="c"), "64-bit"),
    ],
)
async def test_a_tool_result_out_of_bounds_is_an_error_result_and_the_execution_ends(
    kafka_settings: KafkaSettings, run: tuple[FakeOpenAI, AIOKafkaProducer], call: FakeToolCall, reason: str
) -> None:
    # Today 300 levels fail the event's serialization and the execution crashes (execution.failed); 220
    # levels are emitted, and refused by every reader that parses the record with the schema; the integer
    # goes out as 10,001 digits that no orjson reader (the bridge, the follower, clients) can parse.
    fake, producer = run
    fake.script("tool-model", Reply(tool_calls=[call]), Reply(text=["sorry"]))
    execution_id = uuid.uuid4().hex
    request = ExecutionRequested(tenant_id=TENANT, execution_id=execution_id, agent_id="tools", input="go")
    await producer.send_and_wait(kafka_settings.topics.lane("standard"), key=TENANT.encode(), value=encode(request))
    events = await read_events(kafka_settings, execution_id)
    assert events[-1]["type"] == "execution.completed", events[-1]
    completed = next(e for e in events if e["type"] == "tool.call.completed")
    assert reason in completed["error"] and completed["result"] is None
    assert reason in fake.bodies("tool-model")[1]["messages"][-1]["content"]  # the model is told why
    for event in events:
        EventAdapter.validate_python(event)
