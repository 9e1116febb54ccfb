"""``/v1/executions``: submit, read, cancel."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from schemas.api import CallbackDelivery, CancelResponse, ExecutionAccepted, ExecutionRequest, ExecutionView
from schemas.status import ExecutionStatus
from services.common.errors import InvalidInput, NotFound
from services.orchestrator.auth import TenantContext
from services.orchestrator.callbacks import CallbackURLError, check_url
from services.orchestrator.http import iso, parse_json, path_id, require_tenant, state_of, validate
from services.orchestrator.idempotency import idempotent
from services.orchestrator.ids import new_traceparent
from services.orchestrator.plans import PlannedCall, timed
from services.orchestrator.settings import OrchestratorSettings
from services.orchestrator.store import records, tasks
from services.orchestrator.store.records import Delivery
from services.orchestrator.store.tasks import Task
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
    callback = await checked_callback(state.settings, req.callback_url)
    if req.reply_to is not None and req.reply_to not in state.settings.reply_topics.get(ctx.id, ()):
        raise InvalidInput(f"reply_to topic {req.reply_to!r} is not in this tenant's allowlist")
    sub = submission_of(ctx.id, req, callback_url=callback, traceparent=traceparent_of(request), plan=plan)
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


async def _cancel(request: Request, ctx: TenantContext, body: bytes) -> tuple[int, Any]:
    execution_id = path_id(request, "execution_id", "execution")
    state, requested = await state_of(request).runtime.lifecycle.cancel(execution_id, ctx.id)
    response = CancelResponse(execution_id=execution_id, status=state, cancel_requested=requested)
    return (202 if requested else 200), response.model_dump()


create_execution = idempotent(_create)
cancel_execution = idempotent(_cancel)
