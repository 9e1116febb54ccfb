"""``POST /v1/agui/{agent}``: run an agent from an AG-UI ``RunAgentInput``, stream AG-UI events (SSE).

* ``threadId`` is an agentstream session (of this tenant; created with the agent of the path on
  the first run, its history seeded from the input's earlier messages; later runs send only the
  last user message, the session's history being the conversation). Another tenant's thread is a 404.
* ``runId`` names the run: it is the idempotency key of the submission (per tenant), so the same
  POST again is the same run, never a second execution. With ``Last-Event-ID`` (the SSE ``id`` of
  an event: our cursor ``N``, or ``N:k`` for the earlier events one of ours became) the same POST
  resumes the run's stream right after that event, exactly once; a resume of a run this tenant never
  started is a 404.
* The submission is a chat message of that session (``sessions.send_message``): admission, limits
  (429 + ``Retry-After``), usage, priority (``X-Agentstream-Priority`` or ``forwardedProps.priority``)
  and ``traceparent`` as on ``/v1/executions``.
* Refused with a 400 naming the field: client-side ``tools`` (the agent's tools run server-side),
  ``resume`` (no interrupts yet). ``context`` becomes instructions; ``state`` is echoed as the
  run's ``STATE_SNAPSHOT``; the rest of ``forwardedProps`` is ignored. See docs/protocols.md.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any, get_args

import orjson
from ag_ui.core import BaseEvent, RunAgentInput
from ag_ui.encoder import EventEncoder
from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from schemas.api import ChatRequest
from schemas.bounds import ID_PATTERN, MAX_ID_LENGTH, json_problem
from schemas.events import MAX_INPUT_CHARS
from schemas.topics import Priority
from services.common.errors import Conflict, DomainError
from services.orchestrator.agui.mapping import RunMapper
from services.orchestrator.auth import TenantContext
from services.orchestrator.handoffs import addressable
from services.orchestrator.http import HTTPError, read_body, require_tenant, state_of
from services.orchestrator.idempotency import with_key
from services.orchestrator.openai import common
from services.orchestrator.openai.feed import Feed, Item, follow
from services.orchestrator.positions import START, group_position
from services.orchestrator.sessions import send_message
from services.orchestrator.store import sessions

MAX_MESSAGES = 1000
MAX_CONTEXT = 64
MAX_INSTRUCTIONS = 200_000  # what ChatRequest.instructions takes
MAX_RUN_ID = 200  # the idempotency key is "agui-run:" + runId, at most 255 characters
_ID = re.compile(ID_PATTERN)
_SEEDED_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
_ENCODER = EventEncoder()


def _bad(message: str, field: str) -> HTTPError:
    return HTTPError(400, message, detail={"field": field})


def _parse(body: bytes) -> tuple[dict[str, Any], RunAgentInput]:
    try:
        raw = orjson.loads(body or b"{}")
    except orjson.JSONDecodeError as exc:
        raise _bad(f"the body is not JSON: {exc}", "body") from None
    if not isinstance(raw, dict):
        raise _bad("the body must be a RunAgentInput object", "body")
    problem = json_problem(raw)
    if problem is not None:
        raise _bad(f"the body is out of bounds: {problem}", "body")
    try:
        run = RunAgentInput.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        field = ".".join(str(p) for p in first["loc"])
        raise _bad(f"not a RunAgentInput: {field}: {first['msg']}", field) from None
    if len(run.thread_id) > MAX_ID_LENGTH or _ID.fullmatch(run.thread_id) is None:
        raise _bad(f"threadId must be 1-{MAX_ID_LENGTH} characters of [A-Za-z0-9_.:@-]: it names an agentstream session", "threadId")
    if not 1 <= len(run.run_id) <= MAX_RUN_ID or not run.run_id.isprintable():
        raise _bad(f"runId must be 1-{MAX_RUN_ID} printable characters", "runId")
    if run.tools:
        raise _bad("client-side tools are not supported: the agent's own tools run server-side", "tools")
    if run.resume:
        raise _bad("resume is not supported: agentstream runs raise no interrupts yet", "resume")
    if not run.messages or len(run.messages) > MAX_MESSAGES:
        raise _bad(f"messages must hold 1 to {MAX_MESSAGES} messages, the last one the user's", "messages")
    if run.context is not None and len(run.context) > MAX_CONTEXT:
        raise _bad(f"at most {MAX_CONTEXT} context entries", "context")
    return raw, run


def _text(content: Any, field: str) -> str:
    if isinstance(content, str):
        text = content
    elif isinstance(content, list):
        parts = [getattr(p, "text", None) for p in content]
        if any(not isinstance(t, str) for t in parts):
            raise _bad("only text content parts are supported", field)
        text = "".join(t for t in parts if isinstance(t, str))
    else:
        text = ""
    if len(text) > MAX_INPUT_CHARS:
        raise _bad(f"a message is at most {MAX_INPUT_CHARS} characters, as on /v1/executions", field)
    return text


def _input(run: RunAgentInput) -> tuple[list[tuple[str, str]], str]:
    """(earlier (role, text) messages that seed a new thread, the last user message's text)."""
    last = run.messages[-1]
    text = _text(getattr(last, "content", None), f"messages.{len(run.messages) - 1}.content") if last.role == "user" else ""
    if not text:
        raise _bad("the last message must be a non-empty user message: it is the agent's input", f"messages.{len(run.messages) - 1}")
    earlier = []
    for i, m in enumerate(run.messages[:-1]):
        if m.role in _SEEDED_ROLES:  # tool, activity and reasoning messages are the client's own record
            content = _text(getattr(m, "content", None) or "", f"messages.{i}.content")
            if content:
                earlier.append((_SEEDED_ROLES[m.role], content))
    return earlier, text


def _priority(request: Request, run: RunAgentInput) -> Priority:
    props = run.forwarded_props if isinstance(run.forwarded_props, dict) else {}
    value = request.headers.get(common.PRIORITY_HEADER) or props.get("priority") or "standard"
    if value not in get_args(Priority):
        raise _bad(f"priority must be one of {list(get_args(Priority))}, not {value!r}", "forwardedProps.priority")
    return value  # type: ignore[return-value]  # checked against the Literal's values just above


def _instructions(run: RunAgentInput) -> str | None:
    if not run.context:
        return None
    text = "Context from the application:\n" + "\n".join(f"{c.description}: {c.value}" for c in run.context)
    if len(text) > MAX_INSTRUCTIONS:
        raise _bad(f"context is at most {MAX_INSTRUCTIONS} characters in all (they become the run's instructions)", "context")
    return text


async def _thread(request: Request, ctx: TenantContext, agent: str, thread_id: str, earlier: list[tuple[str, str]]) -> bool:
    """Make sure the thread is a session of this tenant running ``agent``; True if it was created now."""
    store = state_of(request).runtime.store
    async with store.begin() as conn:
        session = await sessions.get(conn, thread_id, tenant_id=ctx.id)
    if session is None:
        try:
            async with store.begin() as conn:
                await sessions.create(
                    conn, id=thread_id, tenant_id=ctx.id, agent_id=agent, policy="reject", metadata={"created_by": "agui"}
                )
                for role, content in earlier:
                    await sessions.append(conn, thread_id, role=role, content=content)
            return True
        except IntegrityError:  # taken: by another tenant (not found), or by a run of ours that raced this one
            async with store.begin() as conn:
                session = await sessions.get(conn, thread_id, tenant_id=ctx.id)
            if session is None:
                raise HTTPError(404, f"thread {thread_id!r} not found", detail={"field": "threadId"}) from None
    if not addressable(state_of(request).agents, agent, session.agent_id):  # a handoff moved the thread on: it goes on there
        raise HTTPError(409, f"thread {thread_id!r} runs agent {session.agent_id!r}, not {agent!r}", detail={"field": "threadId"})
    return False


def _after(request: Request) -> tuple[int, int] | None:
    """``Last-Event-ID``: ``N`` (after every event that our event N became) or ``N:k`` (after the k-th)."""
    raw = request.headers.get("last-event-id")
    if raw is None:
        return None
    try:
        return group_position(raw)
    except ValueError as exc:
        raise _bad(f"Last-Event-ID: {exc}", "Last-Event-ID") from None


async def run_agent(request: Request) -> Response:
    """AG-UI: run the agent of the path from a `RunAgentInput`; AG-UI events as SSE, resumable with `Last-Event-ID`."""
    state = state_of(request)
    ctx = await require_tenant(request)
    agent = str(request.path_params["agent"])
    if agent not in state.agents:
        raise HTTPError(404, f"agent {agent!r} not found: known agents are {sorted(state.agents)}")
    body = await read_body(request, state.settings.max_body_bytes)
    raw, run = _parse(body)
    after = _after(request)

    async def submit(request: Request, ctx: TenantContext, body: bytes) -> tuple[int, Any]:
        if after is not None:
            raise HTTPError(
                404, f"run {run.run_id!r} not found: Last-Event-ID resumes a run this tenant started", detail={"field": "runId"}
            )
        earlier, text = _input(run)
        message = ChatRequest(content=text, priority=_priority(request, run), instructions=_instructions(run))
        fresh = await _thread(request, ctx, agent, run.thread_id, earlier)
        try:
            _, chat = await send_message(request, ctx, message, run.thread_id)
        except DomainError:
            if fresh:  # refused (limits, Kafka): the thread it was to start goes too
                async with state.runtime.store.begin() as conn:
                    await sessions.delete(conn, run.thread_id)
            raise
        return 202, {"execution_id": chat["execution_id"]}

    try:
        _, accepted, _ = await with_key(request, ctx, body, f"agui-run:{run.run_id}", submit)
    except Conflict as exc:
        if isinstance(exc.detail, dict) and "idempotency_key" in exc.detail:
            raise HTTPError(409, f"runId {run.run_id!r} was already used with another input", detail={"field": "runId"}) from None
        raise
    execution_id = accepted["execution_id"]
    prefix = [m for m in raw.get("messages", []) if isinstance(m, dict)]
    mapper = RunMapper(thread_id=run.thread_id, run_id=run.run_id, execution_id=execution_id, prefix=prefix, state=run.state)
    feed = await follow(state.bridge, ctx.id, execution_id, **common.stream_settings(request))
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "X-Agentstream-Execution-Id": execution_id}
    return StreamingResponse(_stream(request, feed, mapper, after or START), media_type="text/event-stream", headers=headers)


def _frames(events: list[BaseEvent], cursor: int | None, after: tuple[int, int]) -> bytes:
    """SSE frames of the events our event ``cursor`` became, those after ``after`` only. The last one's
    id is the cursor; the earlier ones' ``cursor:k``, so a stream cut inside a group resumes inside it."""
    out = []
    for k, event in enumerate(events):
        if cursor is None:
            out.append(_ENCODER.encode(event).encode())
        elif (cursor, k) > after:
            name = b"%d" % cursor if k == len(events) - 1 else b"%d:%d" % (cursor, k)
            out.append(b"id: " + name + b"\n" + _ENCODER.encode(event).encode())
    return b"".join(out)


async def _stream(request: Request, feed: Feed, mapper: RunMapper, after: tuple[int, int]) -> AsyncIterator[bytes]:
    """The run's AG-UI events after ``after`` (the fold runs over all of them)."""
    try:
        async for item in feed.items():
            if item is None:
                yield b": keep-alive\n\n"
            elif isinstance(item, Item):
                frames = _frames(mapper.feed(item.event), item.cursor, after)
                if frames:
                    yield frames
            elif not mapper.finished:
                # Ended without a terminal event (cancelled while queued, timed out, cut off): say so.
                status = state_of(request).status.get(mapper.execution_id)
                end_state = item.status or (status.state if status is not None else "failed")
                yield _frames(mapper.end(end_state, item.error or (status.error if status is not None else None)), None, after)
    finally:
        feed.close()
