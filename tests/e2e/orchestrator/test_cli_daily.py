"""`agentstream` for daily use, through the real entry point (.venv/bin/agentstream) against a real
orchestrator on loopback and the real broker: run, ls, status, attach, cancel, sessions, agents, and
the errors a newcomer meets (one line with the fix, a non-zero exit, no traceback)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.orchestrator.conftest import Launcher
from tests.e2e.orchestrator.test_orchestrator_history import agents_file

pytestmark = pytest.mark.kafka

AGENTSTREAM = Path(sys.executable).with_name("agentstream")


async def cli(*args: str, url: str, key: str = "key-a", timeout: float = 60) -> tuple[int, str, str]:
    env = {**os.environ, "COLUMNS": "200", "AGENTSTREAM_URL": url, "AGENTSTREAM_API_KEY": key}
    env.pop("AGENTSTREAM_DEBUG", None)
    proc = await asyncio.create_subprocess_exec(
        str(AGENTSTREAM), *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def one_error_line(code: int, err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code != 0 and "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_every_error_a_newcomer_meets_is_one_line_with_the_fix(launch: Launcher, sqlite_url: str, tmp_path: Path) -> None:
    nowhere = f"http://127.0.0.1:{_free_port()}"
    for args in (["run", "hi"], ["ls"], ["status", "x"], ["attach", "x"], ["cancel", "x"], ["sessions"], ["agents"]):
        line = one_error_line(*(await cli(*args, url=nowhere))[::2])
        assert f"nothing answers at {nowhere}" in line and "agentstream up" in line, line
    code, _, err = await cli("--debug", "run", "hi", url=nowhere)
    assert code == 1 and "Traceback" in err and "httpx.ConnectError" in err  # the traceback, on request

    async with launch(sqlite_url, executor=False, agents_file=agents_file(tmp_path)) as orch:
        code, _, err = await cli("run", "hi", url=orch.url, key="wrong")
        assert "refused the API key" in one_error_line(code, err) and "--api-key" in err
        code, _, err = await cli("run", "hi", "--agent", "nobody", url=orch.url)
        assert "unknown agent 'nobody'" in one_error_line(code, err) and "agents" in err
        code, _, err = await cli("run", "hi", "--agent", "support", "--var", "order={}", url=orch.url)
        line = one_error_line(code, err)
        assert "'customer'" in line and "--var customer=" in line, line
        code, _, err = await cli("status", "not-there", url=orch.url)
        assert "execution not-there not found" in one_error_line(code, err)
        code, _, err = await cli("run", "hi", "--var", "novalue", url=orch.url)
        assert "NAME=VALUE" in one_error_line(code, err)
        code, _, err = await cli("ls", "--status", "finished", url=orch.url)
        assert "status" in one_error_line(code, err)


async def test_run_detach_status_attach_cancel_ls_sessions_agents(launch: Launcher, sqlite_url: str, tmp_path: Path) -> None:
    async with launch(sqlite_url, agents_file=agents_file(tmp_path)) as orch:
        # The executor runs the built-in agents (the file is the orchestrator's here): `default`, with a variable it ignores.
        code, out, err = await cli("run", "What is 6*7?", "--var", 'order={"id": 7}', url=orch.url)
        assert code == 0, err
        assert "calculator" in out and "The calculator says 42" in out
        summary = out.strip().splitlines()[-1]
        assert summary.startswith("✓ completed in ") and "first token" in summary and " in / " in summary, out

        code, out, err = await cli("run", "What is 2+2?", "--detach", "--json", "--priority", "critical", url=orch.url)
        assert code == 0, err
        execution_id = json.loads(out)["execution_id"]
        await orch.wait_for(f"/v1/executions/{execution_id}", lambda v: v["status"] == "completed")
        code, out, _ = await cli("status", execution_id, "--json", url=orch.url)
        assert code == 0 and json.loads(out)["status"] == "completed"
        code, out, _ = await cli("status", execution_id, url=orch.url)
        assert code == 0 and "completed" in out and "The calculator says 4" in out

        code, out, _ = await cli("attach", execution_id, "--json", url=orch.url)
        items = [json.loads(line) for line in out.splitlines()]
        assert code == 0 and items[0]["event"]["type"] == "execution.started" and items[-1]["event"]["type"] == "execution.completed"
        middle = items[len(items) // 2]["cursor"]
        code, out, _ = await cli("attach", execution_id, "--cursor", str(middle), "--json", url=orch.url)
        resumed = [json.loads(line)["cursor"] for line in out.splitlines()]
        assert code == 0 and resumed == [i["cursor"] for i in items if i["cursor"] > middle]
        code, out, _ = await cli("attach", execution_id, url=orch.url)
        assert code == 0 and "The calculator says 4" in out and "✓ completed" in out

        code, _, err = await cli("cancel", execution_id, url=orch.url)
        assert "already ended (completed)" in one_error_line(code, err)

        code, out, _ = await cli("ls", "--json", url=orch.url)
        assert code == 0 and json.loads(out)["executions"][0]["execution_id"] == execution_id
        code, out, err = await cli("ls", "--status", "completed", "--limit", "1", url=orch.url)
        assert code == 0 and "What is 2+2?" in out and "What is 6*7?" not in out and "ls --cursor" in err

        code, out, err = await cli("run", "What is 1+1?", "--session", "new", url=orch.url)
        assert code == 0 and "session ses_" in err, err
        session_id = err.split("session ", 1)[1].split()[0]
        code, out, _ = await cli("run", "And 2+2?", "--session", session_id, url=orch.url)
        assert code == 0 and "The calculator says 4" in out
        code, out, _ = await cli("sessions", url=orch.url)
        assert code == 0 and session_id in out
        code, out, _ = await cli("agents", url=orch.url)
        assert code == 0 and "support" in out and "customer, order" in out


async def _read_until(stream: asyncio.StreamReader, marker: str, seen: list[str]) -> None:
    async with asyncio.timeout(60):
        while not any(marker in line for line in seen):
            line = await stream.readline()
            assert line, f"stream ended before {marker!r}: {seen}"
            seen.append(line.decode())


async def test_ctrl_c_says_how_to_attach_or_cancel_and_a_second_one_cancels(launch: Launcher, sqlite_url: str) -> None:
    async with launch(sqlite_url, executor=False) as orch:  # nothing runs it: the stream waits
        env = {**os.environ, "COLUMNS": "300", "AGENTSTREAM_URL": orch.url, "AGENTSTREAM_API_KEY": "key-a"}
        proc = await asyncio.create_subprocess_exec(
            str(AGENTSTREAM), "run", "hi", env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        assert proc.stderr is not None
        seen: list[str] = []
        await _read_until(proc.stderr, "execution ", seen)
        execution_id = seen[-1].split("execution ", 1)[1].strip()
        await orch.wait_for(f"/v1/executions/{execution_id}", lambda v: v["status"] == "queued")
        proc.send_signal(signal.SIGINT)
        await _read_until(proc.stderr, "detached", seen)
        hint = "".join(seen)
        assert f"attach {execution_id}" in hint and f"cancel {execution_id}" in hint and "Ctrl-C again" in hint
        assert (await orch.get(f"/v1/executions/{execution_id}")).json()["status"] == "queued"  # the first one only detaches
        proc.send_signal(signal.SIGINT)
        rest = (await asyncio.wait_for(proc.communicate(), 60))[1].decode()
        assert proc.returncode == 130 and "cancel requested" in rest and "Traceback" not in hint + rest
        view: dict[str, Any] = await orch.wait_for(f"/v1/executions/{execution_id}", lambda v: v["status"] == "cancelled")
        assert view["status"] == "cancelled"
