"""Helpers for tests that run real servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import orjson
import uvicorn
import websockets
from starlette.types import ASGIApp

from services.common.settings import KafkaSettings


@contextlib.asynccontextmanager
async def serve(app: ASGIApp, *, port: int = 0) -> AsyncIterator[str]:
    """Run an ASGI app with uvicorn on a loopback port (0: a free one); yield its base URL."""
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", ws_per_message_deflate=False, lifespan="on")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("server exited during start-up")
        await asyncio.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)


async def collect_events(
    ws_url: str, api_key: str, execution_id: str, *, cursor: int | None = None, timeout: float = 30.0
) -> list[dict[str, Any]]:
    """Subscribe and collect events (with their cursors) until a terminal event."""
    items: list[dict[str, Any]] = []
    async with websockets.connect(f"{ws_url}/v1/stream?api_key={api_key}") as ws:
        message: dict[str, Any] = {"type": "subscribe", "execution_id": execution_id}
        if cursor is not None:
            message["cursor"] = cursor
        await ws.send(orjson.dumps(message).decode())
        async with asyncio.timeout(timeout):
            while True:
                frame = orjson.loads(await ws.recv())
                if frame["type"] == "error":
                    raise AssertionError(frame)
                if frame["type"] != "events":
                    continue
                items.extend(frame["events"])
                if items[-1]["event"]["type"] in {"execution.completed", "execution.failed", "execution.cancelled"}:
                    return items


def spawn_executor(
    kafka: KafkaSettings,
    *,
    instance_id: str,
    token_delay_ms: float = 20,
    session_timeout_ms: int = 6000,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """An executor in its own process (so it can be SIGKILLed), configured through the environment
    (``env``: more of its settings, e.g. an agents file)."""
    env = {
        **os.environ,
        "AGENTSTREAM_KAFKA_BOOTSTRAP": kafka.bootstrap,
        "AGENTSTREAM_KAFKA_TOPIC_PREFIX": kafka.topic_prefix,
        "AGENTSTREAM_KAFKA_PARTITIONS": str(kafka.partitions),
        "AGENTSTREAM_EXECUTOR_SCRIPTED_TOKEN_DELAY_MS": str(token_delay_ms),
        "AGENTSTREAM_EXECUTOR_SESSION_TIMEOUT_MS": str(session_timeout_ms),
        "AGENTSTREAM_EXECUTOR_INSTANCE_ID": instance_id,
        **(env or {}),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "services.cli", "executor"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
