"""Tasks as executions: this tenant's task, its user messages, and the folds of its events (a
stream from a position, or the task as it is now)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from a2a.server.events import Event
from a2a.types import Message, Part, Role, Task
from a2a.utils.errors import A2AError, InvalidParamsError, TaskNotFoundError

from services.orchestrator.a2a.calls import Call, a2a_errors
from services.orchestrator.a2a.mapping import TaskMapper
from services.orchestrator.http import state_of
from services.orchestrator.openai import common
from services.orchestrator.openai.feed import Ended, Feed, Item, follow
from services.orchestrator.projection import row_of
from services.orchestrator.store import sessions
from services.orchestrator.store.tasks import Task as StoredTask


async def own_task(call: Call, task_id: str) -> StoredTask:
    if not 1 <= len(task_id) <= 128:
        raise TaskNotFoundError(f"task {task_id[:128]!r} not found")
    state = state_of(call.request)
    async with state.runtime.store.begin() as conn:
        task = await row_of(conn, state.status, task_id, tenant_id=call.tenant.id)
    if task is None or task.kind != "execution" or task.session_id is None:
        raise TaskNotFoundError(f"task {task_id!r} not found")
    return task


async def history_of(call: Call, task: StoredTask) -> list[Message]:
    assert task.session_id is not None
    async with state_of(call.request).runtime.store.begin() as conn:
        stored = await sessions.history(conn, task.session_id, limit=10_000)
    return [
        Message(
            message_id=f"{task.id}.{m.seq}",
            context_id=task.session_id,
            task_id=task.id,
            role=Role.ROLE_USER,
            parts=[Part(text=m.content)],
        )
        for m in stored
        if m.execution_id == task.id and m.role == "user"
    ]


async def feed_of(call: Call, task_id: str) -> Feed:
    with a2a_errors():
        return await follow(state_of(call.request).bridge, call.tenant.id, task_id, **common.stream_settings(call.request))


def ended(call: Call, mapper: TaskMapper, end: Ended) -> list[Any]:
    """The task's last events when its stream ended without a terminal event (from the status view)."""
    status = state_of(call.request).status.get(mapper.task_id)
    state = end.status or (status.state if status is not None else "failed")
    return mapper.end(state, end.error or (status.error if status is not None else None))


_CAUGHT_UP = object()


async def events(call: Call, feed: Feed, mapper: TaskMapper, after: tuple[int, int]) -> AsyncGenerator[Event]:
    """The task as of ``after``, then every event after it, until the task ends.

    The task goes first, before the first event after ``after`` or once the catch-up has been read,
    so a client that resumes a quiet task gets an answer at once."""

    async def items() -> AsyncIterator[object]:
        for item in await feed.so_far(mapper.task_id, timeout=5.0):
            yield item
        yield _CAUGHT_UP
        async for live in feed.items():
            yield live

    try:
        sent = False
        async for item in items():
            if item is _CAUGHT_UP or isinstance(item, Ended):
                if not sent:
                    yield mapper.task()
                    sent = True
                if isinstance(item, Ended):
                    for event in ended(call, mapper, item):
                        yield event
                    return
            elif isinstance(item, Item):
                snapshot = None if sent or item.cursor < after[0] else mapper.task()  # before this event is folded
                fresh = [e for k, e in enumerate(mapper.feed(item.cursor, item.event)) if (item.cursor, k) > after]
                if fresh and snapshot is not None:
                    yield snapshot
                    sent = True
                for event in fresh:
                    yield event
            if mapper.finished and sent:
                return
    finally:
        feed.close()


async def task_now(call: Call, task: StoredTask, history_length: int | None) -> Task:
    assert task.session_id is not None
    mapper = TaskMapper(task_id=task.id, context_id=task.session_id, history=await history_of(call, task))
    status = state_of(call.request).status.get(task.id)
    if task.open or status is not None:
        try:
            feed = await feed_of(call, task.id)
        except A2AError:
            feed = None  # gone from the log's retention: the store's record of its end
        if feed is not None:
            try:
                for item in await feed.so_far(task.id, timeout=5.0):
                    if isinstance(item, Item):
                        mapper.feed(item.cursor, item.event)
            finally:
                feed.close()
            if not mapper.finished and status is not None and status.terminal:
                mapper.end(status.state, status.error)
            return mapper.task(history_length=history_length)
    mapper.settled(task.state, task.output, task.error)
    return mapper.task(history_length=history_length)


def history_length_of(config_length: int, has: bool) -> int | None:
    if not has:
        return None
    if not 0 <= config_length <= 10_000:
        raise InvalidParamsError("historyLength must be 0-10000")
    return config_length
