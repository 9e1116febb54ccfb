"""Orchestration plans: the service calls made on behalf of an execution, in order, with outcomes.

A delegated job's row is also the link back to the waiting tool call: its ``request_id`` (unique, so
a redelivered request is delegated once) and in ``meta`` the call id, attempt and session.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from schemas.plans import CallKind
from services.orchestrator.store.tables import service_calls


@dataclass(frozen=True)
class CallRow:
    id: int
    execution_id: str
    tenant_id: str
    kind: CallKind
    target: str
    job_id: str | None
    request_id: str | None
    outcome: str
    detail: str | None
    meta: dict[str, Any] | None
    started_at: float
    ended_at: float | None


def _row(r: Any) -> CallRow:
    return CallRow(**{c.name: getattr(r, c.name) for c in service_calls.columns})


async def add(
    conn: AsyncConnection,
    *,
    execution_id: str,
    tenant_id: str,
    kind: str,
    target: str,
    outcome: str,
    started_at: float | None = None,
    ended_at: float | None = None,
    job_id: str | None = None,
    request_id: str | None = None,
    detail: str | None = None,
    meta: dict[str, Any] | None = None,
) -> None:
    await conn.execute(
        service_calls.insert().values(
            execution_id=execution_id,
            tenant_id=tenant_id,
            kind=kind,
            target=target,
            job_id=job_id,
            request_id=request_id,
            outcome=outcome,
            detail=detail,
            meta=meta,
            started_at=started_at if started_at is not None else time.time(),
            ended_at=ended_at,
        )
    )


async def by_request(conn: AsyncConnection, request_id: str) -> CallRow | None:
    row = (await conn.execute(select(service_calls).where(service_calls.c.request_id == request_id))).first()
    return _row(row) if row else None


async def of_job(conn: AsyncConnection, job_id: str) -> CallRow | None:
    query = select(service_calls).where(service_calls.c.job_id == job_id, service_calls.c.kind == "job")
    row = (await conn.execute(query)).first()
    return _row(row) if row else None


async def end(conn: AsyncConnection, *, execution_id: str, kind: str, outcome: str, detail: str | None, job_id: str | None = None) -> bool:
    """Record the end of an open call (``ended_at`` still unset): once."""
    where = [service_calls.c.execution_id == execution_id, service_calls.c.kind == kind, service_calls.c.ended_at.is_(None)]
    if job_id is not None:
        where.append(service_calls.c.job_id == job_id)
    result = await conn.execute(update(service_calls).where(*where).values(outcome=outcome, detail=detail, ended_at=time.time()))
    return bool(result.rowcount)


async def set_outcome(conn: AsyncConnection, job_id: str, outcome: str, detail: str | None = None) -> None:
    """An intermediate state of an open job call (accepted by the service: ``running``)."""
    where = (service_calls.c.job_id == job_id, service_calls.c.kind == "job", service_calls.c.ended_at.is_(None))
    await conn.execute(update(service_calls).where(*where).values(outcome=outcome, detail=detail))


async def of_execution(conn: AsyncConnection, execution_id: str, *, tenant_id: str) -> list[CallRow]:
    query = (
        select(service_calls)
        .where(service_calls.c.execution_id == execution_id, service_calls.c.tenant_id == tenant_id)
        .order_by(service_calls.c.started_at, service_calls.c.id)
    )
    return [_row(r) for r in await conn.execute(query)]
