"""Handoffs through the doors people use, offline: the README's example through the real
`agentstream run` entry point (piped), and the OpenAI chat door through the official SDK. The
scripted model hands off from triage to billing, billing uses its calculator and answers.
Real broker, a real orchestrator and executor."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from services.executor.app import Executor
from services.executor.settings import ExecutorSettings
from tests.e2e.orchestrator.conftest import Launcher
from tests.e2e.orchestrator.test_cli_daily import cli

pytestmark = pytest.mark.kafka

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
