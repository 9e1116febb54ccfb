"""The task registry: every execution and external job with its tenant, session and deadline."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from schemas.api import TaskKind
from schemas.status import State
from schemas.topics import Priority
from services.orchestrator.store.tables import tasks, tool_calls

OPEN_STATES = ("queued", "running")
FINAL_STATES = ("completed", "failed", "cancelled", "timed_out")
INPUT_PREVIEW_CHARS = 200


@dataclass(frozen=True)
class Task:
    id: str
    kind: TaskKind
    origin: str
    tenant_id: str
    session_id: str | None
    agent_id: str
    service: str | None
    batch_id: str | None
    custom_id: str | None
    priority: Priority
    state: State
    deadline: float
    callback_url: str | None
    output: str | None
    result: Any
    error: str | None
    usage: dict[str, int] | None
    created_at: float
    updated_at: float
    attempt: int = 0
    input_preview: str | None = None

    @property
    def open(self) -> bool:
        return self.state in OPEN_STATES


def _task(row: Any) -> Task:
    return Task(**{c.name: getattr(row, c.name) for c in tasks.columns})


async def create(
    conn: AsyncConnection,
    *,
    id: str,
    kind: str,
    tenant_id: str,
    agent_id: str,
    deadline: float,
    session_id: str | None = None,
    service: str | None = None,
    batch_id: str | None = None,
    custom_id: str | None = None,
    priority: str = "standard",
    callback_url: str | None = None,
    origin: str = "api",
    input: str | None = None,
) -> None:
    now = time.time()
    await conn.execute(
        tasks.insert().values(
            id=id,
            kind=kind,
            origin=origin,
            tenant_id=tenant_id,
            session_id=session_id,
            agent_id=agent_id,
            service=service,
            batch_id=batch_id,
            custom_id=custom_id,
            priority=priority,
            state="queued",
            deadline=deadline,
            callback_url=callback_url,
            created_at=now,
            updated_at=now,
            input_preview=None if input is None else input[:INPUT_PREVIEW_CHARS],
        )
    )


async def get(conn: AsyncConnection, task_id: str, *, tenant_id: str | None = None) -> Task | None:
    query = select(tasks).where(tasks.c.id == task_id)
    if tenant_id is not None:
        query = query.where(tasks.c.tenant_id == tenant_id)
    row = (await conn.execute(query)).first()
    return _task(row) if row else None


@dataclass(frozen=True)
class TaskFilter:
    """What ``GET /v1/executions`` narrows a tenant's executions to; None: any."""

    states: tuple[str, ...] = ()
    agent_id: str | None = None
    session_id: str | None = None
    batch_id: str | None = None
    since: float | None = None  # created at or after
    until: float | None = None  # created before


async def page(
    conn: AsyncConnection, tenant_id: str, where: TaskFilter, *, limit: int, after: tuple[float, str] | None = None
) -> list[Task]:
    """A tenant's executions, newest first (``created_at``, then ``id``, descending), after the key ``after``."""
    query = select(tasks).where(tasks.c.tenant_id == tenant_id, tasks.c.kind == "execution")
    if where.states:
        query = query.where(tasks.c.state.in_(where.states))
    for column, value in ((tasks.c.agent_id, where.agent_id), (tasks.c.session_id, where.session_id), (tasks.c.batch_id, where.batch_id)):
        if value is not None:
            query = query.where(column == value)
    if where.since is not None:
        query = query.where(tasks.c.created_at >= where.since)
    if where.until is not None:
        query = query.where(tasks.c.created_at < where.until)
    if after is not None:
        query = query.where(or_(tasks.c.created_at < after[0], and_(tasks.c.created_at == after[0], tasks.c.id < after[1])))
    query = query.order_by(tasks.c.created_at.desc(), tasks.c.id.desc()).limit(limit)
    return [_task(r) for r in await conn.execute(query)]


async def delete(conn: AsyncConnection, task_ids: list[str]) -> None:
    await conn.execute(tasks.delete().where(tasks.c.id.in_(task_ids)))


async def mark_running(conn: AsyncConnection, task_id: str, *, attempt: int = 0) -> bool:
    """An attempt started: a queued task is running; the newest attempt is remembered (never lowered)."""
    result = await conn.execute(
        update(tasks).where(tasks.c.id == task_id, tasks.c.state == "queued").values(state="running", updated_at=time.time())
    )
    if attempt:
        await conn.execute(
            update(tasks).where(tasks.c.id == task_id, tasks.c.state.in_(OPEN_STATES), tasks.c.attempt < attempt).values(attempt=attempt)
        )
    return bool(result.rowcount)


async def finish(
    conn: AsyncConnection,
    task_id: str,
    state: str,
    *,
    output: str | None = None,
    result: Any = None,
    error: str | None = None,
    usage: dict[str, int] | None = None,
    attempt: int | None = None,
) -> Task | None:
    """Move an open task to a final state, once: the caller that wins gets the task, others get None.

    Completions arrive at least once (redelivery, two replicas, the sweeper racing a late result);
    this conditional update is what makes their effects (usage, history, callbacks) happen once.
    With ``attempt`` (an executor's end), an attempt older than the newest one started is refused:
    the end a paused executor writes after a newer attempt started is not the task's end. Without
    it (a timeout, a cancel before start) the end is the orchestrator's, for whichever attempt runs.
    """
    assert state in FINAL_STATES
    where = [tasks.c.id == task_id, tasks.c.state.in_(OPEN_STATES)]
    if attempt is not None:
        where.append(tasks.c.attempt <= attempt)
    changed = await conn.execute(
        update(tasks).where(*where).values(state=state, output=output, result=result, error=error, usage=usage, updated_at=time.time())
    )
    if not changed.rowcount:
        return None
    return await get(conn, task_id)


async def extend_deadline(conn: AsyncConnection, task_id: str, deadline: float) -> None:
    """An open task's deadline, never earlier than it was (a run waiting for approval, issue 16)."""
    await conn.execute(
        update(tasks).where(tasks.c.id == task_id, tasks.c.state.in_(OPEN_STATES), tasks.c.deadline < deadline).values(deadline=deadline)
    )


async def expired(conn: AsyncConnection, *, now: float, limit: int = 100) -> list[Task]:
    query = select(tasks).where(tasks.c.state.in_(OPEN_STATES), tasks.c.deadline < now).order_by(tasks.c.deadline).limit(limit)
    return [_task(r) for r in await conn.execute(query)]


async def next_deadline(conn: AsyncConnection) -> float | None:
    """The earliest deadline of open work; None if there is none."""
    query = select(func.min(tasks.c.deadline)).where(tasks.c.state.in_(OPEN_STATES))
    return cast("float | None", (await conn.execute(query)).scalar())


async def of_batch(conn: AsyncConnection, batch_id: str) -> list[Task]:
    query = select(tasks).where(tasks.c.batch_id == batch_id).order_by(tasks.c.created_at, tasks.c.id)
    return [_task(r) for r in await conn.execute(query)]


async def open_count(conn: AsyncConnection, tenant_id: str) -> int:
    rows = await conn.execute(select(tasks.c.id).where(tasks.c.tenant_id == tenant_id, tasks.c.state.in_(OPEN_STATES)))
    return len(rows.all())


async def record_tool_call(conn: AsyncConnection, execution_id: str, attempt: int, call: dict[str, Any]) -> None:
    from services.orchestrator.store import insert_ignore

    values = {
        "execution_id": execution_id,
        "attempt": attempt,
        "call_id": call["call_id"],
        "tool": call["tool"],
        "arguments": call.get("arguments"),
        "result": call.get("result"),
        "error": call.get("error"),
        "seq": call.get("seq", 0),
    }
    if await insert_ignore(conn, tool_calls, values, ["execution_id", "attempt", "call_id"]):
        return
    # tool.call.started wrote the row with the arguments; tool.call.completed adds the outcome.
    outcome = {k: values[k] for k in ("result", "error") if values[k] is not None}
    if outcome:
        where = (tool_calls.c.execution_id == execution_id, tool_calls.c.attempt == attempt, tool_calls.c.call_id == call["call_id"])
        await conn.execute(update(tool_calls).where(*where).values(**outcome))


async def tool_calls_of(conn: AsyncConnection, execution_id: str, attempt: int) -> list[dict[str, Any]]:
    query = (
        select(tool_calls)
        .where(tool_calls.c.execution_id == execution_id, tool_calls.c.attempt == attempt)
        .order_by(tool_calls.c.seq, tool_calls.c.call_id)
    )
    return [
        {"call_id": r.call_id, "tool": r.tool, "arguments": r.arguments, "result": r.result, "error": r.error}
        for r in await conn.execute(query)
    ]
