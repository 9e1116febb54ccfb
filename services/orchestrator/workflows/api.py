"""``/v1/workflows``: the catalog, start a run (202 once Kafka acknowledged its first record and
its snapshot), read a run's graph with each step's state, cancel a run."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from schemas.status import ExecutionStatus
from schemas.workflows import (
    RunRecord,
    StepView,
    WorkflowInfo,
    WorkflowList,
    WorkflowRunAccepted,
    WorkflowRunCancel,
    WorkflowRunRequest,
    WorkflowRunView,
)
from services.orchestrator.auth import TenantContext
from services.orchestrator.http import parse_json, path_id, require_tenant, state_of, validate
from services.orchestrator.idempotency import idempotent
from services.orchestrator.workflows.graph import step_of


async def list_workflows(request: Request) -> Response:
    await require_tenant(request)
    workflows = state_of(request).runtime.workflows.workflows
    body = WorkflowList(
        workflows=[
            WorkflowInfo(name=w.name, description=w.description, steps=[s.name for s in w.steps])
            for w in (workflows[n] for n in sorted(workflows))
        ]
    )
    return JSONResponse(body.model_dump(mode="json"))


async def _create(request: Request, ctx: TenantContext, body: bytes) -> tuple[int, Any]:
    name = path_id(request, "name", "workflow")
    req = validate(WorkflowRunRequest, parse_json(body), "workflow run request")
    run = await state_of(request).runtime.workflows.start_run(ctx, name, req)
    accepted = WorkflowRunAccepted(run_id=run.run_id, workflow=name, status_url=f"/v1/workflows/runs/{run.run_id}")
    return 202, accepted.model_dump(mode="json")


def run_view(status: ExecutionStatus, run: RunRecord) -> WorkflowRunView:
    steps = []
    for spec in run.spec.steps:
        rec = step_of(run, spec.name)
        steps.append(
            StepView(
                name=spec.name,
                kind=spec.kind,
                needs=list(spec.needs),
                when=spec.when,
                state=rec.state,
                task_id=rec.task_id,
                output=rec.output,
                result=rec.result,
                error=rec.error,
                started_at=rec.started_at,
                ended_at=rec.ended_at,
            )
        )
    return WorkflowRunView(
        run_id=run.run_id,
        workflow=run.spec.name,
        status=run.state,
        cancel_requested=run.cancel_requested,
        input=run.input,
        output=run.output,
        error=run.error,
        steps=steps,
        edges=[(need, s.name) for s in run.spec.steps for need in s.needs],
        events_partition=status.events_partition,
        events_start_offset=status.events_start_offset,
    )


async def get_run(request: Request) -> Response:
    ctx = await require_tenant(request)
    run_id = path_id(request, "run_id", "workflow run")
    status, run = state_of(request).runtime.workflows.get(run_id, ctx.id)
    return JSONResponse(run_view(status, run).model_dump(mode="json"))


async def _cancel(request: Request, ctx: TenantContext, body: bytes) -> tuple[int, Any]:
    run_id = path_id(request, "run_id", "workflow run")
    state, requested, cancelled = await state_of(request).runtime.workflows.cancel(run_id, ctx.id)
    response = WorkflowRunCancel(run_id=run_id, status=state, cancel_requested=requested, cancelled_steps=cancelled)
    return (202 if requested else 200), response.model_dump(mode="json")


create_run = idempotent(_create)
cancel_run = idempotent(_cancel)
