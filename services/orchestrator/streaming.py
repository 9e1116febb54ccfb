"""Streaming endpoints: the ``/v1/stream`` WebSocket and ``/v1/executions/{id}/events`` SSE.

WebSocket messages from the client:
  {"type": "subscribe", "execution_id": ID, "cursor": N?}   follow one execution (after cursor N)
  {"type": "subscribe", "session_id": ID}                   follow every execution of a session (one of the
                                                            tenant's sessions, or a label its executions carry)
  {"type": "unsubscribe", "execution_id": ID}
The server sends ``subscribed``, ``events`` frames, ``session.execution`` when a followed session
starts a new execution, ``end`` (``execution_id``, ``status``) when a subscription finishes without a
terminal event to send (the cursor is past it, or the execution ended before any event), ``heartbeat``
when idle, and ``error`` (with ``code`` 400 for a message it cannot use, 404 or 410); a bad message
never closes the connection. Close codes: 4401 bad or revoked API key, 4008 slow consumer, 1001
server shutting down.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Any, Protocol

import orjson
from pydantic import TypeAdapter, ValidationError
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from schemas.api import StreamCommand
from schemas.bounds import ID_PATTERN, MAX_ID_LENGTH, Cursor
from schemas.status import ExecutionStatus
from services.common.errors import Gone, Unauthorized
from services.common.observability.metrics import STREAM_CONNECTIONS
from services.orchestrator import problems
from services.orchestrator.auth import Authenticator
from services.orchestrator.bridge import Bridge, Subscription
from services.orchestrator.http import HTTPError, api_key, cursor_of, validation_errors
from services.orchestrator.settings import OrchestratorSettings
from services.orchestrator.sinks import Sink, SSESink, WebSocketSink
from services.orchestrator.store import Store, sessions


class StreamState(Protocol):
    """What the streaming endpoints read from ``app.state.agentstream``: the orchestrator's ``State``
    (app.py) and the bridge service's ``BridgeState`` (bridgeapp.py) both have it."""

    @property
    def settings(self) -> OrchestratorSettings: ...

    @property
    def bridge(self) -> Bridge: ...

    @property
    def auth(self) -> Authenticator: ...

    @property
    def store(self) -> Store: ...

    @property
    def status_wait_s(self) -> float:
        """How long an execution id the status view does not know yet is waited for before it is a 404."""
        ...


def stream_state_of(conn: HTTPConnection) -> StreamState:
    """The streaming endpoints' ``state_of``: what both apps' lifespans put on ``app.state.agentstream``."""
    state: StreamState = conn.app.state.agentstream
    return state


async def _tenant(conn: HTTPConnection) -> str | None:
    """The tenant of the connection's API key: settings-configured keys, then hashed keys in the store."""
    return await stream_state_of(conn).auth.tenant_for(api_key(conn))


def _bridge(conn: HTTPConnection) -> Bridge:
    return stream_state_of(conn).bridge


async def _owned(conn: HTTPConnection, tenant: str, execution_id: str) -> ExecutionStatus | None:
    state = stream_state_of(conn)
    status = state.bridge.status.get(execution_id)
    if status is None and state.status_wait_s > 0 and _possible_id(execution_id):
        # A bridge apart from the API learns of a new execution from the status topic, a moment after
        # the API answered 202: a client that subscribes at once must not be told it does not exist.
        status = await state.bridge.status.wait_until(execution_id, lambda _: True, timeout=state.status_wait_s)
    return status if status is not None and status.tenant_id == tenant else None


def _close_when_revoked(conn: HTTPConnection, sink: Sink) -> Callable[[], None]:
    """Close this stream (4401) once its API key stops resolving; returns the function that stops watching."""
    key = api_key(conn) or ""
    return stream_state_of(conn).auth.connections.watch(key, lambda: sink.kill(problems.close_code(Unauthorized("")), "API key revoked"))


async def stream(websocket: WebSocket) -> None:
    await websocket.accept()
    tenant = await _tenant(websocket)
    if tenant is None:
        await problems.close(websocket, Unauthorized("missing or invalid API key"))
        return
    settings = stream_state_of(websocket).settings
    bridge = _bridge(websocket)
    sink = WebSocketSink(
        websocket,
        max_bytes=settings.stream_buffer_kb * 1024,
        send_timeout_s=settings.ws_send_timeout_s,
        heartbeat_s=settings.heartbeat_s,
        direct_writes=settings.ws_direct_writes,
    )
    sink.tenant_id = tenant
    bridge.attach(sink)
    sink.start()
    unwatch = _close_when_revoked(websocket, sink)
    STREAM_CONNECTIONS.labels(transport="websocket").inc()
    try:
        while not sink.closed.is_set():
            receive = asyncio.ensure_future(websocket.receive())
            closed = asyncio.ensure_future(sink.closed.wait())
            done, _ = await asyncio.wait({receive, closed}, return_when=asyncio.FIRST_COMPLETED)
            if receive not in done:
                receive.cancel()
                break
            closed.cancel()
            message = receive.result()
            if message["type"] == "websocket.disconnect":
                break
            text = message.get("text")
            if text is None:
                sink.push_control({"type": "error", "code": 400, "error": "binary frames are not understood: send JSON text frames"})
                continue
            await _handle_client_message(websocket, bridge, sink, text)
    except WebSocketDisconnect:
        pass
    finally:
        unwatch()
        STREAM_CONNECTIONS.labels(transport="websocket").dec()
        bridge.detach(sink)
        await sink.aclose()


async def _session_known(conn: HTTPConnection, tenant: str, session_id: str, bridge: Bridge) -> bool:
    """The tenant's own session (in the store), or a label its executions carry; anything else is a 404."""
    if bridge.status.for_session(tenant, session_id):
        return True
    if len(session_id) > 128:
        return False
    async with stream_state_of(conn).store.begin() as db:
        return await sessions.get(db, session_id, tenant_id=tenant) is not None


_ID = re.compile(ID_PATTERN)
_CURSOR: TypeAdapter[int | None] = TypeAdapter(Cursor | None)


def _possible_id(value: str) -> bool:
    return len(value) <= MAX_ID_LENGTH and _ID.fullmatch(value) is not None


def _command(text: str) -> StreamCommand | str:
    """The client's message, or why it cannot be used (the error frame's text)."""
    try:
        message = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        return f"malformed message: {exc}"
    if not isinstance(message, dict):
        return "malformed message: send a JSON object"
    if message.get("type") not in ("subscribe", "unsubscribe"):
        return f"unknown message type {str(message.get('type'))[:100]!r}; use subscribe or unsubscribe"
    try:
        return StreamCommand.model_validate(message)
    except ValidationError as exc:
        fields = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in validation_errors(exc))
        return f"invalid message: {fields}"


async def _handle_client_message(websocket: WebSocket, bridge: Bridge, sink: WebSocketSink, text: str) -> None:
    command = _command(text)
    if isinstance(command, str):
        sink.push_control({"type": "error", "code": 400, "error": command})
        return
    execution_id, session_id = command.execution_id or "", command.session_id or ""
    if command.type == "subscribe" and session_id:
        if not _possible_id(session_id) or not await _session_known(websocket, sink.tenant_id, session_id, bridge):
            sink.push_control({"type": "error", "session_id": session_id, "code": 404, "error": "session not found"})
            return
        executions = bridge.subscribe_session(sink, session_id)
        sink.push_control({"type": "subscribed", "session_id": session_id, "executions": [s.execution_id for s in executions]})
    elif command.type == "subscribe":
        status = await _owned(websocket, sink.tenant_id, execution_id) if _possible_id(execution_id) else None
        if status is None:
            sink.push_control({"type": "error", "execution_id": execution_id[:MAX_ID_LENGTH], "code": 404, "error": "execution not found"})
            return
        try:
            cursor = _CURSOR.validate_python(command.cursor)
        except ValidationError as exc:
            sink.push_control({"type": "error", "execution_id": execution_id, "code": 400, "error": f"cursor: {exc.errors()[0]['msg']}"})
            return
        sink.push_control({"type": "subscribed", "execution_id": execution_id, "status": status.state})
        bridge.subscribe(sink, status, cursor=cursor)
    else:
        bridge.unsubscribe(sink, execution_id)


async def events(request: Request) -> Response:
    """SSE: every event of one execution after ``Last-Event-ID`` (or ``?cursor=``), then the live tail."""
    tenant = await _tenant(request)
    if tenant is None:
        return JSONResponse({"error": "missing or invalid API key: send `Authorization: Bearer <key>`"}, status_code=401)
    bridge = _bridge(request)
    status = await _owned(request, tenant, request.path_params["execution_id"])
    if status is None:
        return JSONResponse({"error": "execution not found"}, status_code=404)
    try:
        cursor = cursor_of(request.headers.get("last-event-id") or request.query_params.get("cursor"))
    except HTTPError as exc:
        return JSONResponse({"error": f"Last-Event-ID / cursor: {exc.error}"}, status_code=400)
    try:
        await bridge.check_retained(status)
    except Gone as exc:
        return JSONResponse({"error": str(exc)}, status_code=410)
    settings = stream_state_of(request).settings
    sink = SSESink(max_bytes=settings.stream_buffer_kb * 1024, heartbeat_s=settings.heartbeat_s)
    sink.tenant_id = tenant
    bridge.attach(sink)
    subscription: Subscription = bridge.subscribe(sink, status, cursor=cursor)
    unwatch = _close_when_revoked(request, sink)

    async def body() -> Any:
        STREAM_CONNECTIONS.labels(transport="sse").inc()
        try:
            async for chunk in sink.body(until_done=lambda: subscription.done):
                yield chunk
        finally:
            unwatch()
            STREAM_CONNECTIONS.labels(transport="sse").dec()
            bridge.detach(sink)

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(body(), media_type="text/event-stream", headers=headers)


def routes() -> list[BaseRoute]:
    return [
        WebSocketRoute("/v1/stream", stream),
        Route("/v1/executions/{execution_id}/events", events, methods=["GET"]),
    ]
