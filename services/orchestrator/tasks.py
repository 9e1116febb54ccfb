"""The task registry's endpoints: external jobs, task status, and two WebSockets.

* ``/ws/task_updates``: internal services (service token) report ``job_completed``; accepted only
  for a job in flight for that tenant and service, else rejected and logged.
* ``/v1/tasks/stream``: a tenant's clients receive task updates (job results, timeouts, ends).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import orjson
from starlette.requests import Request
from starlette.websockets import WebSocket, WebSocketDisconnect

from schemas.api import JobCreate, TaskUsage, TaskView
from services.common.errors import Conflict, NotFound, Unauthorized
from services.orchestrator import problems
from services.orchestrator.auth import TenantContext
from services.orchestrator.completions import apply_job_completed
from services.orchestrator.http import api_key, iso, parse_json, path_id, require_tenant, shown, state_of, validate
from services.orchestrator.idempotency import idempotent
from services.orchestrator.ids import new_id
from services.orchestrator.lifecycle import Lifecycle
from services.orchestrator.projection import row_of
from services.orchestrator.store import sessions, tasks
from services.orchestrator.store.tasks import Task

log = logging.getLogger(__name__)


def task_view(t: Task) -> TaskView:
    return TaskView(
        task_id=t.id,
        kind=t.kind,
        service=t.service,
        agent=t.agent_id,
        session_id=t.session_id,
        batch_id=t.batch_id,
        status=t.state,
        deadline=iso(t.deadline) or "",
        result=shown(t.result),
        output=t.output,
        error=t.error,
        created_at=iso(t.created_at) or "",
        updated_at=iso(t.updated_at) or "",
        usage=TaskUsage.model_validate(t.usage) if t.kind == "job" and t.usage else None,
    )


async def _create_job(request: Request, ctx: TenantContext, body: bytes) -> tuple[int, Any]:
    state = state_of(request)
    req = validate(JobCreate, parse_json(body), "job")
    job_id = req.job_id or "job_" + new_id()
    async with state.runtime.store.begin() as conn:
        if req.session_id is not None and await sessions.get(conn, req.session_id, tenant_id=ctx.id) is None:
            raise NotFound("session not found")
        if await tasks.get(conn, job_id) is not None:
            raise Conflict(f"job id {job_id!r} is taken")
        await tasks.create(
            conn,
            id=job_id,
            kind="job",
            origin="job",
            tenant_id=ctx.id,
            agent_id=req.agent,
            service=req.service,
            session_id=req.session_id,
            deadline=time.time() + (req.timeout_s or state.settings.job_timeout_s),
        )
        task = await tasks.get(conn, job_id)
    assert task is not None
    state.runtime.lifecycle.deadlines.hint(task.deadline)  # the sweeper's next look at the store
    return 201, task_view(task).model_dump(mode="json")


async def get_task(request: Request) -> Any:
    from starlette.responses import JSONResponse

    ctx = await require_tenant(request)
    task_id = path_id(request, "task_id", "task")
    state = state_of(request)
    async with state.runtime.store.begin() as conn:
        task = await row_of(conn, state.status, task_id, tenant_id=ctx.id)
    if task is None:
        raise NotFound("task not found")
    return JSONResponse(task_view(task).model_dump(mode="json"))


async def task_updates(websocket: WebSocket) -> None:
    """Internal services: ``{event: "job_completed", service, job_id, tenant_id, agent_id, result}``.

    Every text frame gets one answer, ``accepted`` or ``rejected`` (with the reason, naming the field
    for a message out of bounds); nothing a service sends closes the connection."""
    state = state_of(websocket)
    await websocket.accept()
    token = api_key(websocket) or websocket.query_params.get("token")
    service = state.runtime.auth.service_for(token)
    if service is None:
        await problems.close(websocket, Unauthorized("missing or invalid service token"))
        return
    while True:
        frame = await websocket.receive()
        if frame["type"] == "websocket.disconnect":
            return
        reply = await _job_update_reply(state.runtime.lifecycle, frame.get("text"), service)
        try:
            await websocket.send_json(reply)
        except (WebSocketDisconnect, RuntimeError, OSError):
            return


async def _job_update_reply(lifecycle: Lifecycle, text: str | None, service: str) -> dict[str, Any]:
    if text is None:
        return {"type": "rejected", "error": "binary frames are not understood: send JSON text frames"}
    try:
        message = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        return {"type": "rejected", "error": f"malformed message: {exc}"}
    job_id = message.get("job_id") if isinstance(message, dict) else None
    job_id = job_id if isinstance(job_id, str) and len(job_id) <= 128 else None
    try:
        ok, reason = await apply_job_completed(lifecycle, message, service=service)
    except Exception as exc:  # the store did not answer (or a bug): say so, keep the connection; the service may retry
        log.exception("task_updates from %s (job %r) not applied", service, job_id)
        return {"type": "rejected", "job_id": job_id, "error": f"not applied ({type(exc).__name__}); retry later", "retriable": True}
    if ok:
        return {"type": "accepted", "job_id": job_id, "status": reason}
    log.warning("task_updates from %s rejected (job %r): %s", service, job_id, reason)
    return {"type": "rejected", "job_id": job_id, "error": reason}


async def task_stream(websocket: WebSocket) -> None:
    """A tenant's clients: every task update of that tenant, whichever replica applied it (taskfeed.py)."""
    state = state_of(websocket)
    await websocket.accept()
    context = await state.runtime.auth.context_for(api_key(websocket))
    if context is None:
        await problems.close(websocket, Unauthorized("missing or invalid API key"))
        return
    hub = state.runtime.hub
    queue = hub.subscribe(context.id)
    revoked = asyncio.Event()
    unwatch = state.runtime.auth.connections.watch(api_key(websocket) or "", revoked.set)
    receiver = asyncio.ensure_future(_drain(websocket))
    ended = asyncio.ensure_future(revoked.wait())
    try:
        await websocket.send_json({"type": "subscribed"})
        while not receiver.done():
            getter = asyncio.ensure_future(queue.get())
            done, _ = await asyncio.wait({getter, receiver, ended}, return_when=asyncio.FIRST_COMPLETED)
            if getter not in done:
                getter.cancel()
                break
            await asyncio.wait_for(websocket.send_text(_encoded(getter.result())), state.settings.ws_send_timeout_s)
        if revoked.is_set():
            await asyncio.wait_for(problems.close(websocket, Unauthorized("API key revoked")), state.settings.ws_send_timeout_s)
    except (WebSocketDisconnect, TimeoutError, RuntimeError, OSError):
        pass
    finally:
        unwatch()
        hub.unsubscribe(context.id, queue)
        for task in (receiver, ended):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def _encoded(update: dict[str, Any]) -> str:
    try:
        return orjson.dumps(update).decode()
    except orjson.JSONEncodeError as exc:  # values are bounded where they enter; should one slip through, say so
        log.error("task update of %r cannot be encoded: %s", update.get("task_id"), exc)
        return orjson.dumps({"type": "error", "task_id": str(update.get("task_id")), "error": "this update cannot be encoded"}).decode()


async def _drain(websocket: WebSocket) -> None:
    """Read and drop what a client sends (text or binary) until it disconnects."""
    while (await websocket.receive())["type"] != "websocket.disconnect":
        pass


create_job = idempotent(_create_job)
