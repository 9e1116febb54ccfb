"""Resume from the last completed step: executors SIGKILLed between steps and mid-tool-call.

A real HTTP tool server on loopback counts every invocation with its ``Idempotency-Key``; the
model is the fake OpenAI-compatible server, scripted by the transcript it is sent (how many tool
results it holds). Executor 1 is killed while the model streams step 1 (step 0 and its tool call
done); executor 2 resumes at step 1 and is killed inside step 1's tool call; executor 3 runs that
call again, with the same key, and finishes. Counts: call A once, call B twice (same key), the
model's step-0 turn once.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from services.common.kafka import ensure_topics
from services.common.settings import KafkaSettings
from services.orchestrator.app import create_app
from services.orchestrator.settings import OrchestratorSettings
from tests.fakes.openai_server import FakeOpenAI, FakeToolCall, Reply
from tests.integration.executor_harness import read_events
from tests.support import collect_events, serve, spawn_executor

pytestmark = pytest.mark.kafka

TENANT = "tenant-durable"
API_KEY = "key-durable"
WAIT_S = 150.0


class BookingService:
    """An HTTP tool with a side effect: every invocation is counted with its idempotency key.

    The first invocation of a key in ``hold`` never answers (until the test ends): the caller is
    killed mid-call."""

    def __init__(self, hold: set[str]) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.hold = hold
        self.release = asyncio.Event()
        self.changed = asyncio.Event()
        self.app = Starlette(routes=[Route("/book", self.book, methods=["POST"])])

    async def book(self, request: Request) -> JSONResponse:
        key = request.headers.get("idempotency-key", "")
        body = orjson.loads(await request.body())
        first = all(k != key for k, _ in self.calls)
        self.calls.append((key, body["arguments"]))
        self.changed.set()
        if first and any(key.endswith(f":{held}") for held in self.hold):
            await self.release.wait()
        return JSONResponse({"result": {"booked": body["arguments"]["item"]}})

    def count(self, key: str) -> int:
        return sum(1 for k, _ in self.calls if k == key)

    async def wait_for(self, key: str, count: int) -> None:
        async with asyncio.timeout(WAIT_S):
            while self.count(key) < count:
                self.changed.clear()
                await self.changed.wait()


def scripted_model(step1_cut: asyncio.Event) -> Any:
    """Step 0 books A; step 1 (the first time: a long, slow text the executor is killed in) books B; then done."""

    def reply(body: dict[str, Any]) -> Reply:
        results = sum(1 for m in body["messages"] if m["role"] == "tool")
        if results == 0:
            return Reply(text=["Booking ", "A."], tool_calls=[FakeToolCall("book", '{"item": "A"}', id="call_a")])
        if results == 1 and not step1_cut.is_set():
            step1_cut.set()
            return Reply(text=[f"word{i} " for i in range(600)], token_delay_s=0.2)
        if results == 1:
            return Reply(text=["Booking ", "B."], tool_calls=[FakeToolCall("book", '{"item": "B"}', id="call_b")])
        return Reply(text=["All ", "booked."])

    return reply


async def _until(predicate: Any, what: str) -> None:
    async with asyncio.timeout(WAIT_S):
        while not predicate():
            await asyncio.sleep(0.05)  # polling a condition, bounded: what it waits for is another process's work


def _kill(member: subprocess.Popen[bytes]) -> None:
    member.send_signal(signal.SIGKILL)
    member.wait(10)


async def _kill_twice(
    execution_id: str, service: BookingService, fake: FakeOpenAI, spawn: Any, first: subprocess.Popen[bytes], kafka: KafkaSettings
) -> list[dict[str, Any]]:
    key_a, key_b = f"{execution_id}:call_a", f"{execution_id}:call_b"
    # Between steps: step 0 and its tool call done, step 1's model turn streaming.
    await service.wait_for(key_a, 1)
    await _until(lambda: len(fake.bodies("booker-model")) >= 2, "step 1's model call")
    _kill(first)
    # Mid-tool-call: the second executor resumes at step 1 and is killed inside call B.
    second = spawn(2)
    await service.wait_for(key_b, 1)
    _kill(second)
    spawn(3)
    return await read_events(kafka, execution_id, timeout=WAIT_S)


@pytest.fixture
async def booking() -> AsyncIterator[tuple[BookingService, str]]:
    service = BookingService(hold={"call_b"})
    async with serve(service.app) as url:
        try:
            yield service, url
        finally:
            service.release.set()


async def test_a_killed_executor_resumes_without_running_completed_steps_again(
    kafka_settings: KafkaSettings, tmp_path: Path, booking: tuple[BookingService, str]
) -> None:
    service, tool_url = booking
    step1_cut = asyncio.Event()
    async with FakeOpenAI(default=scripted_model(step1_cut)) as fake:
        agents = tmp_path / "agents.yaml"
        agents.write_text(
            "agents:\n  booker:\n    provider: openai_compatible\n    model: booker-model\n    tools: [book]\n    max_steps: 5\n"
        )
        tools = tmp_path / "tools.yaml"
        tools.write_text(
            f"tools:\n  book:\n    url: {tool_url}/book\n    description: Book an item.\n"
            "    parameters: {type: object, properties: {item: {type: string}}, required: [item]}\n"
        )
        env = {
            "AGENTSTREAM_EXECUTOR_AGENTS_FILE": str(agents),
            "AGENTSTREAM_EXECUTOR_TOOLS_FILE": str(tools),
            "AGENTSTREAM_EXECUTOR_ALLOW_PRIVATE_TOOL_URLS": "true",
            "AGENTSTREAM_EXECUTOR_COMPATIBLE_BASE_URL": fake.openai_url,
            "AGENTSTREAM_EXECUTOR_TOOL_TIMEOUT_S": "120",
            "AGENTSTREAM_EXECUTOR_TIMEOUTS__READ_S": "120",
        }
        members: list[subprocess.Popen[bytes]] = []

        def spawn(n: int) -> subprocess.Popen[bytes]:
            member = spawn_executor(kafka_settings, instance_id=f"durable-{n}", session_timeout_ms=6000, env=env)
            members.append(member)
            return member

        orch = OrchestratorSettings(kafka=kafka_settings, api_keys={API_KEY: TENANT}, agents_file=agents)
        await ensure_topics(kafka_settings)
        try:
            first = spawn(1)
            async with serve(create_app(orch)) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
                r = await http.post(
                    "/v1/executions", json={"input": "book A then B", "agent": "booker"}, headers={"Authorization": f"Bearer {API_KEY}"}
                )
                assert r.status_code == 202, r.text
                execution_id = r.json()["execution_id"]
                stream = asyncio.create_task(collect_events(url.replace("http", "ws", 1), API_KEY, execution_id, timeout=WAIT_S))
                try:
                    events = await _kill_twice(execution_id, service, fake, spawn, first, kafka_settings)
                    items = await stream
                finally:
                    stream.cancel()
        finally:
            for member in members:
                if member.poll() is None:
                    _kill(member)

    key_a, key_b = f"{execution_id}:call_a", f"{execution_id}:call_b"
    assert events[-1]["type"] == "execution.completed", events[-1]
    assert events[-1]["output"] == "All booked."
    # A completed tool call never runs again; the interrupted one ran twice, both times with the same key.
    assert service.count(key_a) == 1
    assert service.count(key_b) == 2
    assert [k for k, _ in service.calls] == [key_a, key_b, key_b]
    # The model was never asked for step 0 again (its turn is the checkpoint); step 1 twice (cut off once).
    asked = [sum(1 for m in body["messages"] if m["role"] == "tool") for body in fake.bodies("booker-model")]
    assert asked == [0, 1, 1, 2]
    resumed = [e for e in events if e["type"] == "execution.resumed"]
    assert [(e["from_step"], e["reused_calls"], e["rerun_calls"]) for e in resumed] == [(1, 1, []), (2, 1, ["call_b"])]
    assert [e["previous_attempt"] for e in resumed] == [resumed[0]["attempt"] - 1, resumed[1]["attempt"] - 1]
    assert set(resumed[1]["reused_attempts"]) == {resumed[0]["attempt"] - 1, resumed[0]["attempt"]}
    # The final turn saw both results, from the log.
    final = fake.bodies("booker-model")[-1]["messages"]
    assert [orjson.loads(m["content"]) for m in final if m["role"] == "tool"] == [{"result": {"booked": "A"}}, {"result": {"booked": "B"}}]
    # What a client streaming through the bridge saw: every step once, the resumes, one end.
    seen = [i["event"] for i in items]
    assert [e["type"] for e in seen].count("execution.resumed") == 2 and seen[-1]["type"] == "execution.completed"
    completed = [e["call_id"] for e in seen if e["type"] == "tool.call.completed"]
    assert completed == ["call_a", "call_b"]  # A's result once (reused, not redone); B's once, from the run that finished it
    print(f"\ncalls: A x{service.count(key_a)}, B x{service.count(key_b)} (same key); model turns asked: {asked}")
