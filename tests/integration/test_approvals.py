"""Approval of tool calls (issue 16): the execution waits, parked in the log, for a decision.

Real broker, an executor in its own process, the orchestrator on loopback, a real HTTP tool server
counting its invocations, the fake OpenAI-compatible model scripted by the transcript it is sent.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
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

TENANT, OTHER = "tenant-approve", "tenant-other"
KEY, OTHER_KEY = "key-approve", "key-other"
AUTH, OTHER_AUTH = {"Authorization": f"Bearer {KEY}"}, {"Authorization": f"Bearer {OTHER_KEY}"}
WAIT_S = 120.0


class BookingService:
    """An HTTP tool with a side effect: every invocation is counted (idempotency key, arguments)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.app = Starlette(routes=[Route("/book", self.book, methods=["POST"])])

    async def book(self, request: Request) -> JSONResponse:
        body = orjson.loads(await request.body())
        self.calls.append((request.headers.get("idempotency-key", ""), body["arguments"]))
        return JSONResponse({"result": {"booked": body["arguments"]["item"]}})

    def of(self, execution_id: str) -> list[dict[str, Any]]:
        return [args for key, args in self.calls if key.startswith(f"{execution_id}:")]


def model(body: dict[str, Any]) -> Reply:
    """Step 0 books the item the user names; then it answers with what the tool said."""
    tool = [m for m in body["messages"] if m["role"] == "tool"]
    if not tool:
        item = body["messages"][-1]["content"].split()[-1]
        return Reply(text=["Booking."], tool_calls=[FakeToolCall("book", orjson.dumps({"item": item}).decode(), id="call_1")])
    return Reply(text=[f"Done: {tool[0]['content']}"])


@pytest.fixture
async def booking() -> AsyncIterator[tuple[BookingService, str]]:
    service = BookingService()
    async with serve(service.app) as url:
        yield service, url


def _files(tmp_path: Path, tool_url: str, approval: str) -> tuple[Path, dict[str, str]]:
    agents = tmp_path / "agents.yaml"
    agents.write_text(
        "agents:\n  booker:\n    provider: openai_compatible\n    model: booker-model\n    tools: [book]\n    max_steps: 4\n"
        f"    approval: {approval}\n"
    )
    tools = tmp_path / "tools.yaml"
    tools.write_text(
        f"tools:\n  book:\n    url: {tool_url}/book\n    description: Book an item.\n"
        "    parameters: {type: object, properties: {item: {type: string}}, required: [item]}\n"
    )
    return agents, {
        "AGENTSTREAM_EXECUTOR_AGENTS_FILE": str(agents),
        "AGENTSTREAM_EXECUTOR_TOOLS_FILE": str(tools),
        "AGENTSTREAM_EXECUTOR_ALLOW_PRIVATE_TOOL_URLS": "true",
    }


async def _until_waiting(http: httpx.AsyncClient, execution_id: str) -> dict[str, Any]:
    async with asyncio.timeout(WAIT_S):
        while True:
            r = await http.get(f"/v1/executions/{execution_id}", headers=AUTH)
            if r.status_code == 200 and r.json()["status"] == "waiting":
                return dict(r.json())
            await asyncio.sleep(0.1)  # polling another process's progress, bounded


async def _submit(http: httpx.AsyncClient, item: str) -> str:
    r = await http.post("/v1/executions", json={"input": f"please book {item}", "agent": "booker"}, headers=AUTH)
    assert r.status_code == 202, r.text
    return str(r.json()["execution_id"])


def _kill(member: subprocess.Popen[bytes]) -> None:
    if member.poll() is None:
        member.send_signal(signal.SIGKILL)
        member.wait(10)


async def test_approve_reject_edit_and_another_tenant(
    kafka_settings: KafkaSettings, tmp_path: Path, booking: tuple[BookingService, str]
) -> None:
    service, tool_url = booking
    async with FakeOpenAI(default=model) as fake:
        agents, env = _files(tmp_path, tool_url, "{tools: [book], timeout_s: 600}")
        env["AGENTSTREAM_EXECUTOR_COMPATIBLE_BASE_URL"] = fake.openai_url
        await ensure_topics(kafka_settings)
        member = spawn_executor(kafka_settings, instance_id="approve-1", env=env)
        orch = OrchestratorSettings(kafka=kafka_settings, api_keys={KEY: TENANT, OTHER_KEY: OTHER}, agents_file=agents)
        try:
            async with serve(create_app(orch)) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
                approved, rejected, edited = [await _submit(http, item) for item in ("A", "B", "C")]
                for execution_id in (approved, rejected, edited):
                    await _until_waiting(http, execution_id)
                # Waiting: nothing ran yet.
                assert service.calls == []
                stream = asyncio.create_task(collect_events(url.replace("http", "ws", 1), KEY, approved, timeout=WAIT_S))
                try:
                    path = f"/v1/executions/{approved}/approvals/call_1"
                    # Another tenant's decision is refused as if the execution did not exist.
                    r = await http.post(path, json={"decision": "approve"}, headers=OTHER_AUTH)
                    assert r.status_code == 404, r.text
                    r = await http.post(path, json={"decision": "approve", "reason": "x" * 5000}, headers=AUTH)
                    assert r.status_code == 422, r.text
                    r = await http.post(f"/v1/executions/{approved}/approvals/no_such_call", json={"decision": "approve"}, headers=AUTH)
                    assert r.status_code == 404, r.text
                    r = await http.post(path, json={"decision": "approve"}, headers=AUTH)
                    assert r.status_code == 200, r.text
                    first = r.json()
                    assert first["decision"] == "approve" and first["by"] == "user"
                    # Idempotent: the same decision again, the same answer; a different one, 409.
                    again = await http.post(path, json={"decision": "approve"}, headers=AUTH)
                    assert again.status_code == 200 and again.json() == first
                    assert (await http.post(path, json={"decision": "reject"}, headers=AUTH)).status_code == 409
                    r = await http.post(
                        f"/v1/executions/{rejected}/approvals/call_1", json={"decision": "reject", "reason": "too expensive"}, headers=AUTH
                    )
                    assert r.status_code == 200, r.text
                    r = await http.post(
                        f"/v1/executions/{edited}/approvals/call_1", json={"decision": "approve", "arguments": {"item": "Z"}}, headers=AUTH
                    )
                    assert r.status_code == 200, r.text
                    ends = {e: await read_events(kafka_settings, e, timeout=WAIT_S) for e in (approved, rejected, edited)}
                    seen = [i["event"]["type"] for i in await stream]
                    # Still idempotent once the run completed: the same decision, the same answer.
                    again = await http.post(path, json={"decision": "approve"}, headers=AUTH)
                    assert again.status_code == 200 and again.json() == first, again.text
                finally:
                    stream.cancel()
        finally:
            _kill(member)

    for execution_id, events in ends.items():
        assert events[-1]["type"] == "execution.completed", (execution_id, events[-1])
        types = [e["type"] for e in events]
        assert types.count("tool.call.approval_requested") == 1 and types.count("tool.call.approval_decided") == 1
        assert types.index("turn.completed") < types.index("tool.call.approval_requested") < types.index("tool.call.approval_decided")
        assert types.count("execution.resumed") == 1
    # What a client streaming through the bridge saw: the request, the wait, the decision, the call, the end.
    assert [t for t in seen if t.startswith(("tool.", "execution."))] == [
        "execution.started",
        "tool.call.approval_requested",
        "tool.call.approval_decided",
        "execution.started",
        "execution.resumed",
        "tool.call.started",
        "tool.call.completed",
        "execution.completed",
    ]
    # Approved: the tool ran once, with the model's arguments.
    assert service.of(approved) == [{"item": "A"}]
    assert "booked" in ends[approved][-1]["output"]
    # Rejected: the tool never ran; the model saw the reason as the tool's result.
    assert service.of(rejected) == []
    assert "too expensive" in ends[rejected][-1]["output"]
    done = [e for e in ends[rejected] if e["type"] == "tool.call.completed"]
    assert len(done) == 1 and "too expensive" in done[0]["error"]
    # Edited: the approver's arguments were used.
    assert service.of(edited) == [{"item": "Z"}]
    requested = next(e for e in ends[edited] if e["type"] == "tool.call.approval_requested")
    assert requested["arguments"] == {"item": "C"} and requested["tool"] == "book"
    # The model was asked for step 0 once per execution (the resume reused its turn from the log).
    asked = [sum(1 for m in b["messages"] if m["role"] == "tool") for b in fake.bodies("booker-model")]
    assert asked.count(0) == 3 and asked.count(1) == 3


async def test_deadline_applies_the_default_decision(
    kafka_settings: KafkaSettings, tmp_path: Path, booking: tuple[BookingService, str]
) -> None:
    service, tool_url = booking
    async with FakeOpenAI(default=model) as fake:
        agents, env = _files(tmp_path, tool_url, "{tools: all, timeout_s: 1, default: approve}")
        env["AGENTSTREAM_EXECUTOR_COMPATIBLE_BASE_URL"] = fake.openai_url
        await ensure_topics(kafka_settings)
        member = spawn_executor(kafka_settings, instance_id="approve-deadline", env=env)
        orch = OrchestratorSettings(kafka=kafka_settings, api_keys={KEY: TENANT}, agents_file=agents, sweep_interval_s=0.2)
        try:
            async with serve(create_app(orch)) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
                execution_id = await _submit(http, "D")
                events = await read_events(kafka_settings, execution_id, timeout=WAIT_S)  # nobody decides
                # Too late for a user: the default was applied.
                r = await http.post(f"/v1/executions/{execution_id}/approvals/call_1", json={"decision": "reject"}, headers=AUTH)
                assert r.status_code == 409, r.text
        finally:
            _kill(member)
    assert events[-1]["type"] == "execution.completed", events[-1]
    decided = [e for e in events if e["type"] == "tool.call.approval_decided"]
    assert [(e["decision"], e["by"]) for e in decided] == [("approve", "deadline")]
    assert service.of(execution_id) == [{"item": "D"}]


async def test_a_waiting_run_survives_restarts_of_the_executor_and_the_orchestrator(
    kafka_settings: KafkaSettings, tmp_path: Path, booking: tuple[BookingService, str]
) -> None:
    service, tool_url = booking
    async with FakeOpenAI(default=model) as fake:
        agents, env = _files(tmp_path, tool_url, "{tools: [book]}")
        env["AGENTSTREAM_EXECUTOR_COMPATIBLE_BASE_URL"] = fake.openai_url
        await ensure_topics(kafka_settings)
        orch = OrchestratorSettings(kafka=kafka_settings, api_keys={KEY: TENANT}, agents_file=agents)
        members = [spawn_executor(kafka_settings, instance_id="approve-r1", env=env)]
        try:
            async with serve(create_app(orch)) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
                execution_id = await _submit(http, "R")
                await _until_waiting(http, execution_id)
            # Every process that knew of the run is gone: it lives in the log only.
            _kill(members[0])
            members.append(spawn_executor(kafka_settings, instance_id="approve-r2", env=env))
            async with serve(create_app(orch)) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
                await _until_waiting(http, execution_id)
                # Decided from the CLI (`agentstream approve ID CALL_ID`), outside any stream.
                cli = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "services.cli", "approve", execution_id, "call_1", "--url", url, "--api-key", KEY,
                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                )  # fmt: skip
                out, _ = await asyncio.wait_for(cli.communicate(), WAIT_S)
                assert cli.returncode == 0 and b"call call_1 approved" in out, out
                events = await read_events(kafka_settings, execution_id, timeout=WAIT_S)
            # A new orchestrator, after the end, knows the decision from the log's snapshots: the same answer.
            async with serve(create_app(orch)) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
                path = f"/v1/executions/{execution_id}/approvals/call_1"
                async with asyncio.timeout(WAIT_S):
                    while (await http.get(f"/v1/executions/{execution_id}", headers=AUTH)).json().get("status") != "completed":
                        await asyncio.sleep(0.1)  # the executor's end snapshot reaches the new view
                again = await http.post(path, json={"decision": "approve"}, headers=AUTH)
                assert again.status_code == 200 and again.json()["decision"] == "approve", again.text
                assert (await http.post(path, json={"decision": "reject"}, headers=AUTH)).status_code == 409
        finally:
            for member in members:
                _kill(member)
    assert events[-1]["type"] == "execution.completed", events[-1]
    assert service.of(execution_id) == [{"item": "R"}]
    assert len({e["attempt"] for e in events if e["type"] == "execution.started"}) == 2
    asked = [sum(1 for m in b["messages"] if m["role"] == "tool") for b in fake.bodies("booker-model")]
    assert asked == [0, 1]


async def test_cancelling_a_waiting_run_ends_it_and_refuses_a_later_decision(
    kafka_settings: KafkaSettings, tmp_path: Path, booking: tuple[BookingService, str]
) -> None:
    service, tool_url = booking
    async with FakeOpenAI(default=model) as fake:
        agents, env = _files(tmp_path, tool_url, "{tools: [book]}")
        env["AGENTSTREAM_EXECUTOR_COMPATIBLE_BASE_URL"] = fake.openai_url
        await ensure_topics(kafka_settings)
        member = spawn_executor(kafka_settings, instance_id="approve-cancel", env=env)
        orch = OrchestratorSettings(kafka=kafka_settings, api_keys={KEY: TENANT}, agents_file=agents)
        try:
            async with serve(create_app(orch)) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
                execution_id = await _submit(http, "X")
                await _until_waiting(http, execution_id)
                r = await http.post(f"/v1/executions/{execution_id}/cancel", headers=AUTH)
                assert r.status_code == 202 and r.json()["status"] == "cancelled", r.text
                view = (await http.get(f"/v1/executions/{execution_id}", headers=AUTH)).json()
                assert view["status"] == "cancelled", view
                r = await http.post(f"/v1/executions/{execution_id}/approvals/call_1", json={"decision": "approve"}, headers=AUTH)
                assert r.status_code == 409, r.text
        finally:
            _kill(member)
    assert service.calls == []


def asking_model(body: dict[str, Any]) -> Reply:
    """Step 0 asks the user which item; then it answers with what the user said."""
    tool = [m for m in body["messages"] if m["role"] == "tool"]
    if not tool:
        return Reply(text=["Let me ask."], tool_calls=[FakeToolCall("ask_user", '{"question": "Which item?"}', id="ask_1")])
    return Reply(text=[f"You said: {tool[0]['content']}"])


async def test_ask_user_waits_for_the_answer_in_the_log(
    kafka_settings: KafkaSettings, tmp_path: Path, booking: tuple[BookingService, str]
) -> None:
    _, tool_url = booking
    async with FakeOpenAI(default=asking_model) as fake:
        agents, env = _files(tmp_path, tool_url, "null")
        agents.write_text(agents.read_text().replace("tools: [book]", "tools: [book, ask_user]"))
        env["AGENTSTREAM_EXECUTOR_COMPATIBLE_BASE_URL"] = fake.openai_url
        await ensure_topics(kafka_settings)
        member = spawn_executor(kafka_settings, instance_id="approve-ask", env=env)
        orch = OrchestratorSettings(kafka=kafka_settings, api_keys={KEY: TENANT, OTHER_KEY: OTHER}, agents_file=agents)
        try:
            async with serve(create_app(orch)) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
                execution_id = await _submit(http, "?")
                await _until_waiting(http, execution_id)
                path = f"/v1/executions/{execution_id}/inputs/ask_1"
                assert (await http.post(path, json={"text": "the red one"}, headers=OTHER_AUTH)).status_code == 404
                # The question is no approval: the approvals endpoint does not know it.
                r = await http.post(f"/v1/executions/{execution_id}/approvals/ask_1", json={"decision": "approve"}, headers=AUTH)
                assert r.status_code == 404, r.text
                r = await http.post(path, json={"text": "the red one"}, headers=AUTH)
                assert r.status_code == 200 and r.json()["text"] == "the red one", r.text
                assert (await http.post(path, json={"text": "the red one"}, headers=AUTH)).json() == r.json()
                assert (await http.post(path, json={"text": "blue"}, headers=AUTH)).status_code == 409
                events = await read_events(kafka_settings, execution_id, timeout=WAIT_S)
        finally:
            _kill(member)
    assert events[-1]["type"] == "execution.completed", events[-1]
    asked = [e for e in events if e["type"] == "input.requested"]
    assert [(e["call_id"], e["question"]) for e in asked] == [("ask_1", "Which item?")]
    assert [e["text"] for e in events if e["type"] == "input.provided"] == ["the red one"]
    assert "the red one" in events[-1]["output"]


async def test_a_wait_longer_than_the_execution_timeout_is_not_a_timeout(
    kafka_settings: KafkaSettings, tmp_path: Path, booking: tuple[BookingService, str]
) -> None:
    service, tool_url = booking
    timeout_s = 5.0
    async with FakeOpenAI(default=model) as fake:
        agents, env = _files(tmp_path, tool_url, "{tools: [book], timeout_s: 600}")
        env["AGENTSTREAM_EXECUTOR_COMPATIBLE_BASE_URL"] = fake.openai_url
        await ensure_topics(kafka_settings)
        member = spawn_executor(kafka_settings, instance_id="approve-long", env=env)
        orch = OrchestratorSettings(
            kafka=kafka_settings, api_keys={KEY: TENANT}, agents_file=agents, sweep_interval_s=0.2, execution_timeout_s=timeout_s
        )
        try:
            async with serve(create_app(orch)) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
                submitted = time.monotonic()
                execution_id = await _submit(http, "L")
                await _until_waiting(http, execution_id)
                # Past the execution timeout (what the sweeper would end it at), with sweeps in between.
                view: dict[str, Any] = {}
                while time.monotonic() - submitted < timeout_s * 1.6 and view.get("status") != "timed_out":
                    view = (await http.get(f"/v1/executions/{execution_id}", headers=AUTH)).json()
                    await asyncio.sleep(0.2)  # the condition is the deadline passing: time itself
                assert view["status"] == "waiting", view
                r = await http.post(f"/v1/executions/{execution_id}/approvals/call_1", json={"decision": "approve"}, headers=AUTH)
                assert r.status_code == 200, r.text
                events = await read_events(kafka_settings, execution_id, timeout=WAIT_S)
        finally:
            _kill(member)
    assert events[-1]["type"] == "execution.completed", events[-1]
    assert service.of(execution_id) == [{"item": "L"}]
