"""Helpers for tests that run real servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import orjson
import uvicorn
import websockets
from starlette.types import ASGIApp


@contextlib.asynccontextmanager
async def serve(app: ASGIApp) -> AsyncIterator[str]:
    """Run an ASGI app with uvicorn on a free loopback port; yield its base URL."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", ws_per_message_deflate=False, lifespan="on")
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
