"""``/v1/sessions``: durable conversations. A chat message runs an execution over the history; the
assistant's final message and tool calls are recorded when it completes (``Lifecycle.finalize``).

A message while one runs follows the session's policy: ``reject`` (409), ``enqueue`` (it starts when
the running one ends), or ``interrupt`` (the running one is cancelled, the new one starts).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from schemas.api import ChatRequest, ChatResponse, SessionCreate, SessionList, SessionMessage, SessionState
from schemas.bounds import MAX_INT32, json_problem
from services.common.errors import Conflict, DomainError, NotFound
from services.orchestrator.auth import TenantContext
from services.orchestrator.cachecontrol import no_cache
from services.orchestrator.executions import checked_callback, checked_prompt, known_agent, traceparent_of
from services.orchestrator.finalize import history_messages
from services.orchestrator.http import iso, parse_json, path_id, query_int, require_tenant, shown, state_of, validate
from services.orchestrator.idempotency import idempotent
from services.orchestrator.ids import new_id
from services.orchestrator.pages import Key, next_cursor, page_request, query_id
from services.orchestrator.plans import PlannedCall, timed
from services.orchestrator.store import sessions
from services.orchestrator.store.sessions import Session, StoredMessage
from services.orchestrator.submission import Submission


def session_view(s: Session) -> SessionState:
    return SessionState(
        session_id=s.id,
        agent=s.agent_id,
        policy=s.policy,
        state=s.state,
        active_execution_id=s.active_execution_id,
        metadata=shown(s.metadata),
        created_at=iso(s.created_at) or "",
        updated_at=iso(s.updated_at) or "",
    )


def message_view(m: StoredMessage) -> SessionMessage:
    return SessionMessage.model_validate(
        {
            "seq": m.seq,
            "role": m.role,
            "content": m.content,
            "name": m.name,
            "execution_id": m.execution_id,
            "status": m.status,
            # Stored from the events topic: one that cannot be shown is left out rather than failing the page.
            "tool_calls": m.tool_calls if json_problem(m.tool_calls) is None else None,
            "created_at": iso(m.created_at),
        }
    )


async def _create(request: Request, ctx: TenantContext, body: bytes) -> tuple[int, Any]:
    state = state_of(request)
    req = validate(SessionCreate, parse_json(body), "session")
    known_agent(state.agents, req.agent)
    async with state.runtime.store.begin() as conn:
        session = await sessions.create(
            conn,
            id="ses_" + new_id(),
            tenant_id=ctx.id,
            agent_id=req.agent,
            policy=req.policy or state.settings.session_policy,
            metadata=req.metadata,
        )
    return 201, session_view(session).model_dump(mode="json")


async def _session(request: Request, ctx: TenantContext, session_id: str | None = None) -> Session:
    session_id = session_id or path_id(request, "session_id", "session")
    async with state_of(request).runtime.store.begin() as conn:
        session = await sessions.get(conn, session_id, tenant_id=ctx.id)
    if session is None:
        raise NotFound("session not found")
    return session


async def _settled(request: Request, ctx: TenantContext, session: Session) -> Session:
    """The session once the end of its active execution is recorded, if the events topic says it has
    ended: a client that saw ``execution.completed`` and sends the next message at once finds the
    session free and its answer in the history, though the projection runs behind the bridge."""
    state = state_of(request)
    active = session.active_execution_id
    status = state.status.get(active) if active is not None else None
    if status is None or not status.terminal:
        return session
    deadline = time.monotonic() + state.settings.session_settle_s
    pause = 0.005
    while session.active_execution_id == active and time.monotonic() < deadline:
        await asyncio.sleep(pause)  # rare (a race with our own projection), off the hot path
        pause = min(pause * 2, 0.1)
        session = await _session(request, ctx, session.id)
    return session


async def get_session(request: Request) -> Response:
    ctx = await require_tenant(request)
    return JSONResponse(session_view(await _settled(request, ctx, await _session(request, ctx))).model_dump(mode="json"))


async def list_sessions(request: Request) -> Response:
    """The tenant's sessions, newest first; filter: agent."""
    ctx = await require_tenant(request)
    agent = query_id(request, "agent")
    page = page_request(request)
    async with state_of(request).runtime.store.begin() as conn:
        rows = await sessions.page(conn, ctx.id, agent_id=agent, limit=page.limit + 1, after=page.after_key)
    cursor = next_cursor([Key(s.created_at, s.id) for s in rows], page.limit)
    return JSONResponse(SessionList(sessions=[session_view(s) for s in rows[: page.limit]], next_cursor=cursor).model_dump(mode="json"))


async def delete_session(request: Request) -> Response:
    """Delete a session and its history; 409 while an execution runs in it (cancel it first). The
    executions it ran stay in ``GET /v1/executions`` (their ``session_id`` is a label there)."""
    ctx = await require_tenant(request)
    session = await _session(request, ctx)
    async with state_of(request).runtime.store.begin() as conn:
        if not await sessions.delete_idle(conn, session.id, tenant_id=ctx.id):
            current = await sessions.get(conn, session.id, tenant_id=ctx.id)
            if current is None:
                raise NotFound("session not found")
            raise Conflict(  # raised inside the transaction: the messages deleted above come back
                "an execution runs in this session: cancel it (or wait for it), then delete",
                detail={"active_execution_id": current.active_execution_id},
            )
    return Response(status_code=204)


async def get_messages(request: Request) -> Response:
    ctx = await require_tenant(request)
    session = await _settled(request, ctx, await _session(request, ctx))  # its last answer in the history
    after = query_int(request, "after", 0, low=0, high=MAX_INT32)  # a message seq: the store's INTEGER (32-bit on PostgreSQL)
    limit = query_int(request, "limit", 200, low=1, high=1000)
    async with state_of(request).runtime.store.begin() as conn:
        items = await sessions.history(conn, session.id, after=after, limit=limit)
    return JSONResponse({"session_id": session.id, "messages": [message_view(m).model_dump(mode="json") for m in items]})


async def _chat(request: Request, ctx: TenantContext, body: bytes) -> tuple[int, Any]:
    return await send_message(request, ctx, validate(ChatRequest, parse_json(body), "chat message"))


async def send_message(request: Request, ctx: TenantContext, req: ChatRequest, session_id: str | None = None) -> tuple[int, Any]:
    """A chat message to the session of the path (or ``session_id``): the OpenAI door's Responses use it too."""
    state = state_of(request)
    lifecycle = state.runtime.lifecycle
    plan: list[PlannedCall] = []
    with timed("agent_config", "session", plan):
        session = await _settled(request, ctx, await _session(request, ctx, session_id))
        known_agent(state.agents, session.agent_id)
    checked_prompt(state.agents, session.agent_id, req.variables, req.content)
    callback = await checked_callback(state.settings, req.callback_url)
    sub = Submission(
        tenant_id=ctx.id,
        agent_id=session.agent_id,
        input=req.content,
        priority=req.priority,
        variables=req.variables,
        session_id=session.id,
        callback_url=callback,
        traceparent=traceparent_of(request),
        origin="chat",
        plan=plan,
        instructions=req.instructions,
        output_schema=req.output_schema,
        params=req.params,
        model=req.model,
        no_cache=no_cache(request),
    )
    active = session.active_execution_id
    if active is not None and session.policy == "reject":
        raise Conflict("the session has an execution running; wait for it, or cancel it", detail={"active_execution_id": active})
    if active is not None and session.policy == "enqueue":
        if req.output_schema is not None or req.instructions is not None or req.params or req.model is not None:
            raise Conflict("only plain messages are enqueued (not output_schema, instructions, params, model); wait or cancel")
        await lifecycle.admit(ctx, [], slots=False)
        async with state.runtime.store.begin() as conn:
            message = await sessions.append(conn, session.id, role="user", content=req.content, status="pending")
            # The running one may have ended meanwhile: then nobody would start this message.
            started = await sessions.claim(conn, session.id, sub.execution_id, expect_active=None)
            if started:
                await sessions.promote(conn, message, sub.execution_id)
                with timed("history_load", session.id, sub.plan):
                    sub.history = await history_messages(conn, session.id, before_seq=None, exclude_execution=sub.execution_id)
        if not started:
            return 202, ChatResponse(session_id=session.id, execution_id=None, status="enqueued", message_seq=message.seq).model_dump()
        await lifecycle.limiter.acquire_slot(ctx.id, sub.execution_id, 0, state.settings.execution_timeout_s)
        await _submit_claimed(request, sub)
        return 202, _accepted(sub, message.seq, None)

    await lifecycle.admit(ctx, [sub.execution_id])
    appended: list[StoredMessage] = []

    async def writes(conn: AsyncConnection) -> None:
        if not await sessions.claim(conn, session.id, sub.execution_id, expect_active=active):
            raise Conflict("the session changed meanwhile (another message started); retry")
        with timed("history_load", session.id, sub.plan):
            sub.history = await history_messages(conn, session.id, before_seq=None, exclude_execution=None)
        appended.append(await sessions.append(conn, session.id, role="user", content=req.content, execution_id=sub.execution_id))

    async def undo(conn: AsyncConnection) -> None:
        await sessions.delete_message(conn, appended[0].id)
        await sessions.release(conn, session.id, sub.execution_id)

    try:
        await lifecycle.submit([sub], writes=writes, undo=undo)
    except BaseException:
        await lifecycle.release_slots(ctx.id, [sub.execution_id])
        raise
    if active is not None:  # policy "interrupt": the old one no longer owns the session
        with contextlib.suppress(DomainError):  # it may have finished meanwhile
            await lifecycle.cancel(active, ctx.id)
    return 202, _accepted(sub, appended[0].seq, active)


async def _submit_claimed(request: Request, sub: Submission) -> None:
    lifecycle = state_of(request).runtime.lifecycle
    try:
        await lifecycle.submit([sub])
    except BaseException:
        await lifecycle.release_slots(sub.tenant_id, [sub.execution_id])
        async with lifecycle.store.begin() as conn:
            assert sub.session_id is not None
            await sessions.release(conn, sub.session_id, sub.execution_id)
        raise


def _accepted(sub: Submission, seq: int, interrupted: str | None) -> dict[str, Any]:
    return ChatResponse(
        session_id=sub.session_id or "",
        execution_id=sub.execution_id,
        status="queued",
        message_seq=seq,
        interrupted_execution_id=interrupted,
        events_url=f"/v1/executions/{sub.execution_id}",
    ).model_dump()


create_session = idempotent(_create)
chat = idempotent(_chat)
