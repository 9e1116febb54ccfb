"""The AG-UI door driven by the official npm ``@ag-ui/client`` (``HttpAgent``) under node: it posts
its own ``RunAgentInput``, parses and verifies the event stream, and folds it into messages.

Skipped when node or npm is missing, or when npm cannot install the package (no registry)."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.e2e.conftest import Stack

pytestmark = pytest.mark.kafka
HERE = Path(__file__).parent / "agui_js"


@pytest.fixture(scope="module")
def agui_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are needed for the @ag-ui/client test")
    workdir = tmp_path_factory.mktemp("agui-js")
    for name in ("package.json", "run_agent.js"):
        shutil.copy(HERE / name, workdir / name)
    done = subprocess.run(
        [npm, "install", "--no-audit", "--no-fund", "--loglevel=error"], cwd=workdir, capture_output=True, text=True, timeout=300
    )
    if done.returncode != 0:
        pytest.skip(f"npm could not install @ag-ui/client: {done.stderr[-500:]}")
    return workdir


async def test_the_official_typescript_client_runs_an_agent(stack: Stack, agui_client: Path) -> None:
    thread, run = f"thread-{uuid.uuid4().hex}", f"run-{uuid.uuid4().hex}"
    process = await asyncio.create_subprocess_exec(
        "node",
        "run_agent.js",
        f"{stack.url}/v1/agui/default",
        "key-a",
        thread,
        run,
        "what is 6*7?",
        cwd=agui_client,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(120):
            out, err = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, err.decode()
    seen = json.loads(out)
    # the client verified the stream (it throws on an out-of-order event) and folded it into messages
    assert seen["types"][0] == "RUN_STARTED" and seen["types"][-1] == "RUN_FINISHED"
    assert "The calculator says 42" in seen["result"]
    roles = [m["role"] for m in seen["messages"]]
    assert roles[0] == "user" and "tool" in roles and roles[-1] == "assistant"
    call = next(m for m in seen["newMessages"] if m.get("toolCalls"))
    assert call["toolCalls"][0]["function"]["name"] == "calculator"
    result = next(m for m in seen["newMessages"] if m["role"] == "tool")
    assert result["toolCallId"] == call["toolCalls"][0]["id"] and json.loads(result["content"]) == {"result": 42}
