"""The live console in headless Chromium (Debian's ``chromium``, driven by Playwright; deploy/browser.sh).

Signs in, runs an execution, drops the WebSocket mid-stream and checks that the console resumed
from its last cursor: every event exactly once, the text whole. Then chats in a session. The
screenshot is kept in .artifacts/console.png (docs/console.png, shown in the README, on request).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from services.common.settings import KafkaSettings
from services.executor.app import Executor
from services.executor.settings import ExecutorSettings
from services.orchestrator.app import create_app
from services.orchestrator.settings import OrchestratorSettings
from tests.e2e.orchestrator.test_cli_approvals import Booking
from tests.e2e.orchestrator.test_cli_approvals import _files as booking_files
from tests.e2e.orchestrator.test_cli_approvals import model as booking_model
from tests.fakes.openai_server import FakeOpenAI
from tests.support import collect_events, serve

pytestmark = pytest.mark.kafka

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# The screenshot is a test artifact; AGENTSTREAM_UPDATE_SCREENSHOT=1 refreshes the README's copy on purpose.
_ROOT = Path(__file__).parents[2]
SCREENSHOT = _ROOT / ("docs" if os.environ.get("AGENTSTREAM_UPDATE_SCREENSHOT") else ".artifacts") / "console.png"


@pytest.fixture
async def console_url(kafka_settings: KafkaSettings, tmp_path: Path) -> AsyncIterator[str]:
    # A slow scripted model (40 ms a word), so the test can drop the connection mid-stream. A store of
    # the test's own: the history list shows only this test's runs.
    database_url = SecretStr(f"sqlite+aiosqlite:///{tmp_path / 'state.db'}")
    orch = OrchestratorSettings(
        kafka=kafka_settings, api_keys={"console-key": "console-tenant"}, session_policy="reject", database_url=database_url
    )
    async with Executor(ExecutorSettings(kafka=kafka_settings, scripted_token_delay_ms=40)):
        async with serve(create_app(orch)) as url:
            yield url


@pytest.fixture
async def page(console_url: str) -> AsyncIterator[Any]:
    if shutil.which("chromium") is None:
        pytest.fail("chromium is missing: run `bash deploy/browser.sh` (make test does)")
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            context = await browser.new_context(viewport={"width": 1280, "height": 860})
            page = await context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(f"{console_url}/console")
            yield page
            assert not errors, errors
        finally:
            await browser.close()


async def test_console_streams_resumes_after_a_drop_and_chats(page: Any, console_url: str) -> None:
    await page.fill("#api-key", "wrong-key")
    await page.click("#signin button")
    await page.wait_for_selector("#signin-error:has-text('API key')")

    await page.fill("#api-key", "console-key")
    await page.click("#signin button")
    await page.wait_for_selector("#conn.on")
    assert await page.text_content("#tenant") != "signed out"

    await page.fill("#prompt", "what is 12*7?")
    await page.click("#send")
    await page.wait_for_selector(".turn .tool .name:has-text('calculator')")
    await page.click("#drop")  # mid-stream: the console reconnects and resumes from its last cursor
    await page.wait_for_selector("#reconnects:has-text('reconnects: 1')")
    await page.wait_for_selector(".turn .status.completed", timeout=30_000)
    await page.wait_for_selector(".turn .meta :has-text('total')")

    execution_id = await page.get_attribute(".turn", "data-execution-id")
    assert execution_id
    truth = await collect_events(console_url.replace("http", "ws", 1), "console-key", execution_id)
    log = await page.evaluate("window.agentstreamConsole.log")
    assert [e["cursor"] for e in log] == [i["cursor"] for i in truth]  # each event once, in order, none lost
    text = "".join(i["event"]["text"] for i in truth if i["event"]["type"] == "token.delta")
    segments = await page.eval_on_selector_all(".turn .output > *", "nodes => nodes.map(n => [n.className, n.textContent])")
    assert "".join(t for kind, t in segments if kind == "text") == text
    # In stream order: the text before the tool call, its card, then the answer (two steps, two blocks).
    assert [kind for kind, _ in segments] == ["text", "tool", "text"], segments
    assert "The calculator says 84" in text
    assert "84" in (await page.text_content(".turn .tool .result") or "")
    async with httpx.AsyncClient(base_url=console_url, headers={"Authorization": "Bearer console-key"}) as http:
        view = (await http.get(f"/v1/executions/{execution_id}")).json()
    assert view["status"] == "completed"
    assert str(view["usage"]["total_tokens"]) in (await page.text_content(".turn .meta") or "")
    assert re.fullmatch(r"\d+ executions · \d+ tokens \(\d+ in, \d+ out\)", await page.text_content("#usage") or "")

    await page.check("input[name=mode][value=session]")
    await page.fill("#prompt", "hello agent")
    await page.click("#send")
    await page.wait_for_selector("#session-info:has-text('session')")
    await page.wait_for_function("document.querySelectorAll('.turn .status.completed').length === 2", timeout=30_000)
    assert "hello agent" in (await page.text_content(".turn .output") or "")
    await page.fill("#prompt", "what is 2+3?")
    await page.click("#send")
    await page.wait_for_function("document.querySelectorAll('.turn .status.completed').length === 3", timeout=30_000)
    assert "The calculator says 5" in (await page.text_content(".turn .output") or "")
    session_id = (await page.text_content("#session-info") or "").removeprefix("session ")
    await page.wait_for_selector(f"#sessions li.current[data-session-id='{session_id}']")  # the sessions list (GET /v1/sessions)

    SCREENSHOT.parent.mkdir(exist_ok=True)
    await page.screenshot(path=str(SCREENSHOT), full_page=True)
    assert SCREENSHOT.stat().st_size > 10_000


@pytest.fixture
async def phone(console_url: str) -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            context = await browser.new_context(viewport={"width": 390, "height": 844})
            page = await context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(f"{console_url}/console")
            yield page
            assert not errors, errors
        finally:
            await browser.close()


async def test_console_history_agents_cancel_and_reload_at_phone_width(phone: Any, console_url: str) -> None:
    page = phone
    await page.fill("#api-key", "console-key")
    await page.click("#signin button")
    await page.wait_for_selector("#conn.on")
    assert await page.eval_on_selector_all("#agent option", "o => o.map(x => x.value)") == ["default", "docs"]  # from /v1/agents

    await page.fill("#prompt", "what is 12*7?")
    await page.click("#send")
    await page.wait_for_selector(".turn .status.completed", timeout=30_000)
    first = await page.get_attribute(".turn", "data-execution-id")
    await page.wait_for_selector(f"#history li[data-execution-id='{first}'] .status.completed")  # the list API

    await page.fill("#prompt", "a long one to cancel")
    await page.click("#send")
    await page.wait_for_function(f"document.querySelector('.turn').dataset.executionId !== '{first}'")
    second = await page.get_attribute(".turn", "data-execution-id")
    await page.click(f".turn[data-execution-id='{second}'] button.cancel")
    await page.wait_for_selector(f".turn[data-execution-id='{second}'] .status.cancelled", timeout=30_000)
    async with httpx.AsyncClient(base_url=console_url, headers={"Authorization": "Bearer console-key"}) as http:
        assert (await http.get(f"/v1/executions/{second}")).json()["status"] == "cancelled"

    assert await page.evaluate("document.documentElement.scrollWidth") <= 390  # nothing wider than the phone
    await page.reload()  # the turns come back, replayed from their first event
    await page.wait_for_selector(f".turn[data-execution-id='{first}'] .status.completed", timeout=30_000)
    await page.wait_for_selector(f".turn[data-execution-id='{second}'] .status.cancelled", timeout=30_000)
    assert "The calculator says 84" in (await page.text_content(f".turn[data-execution-id='{first}'] .output") or "")
    await page.click(f".turn[data-execution-id='{first}'] .timeline summary")  # the plan's service calls, then the stream's counts
    timeline = await page.text_content(f".turn[data-execution-id='{first}'] .timeline") or ""
    assert "agent_config default" in timeline and "execution default · completed" in timeline, timeline
    assert "attempts 1 · model steps 2 · restarts 0 · tool calls 1" in timeline, timeline
    assert await page.evaluate("document.documentElement.scrollWidth") <= 390
    await page.screenshot(path=str(SCREENSHOT.with_name("console-phone.png")), full_page=True)


@pytest.fixture
async def approvals_console(kafka_settings: KafkaSettings, tmp_path: Path) -> AsyncIterator[tuple[str, Booking]]:
    """A console whose `booker` agent needs approval to book (a real HTTP tool) and may ask the user."""
    service = Booking()
    async with serve(service.app) as tool_url, FakeOpenAI(default=booking_model) as fake:
        agents, tools = booking_files(tmp_path, tool_url)
        database_url = SecretStr(f"sqlite+aiosqlite:///{tmp_path / 'state.db'}")
        orch = OrchestratorSettings(
            kafka=kafka_settings, api_keys={"console-key": "console-tenant"}, database_url=database_url, agents_file=agents
        )
        executor = ExecutorSettings(
            kafka=kafka_settings, agents_file=agents, tools_file=tools, compatible_base_url=fake.openai_url, allow_private_tool_urls=True
        )
        async with Executor(executor), serve(create_app(orch)) as url:
            yield url, service


async def test_console_approves_rejects_with_a_reason_and_answers_a_question(approvals_console: tuple[str, Booking]) -> None:
    console_url, service = approvals_console
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = await (await browser.new_context(viewport={"width": 1280, "height": 860})).new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(f"{console_url}/console")
            await page.fill("#api-key", "console-key")
            await page.click("#signin button")
            await page.wait_for_selector("#conn.on")
            await page.select_option("#agent", "booker")

            # Approve: the tool runs once; then the agent's question gets an answer box.
            await page.fill("#prompt", "please book A")
            await page.click("#send")
            await page.wait_for_selector(".turn .wait.approval button.approve", timeout=60_000)
            assert await page.text_content(".turn .status") == "waiting"
            assert '{"item":"A"}' in (await page.text_content(".turn .wait.approval") or "")
            assert service.calls == []
            await page.click(".turn .wait.approval button.approve")
            await page.wait_for_selector(".turn .wait.approval.decided .outcome:has-text('approved')", timeout=60_000)
            await page.wait_for_selector(".turn .wait.question input", timeout=60_000)
            assert "Which colour?" in (await page.text_content(".turn .wait.question") or "")
            await page.fill(".turn .wait.question input", "the red one")
            await page.click(".turn .wait.question button.answer")
            await page.wait_for_selector(".turn .status.completed", timeout=60_000)
            first = await page.get_attribute(".turn", "data-execution-id")
            output = await page.text_content(".turn .output") or ""
            assert "answered: the red one" in output and "Done:" in output and "booked" in output, output
            assert "Booking." in output  # the step before the wait stands: the continuation resumed, not restarted
            assert service.calls == [{"item": "A"}]
            assert await page.query_selector(".turn .wait button") is None  # decided cards have no buttons left

            # Reject with a reason: the tool never runs; the model reads the reason.
            await page.fill("#prompt", "please book B")
            await page.click("#send")
            await page.wait_for_function(f"document.querySelector('.turn').dataset.executionId !== '{first}'")
            second = await page.get_attribute(".turn", "data-execution-id")
            turn = f".turn[data-execution-id='{second}']"
            await page.wait_for_selector(f"{turn} .wait.approval button.reject", timeout=60_000)
            await page.fill(f"{turn} .wait.approval input", "too expensive")
            await page.click(f"{turn} .wait.approval button.reject")
            await page.wait_for_selector(f"{turn} .status.completed", timeout=60_000)
            output = await page.text_content(f"{turn} .output") or ""
            assert "rejected: too expensive" in output and "Done:" in output and "too expensive" in output.split("Done:")[1], output
            assert service.calls == [{"item": "A"}]

            # A reload replays both turns from their first event: the cards come back decided, without buttons.
            await page.reload()
            await page.wait_for_function("document.querySelectorAll('.turn .status.completed').length === 2", timeout=60_000)
            assert await page.query_selector(".turn .wait button") is None
            assert len(await page.query_selector_all(".turn .wait.decided")) == 3
            assert not errors, errors
        finally:
            await browser.close()
