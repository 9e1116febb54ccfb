"""An executor on the real broker whose providers are the real SDKs pointed at the fake server.

Requests go straight onto the lane topic and events are read back from the events topic, so these
tests exercise the executor alone (the orchestrator has its own tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from pydantic import SecretStr

from schemas.agents import AgentSpec
from schemas.events import TERMINAL_TYPES, ExecutionCancelRequested, ExecutionRequested
from schemas.status import ExecutionStatus
from schemas.tenants import TenantRecord
from services.common.kafka import encode
from services.common.settings import KafkaSettings
from services.executor.app import Executor
from services.executor.providers.base import ToolSpec
from services.executor.settings import ExecutorSettings, RetrySettings, TimeoutSettings
from services.executor.tools import Tool, builtin_tools
from tests.fakes.openai_server import FakeOpenAI

TENANT = "tenant-a"


class Sleeper:
    """A tool that takes ``seconds`` (for timeouts and cancel)."""

    spec = ToolSpec(
        name="sleeper",
        description="Sleeps.",
        parameters={"type": "object", "properties": {"seconds": {"type": "number"}}, "required": ["seconds"]},
    )

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.cancelled = False

    async def __call__(self, arguments: dict[str, Any]) -> Any:
        self.started.set()
        try:
            await asyncio.sleep(float(arguments["seconds"]))
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        return "slept"


def executor_settings(kafka: KafkaSettings, fake: FakeOpenAI, **overrides: Any) -> ExecutorSettings:
    values: dict[str, Any] = {
        "kafka": kafka,
        "openai_api_key": SecretStr("sk-test"),
        "openai_base_url": fake.openai_url,
        "groq_api_key": SecretStr("gsk-test"),
        "groq_base_url": fake.url,
        "compatible_base_url": fake.openai_url,
        "retry": RetrySettings(attempts=2, backoff_s=0.01, max_backoff_s=0.05),
        "timeouts": TimeoutSettings(connect_s=2, first_token_s=3, total_s=20, read_s=10),
        "tool_timeout_s": 0.5,
        "tool_retry_backoff_s": 0.01,
    }
    return ExecutorSettings(**(values | overrides))


AGENTS = {
    "chat": AgentSpec(name="chat", provider="openai", model="chat-model", tools=()),
    "tools": AgentSpec(name="tools", provider="openai", model="tool-model", tools=("calculator", "clock", "sleeper")),
    "groq": AgentSpec(name="groq", provider="groq", model="groq-model", tools=("calculator",), fallback=("openai:backup-model",)),
    "templated": AgentSpec(name="templated", provider="openai_compatible", model="chat-model", system_prompt="Help {{ customer }}."),
}


@dataclass
class Harness:
    kafka: KafkaSettings
    fake: FakeOpenAI
    executor: Executor
    producer: AIOKafkaProducer
    sleeper: Sleeper

    async def submit(self, agent: str = "chat", input: str = "hi", **fields: Any) -> str:
        execution_id = fields.pop("execution_id", None) or uuid.uuid4().hex
        request = ExecutionRequested(tenant_id=TENANT, execution_id=execution_id, agent_id=agent, input=input, **fields)
        await self.producer.send_and_wait(self.kafka.topics.lane("standard"), key=TENANT.encode(), value=encode(request))
        return execution_id

    async def cancel(self, execution_id: str, tenant_id: str = TENANT) -> None:
        request = ExecutionCancelRequested(tenant_id=tenant_id, execution_id=execution_id)
        await self.producer.send_and_wait(self.kafka.topics.control, key=execution_id.encode(), value=encode(request))

    async def write_status(self, status: ExecutionStatus) -> None:
        await self.producer.send_and_wait(self.kafka.topics.status, key=status.execution_id.encode(), value=encode(status))

    async def events(self, execution_id: str, *, timeout: float = 20.0) -> list[dict[str, Any]]:
        """Every event of the execution, from the start of the events topic up to its terminal event."""
        return await read_events(self.kafka, execution_id, timeout=timeout)


async def read_events(kafka: KafkaSettings, execution_id: str, *, timeout: float = 20.0) -> list[dict[str, Any]]:
    consumer = AIOKafkaConsumer(
        kafka.topics.events, bootstrap_servers=kafka.bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        found: list[dict[str, Any]] = []
        async with asyncio.timeout(timeout):
            while True:
                batches = await consumer.getmany(timeout_ms=100)
                for records in batches.values():
                    for record in records:
                        if record.key == execution_id.encode():
                            found.append(orjson.loads(record.value or b"{}"))
                if found and found[-1]["type"] in TERMINAL_TYPES:
                    return found
    finally:
        await consumer.stop()


@contextlib.asynccontextmanager
async def running_executor(kafka: KafkaSettings, **overrides: Any) -> AsyncIterator[Harness]:
    async with FakeOpenAI() as fake:
        sleeper = Sleeper()
        tools: dict[str, Tool] = builtin_tools() | {"sleeper": sleeper}
        agents = overrides.pop("agents", None) or dict(AGENTS)
        settings = executor_settings(kafka, fake, **overrides)
        async with Executor(settings, tools=tools, agents=agents) as executor:
            producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap, acks="all")
            await producer.start()
            try:
                # What the orchestrator does at start: announce its tenants, or the executor refuses their work.
                await announce_tenant(producer, kafka, TenantRecord(tenant_id=TENANT))
                yield Harness(kafka, fake, executor, producer, sleeper)
            finally:
                await producer.stop()


async def announce_tenant(producer: AIOKafkaProducer, kafka: KafkaSettings, record: TenantRecord) -> None:
    await producer.send_and_wait(kafka.topics.tenants, key=record.tenant_id.encode(), value=encode(record))


def text_of(events: list[dict[str, Any]], step: int | None = None) -> str:
    return "".join(e["text"] for e in events if e["type"] == "token.delta" and (step is None or e["step"] == step))


def types_of(events: list[dict[str, Any]]) -> list[str]:
    """The events' types, consecutive ``token.delta`` records as one: how many records a text takes is
    the emitter's coalescing (emitter.py), which depends on when the broker acknowledges."""
    types: list[str] = []
    for e in events:
        if not (e["type"] == "token.delta" and types and types[-1] == "token.delta"):
            types.append(e["type"])
    return types
