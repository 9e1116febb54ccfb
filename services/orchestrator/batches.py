"""``/v1/batches``: many executions in one request, on the batch lane by default."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from schemas.api import BatchAccepted, BatchRequest, BatchResult, BatchView
from services.common.errors import InvalidInput, NotFound
from services.orchestrator.auth import TenantContext
from services.orchestrator.cachecontrol import no_cache
from services.orchestrator.executions import checked_callback, checked_prompt, delivery_view, traceparent_of, usage_view
from services.orchestrator.http import iso, parse_json, path_id, require_tenant, state_of, validate
from services.orchestrator.idempotency import idempotent
from services.orchestrator.ids import new_id
from services.orchestrator.store import records, tasks
from services.orchestrator.submission import Submission


async def _create(request: Request, ctx: TenantContext, body: bytes) -> tuple[int, Any]:
    state = state_of(request)
    req = validate(BatchRequest, parse_json(body), "batch")
    if len(req.items) > state.settings.max_batch_items:
        raise InvalidInput(f"a batch holds at most {state.settings.max_batch_items} items, got {len(req.items)}")
    unknown = {i: item.agent for i, item in enumerate(req.items) if item.agent not in state.agents}
    if unknown:
        raise InvalidInput(f"unknown agents; known agents: {sorted(state.agents)}", detail={"items": unknown})
    for i, item in enumerate(req.items):
        try:
            checked_prompt(state.agents, item.agent, item.variables, item.input)
        except InvalidInput as exc:
            raise InvalidInput(f"items[{i}]: {exc.error}", detail={"item": i, **(exc.detail or {})}) from exc
    callback = await checked_callback(state.settings, req.callback_url)
    batch_id = "bat_" + new_id()
    traceparent = traceparent_of(request)
    bypass = no_cache(request)  # Cache-Control: no-cache holds for every item
    subs = [
        Submission(
            tenant_id=ctx.id,
            agent_id=item.agent,
            input=item.input,
            priority=req.priority,
            variables=item.variables,
            batch_id=batch_id,
            custom_id=item.custom_id,
            traceparent=traceparent,
            origin="batch",
            no_cache=bypass,
        )
        for item in req.items
    ]
    # A batch is one request for the request limit; its executions take no concurrency slots: they
    # wait on their lane (batch by default), which executors serve last under saturation.
    await state.runtime.lifecycle.admit(ctx, [], slots=False)

    async def writes(conn: AsyncConnection) -> None:
        await records.create_batch(conn, id=batch_id, tenant_id=ctx.id, priority=req.priority, total=len(subs), callback_url=callback)

    async def undo(conn: AsyncConnection) -> None:
        await records.delete_batch(conn, batch_id)

    await state.runtime.lifecycle.submit(subs, writes=writes, undo=undo)
    return 202, BatchAccepted(batch_id=batch_id, execution_ids=[s.execution_id for s in subs]).model_dump()


async def get_batch(request: Request) -> Response:
    ctx = await require_tenant(request)
    batch_id = path_id(request, "batch_id", "batch")
    async with state_of(request).runtime.store.begin() as conn:
        batch = await records.get_batch(conn, batch_id, tenant_id=ctx.id)
        if batch is None:
            raise NotFound("batch not found")
        members = await tasks.of_batch(conn, batch_id)
        deliveries = await records.deliveries_of(conn, batch_id, tenant_id=ctx.id)
    counts = {s: 0 for s in ("queued", "running", "waiting", "completed", "failed", "cancelled", "timed_out")}
    for t in members:
        counts[t.state] = counts.get(t.state, 0) + 1
    view = BatchView(
        batch_id=batch.id,
        status="completed" if batch.completed_at is not None else "running",
        priority=batch.priority,
        total=batch.total,
        counts=counts,
        results=[
            BatchResult(
                execution_id=t.id,
                custom_id=t.custom_id,
                status=t.state,
                output=t.output,
                error=t.error,
                usage=usage_view(t.usage),
            )
            for t in members
        ],
        callbacks=[delivery_view(d) for d in deliveries],
        created_at=iso(batch.created_at) or "",
        completed_at=iso(batch.completed_at),
    )
    return JSONResponse(view.model_dump(mode="json"))


create_batch = idempotent(_create)
