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

from schemas.api import JobCreate, TaskView
from services.orchestrator.auth import TenantContext
from services.orchestrator.completions import apply_job_completed
from services.orchestrator.http import HTTPError, api_key, iso, parse_json, path_id, require_tenant, state_of, validate
from services.orchestrator.idempotency import idempotent
from services.orchestrator.lifecycle import new_id
from services.orchestrator.store import sessions, tasks
from services.orchestrator.store.tasks import Task

log = logging.getLogger(__name__)

CLOSE_UNAUTHORIZED = 4401


def task_view(t: Task) -> TaskView:
    return TaskView(
        task_id=t.id,
        kind=t.kind,  # type: ignore[arg-type]
        service=t.service,
        agent=t.agent_id,
        session_id=t.session_id,
        batch_id=t.batch_id,
        status=t.state,
        deadline=iso(t.deadline) or "",
        result=t.result,
        output=t.output,
        error=t.error,
        created_at=iso(t.created_at) or "",
        updated_at=iso(t.updated_at) or "",
    )


async def _create_job(request: Request, ctx: TenantContext, body: bytes) -> tuple[int, Any]:
    state = state_of(request)
    req = validate(JobCreate, parse_json(body), "job")
    job_id = req.job_id or "job_" + new_id()
    async with state.runtime.store.begin() as conn:
        if req.session_id is not None and await sessions.get(conn, req.session_id, tenant_id=ctx.id) is None:
            raise HTTPError(404, "session not found")
        if await tasks.get(conn, job_id) is not None:
            raise HTTPError(409, f"job id {job_id!r} is taken")
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
    return 201, task_view(task).model_dump(mode="json")


async def get_task(request: Request) -> Any:
    from starlette.responses import JSONResponse

    ctx = await require_tenant(request)
    task_id = path_id(request, "task_id", "task")
    async with state_of(request).runtime.store.begin() as conn:
        task = await tasks.get(conn, task_id, tenant_id=ctx.id)
    if task is None:
        raise HTTPError(404, "task not found")
    return JSONResponse(task_view(task).model_dump(mode="json"))


async def task_updates(websocket: WebSocket) -> None:
    """Internal services: ``{event: "job_completed", service, job_id, tenant_id, agent_id, result}``."""
    state = state_of(websocket)
    await websocket.accept()
    token = api_key(websocket) or websocket.query_params.get("token")
    service = state.runtime.auth.service_for(token)
    if service is None:
        await websocket.close(code=CLOSE_UNAUTHORIZED, reason="missing or invalid service token")
        return
    try:
        while True:
            text = await websocket.receive_text()
            try:
                message = orjson.loads(text)
            except orjson.JSONDecodeError as exc:
                await websocket.send_json({"type": "rejected", "error": f"malformed message: {exc}"})
                continue
            ok, reason = await apply_job_completed(state.runtime.lifecycle, message, service=service)
            job_id = message.get("job_id") if isinstance(message, dict) else None
            if ok:
                await websocket.send_json({"type": "accepted", "job_id": job_id, "status": reason})
            else:
                log.warning("task_updates from %s rejected (job %r): %s", service, job_id, reason)
                await websocket.send_json({"type": "rejected", "job_id": job_id, "error": reason})
    except WebSocketDisconnect:
        pass


async def task_stream(websocket: WebSocket) -> None:
    """A tenant's clients: every task update of that tenant, whichever replica applied it (taskfeed.py)."""
    state = state_of(websocket)
    await websocket.accept()
    context = await state.runtime.auth.context_for(api_key(websocket))
    if context is None:
        await websocket.close(code=CLOSE_UNAUTHORIZED, reason="missing or invalid API key")
        return
    hub = state.runtime.hub
    queue = hub.subscribe(context.id)
    receiver = asyncio.ensure_future(_drain(websocket))
    try:
        await websocket.send_json({"type": "subscribed"})
        while not receiver.done():
            getter = asyncio.ensure_future(queue.get())
            done, _ = await asyncio.wait({getter, receiver}, return_when=asyncio.FIRST_COMPLETED)
            if getter not in done:
                getter.cancel()
                break
            await asyncio.wait_for(websocket.send_text(orjson.dumps(getter.result()).decode()), state.settings.ws_send_timeout_s)
    except (WebSocketDisconnect, TimeoutError, RuntimeError):
        pass
    finally:
        hub.unsubscribe(context.id, queue)
        receiver.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await receiver


async def _drain(websocket: WebSocket) -> None:
    with contextlib.suppress(WebSocketDisconnect):
        while True:
            await websocket.receive_text()


create_job = idempotent(_create_job)
