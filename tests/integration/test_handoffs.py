"""Handoffs (issue 20): an agent hands the conversation to another and the session continues with it.

Real broker, an executor in its own process, the orchestrator on loopback, the fake
OpenAI-compatible model driven through the real SDK path: the triage agent's model calls
``transfer_to_agent``, the billing agent's model answers. The stream says so, the execution's
output is billing's, the session's agent becomes billing and its next message runs billing.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from services.common.kafka import ensure_topics
from services.common.settings import KafkaSettings
from services.orchestrator.app import create_app
from services.orchestrator.settings import OrchestratorSettings
from tests.fakes.openai_server import FakeOpenAI, FakeToolCall, Reply
from tests.integration.executor_harness import read_events
from tests.support import collect_events, serve, spawn_executor

pytestmark = pytest.mark.kafka

TENANT, KEY = "tenant-handoff", "key-handoff"
AUTH = {"Authorization": f"Bearer {KEY}"}
WAIT_S = 120.0

AGENTS = """
agents:
  triage:
    provider: openai_compatible
    model: triage-model
    system_prompt: You are the triage desk.
    tools: []
    handoffs: [billing, refunds]
  refunds:
    provider: openai_compatible
    model: refunds-model
    system_prompt: You are the refunds desk.
    tools: [calculator]
    approval: {tools: [calculator], timeout_s: 600}
  billing:
    provider: openai_compatible
    model: billing-model
    system_prompt: You are the billing desk.
    tools: [calculator]
"""


def model(body: dict[str, Any]) -> Reply:
    """Triage hands every question to billing (or, refused, to an agent it may not name); billing answers."""
    if body["model"] == "triage-model":
        if any(m["role"] == "tool" for m in body["messages"]):
            return Reply(text=["Triage answers after all."])
        asked = body["messages"][-1]["content"]
        target = "admin" if "admin" in asked else "refunds" if "refund" in asked else "billing"
        arguments = orjson.dumps({"agent": target, "reason": "a billing question"}).decode()
        return Reply(text=["Let me get billing."], tool_calls=[FakeToolCall("transfer_to_agent", arguments, id="call_h")])
    if body["model"] == "refunds-model":  # computes the refund (a call that waits for approval), then answers
        results = [m for m in body["messages"] if m["role"] == "tool" and m["tool_call_id"] == "call_r"]
        if not results:
            return Reply(text=["Computing."], tool_calls=[FakeToolCall("calculator", '{"expression": "2*21"}', id="call_r")])
        return Reply(text=[f"Refund: {results[0]['content']}"])
    users = sum(1 for m in body["messages"] if m["role"] == "user")
    return Reply(text=[f"Billing here ({users} user messages)."])


async def _chat(http: httpx.AsyncClient, session_id: str, content: str) -> str:
    r = await http.post(f"/v1/sessions/{session_id}/chat", json={"content": content}, headers=AUTH)
    assert r.status_code == 202, r.text
    return str(r.json()["execution_id"])


async def _until_idle(http: httpx.AsyncClient, session_id: str) -> dict[str, Any]:
    async with asyncio.timeout(WAIT_S):
        while True:
            r = await http.get(f"/v1/sessions/{session_id}", headers=AUTH)
            assert r.status_code == 200, r.text
            if r.json()["state"] == "idle":
                return dict(r.json())
            await asyncio.sleep(0.1)  # polling another process's progress, bounded


async def _until_completed(http: httpx.AsyncClient, execution_id: str) -> dict[str, Any]:
    """The execution's view once the executor's completed snapshot reached it (it follows the terminal event)."""
    async with asyncio.timeout(WAIT_S):
        while True:
            r = await http.get(f"/v1/executions/{execution_id}", headers=AUTH)
            if r.status_code == 200 and r.json()["status"] == "completed":
                return dict(r.json())
            await asyncio.sleep(0.1)  # polling another process's progress, bounded


def _kill(member: subprocess.Popen[bytes]) -> None:
    if member.poll() is None:
        member.send_signal(signal.SIGKILL)
        member.wait(10)


async def test_a_handoff_changes_the_sessions_agent(kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    agents = tmp_path / "agents.yaml"
    agents.write_text(AGENTS)
    async with FakeOpenAI(default=model) as fake:
        env = {"AGENTSTREAM_EXECUTOR_AGENTS_FILE": str(agents), "AGENTSTREAM_EXECUTOR_COMPATIBLE_BASE_URL": fake.openai_url}
        await ensure_topics(kafka_settings)
        member = spawn_executor(kafka_settings, instance_id="handoff-1", env=env)
        orch = OrchestratorSettings(kafka=kafka_settings, api_keys={KEY: TENANT}, agents_file=agents)
        try:
            async with serve(create_app(orch)) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
                r = await http.post("/v1/sessions", json={"agent": "triage"}, headers=AUTH)
                assert r.status_code == 201, r.text
                session_id = r.json()["session_id"]
                first = await _chat(http, session_id, "Why was I charged twice?")
                items = await collect_events(url.replace("http", "ws", 1), KEY, first, timeout=WAIT_S)
                session = await _until_idle(http, session_id)
                first_view = await _until_completed(http, first)
                messages = (await http.get(f"/v1/sessions/{session_id}/messages", headers=AUTH)).json()["messages"]
                second = await _chat(http, session_id, "And the refund?")
                again = await collect_events(url.replace("http", "ws", 1), KEY, second, timeout=WAIT_S)
                second_view = await _until_completed(http, second)
                after = await _until_idle(http, session_id)
        finally:
            _kill(member)

    events = [i["event"] for i in items]
    # The stream says so: who handed off to whom, and why; the answer is billing's.
    [handoff] = [e for e in events if e["type"] == "agent.handoff"]
    assert (handoff["from_agent"], handoff["to_agent"], handoff["reason"]) == ("triage", "billing", "a billing question")
    end = events[-1]
    assert end["type"] == "execution.completed" and end["handed_off_to"] == "billing"
    assert end["output"] == "Billing here (1 user messages)."
    # Billing ran with its own prompt and model, over the conversation so far.
    [billing_first, billing_second] = fake.bodies("billing-model")
    assert billing_first["messages"][0] == {"role": "system", "content": "You are the billing desk."}
    assert [t["function"]["name"] for t in billing_first["tools"]] == ["calculator"]
    # The session continues with billing: GET shows it, the history names who answered ...
    assert session["agent"] == "billing"
    assert first_view["agent"] == "triage" and first_view["handed_off_to"] == "billing", str(first_view)
    answer = next(m for m in messages if m["role"] == "assistant")
    assert answer["name"] == "billing" and answer["content"] == end["output"]
    assert [c["tool"] for c in answer["tool_calls"]] == ["transfer_to_agent"]
    # ... and the next message runs billing, with the history, without asking triage.
    assert len(fake.bodies("triage-model")) == 1
    assert billing_second["messages"][0] == {"role": "system", "content": "You are the billing desk."}
    assert again[-1]["event"]["output"] == "Billing here (2 user messages)."
    assert again[-1]["event"].get("handed_off_to") is None
    assert second_view["agent"] == "billing" and second_view["handed_off_to"] is None and after["agent"] == "billing"


async def test_a_target_outside_the_list_is_refused_and_the_session_keeps_its_agent(kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    agents = tmp_path / "agents.yaml"
    agents.write_text(AGENTS)
    async with FakeOpenAI(default=model) as fake:
        env = {"AGENTSTREAM_EXECUTOR_AGENTS_FILE": str(agents), "AGENTSTREAM_EXECUTOR_COMPATIBLE_BASE_URL": fake.openai_url}
        await ensure_topics(kafka_settings)
        member = spawn_executor(kafka_settings, instance_id="handoff-2", env=env)
        orch = OrchestratorSettings(kafka=kafka_settings, api_keys={KEY: TENANT}, agents_file=agents)
        try:
            async with serve(create_app(orch)) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
                session_id = (await http.post("/v1/sessions", json={"agent": "triage"}, headers=AUTH)).json()["session_id"]
                execution_id = await _chat(http, session_id, "Make me an admin")
                items = await collect_events(url.replace("http", "ws", 1), KEY, execution_id, timeout=WAIT_S)
                session = await _until_idle(http, session_id)
        finally:
            _kill(member)
    events = [i["event"] for i in items]
    assert not any(e["type"] == "agent.handoff" for e in events)
    [done] = [e for e in events if e["type"] == "tool.call.completed"]
    assert done["tool"] == "transfer_to_agent" and "admin" in done["error"]
    assert events[-1]["output"] == "Triage answers after all." and events[-1].get("handed_off_to") is None
    assert fake.bodies("billing-model") == [] and session["agent"] == "triage"


async def test_a_resumed_attempt_continues_with_the_agent_handed_to(kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    """The target's tool call waits for approval: the attempt parks; the attempt the decision starts
    rebuilds the checkpoint from the log (the handoff in it) and continues with the target."""
    agents = tmp_path / "agents.yaml"
    agents.write_text(AGENTS)
    async with FakeOpenAI(default=model) as fake:
        env = {"AGENTSTREAM_EXECUTOR_AGENTS_FILE": str(agents), "AGENTSTREAM_EXECUTOR_COMPATIBLE_BASE_URL": fake.openai_url}
        await ensure_topics(kafka_settings)
        member = spawn_executor(kafka_settings, instance_id="handoff-3", env=env)
        orch = OrchestratorSettings(kafka=kafka_settings, api_keys={KEY: TENANT}, agents_file=agents)
        try:
            async with serve(create_app(orch)) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
                session_id = (await http.post("/v1/sessions", json={"agent": "triage"}, headers=AUTH)).json()["session_id"]
                execution_id = await _chat(http, session_id, "I want a refund")
                async with asyncio.timeout(WAIT_S):
                    while (await http.get(f"/v1/executions/{execution_id}", headers=AUTH)).json()["status"] != "waiting":
                        await asyncio.sleep(0.1)  # polling another process's progress, bounded
                r = await http.post(f"/v1/executions/{execution_id}/approvals/call_r", json={"decision": "approve"}, headers=AUTH)
                assert r.status_code == 200, r.text
                events = await read_events(kafka_settings, execution_id, timeout=WAIT_S)
                session = await _until_idle(http, session_id)
        finally:
            _kill(member)
    types = [e["type"] for e in events]
    assert types.count("agent.handoff") == 1 and types.count("execution.resumed") == 1
    assert types.index("agent.handoff") < types.index("tool.call.approval_requested") < types.index("execution.resumed")
    assert events[-1]["type"] == "execution.completed" and events[-1]["output"] == 'Refund: {"result":42}'
    assert events[-1]["handed_off_to"] == "refunds"
    # Triage was asked once (the resume reused its turn and its handoff); refunds twice: its call, then its answer.
    assert len(fake.bodies("triage-model")) == 1 and len(fake.bodies("refunds-model")) == 2
    assert fake.bodies("refunds-model")[1]["messages"][0] == {"role": "system", "content": "You are the refunds desk."}
    assert session["agent"] == "refunds"


async def test_the_session_keeps_its_agent_when_the_run_fails_or_the_target_is_unknown_here(
    kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    """A handoff moves the session only when the chat completed, to an agent this orchestrator can run."""
    executor_agents, orchestrator_agents = tmp_path / "executor.yaml", tmp_path / "orchestrator.yaml"
    executor_agents.write_text(AGENTS)
    # This orchestrator does not know billing (another deployment's agent): it cannot run the session's next message.
    orchestrator_agents.write_text(AGENTS.split("  billing:")[0])

    def failing_refunds(body: dict[str, Any]) -> Reply:
        return Reply(status=400, error_message="refunds model refused") if body["model"] == "refunds-model" else model(body)

    async with FakeOpenAI(default=failing_refunds) as fake:
        env = {"AGENTSTREAM_EXECUTOR_AGENTS_FILE": str(executor_agents), "AGENTSTREAM_EXECUTOR_COMPATIBLE_BASE_URL": fake.openai_url}
        await ensure_topics(kafka_settings)
        member = spawn_executor(kafka_settings, instance_id="handoff-4", env=env)
        orch = OrchestratorSettings(kafka=kafka_settings, api_keys={KEY: TENANT}, agents_file=orchestrator_agents)
        try:
            async with serve(create_app(orch)) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
                ws = url.replace("http", "ws", 1)
                unknown = (await http.post("/v1/sessions", json={"agent": "triage"}, headers=AUTH)).json()["session_id"]
                to_billing = await _chat(http, unknown, "Why was I charged twice?")
                billing_end = (await collect_events(ws, KEY, to_billing, timeout=WAIT_S))[-1]["event"]
                failed = (await http.post("/v1/sessions", json={"agent": "triage"}, headers=AUTH)).json()["session_id"]
                to_refunds = await _chat(http, failed, "I want a refund")
                refunds_end = (await collect_events(ws, KEY, to_refunds, timeout=WAIT_S))[-1]["event"]
                sessions = [await _until_idle(http, s) for s in (unknown, failed)]
        finally:
            _kill(member)
    assert billing_end["type"] == "execution.completed" and billing_end["handed_off_to"] == "billing"
    assert refunds_end["type"] == "execution.failed" and "refused" in refunds_end["reason"]
    assert [s["agent"] for s in sessions] == ["triage", "triage"]
