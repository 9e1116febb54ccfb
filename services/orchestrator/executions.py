"""``/v1/executions``: submit, list, read, cancel."""

from __future__ import annotations

import re
from typing import Any

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from schemas.agents import AgentSpec
from schemas.api import (
    CallbackDelivery,
    CancelResponse,
    ExecutionAccepted,
    ExecutionList,
    ExecutionRequest,
    ExecutionSummary,
    ExecutionView,
)
from schemas.bounds import AGENT_NAME_PATTERN
from schemas.events import Usage
from schemas.status import ExecutionStatus
from services.common.errors import InvalidInput, NotFound
from services.common.prompts import PromptError, render_prompt, template_variables
from services.orchestrator.auth import TenantContext
from services.orchestrator.cachecontrol import no_cache
from services.orchestrator.callbacks import CallbackURLError, check_url
from services.orchestrator.http import HTTPError, iso, parse_json, path_id, query_time, require_tenant, state_of, validate
from services.orchestrator.idempotency import idempotent
from services.orchestrator.ids import new_traceparent
from services.orchestrator.pages import Key, next_cursor, page_request, query_id
from services.orchestrator.plans import PlannedCall, timed
from services.orchestrator.settings import OrchestratorSettings
from services.orchestrator.store import records, tasks
from services.orchestrator.store.records import Delivery
from services.orchestrator.store.tasks import FINAL_STATES, OPEN_STATES, Task, TaskFilter
from services.orchestrator.submission import Submission


async def checked_callback(settings: OrchestratorSettings, url: str | None) -> str | None:
    if url is None:
        return None
    try:
        await check_url(url, allow_private=settings.callbacks_allow_private)
    except CallbackURLError as exc:
        raise InvalidInput(str(exc), detail={"callback_url": url}) from exc
    return url


def known_agent(agents: dict[str, Any], agent: str) -> None:
    if agent not in agents:
        raise InvalidInput(f"unknown agent {agent!r}; known agents: {sorted(agents)}")


def checked_prompt(agents: dict[str, AgentSpec], agent: str, variables: dict[str, Any], input: str) -> None:
    """The agent's prompt renders with these variables, as the executor will render it: else a 422
    that names the missing variable, at submit rather than as a failed execution after a 202."""
    spec = agents.get(agent)
    if spec is None or "{" not in spec.system_prompt:
        return  # a prompt with no template syntax renders to itself, whatever the request (no render per POST)
    try:
        render_prompt(spec, variables, input)
    except PromptError as exc:
        if exc.missing is not None:
            raise InvalidInput(
                f"agent {agent!r} needs the variable {exc.missing!r}: pass it in `variables`",
                detail={"missing": exc.missing, "variables": list(template_variables(spec.system_prompt))},
            ) from exc
        raise InvalidInput(str(exc)) from exc


def traceparent_of(request: Request) -> str:
    return continued_traceparent(request.headers.get("traceparent"))


def continued_traceparent(value: str | None) -> str:
    """A caller's W3C ``traceparent`` (HTTP header or Kafka header) when it has the shape of one, else a new trace."""
    return value if value is not None and len(value) == 55 and value.count("-") == 3 else new_traceparent()


def submission_of(tenant_id: str, req: ExecutionRequest, *, callback_url: str | None, traceparent: str, **extra: Any) -> Submission:
    """The submission of an execution request, whichever door it came through (HTTP, the Kafka door)."""
    return Submission(
        tenant_id=tenant_id,
        agent_id=req.agent,
        input=req.input,
        priority=req.priority,
        variables=req.variables,
        history=tuple(req.history),
        session_id=req.session_id,
        callback_url=callback_url,
        traceparent=traceparent,
        reply_to=req.reply_to,
        output_schema=req.output_schema,
        **extra,
    )


async def _create(request: Request, ctx: TenantContext, body: bytes) -> tuple[int, Any]:
    state = state_of(request)
    req = validate(ExecutionRequest, parse_json(body), "execution request")
    plan: list[PlannedCall] = []
    with timed("agent_config", req.agent, plan):
        known_agent(state.agents, req.agent)
    checked_prompt(state.agents, req.agent, req.variables, req.input)
    callback = await checked_callback(state.settings, req.callback_url)
    if req.reply_to is not None and req.reply_to not in state.settings.reply_topics.get(ctx.id, ()):
        raise InvalidInput(f"reply_to topic {req.reply_to!r} is not in this tenant's allowlist")
    sub = submission_of(ctx.id, req, callback_url=callback, traceparent=traceparent_of(request), plan=plan, no_cache=no_cache(request))
    await state.runtime.lifecycle.accept(ctx, [sub])
    accepted = ExecutionAccepted(execution_id=sub.execution_id, events_url=f"/v1/executions/{sub.execution_id}", stream_url="/v1/stream")
    return 202, accepted.model_dump(mode="json")


def delivery_view(d: Delivery) -> CallbackDelivery:
    return CallbackDelivery(
        delivery_id=d.id,
        url=d.url,
        state=d.state,
        attempts=d.attempts,
        last_status=d.last_status,
        last_error=d.last_error,
        next_attempt_at=iso(d.next_attempt_at) if d.state == "pending" else None,
    )


def handed_off_to(status: ExecutionStatus) -> str | None:
    """The agent a handoff gave the answer to, as the executor's completed snapshot says (issue 20)."""
    agent = status.extra.get("handed_off_to") if status.state == "completed" else None
    return agent if isinstance(agent, str) and re.fullmatch(AGENT_NAME_PATTERN, agent) else None


def execution_view(status: ExecutionStatus | None, task: Task | None, deliveries: list[Delivery]) -> ExecutionView:
    if status is not None:
        view = ExecutionView(
            execution_id=status.execution_id,
            agent=status.agent_id,
            priority=status.priority,
            status=status.state,
            attempt=status.attempt,
            session_id=status.session_id,
            output=status.output,
            error=status.error,
            usage=status.usage,
            created_at=status.created_at.isoformat(),
            updated_at=status.updated_at.isoformat(),
            handed_off_to=handed_off_to(status),
        )
        if task is not None and task.state == "timed_out" and not status.terminal:
            view = view.model_copy(update={"status": "timed_out", "error": task.error})
    else:
        assert task is not None
        view = ExecutionView(
            execution_id=task.id,
            agent=task.agent_id,
            priority=task.priority,
            status=task.state,
            attempt=0,
            session_id=task.session_id,
            output=task.output,
            error=task.error,
            created_at=iso(task.created_at) or "",
            updated_at=iso(task.updated_at) or "",
        )
    return view.model_copy(update={"callbacks": [delivery_view(d) for d in deliveries]})


async def get_execution(request: Request) -> Response:
    state = state_of(request)
    ctx = await require_tenant(request)
    execution_id = path_id(request, "execution_id", "execution")
    status = state.status.get(execution_id)
    if status is not None and status.tenant_id != ctx.id:
        status = None
    async with state.runtime.store.begin() as conn:
        task = await tasks.get(conn, execution_id, tenant_id=ctx.id)
        deliveries = await records.deliveries_of(conn, execution_id, tenant_id=ctx.id) if task else []
    if status is None and (task is None or task.kind != "execution"):
        raise NotFound("execution not found")
    return JSONResponse(execution_view(status, task, deliveries).model_dump(mode="json"))


def usage_view(stored: dict[str, Any] | None) -> Usage | None:
    # A row written before token counts were bounded may hold one out of range: show none rather than fail.
    try:
        return Usage.model_validate(stored) if stored else None
    except ValidationError:
        return None


def summary_view(task: Task) -> ExecutionSummary:
    return ExecutionSummary(
        execution_id=task.id,
        agent=task.agent_id,
        priority=task.priority,
        status=task.state,
        attempt=task.attempt,
        origin=task.origin,
        input_preview=task.input_preview,
        session_id=task.session_id,
        batch_id=task.batch_id,
        schedule_id=task.custom_id if task.origin == "schedule" else None,
        error=task.error,
        usage=usage_view(task.usage),
        created_at=iso(task.created_at) or "",
        updated_at=iso(task.updated_at) or "",
    )


_STATES = (*OPEN_STATES, *FINAL_STATES)


def _states(request: Request) -> tuple[str, ...]:
    raw = request.query_params.get("status")
    if raw is None:
        return ()
    states = tuple(dict.fromkeys(s.strip() for s in raw[:200].split(",") if s.strip()))
    if not states or any(s not in _STATES for s in states):
        raise HTTPError(
            400, f"query parameter 'status' must be states separated by commas, of {list(_STATES)}", detail={"status": raw[:100]}
        )
    return states


async def list_executions(request: Request) -> Response:
    """The tenant's executions, newest first; filters: status (a,b), agent, session_id, batch_id, since, until."""
    state = state_of(request)
    ctx = await require_tenant(request)
    where = TaskFilter(
        states=_states(request),
        agent_id=query_id(request, "agent"),
        session_id=query_id(request, "session_id"),
        batch_id=query_id(request, "batch_id"),
        since=query_time(request, "since"),
        until=query_time(request, "until"),
    )
    page = page_request(request)
    async with state.runtime.store.begin() as conn:
        rows = await tasks.page(conn, ctx.id, where, limit=page.limit + 1, after=page.after_key)
    cursor = next_cursor([Key(t.created_at, t.id) for t in rows], page.limit)
    body = ExecutionList(executions=[summary_view(t) for t in rows[: page.limit]], next_cursor=cursor)
    return JSONResponse(body.model_dump(mode="json"))


async def _cancel(request: Request, ctx: TenantContext, body: bytes) -> tuple[int, Any]:
    execution_id = path_id(request, "execution_id", "execution")
    state, requested = await state_of(request).runtime.lifecycle.cancel(execution_id, ctx.id)
    response = CancelResponse(execution_id=execution_id, status=state, cancel_requested=requested)
    return (202 if requested else 200), response.model_dump()


create_execution = idempotent(_create)
cancel_execution = idempotent(_cancel)
