"""`agentstream up` as a development server: a taken port fails at once without touching the consumer
group; no Kafka is one line with the fix and then a backed-off reminder; `agentstream demo` refuses to
demonstrate against a server it did not start."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from services.cli.base import CliError
from services.cli.demo import wait_ready
from services.cli.serve import wait_for_kafka
from services.common.kafka import client_options
from services.common.settings import KafkaSettings
from tests.support import serve

AGENTSTREAM = Path(sys.executable).with_name("agentstream")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.mark.kafka
async def test_up_on_a_taken_port_fails_at_once_and_joins_no_consumer_group(kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {
            **os.environ,
            "AGENTSTREAM_KAFKA_BOOTSTRAP": kafka_settings.bootstrap,
            "AGENTSTREAM_KAFKA_TOPIC_PREFIX": kafka_settings.topic_prefix,
            "AGENTSTREAM_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'state.db'}",
        }
        proc = await asyncio.create_subprocess_exec(
            str(AGENTSTREAM), "up", "--port", str(port), env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    lines = [line for line in (out + err).decode().splitlines() if line.strip()]
    assert proc.returncode == 1, lines
    assert len(lines) == 1 and lines[0].startswith(f"error: port {port} on 127.0.0.1 is taken"), lines
    admin = AIOKafkaAdminClient(**client_options(kafka_settings))
    await admin.start()
    try:
        groups = {group for group, _ in await admin.list_consumer_groups()}
    finally:
        await admin.close()
    assert not {g for g in groups if g.startswith(kafka_settings.topic_prefix)}, groups  # nobody joined: no rebalance for anyone


async def test_no_kafka_is_one_line_with_the_fix_then_reminders_not_a_storm(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("AGENTSTREAM_KAFKA_BOOTSTRAP", f"127.0.0.1:{_free_port()}")  # nothing listens there
    stop = asyncio.Event()
    waiting = asyncio.create_task(wait_for_kafka(stop, first_reminder_s=0.2, max_gap_s=0.4))
    said = ""
    async with asyncio.timeout(60):
        while said.count("still no Kafka") < 2:
            await asyncio.sleep(0.1)
            said += capsys.readouterr().err
    stop.set()
    assert await waiting is False
    said += capsys.readouterr().err
    lines = [line for line in said.splitlines() if line.strip()]
    assert lines[0].startswith("waiting for Kafka: Kafka is not reachable at") and "kafka start" in lines[0], lines
    assert all(line.startswith("still no Kafka after") for line in lines[1:]), lines
    assert [r for r in caplog.records if r.name.startswith("aiokafka") and r.levelno >= logging.WARNING] == []


@pytest.fixture
def started_by_us() -> Iterator[subprocess.Popen[bytes]]:
    """Stands for the `agentstream up` the demo started: alive, but not the server answering."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    proc.kill()
    proc.wait()


async def test_demo_refuses_a_server_it_did_not_start(tmp_path: Path, started_by_us: subprocess.Popen[bytes]) -> None:
    async def live(request: Request) -> Response:
        return JSONResponse({"status": "ok", "instance": "someone-else"})

    other = Starlette(routes=[Route("/health/live", live), Route("/health/ready", live)])
    async with serve(other) as url:
        with pytest.raises(CliError, match="another server answers on"):
            await asyncio.to_thread(wait_ready, url, started_by_us, instance="demo-mine", timeout=30, log=tmp_path / "up.log")
