"""Streaming endpoints: the ``/v1/stream`` WebSocket and ``/v1/executions/{id}/events`` SSE."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from starlette.requests import HTTPConnection
from starlette.routing import BaseRoute, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from services.orchestrator.bridge import CLOSE_UNAUTHORIZED, Bridge, Connection


async def _tenant(conn: HTTPConnection) -> str | None:
    tenant: str | None = await conn.app.state.authenticate(conn)
    return tenant


def _bridge(conn: HTTPConnection) -> Bridge:
    bridge: Bridge = conn.app.state.agentstream.bridge
    return bridge


async def stream(websocket: WebSocket) -> None:
    """``/v1/stream``: {"type": "subscribe", "execution_id": ..., "cursor": N?} -> events frames."""
    await websocket.accept()
    tenant = await _tenant(websocket)
    if tenant is None:
        await websocket.close(code=CLOSE_UNAUTHORIZED, reason="missing or invalid API key")
        return
    settings = websocket.app.state.agentstream.settings
    bridge = _bridge(websocket)
    connection = Connection(websocket, max_items=settings.ws_queue_frames, send_timeout_s=settings.ws_send_timeout_s)
    connection.tenant_id = tenant
    connection.start()
    try:
        while not connection.closed.is_set():
            receive = asyncio.ensure_future(websocket.receive_text())
            closed = asyncio.ensure_future(connection.closed.wait())
            done, _ = await asyncio.wait({receive, closed}, return_when=asyncio.FIRST_COMPLETED)
            if receive not in done:
                receive.cancel()
                break
            closed.cancel()
            await _handle_client_message(bridge, connection, receive.result())
    except WebSocketDisconnect:
        pass
    finally:
        await bridge.close_connection(connection)


async def _handle_client_message(bridge: Bridge, connection: Connection, text: str) -> None:
    try:
        message: dict[str, Any] = orjson.loads(text)
        op = message.get("type")
        execution_id = str(message.get("execution_id", ""))
        cursor = message.get("cursor")
        if cursor is not None and not isinstance(cursor, int):
            raise ValueError("cursor must be an integer")
    except (orjson.JSONDecodeError, AttributeError, ValueError) as exc:
        await connection.send_json({"type": "error", "error": f"malformed message: {exc}"})
        return
    if op == "subscribe":
        status = bridge.status.get(execution_id)
        if status is None or status.tenant_id != connection.tenant_id:
            await connection.send_json({"type": "error", "execution_id": execution_id, "error": "execution not found"})
            return
        if execution_id in connection.subscriptions:
            return
        await connection.send_json({"type": "subscribed", "execution_id": execution_id, "status": status.state})
        bridge.subscribe(connection, status, cursor=cursor)
    elif op == "unsubscribe":
        bridge.unsubscribe(connection, execution_id)
    else:
        await connection.send_json({"type": "error", "error": f"unknown message type {op!r}; use subscribe or unsubscribe"})


def routes() -> list[BaseRoute]:
    return [WebSocketRoute("/v1/stream", stream)]
