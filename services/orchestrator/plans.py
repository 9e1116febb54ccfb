"""Orchestration plans: what the orchestrator did on an execution's behalf, and the endpoint showing it.

Request handlers time their own service calls (``timed``) and hand them to the ``Submission``;
they travel in the queued snapshot's intake and are written with the execution's own row, in one
transaction, by the projection (projection.py). Delegated
jobs and the execution's end are added by the coordinator (services/orchestrator/coordinator.py).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from schemas.plans import OrchestrationPlan, ServiceCall
from services.common.errors import NotFound
from services.orchestrator.http import iso, path_id, require_tenant, state_of
from services.orchestrator.projection import row_of
from services.orchestrator.store import plans


@dataclass
class PlannedCall:
    kind: str
    target: str
    started_at: float = field(default_factory=time.time)
    ended_at: float | None = None
    outcome: str = "pending"
    detail: str | None = None


@contextlib.contextmanager
def timed(kind: str, target: str, calls: list[PlannedCall]) -> Iterator[PlannedCall]:
    """Time a call; it is appended to ``calls`` with outcome ``ok``, or ``failed`` and the error."""
    call = PlannedCall(kind=kind, target=target)
    try:
        yield call
    except Exception as exc:
        call.outcome, call.detail = "failed", str(exc)
        raise
    else:
        if call.outcome == "pending":
            call.outcome = "ok"
    finally:
        call.ended_at = time.time()
        calls.append(call)


def view(rows: list[plans.CallRow], execution_id: str) -> OrchestrationPlan:
    calls = [
        ServiceCall(
            seq=i,
            kind=r.kind,
            target=r.target,
            job_id=r.job_id,
            outcome=r.outcome,
            detail=r.detail,
            started_at=iso(r.started_at) or "",
            ended_at=iso(r.ended_at),
            duration_ms=round((r.ended_at - r.started_at) * 1000, 3) if r.ended_at is not None else None,
            meta=r.meta,
        )
        for i, r in enumerate(rows, 1)
    ]
    return OrchestrationPlan(execution_id=execution_id, calls=calls)


async def get_plan(request: Request) -> Response:
    ctx = await require_tenant(request)
    execution_id = path_id(request, "execution_id", "execution")
    state = state_of(request)
    async with state.runtime.store.begin() as conn:
        task = await row_of(conn, state.status, execution_id, tenant_id=ctx.id)
        rows = await plans.of_execution(conn, execution_id, tenant_id=ctx.id) if task is not None else []
    if task is None or task.kind != "execution":
        raise NotFound("execution not found")
    return JSONResponse(view(rows, execution_id).model_dump(mode="json"))
