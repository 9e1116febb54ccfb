"""`agentstream run` when the execution waits for a person (issue 16), through the real entry point
on a pseudo-terminal (stdlib ``pty``): y approves, n asks the reason and rejects, a question is
answered in the stream. Piped (stdin not a TTY), it prints the commands and keeps streaming.

Real broker, a real orchestrator and executor, a real HTTP tool counting its invocations, the fake
OpenAI-compatible model scripted by the transcript it is sent."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pty
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from services.executor.app import Executor
from services.executor.settings import ExecutorSettings
from tests.e2e.orchestrator.conftest import Launcher
from tests.e2e.orchestrator.test_cli_daily import AGENTSTREAM
from tests.fakes.openai_server import FakeOpenAI, FakeToolCall, Reply
from tests.support import serve

pytestmark = pytest.mark.kafka

WAIT_S = 90.0
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")


class Booking:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.app = Starlette(routes=[Route("/book", self.book, methods=["POST"])])

    async def book(self, request: Request) -> JSONResponse:
        arguments = orjson.loads(await request.body())["arguments"]
        self.calls.append(arguments)
        return JSONResponse({"result": {"booked": arguments["item"]}})


def model(body: dict[str, Any]) -> Reply:
    """Books the item named; once booked, asks which colour; then says what it got."""
    tool = [m for m in body["messages"] if m["role"] == "tool"]
    if not tool:
        item = body["messages"][-1]["content"].split()[-1]
        return Reply(text=["Booking."], tool_calls=[FakeToolCall("book", orjson.dumps({"item": item}).decode(), id="call_1")])
    if len(tool) == 1 and "booked" in tool[0]["content"]:
        return Reply(text=["One more thing."], tool_calls=[FakeToolCall("ask_user", '{"question": "Which colour?"}', id="ask_1")])
    return Reply(text=[f"Done: {' / '.join(m['content'] for m in tool)}"])


class Terminal:
    """The CLI on a pseudo-terminal: what it wrote (escapes stripped), and typing into it."""

    def __init__(self, *args: str, env: dict[str, str]) -> None:
        self._args, self._env = args, env
        self.text = ""
        self._changed = asyncio.Event()
        self.proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> Terminal:
        self._master, slave = pty.openpty()
        try:
            self.proc = await asyncio.create_subprocess_exec(
                str(AGENTSTREAM), *self._args, env=self._env, stdin=slave, stdout=slave, stderr=slave
            )
        finally:
            os.close(slave)
        asyncio.get_running_loop().add_reader(self._master, self._read)
        return self

    def _read(self) -> None:
        try:
            chunk = os.read(self._master, 65536)
        except OSError:  # EIO: the process closed its side
            chunk = b""
        if not chunk:
            asyncio.get_running_loop().remove_reader(self._master)
        self.text += ANSI.sub("", chunk.decode(errors="replace"))
        self._changed.set()

    async def expect(self, needle: str, after: int = 0) -> int:
        """Wait until ``needle`` appears after position ``after``; its end."""
        async with asyncio.timeout(WAIT_S):
            while (found := self.text.find(needle, after)) < 0:
                self._changed.clear()
                await self._changed.wait()
        return found + len(needle)

    def type(self, line: str) -> None:
        os.write(self._master, line.encode() + b"\n")

    async def __aexit__(self, *exc: object) -> None:
        assert self.proc is not None
        try:
            if exc[0] is not None and self.proc.returncode is None:
                self.proc.kill()
            await asyncio.wait_for(self.proc.wait(), WAIT_S)
        finally:
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(self._master)
            os.close(self._master)


@pytest.fixture
async def booking() -> AsyncIterator[tuple[Booking, str]]:
    service = Booking()
    async with serve(service.app) as url:
        yield service, url


def _files(tmp_path: Path, tool_url: str) -> tuple[Path, Path]:
    agents = tmp_path / "agents.yaml"
    agents.write_text(
        "agents:\n  booker:\n    provider: openai_compatible\n    model: booker-model\n    tools: [book, ask_user]\n    max_steps: 5\n"
        "    approval: {tools: [book], timeout_s: 600}\n"
    )
    tools = tmp_path / "tools.yaml"
    tools.write_text(
        f"tools:\n  book:\n    url: {tool_url}/book\n    description: Book an item.\n"
        "    parameters: {type: object, properties: {item: {type: string}}, required: [item]}\n"
    )
    return agents, tools


async def test_run_asks_y_n_and_the_question_on_a_terminal_and_prints_the_commands_when_piped(
    launch: Launcher, sqlite_url: str, tmp_path: Path, booking: tuple[Booking, str]
) -> None:
    service, tool_url = booking
    agents, tools = _files(tmp_path, tool_url)
    async with FakeOpenAI(default=model) as fake:
        async with launch(sqlite_url, executor=False, agents_file=agents) as orch:
            settings = ExecutorSettings(
                kafka=orch.kafka, agents_file=agents, tools_file=tools, compatible_base_url=fake.openai_url, allow_private_tool_urls=True
            )
            async with Executor(settings):
                env = {**os.environ, "COLUMNS": "300", "AGENTSTREAM_URL": orch.url, "AGENTSTREAM_API_KEY": "key-a"}
                env.pop("AGENTSTREAM_DEBUG", None)

                # y: approved, the tool runs; then the agent's question is asked and answered here.
                async with Terminal("run", "--agent", "booker", "please book A", env=env) as term:
                    at = await term.expect("approve book (call call_1)? [y/n] ")
                    assert service.calls == []  # waiting: nothing ran yet
                    term.type("maybe")  # neither y nor n: asked again
                    at = await term.expect("[y/n] ", at)
                    term.type("y")
                    at = await term.expect("your answer: ", at)
                    assert service.calls == [{"item": "A"}]
                    term.type("the red one")
                    await term.expect("completed", at)
                assert term.proc is not None and term.proc.returncode == 0, term.text
                assert "the agent asks: Which colour?" in term.text and "answered ask_1: the red one" in term.text
                assert "Done:" in term.text and "the red one" in term.text
                first = term.text.split("agentstream approve|reject ", 1)[1].split()[0]

                # attach replays the requests of an execution that went on: shown, not asked again.
                async with Terminal("attach", first, env=env) as term:
                    await term.expect("completed")
                assert term.proc is not None and term.proc.returncode == 0, term.text
                assert "approval needed" in term.text and "[y/n]" not in term.text and "your answer" not in term.text

                # n: a reason is asked; rejected, the tool never runs, the model reads the reason.
                async with Terminal("run", "--agent", "booker", "please book B", env=env) as term:
                    at = await term.expect("[y/n] ")
                    term.type("n")
                    at = await term.expect("reason", at)
                    term.type("too expensive")
                    await term.expect("completed", at)
                assert term.proc is not None and term.proc.returncode == 0, term.text
                assert "call call_1 rejected: too expensive" in term.text and "Done:" in term.text
                assert service.calls == [{"item": "A"}]

                # Decided elsewhere (the API, the console) while asked: the question is withdrawn, the stream goes on.
                async with Terminal("run", "--agent", "booker", "please book D", env=env) as term:
                    at = await term.expect("[y/n] ")
                    third = term.text.split("agentstream approve|reject ", 1)[1].split()[0]
                    r = await orch.post(f"/v1/executions/{third}/approvals/call_1", {"decision": "approve"})
                    assert r.status_code == 200, r.text
                    at = await term.expect("call call_1 approved", at)
                    at = await term.expect("your answer: ", at)
                    r = await orch.post(f"/v1/executions/{third}/inputs/ask_1", {"text": "green"})
                    assert r.status_code == 200, r.text
                    await term.expect("completed", at)
                assert term.proc is not None and term.proc.returncode == 0, term.text
                assert "answered ask_1: green" in term.text and "not sent" not in term.text
                assert service.calls == [{"item": "A"}, {"item": "D"}]

                # Piped: no question; the commands are printed and the stream goes on until decided elsewhere.
                proc = await asyncio.create_subprocess_exec(
                    str(AGENTSTREAM), "run", "--agent", "booker", "please book C", env=env,
                    stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                )  # fmt: skip
                assert proc.stdout is not None
                printed: list[str] = []

                async def line_with(needle: str) -> str:
                    async with asyncio.timeout(WAIT_S):
                        while True:
                            assert proc.stdout is not None
                            line = (await proc.stdout.readline()).decode()
                            assert line, f"the stream ended before {needle!r}: {printed}"
                            printed.append(line)
                            if needle in line:
                                return line

                line = await line_with("agentstream approve|reject ")
                execution_id = line.split("agentstream approve|reject ", 1)[1].split()[0]
                r = await orch.post(f"/v1/executions/{execution_id}/approvals/call_1", {"decision": "approve"})
                assert r.status_code == 200, r.text
                await line_with(f"agentstream answer {execution_id} ask_1")
                r = await orch.post(f"/v1/executions/{execution_id}/inputs/ask_1", {"text": "blue"})
                assert r.status_code == 200, r.text
                out, err = await asyncio.wait_for(proc.communicate(), WAIT_S)
                text = "".join(printed) + out.decode() + err.decode()
                assert proc.returncode == 0, text
                assert "[y/n]" not in text and "your answer" not in text and "answered ask_1: blue" in text, text
