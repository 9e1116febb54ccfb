"""Handoffs through the doors people use, offline: the README's example through the real
`agentstream run` entry point (piped), the OpenAI chat door through the official SDK, an AG-UI
thread over two runs. The
scripted model hands off from triage to billing, billing uses its calculator and answers.
Real broker, a real orchestrator and executor."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from ag_ui.core import Event, EventType, RunAgentInput, UserMessage
from httpx_sse import aconnect_sse
from openai.types.chat import ChatCompletionMessageParam
from pydantic import TypeAdapter

from services.executor.app import Executor
from services.executor.settings import ExecutorSettings
from tests.e2e.orchestrator.conftest import Launcher
from tests.e2e.orchestrator.test_cli_daily import cli

pytestmark = pytest.mark.kafka
AGUI_EVENTS: TypeAdapter[Event] = TypeAdapter(Event)

AGENTS = """
agents:
  triage:
    system_prompt: Route the customer to the right desk.
    tools: []
    handoffs: [billing]
  billing:
    system_prompt: You are the billing desk.
    tools: [calculator]
"""


async def test_run_shows_the_handoff_and_the_targets_answer(launch: Launcher, sqlite_url: str, tmp_path: Path) -> None:
    agents = tmp_path / "agents.yaml"
    agents.write_text(AGENTS)
    async with launch(sqlite_url, executor=False, agents_file=agents) as orch:
        async with Executor(ExecutorSettings(kafka=orch.kafka, agents_file=agents, scripted_token_delay_ms=1)):
            code, out, err = await cli("run", "--agent", "triage", "Put me through to billing: what is 2*21?", url=orch.url)
    assert code == 0, err
    lines = [line.strip() for line in out.splitlines() if line.strip()]
    handoff = lines.index("⇄ handed off from triage to billing: the user asked for billing")
    calculator = next(i for i, line in enumerate(lines) if line.startswith("✓ calculator → 42"))
    assert handoff < calculator
    assert any(line.startswith("The calculator says 42.") for line in lines[calculator:]), out


async def test_the_openai_chat_door_streams_both_agents_text_and_stops_once(launch: Launcher, sqlite_url: str, tmp_path: Path) -> None:
    """The door has no handoff field: it skips agent.handoff; the official SDK parses every chunk."""
    agents = tmp_path / "agents.yaml"
    agents.write_text(AGENTS)
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Put me through to billing: what is 2*21?"}]
    async with launch(sqlite_url, executor=False, agents_file=agents) as orch:
        async with Executor(ExecutorSettings(kafka=orch.kafka, agents_file=agents, scripted_token_delay_ms=1)):
            async with openai.AsyncOpenAI(base_url=f"{orch.url}/v1", api_key="key-a", max_retries=0) as client:
                whole = await client.chat.completions.create(model="triage", messages=messages)
                stream = await client.chat.completions.create(model="triage", messages=messages, stream=True)
                chunks = [c async for c in stream]
    content = whole.choices[0].message.content or ""
    assert content.startswith("Let me hand you to billing.") and "The calculator says 42." in content
    assert whole.choices[0].finish_reason == "stop"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == content
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]


async def test_an_agui_thread_handed_off_goes_on_with_the_target_when_addressed_to_the_first_agent(
    launch: Launcher, sqlite_url: str, tmp_path: Path
) -> None:
    agents = tmp_path / "agents.yaml"
    agents.write_text(AGENTS)
    thread = f"thread-{uuid.uuid4().hex}"
    async with launch(sqlite_url, executor=False, agents_file=agents) as orch:
        async with Executor(ExecutorSettings(kafka=orch.kafka, agents_file=agents, scripted_token_delay_ms=1)):
            first = await _agui(orch.http, thread, "Put me through to billing: what is 2*21?")
            async with asyncio.timeout(60):  # the stream ends with the terminal event; the session's end follows it
                while (await orch.get(f"/v1/sessions/{thread}")).json()["state"] != "idle":
                    await asyncio.sleep(0.05)
            second = await _agui(orch.http, thread, "And what is 3*3?")
            session = (await orch.get(f"/v1/sessions/{thread}")).json()
    [custom] = [e for e in first if e.type == EventType.CUSTOM]
    assert custom.name == "agent.handoff" and custom.value == {"from": "triage", "to": "billing", "reason": "the user asked for billing"}
    # The thread runs billing now: the second run (addressed to triage, as the client started) is billing's.
    assert second[-1].type == EventType.RUN_FINISHED and str(second[-1].result).startswith("The calculator says 9.")
    assert not any(e.type == EventType.CUSTOM for e in second)
    assert session["agent"] == "billing"


async def _agui(http: httpx.AsyncClient, thread: str, text: str) -> list[Any]:
    body = RunAgentInput(
        thread_id=thread, run_id=f"run-{uuid.uuid4().hex}", messages=[UserMessage(id=f"m-{uuid.uuid4().hex}", content=text)]
    ).model_dump(mode="json", by_alias=True)
    out = []
    async with aconnect_sse(http, "POST", "/v1/agui/triage", json=body, headers={"Authorization": "Bearer key-a"}) as source:
        assert source.response.status_code == 200, await source.response.aread()
        async for sse in source.aiter_sse():
            out.append(AGUI_EVENTS.validate_json(sse.data))
    return out
