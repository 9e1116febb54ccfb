"""``/v1/responses``: the Responses API over executions and sessions.

A response is an execution (``resp_<execution_id>``). With ``store`` (the default) it runs as the
first message of a new session, and ``previous_response_id`` sends the next message to that
session, so the conversation is the session's history (``/v1/sessions``, same transaction rules).
``background: true`` answers at once (``queued``); ``GET /v1/responses/{id}`` polls,
``?stream=true&starting_after=N`` resumes a stream after sequence number N (= our cursor),
``POST .../cancel`` cancels, ``DELETE`` forgets a finished response (its events stay in the log).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from schemas.api import ChatRequest
from schemas.events import Message, Role
from schemas.openai_door import ResponseCreateRequest
from services.common.errors import Conflict, DomainError, NotFound
from services.orchestrator.auth import TenantContext
from services.orchestrator.http import require_tenant, state_of
from services.orchestrator.idempotency import run_idempotently
from services.orchestrator.ids import new_id
from services.orchestrator.openai import common
from services.orchestrator.openai.errors import invalid, openai_errors
from services.orchestrator.openai.feed import Ended, Feed, Item, follow
from services.orchestrator.openai.mapping import ResponseMapper, response_status
from services.orchestrator.openai.models import resolve
from services.orchestrator.projection import row_of
from services.orchestrator.sessions import send_message
from services.orchestrator.store import sessions, tasks
from services.orchestrator.store.tasks import Task

ECHOED = ("instructions", "metadata", "background", "previous_response_id", "temperature", "top_p", "max_output_tokens", "text", "user")
ACCEPTED = tuple(ResponseCreateRequest.model_fields)
REFUSED = {
    "tools": "the agent's own tools run server-side; client-side tools are not supported",
    "include": "no includable extras (logprobs, sources) are recorded",
    "reasoning": "reasoning options are not supported",
    "conversation": "use previous_response_id: a conversation is an agentstream session",
    "prompt": "prompt templates are the agent's (its system_prompt)",
    "top_logprobs": "log probabilities are not streamed through Kafka",
    "max_tool_calls": "the agent's max_steps bounds its tool calls",
}
_ROLES: dict[str, Role] = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


def _inputs(raw: Any) -> list[Message]:
    if isinstance(raw, str):
        items: list[Any] = [{"role": "user", "content": raw}]
    elif isinstance(raw, list) and raw:
        items = raw
    else:
        raise invalid("input must be a string or a non-empty array of messages", param="input")
    if len(items) > 1000:
        raise invalid("at most 1000 input items", param="input")
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or item.get("type", "message") != "message" or item.get("role") not in _ROLES:
            raise invalid("only message items (role system, developer, user or assistant) are supported", param=f"input[{i}]")
        out.append(Message(role=_ROLES[item["role"]], content=common.text_of(item.get("content") or "", f"input[{i}].content")))
    if out[-1].role != "user" or not out[-1].content:
        raise invalid("the last input item must be a non-empty user message: it is the agent's input", param=f"input[{len(out) - 1}]")
    return out


def _execution_id(response_id: str, param: str) -> str:
    if not response_id.startswith("resp_") or not 5 < len(response_id) <= 133:
        raise NotFound(f"response {response_id!r} not found", detail={"param": param, "code": "not_found"})
    return response_id.removeprefix("resp_")


async def _own_task(request: Request, ctx: TenantContext, execution_id: str) -> Task:
    state = state_of(request)
    async with state.runtime.store.begin() as conn:
        task = await row_of(conn, state.status, execution_id, tenant_id=ctx.id)
    if task is None or task.kind != "execution":
        raise common.not_found()
    return task


async def _continue(request: Request, ctx: TenantContext, previous: str, agent: str, inputs: list[Message]) -> str:
    """The session a ``previous_response_id`` continues, checked: this tenant's, its agent, its latest response."""
    task = await _own_task(request, ctx, _execution_id(previous, "previous_response_id"))
    if task.session_id is None or task.origin != "chat":
        raise invalid("that response was created with store=false: it cannot be continued", param="previous_response_id")
    if task.agent_id != agent:
        raise invalid(f"the conversation runs agent {task.agent_id!r}, not {agent!r}", param="model")
    if len(inputs) != 1:
        raise invalid("with previous_response_id, input is one user message", param="input")
    async with state_of(request).runtime.store.begin() as conn:
        history = await sessions.history(conn, task.session_id, done_only=True, limit=10_000)
    if history and history[-1].execution_id != task.id:
        raise invalid("only the latest response of a conversation can be continued", param="previous_response_id")
    return task.session_id


async def _new_session(request: Request, ctx: TenantContext, agent: str, earlier: list[Message]) -> str:
    async with state_of(request).runtime.store.begin() as conn:
        session = await sessions.create(
            conn, id="ses_" + new_id(), tenant_id=ctx.id, agent_id=agent, policy="reject", metadata={"created_by": "openai.responses"}
        )
        for m in earlier:
            await sessions.append(conn, session.id, role=m.role, content=m.content)
    return session.id


async def _submit(request: Request, ctx: TenantContext, body: bytes) -> tuple[int, Any]:
    raw = common.parse_body(body)
    common.refuse_unknown(raw, ACCEPTED, REFUSED)
    common.validated(ResponseCreateRequest, raw)
    target = resolve(state_of(request).agents, raw.get("model"))
    inputs = _inputs(raw.get("input"))
    if raw.get("tool_choice") not in (None, "auto", "none"):
        raise invalid("tool_choice may be auto (the agent's tools) or none (one model turn, no tools)", param="tool_choice")
    if raw.get("truncation") not in (None, "disabled"):
        raise invalid("only truncation=disabled is supported", param="truncation")
    text = raw.get("text")
    if text is not None and not isinstance(text, dict):
        raise invalid("text must be an object", param="text")
    schema, model_format = common.schema_format((text or {}).get("format"), "text.format")
    params: dict[str, Any] = {k: raw[k] for k in ("temperature", "top_p") if raw.get(k) is not None}
    if raw.get("max_output_tokens") is not None:
        params["max_tokens"] = raw["max_output_tokens"]
    if model_format is not None:
        params["response_format"] = model_format
    metadata = common.metadata_of(raw.get("metadata"))
    priority = common.priority_of(request, metadata)
    instructions = raw.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise invalid("instructions must be a string", param="instructions")
    mode = "completion" if raw.get("tool_choice") == "none" else "agent"
    previous = raw.get("previous_response_id")
    if raw.get("store", True) is False:
        if previous is not None:
            raise invalid("previous_response_id needs store=true: the conversation is stored as a session", param="store")
        sub = common.new_submission(
            request,
            ctx,
            agent_id=target.agent,
            input=inputs[-1].content,
            history=tuple(inputs[:-1]),
            priority=priority,
            mode=mode,
            params=params,
            model=target.model,
            instructions=instructions,
            output_schema=schema,
        )
        await common.submit(request, ctx, sub)
        execution_id = sub.execution_id
    else:
        if mode == "completion":
            raise invalid("tool_choice=none (one model turn) needs store=false", param="tool_choice")
        fresh = previous is None
        if previous is not None:
            session_id = await _continue(request, ctx, str(previous), target.agent, inputs)
        else:
            session_id = await _new_session(request, ctx, target.agent, inputs[:-1])
        message = ChatRequest(
            content=inputs[-1].content,
            priority=priority,
            instructions=instructions,
            output_schema=schema,
            params=params,
            model=target.model,
        )
        try:
            _, chat = await send_message(request, ctx, message, session_id)
        except DomainError:
            # Refused (limits, Kafka; nothing was accepted): the conversation it was to start goes too.
            # Only then: after a cancellation the execution may be running and will write to the session.
            if fresh:
                async with state_of(request).runtime.store.begin() as conn:
                    await sessions.delete(conn, session_id)
            raise
        execution_id = chat["execution_id"]
    echo = {k: raw[k] for k in ECHOED if raw.get(k) is not None} | {"metadata": metadata}
    return 202, {
        "execution_id": execution_id,
        "model": str(raw["model"]),
        "stream": bool(raw.get("stream")),
        "background": bool(raw.get("background")),
        "structured": schema is not None,
        "echo": echo,
    }


def _mapper(request: Request, execution_id: str, model: str, *, structured: bool, echo: dict[str, Any]) -> ResponseMapper:
    status = state_of(request).status.get(execution_id)
    created = status.created_at.timestamp() if status is not None else time.time()
    return ResponseMapper(execution_id=execution_id, model=model, created_at=created, structured=structured, request=echo)


@openai_errors
async def create_response(request: Request) -> Response:
    """Responses API (OpenAI-compatible): run an agent; `stream`, `background`, `previous_response_id`."""
    _, accepted, _ = await run_idempotently(request, _submit)
    ctx = await require_tenant(request)
    execution_id = accepted["execution_id"]
    mapper = _mapper(request, execution_id, accepted["model"], structured=accepted["structured"], echo=accepted["echo"])
    if accepted["stream"]:
        feed = await follow(state_of(request).bridge, ctx.id, execution_id, **common.stream_settings(request))
        return _streaming(_stream(request, feed, mapper, after=-1))
    if accepted["background"]:
        return JSONResponse(mapper.snapshot())
    return JSONResponse(await _fold(request, ctx, mapper))


async def _fold(request: Request, ctx: TenantContext, mapper: ResponseMapper) -> dict[str, Any]:
    """The whole response, from every event of the execution (waits for the end)."""
    state = state_of(request)
    feed = await follow(state.bridge, ctx.id, mapper.execution_id, **common.stream_settings(request))
    try:
        async with asyncio.timeout(state.settings.execution_timeout_s + 30):
            async for item in feed.items():
                if isinstance(item, Item):
                    mapper.feed(item.cursor, item.event)
                elif isinstance(item, Ended):
                    _ended(request, mapper, item)
    finally:
        feed.close()
    return mapper.snapshot()


def _ended(request: Request, mapper: ResponseMapper, ended: Ended) -> None:
    if mapper.status in ("completed", "failed", "cancelled"):
        return
    status = state_of(request).status.get(mapper.execution_id)
    state = ended.status or (status.state if status is not None else "failed")
    mapper.end(state, ended.error or (status.error if status is not None else None))


def _streaming(body: AsyncIterator[bytes]) -> Response:
    return StreamingResponse(body, media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _stream(request: Request, feed: Feed, mapper: ResponseMapper, *, after: int) -> AsyncIterator[bytes]:
    """Responses stream events of the events after cursor ``after`` (the fold runs over all of them)."""
    try:
        async for item in feed.items():
            if item is None:
                yield b": keep-alive\n\n"
            elif isinstance(item, Item):
                events = mapper.feed(item.cursor, item.event)
                if events and item.cursor > after:
                    yield b"".join(common.sse(e, e["type"]) for e in events)
            elif mapper.status not in ("completed", "failed", "cancelled"):
                # Ended without a terminal event (cancelled while queued, timed out, cut off): say so.
                _ended(request, mapper, item)
                kind = "response.completed" if mapper.status == "completed" else "response.failed"
                event = {"type": kind, "sequence_number": max(after + 1, 0), "response": mapper.snapshot()}
                yield common.sse(event, kind)
    finally:
        feed.close()


def _task_snapshot(request: Request, task: Task) -> dict[str, Any]:
    """A response not finished yet (or whose status is gone): its state, no output."""
    status = state_of(request).status.get(task.id)
    mapper = _mapper(request, task.id, task.agent_id or "default", structured=False, echo={})
    state = status.state if status is not None else task.state
    if task.state == "timed_out":
        state = "timed_out"
    mapper.status = response_status(state)
    if mapper.status == "failed":
        mapper.error = {"code": "server_error", "message": (status.error if status else None) or task.error or state}
    return mapper.snapshot()


def _starting_after(request: Request) -> int:
    raw = request.query_params.get("starting_after")
    if raw is None:
        return -1
    try:
        value = int(raw)
    except ValueError:
        raise invalid("starting_after must be an integer sequence number", param="starting_after") from None
    if not -1 <= value < 1 << 62:
        raise invalid("starting_after is out of range", param="starting_after")
    return value


@openai_errors
async def get_response(request: Request) -> Response:
    """A response: status and output; with `stream=true`, its events after `starting_after` (resume)."""
    ctx = await require_tenant(request)
    task = await _own_task(request, ctx, _execution_id(str(request.path_params["response_id"]), "response_id"))
    state = state_of(request)
    if request.query_params.get("stream", "false").lower() == "true":
        after = _starting_after(request)
        feed = await follow(state.bridge, ctx.id, task.id, **common.stream_settings(request))
        mapper = _mapper(request, task.id, task.agent_id or "default", structured=False, echo={})
        return _streaming(_stream(request, feed, mapper, after=after))
    status = state.status.get(task.id)
    if status is None or status.tenant_id != ctx.id:
        return JSONResponse(_task_snapshot(request, task))
    mapper = _mapper(request, task.id, task.agent_id or "default", structured=False, echo={})
    if task.open and not status.terminal:
        return JSONResponse(await _fold_so_far(request, ctx, mapper, task))
    return JSONResponse(await _fold(request, ctx, mapper))


async def _fold_so_far(request: Request, ctx: TenantContext, mapper: ResponseMapper, task: Task) -> dict[str, Any]:
    """A running response as it is now: its status, and the output of the events so far."""
    feed = await follow(state_of(request).bridge, ctx.id, task.id, **common.stream_settings(request))
    try:
        items = await feed.so_far(task.id, timeout=5.0)
    finally:
        feed.close()
    for item in items:
        if isinstance(item, Item):
            mapper.feed(item.cursor, item.event)
    if mapper.status in ("completed", "failed", "cancelled"):
        return mapper.snapshot()
    running = _task_snapshot(request, task)  # the status the view has (queued / in_progress)
    return mapper.snapshot() | {"status": running["status"]}


@openai_errors
async def cancel_response(request: Request) -> Response:
    """Cancel a response (queued or in progress); answers the response as it is after a short wait."""
    ctx = await require_tenant(request)
    task = await _own_task(request, ctx, _execution_id(str(request.path_params["response_id"]), "response_id"))
    state = state_of(request)
    await state.runtime.lifecycle.cancel(task.id, ctx.id)
    await state.status.wait_until(task.id, lambda s: s.terminal, timeout=5.0)
    async with state.runtime.store.begin() as conn:
        task = await tasks.get(conn, task.id, tenant_id=ctx.id) or task
    return JSONResponse(_task_snapshot(request, task))


@openai_errors
async def delete_response(request: Request) -> Response:
    """Forget a finished response: it is no longer found, nor continued. Its events stay in the log."""
    ctx = await require_tenant(request)
    task = await _own_task(request, ctx, _execution_id(str(request.path_params["response_id"]), "response_id"))
    status = state_of(request).status.get(task.id)
    if task.open and (status is None or not status.terminal):
        raise Conflict("the response is still in progress: cancel it first", detail={"code": "conflict"})
    async with state_of(request).runtime.store.begin() as conn:
        await tasks.delete(conn, [task.id])
    return JSONResponse({"id": "resp_" + task.id, "object": "response.deleted", "deleted": True})
