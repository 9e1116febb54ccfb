"""Streaming endpoints: the ``/v1/stream`` WebSocket and ``/v1/executions/{id}/events`` SSE.

WebSocket messages from the client:
  {"type": "subscribe", "execution_id": ID, "cursor": N?}   follow one execution (after cursor N)
  {"type": "subscribe", "session_id": ID}                   follow every execution of a session (one of the
                                                            tenant's sessions, or a label its executions carry)
  {"type": "unsubscribe", "execution_id": ID}
The server sends ``subscribed``, ``events`` frames, ``session.execution`` when a followed session
starts a new execution, ``end`` (``execution_id``, ``status``) when a subscription finishes without a
terminal event to send (the cursor is past it, or the execution ended before any event), ``heartbeat``
when idle, and ``error`` (with ``code`` 404 or 410).
Close codes: 4401 bad API key, 4008 slow consumer, 1001 server shutting down.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from schemas.status import ExecutionStatus
from services.common.observability.metrics import STREAM_CONNECTIONS
from services.orchestrator.bridge import Bridge, Gone, Subscription
from services.orchestrator.sinks import CLOSE_UNAUTHORIZED, SSESink, WebSocketSink
from services.orchestrator.store import sessions


async def _tenant(conn: HTTPConnection) -> str | None:
    tenant: str | None = await conn.app.state.authenticate(conn)
    return tenant


def _bridge(conn: HTTPConnection) -> Bridge:
    bridge: Bridge = conn.app.state.agentstream.bridge
    return bridge


def _owned(bridge: Bridge, tenant: str, execution_id: str) -> ExecutionStatus | None:
    status = bridge.status.get(execution_id)
    return status if status is not None and status.tenant_id == tenant else None


async def stream(websocket: WebSocket) -> None:
    await websocket.accept()
    tenant = await _tenant(websocket)
    if tenant is None:
        await websocket.close(code=CLOSE_UNAUTHORIZED, reason="missing or invalid API key")
        return
    settings = websocket.app.state.agentstream.settings
    bridge = _bridge(websocket)
    sink = WebSocketSink(
        websocket, max_bytes=settings.stream_buffer_kb * 1024, send_timeout_s=settings.ws_send_timeout_s, heartbeat_s=settings.heartbeat_s
    )
    sink.tenant_id = tenant
    bridge.attach(sink)
    sink.start()
    STREAM_CONNECTIONS.labels(transport="websocket").inc()
    try:
        while not sink.closed.is_set():
            receive = asyncio.ensure_future(websocket.receive_text())
            closed = asyncio.ensure_future(sink.closed.wait())
            done, _ = await asyncio.wait({receive, closed}, return_when=asyncio.FIRST_COMPLETED)
            if receive not in done:
                receive.cancel()
                break
            closed.cancel()
            await _handle_client_message(websocket, bridge, sink, receive.result())
    except WebSocketDisconnect:
        pass
    finally:
        STREAM_CONNECTIONS.labels(transport="websocket").dec()
        bridge.detach(sink)
        await sink.aclose()


async def _session_known(conn: HTTPConnection, tenant: str, session_id: str, bridge: Bridge) -> bool:
    """The tenant's own session (in the store), or a label its executions carry; anything else is a 404."""
    if bridge.status.for_session(tenant, session_id):
        return True
    if len(session_id) > 128:
        return False
    async with conn.app.state.agentstream.runtime.store.begin() as db:
        return await sessions.get(db, session_id, tenant_id=tenant) is not None


async def _handle_client_message(websocket: WebSocket, bridge: Bridge, sink: WebSocketSink, text: str) -> None:
    try:
        message: dict[str, Any] = orjson.loads(text)
        op = message.get("type")
        execution_id = str(message.get("execution_id") or "")
        session_id = str(message.get("session_id") or "")
        cursor = message.get("cursor")
        if cursor is not None and (not isinstance(cursor, int) or isinstance(cursor, bool)):
            raise ValueError("cursor must be an integer")
    except (orjson.JSONDecodeError, AttributeError, ValueError) as exc:
        sink.push_control({"type": "error", "error": f"malformed message: {exc}"})
        return
    if op == "subscribe" and session_id:
        if not await _session_known(websocket, sink.tenant_id, session_id, bridge):
            sink.push_control({"type": "error", "session_id": session_id, "code": 404, "error": "session not found"})
            return
        executions = bridge.subscribe_session(sink, session_id)
        sink.push_control({"type": "subscribed", "session_id": session_id, "executions": [s.execution_id for s in executions]})
    elif op == "subscribe":
        status = _owned(bridge, sink.tenant_id, execution_id)
        if status is None:
            sink.push_control({"type": "error", "execution_id": execution_id, "code": 404, "error": "execution not found"})
            return
        sink.push_control({"type": "subscribed", "execution_id": execution_id, "status": status.state})
        bridge.subscribe(sink, status, cursor=cursor)
    elif op == "unsubscribe":
        bridge.unsubscribe(sink, execution_id)
    else:
        sink.push_control({"type": "error", "error": f"unknown message type {op!r}; use subscribe or unsubscribe"})


async def events(request: Request) -> Response:
    """SSE: every event of one execution after ``Last-Event-ID`` (or ``?cursor=``), then the live tail."""
    tenant = await _tenant(request)
    if tenant is None:
        return JSONResponse({"error": "missing or invalid API key: send `Authorization: Bearer <key>`"}, status_code=401)
    bridge = _bridge(request)
    status = _owned(bridge, tenant, request.path_params["execution_id"])
    if status is None:
        return JSONResponse({"error": "execution not found"}, status_code=404)
    raw_cursor = request.headers.get("last-event-id") or request.query_params.get("cursor")
    try:
        cursor = int(raw_cursor) if raw_cursor else None
    except ValueError:
        return JSONResponse({"error": "Last-Event-ID / cursor must be an integer cursor"}, status_code=400)
    try:
        await bridge.check_retained(status)
    except Gone as exc:
        return JSONResponse({"error": str(exc)}, status_code=410)
    settings = request.app.state.agentstream.settings
    sink = SSESink(max_bytes=settings.stream_buffer_kb * 1024, heartbeat_s=settings.heartbeat_s)
    sink.tenant_id = tenant
    bridge.attach(sink)
    subscription: Subscription = bridge.subscribe(sink, status, cursor=cursor)

    async def body() -> Any:
        STREAM_CONNECTIONS.labels(transport="sse").inc()
        try:
            async for chunk in sink.body(until_done=lambda: subscription.done):
                yield chunk
        finally:
            STREAM_CONNECTIONS.labels(transport="sse").dec()
            bridge.detach(sink)

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(body(), media_type="text/event-stream", headers=headers)


def routes() -> list[BaseRoute]:
    return [
        WebSocketRoute("/v1/stream", stream),
        Route("/v1/executions/{execution_id}/events", events, methods=["GET"]),
    ]
