"""The README's handoff example through the real `agentstream run` entry point (piped), offline:
the scripted model hands off from triage to billing, billing uses its calculator and answers.
Real broker, a real orchestrator and executor."""

from __future__ import annotations

from pathlib import Path

import pytest

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
