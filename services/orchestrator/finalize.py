"""The one place where an execution or a job ends, and every effect of its end: usage, the session's
history and its next enqueued message, batch progress, callbacks, the concurrency slot, the tokens
counted, the task feed, the coordinator's end hooks.

Every end (a terminal event from the executor, a cancel before start, a timeout, a job result) goes
through ``finalize``, whose conditional update lets exactly one of racing callers apply the effects.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy.ext.asyncio import AsyncConnection

from schemas.events import Message
from services.common.observability import metrics
from services.orchestrator.ids import new_id
from services.orchestrator.projection import ensure_row_from_view
from services.orchestrator.store import records, sessions, tasks
from services.orchestrator.store.tasks import Task
from services.orchestrator.submission import Submission

if TYPE_CHECKING:
    from services.orchestrator.lifecycle import Lifecycle

log = logging.getLogger(__name__)


async def finalize(
    lc: Lifecycle,
    task_id: str,
    state: str,
    *,
    output: str | None = None,
    error: str | None = None,
    result: Any = None,
    usage: dict[str, int] | None = None,
    attempt: int | None = None,
    handed_off_to: str | None = None,
) -> Task | None:
    """End an open task once; apply every effect of its end. None if it had already ended, or if
    ``attempt`` (the executor attempt that reported this end) is older than the newest attempt
    started: a paused executor's late end is not projected (no history, usage, callback).
    ``handed_off_to``: the agent that answered after a handoff (issue 20); a session's next message runs it."""
    follow_up: list[Submission] = []
    async with lc.store.begin() as conn:
        task = await tasks.finish(conn, task_id, state, output=output, result=result, error=error, usage=usage, attempt=attempt)
        if task is None and await tasks.get(conn, task_id) is None:
            # The end came before the projection wrote the row: write it now, in this transaction
            # (from the status view's intake; an id it has no intake for is not ours: ignored).
            if await ensure_row_from_view(conn, lc.status, task_id):
                task = await tasks.finish(conn, task_id, state, output=output, result=result, error=error, usage=usage, attempt=attempt)
        if task is None:
            if attempt is not None:
                log.info("end of %s by attempt %s not applied: already ended, or a newer attempt started", task_id, attempt)
            return None
        if usage and not usage.get("cached"):  # executions and delegated jobs alike; a cache hit cost nothing
            await records.record_usage(
                conn, execution_id=task.id, tenant_id=task.tenant_id, agent_id=task.agent_id, session_id=task.session_id, tokens=usage
            )
        if task.session_id is not None and task.origin in ("chat", "job"):
            handoff = _handoff_target(lc, task, handed_off_to)
            follow_up = await _session_effects(conn, task, attempt if attempt is not None else max(task.attempt, 1), handoff)
        if task.batch_id is not None:
            await _batch_effects(conn, task.batch_id, task.tenant_id)
        if task.callback_url:
            await records.enqueue_delivery(
                conn,
                id="msg_" + new_id(),
                tenant_id=task.tenant_id,
                target_kind="execution" if task.kind == "execution" else "job",
                target_id=task.id,
                url=task.callback_url,
                payload=_callback_payload(task),
            )
    if task.kind == "execution":
        metrics.EXECUTIONS.labels(state=task.state, lane=task.priority or "").inc()
        await lc.release_slots(task.tenant_id, [task.id])
    if usage and usage.get("total_tokens"):
        try:
            await lc.limiter.add_tokens(task.tenant_id, task.id, int(usage["total_tokens"]))
        except Exception:
            log.warning("could not count the tokens of %s", task.id, exc_info=True)
    lc.hub.publish(task.tenant_id, task_update(task))
    for hook in lc.end_hooks:
        try:
            await hook(task)
        except Exception:
            log.exception("end hook failed for %s %s", task.kind, task.id)
    lc.dispatcher.wake()
    for sub in follow_up:
        lc.background.spawn(_start_enqueued(lc, sub), name=f"enqueued-{sub.execution_id}")
    return task


def _handoff_target(lc: Lifecycle, task: Task, agent: str | None) -> str | None:
    """The agent a completed chat handed the session to, if this orchestrator can run it (a session
    whose agent it does not know could take no message); else the session keeps its agent."""
    if agent is None or task.state != "completed" or agent == task.agent_id:
        return None
    if agent not in lc.agents:
        log.warning("execution %s handed off to unknown agent %r: the session keeps its agent", task.id, agent)
        return None
    return agent


async def _session_effects(conn: AsyncConnection, task: Task, attempt: int, handoff: str | None = None) -> list[Submission]:
    assert task.session_id is not None
    if task.kind == "job":
        content = _json_text(task.result)
        await sessions.append(conn, task.session_id, role="tool", content=content, name=task.service, execution_id=task.id)
        return []
    if task.state == "completed":
        calls = await tasks.tool_calls_of(conn, task.id, attempt)
        # After a handoff the answer is the target's: the message names it, and the session continues with it.
        await sessions.append(
            conn, task.session_id, role="assistant", content=task.output or "", execution_id=task.id, tool_calls=calls or None, name=handoff
        )
        if handoff is not None:
            await sessions.set_agent(conn, task.session_id, handoff)
    if not await sessions.release(conn, task.session_id, task.id):
        return []
    pending = await sessions.next_pending(conn, task.session_id)
    if pending is None:
        return []
    session = await sessions.get(conn, task.session_id, tenant_id=task.tenant_id)
    assert session is not None
    sub = Submission(tenant_id=task.tenant_id, agent_id=session.agent_id, input=pending.content, session_id=session.id, origin="chat")
    # Claim now, in this transaction, so a chat arriving meanwhile sees the session busy.
    await sessions.claim(conn, session.id, sub.execution_id, expect_active=None)
    await sessions.promote(conn, pending, sub.execution_id)
    sub.history = await history_messages(conn, session.id, before_seq=None, exclude_execution=sub.execution_id)
    return [sub]


async def _start_enqueued(lc: Lifecycle, sub: Submission) -> None:
    try:
        await lc.limiter.acquire_slot(sub.tenant_id, sub.execution_id, 0, lc.settings.execution_timeout_s)
        await lc.submit([sub])
    except Exception:
        log.exception("could not start the enqueued message of session %s", sub.session_id)
        async with lc.store.begin() as conn:
            assert sub.session_id is not None
            await sessions.release(conn, sub.session_id, sub.execution_id)


async def _batch_effects(conn: AsyncConnection, batch_id: str, tenant_id: str) -> None:
    members = await tasks.of_batch(conn, batch_id)
    if any(t.open for t in members):
        return
    batch = await records.get_batch(conn, batch_id, tenant_id=tenant_id)
    if batch is not None and len(members) < batch.total:
        return  # members not projected yet are open: each one's end (which writes its row) checks again
    if not await records.complete_batch(conn, batch_id):
        return
    if batch is not None and batch.callback_url:
        counts: dict[str, int] = {}
        for t in members:
            counts[t.state] = counts.get(t.state, 0) + 1
        await records.enqueue_delivery(
            conn,
            id="msg_" + new_id(),
            tenant_id=tenant_id,
            target_kind="batch",
            target_id=batch_id,
            url=batch.callback_url,
            payload={"type": "batch.completed", "batch_id": batch_id, "total": batch.total, "counts": counts},
        )


async def history_messages(
    conn: AsyncConnection, session_id: str, *, before_seq: int | None, exclude_execution: str | None
) -> tuple[Message, ...]:
    """The session's finished conversation as the model sees it (user and assistant turns)."""
    out = []
    for m in await sessions.history(conn, session_id, done_only=True, limit=10_000):
        if before_seq is not None and m.seq >= before_seq:
            break
        if exclude_execution is not None and m.execution_id == exclude_execution and m.role == "user":
            continue
        if m.role in ("user", "assistant", "system"):
            out.append(Message(role=m.role, content=m.content))
        elif m.role == "tool":
            out.append(Message(role="user", content=f"[{m.name or 'tool'} result] {m.content}"))
    return tuple(out)


def task_update(task: Task) -> dict[str, Any]:
    return {
        "type": "task.updated",
        "task_id": task.id,
        "kind": task.kind,
        "status": task.state,
        "service": task.service,
        "agent_id": task.agent_id,
        "session_id": task.session_id,
        "batch_id": task.batch_id,
        "result": task.result,
        "output": task.output,
        "error": task.error,
    }


def _callback_payload(task: Task) -> dict[str, Any]:
    kind = "execution" if task.kind == "execution" else "job"
    return {
        "type": f"{kind}.{task.state}",
        f"{kind}_id": task.id,
        "status": task.state,
        "agent_id": task.agent_id,
        "session_id": task.session_id,
        "batch_id": task.batch_id,
        "output": task.output,
        "result": task.result,
        "error": task.error,
        "usage": task.usage,
    }


def _json_text(value: Any) -> str:
    return value if isinstance(value, str) else orjson.dumps(value).decode()
