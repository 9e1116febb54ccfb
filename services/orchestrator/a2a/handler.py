"""The A2A request handler (the SDK's ``RequestHandler`` interface) over executions and sessions.

The SDK's JSON-RPC dispatcher parses and answers the protocol; this class is where its methods meet
our state, with no task store of the SDK's: a task is an execution (``tasks`` row, status view,
its events from the bridge), a context a session. Messages go through ``sessions.send_message``
(admission, limits, usage, priority, ``traceparent``, like ``/v1/executions``), idempotent by
``messageId`` (per tenant). Nothing is written per event: streams are folds over the log.

Positions: every streamed event carries ``metadata["agentstream.cursor"]``; ``SubscribeToTask``
with the ``Last-Event-ID`` header (a service parameter of the SDK's client) set to one of them
sends the task as of that point, then exactly the events after it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any, get_args

import orjson
from a2a.server.context import ServerCallContext
from a2a.server.events import Event
from a2a.server.request_handlers.request_handler import RequestHandler
from a2a.server.routes.common import DefaultServerCallContextBuilder
from a2a.types import (
    AgentCard,
    CancelTaskRequest,
    DeleteTaskPushNotificationConfigRequest,
    GetExtendedAgentCardRequest,
    GetTaskPushNotificationConfigRequest,
    GetTaskRequest,
    ListTaskPushNotificationConfigsRequest,
    ListTaskPushNotificationConfigsResponse,
    ListTasksRequest,
    ListTasksResponse,
    Message,
    Part,
    Role,
    SendMessageRequest,
    SubscribeToTaskRequest,
    Task,
    TaskPushNotificationConfig,
)
from a2a.utils.errors import (
    A2AError,
    ContentTypeNotSupportedError,
    ExtendedAgentCardNotConfiguredError,
    InvalidParamsError,
    PushNotificationNotSupportedError,
    TaskNotCancelableError,
    TaskNotFoundError,
    UnsupportedOperationError,
)
from google.protobuf.json_format import MessageToDict
from starlette.exceptions import HTTPException
from starlette.requests import Request

from schemas.api import ChatRequest
from schemas.bounds import parse_cursor
from schemas.events import MAX_INPUT_CHARS
from schemas.topics import Priority
from services.orchestrator.a2a.mapping import TaskMapper
from services.orchestrator.auth import TenantContext
from services.orchestrator.http import HTTPError, state_of
from services.orchestrator.idempotency import with_key
from services.orchestrator.lifecycle import new_id
from services.orchestrator.openai import common
from services.orchestrator.openai.feed import Ended, Feed, Item, follow
from services.orchestrator.sessions import send_message
from services.orchestrator.store import sessions, tasks
from services.orchestrator.store.tasks import Task as StoredTask

CALL = "agentstream.a2a"  # the key of the call in the request's scope and the SDK's call context
TEXT_MODES = {"text/plain", "text", "application/json", "*/*"}
_ALL = 1 << 30
_START = (-1, _ALL)


@dataclass(frozen=True)
class Call:
    request: Request
    tenant: TenantContext
    agent: str


class ContextBuilder(DefaultServerCallContextBuilder):
    """The SDK's call context, with our call (authenticated request, tenant, agent) in its state."""

    def build(self, request: Request) -> ServerCallContext:
        context = super().build(request)
        context.state[CALL] = request.scope[CALL]
        return context


def _call(context: ServerCallContext, tenant: str = "") -> Call:
    call = context.state[CALL]
    assert isinstance(call, Call)
    if tenant and tenant != call.tenant.id:  # the tenant is the API key's, never the request's
        raise InvalidParamsError(f"tenant {tenant!r} is not the API key's: leave it empty")
    return call


def translated(exc: HTTPError) -> Exception:
    """Our HTTP errors as A2A errors; limits and outages stay HTTP statuses (429/503 + Retry-After)."""
    if exc.status in (413, 429, 503):
        return HTTPException(exc.status, exc.error, headers=exc.headers)
    if exc.status == 404:
        return TaskNotFoundError(exc.error)
    return InvalidParamsError(exc.error)


@contextlib.contextmanager
def a2a_errors() -> Iterator[None]:
    try:
        yield
    except HTTPError as exc:
        raise translated(exc) from None


def _after(request: Request) -> tuple[int, int]:
    raw = request.headers.get("last-event-id")
    if raw is None:
        return _START
    cursor, _, index = raw.strip().partition(":")
    try:
        if index and (not index.isdigit() or len(index) > 4):
            raise ValueError("the part after ':' is the index of an event within its group, 0-9999")
        return parse_cursor(cursor), int(index) if index else _ALL
    except ValueError as exc:
        raise InvalidParamsError(f"Last-Event-ID: {exc}") from None


# -- messages ---------------------------------------------------------------------------------
def _text(message: Message) -> str:
    if not 1 <= len(message.message_id) <= 200 or not message.message_id.isprintable():
        raise InvalidParamsError("message.messageId must be 1-200 printable characters")
    if message.role != Role.ROLE_USER:
        raise InvalidParamsError("message.role must be ROLE_USER: the message is the agent's input")
    kinds = {part.WhichOneof("content") for part in message.parts}
    if kinds - {"text"}:
        raise ContentTypeNotSupportedError(f"only text parts are supported, not {sorted(k or 'empty' for k in kinds - {'text'})}")
    text = "\n".join(part.text for part in message.parts)
    if not text or len(text) > MAX_INPUT_CHARS:
        raise InvalidParamsError(f"message text must be 1-{MAX_INPUT_CHARS} characters")
    return text


def _priority(call: Call, params: SendMessageRequest) -> Priority:
    metadata = MessageToDict(params.metadata) if params.HasField("metadata") else {}
    value = call.request.headers.get(common.PRIORITY_HEADER) or metadata.get("priority") or "standard"
    if value not in get_args(Priority):
        raise InvalidParamsError(f"priority must be one of {list(get_args(Priority))}, not {value!r}")
    return value  # type: ignore[return-value]  # checked against the Literal's values just above


async def _context(call: Call, context_id: str) -> tuple[str, bool]:
    """The session a message goes to: its ``contextId`` (this tenant's, this agent's), or a new one."""
    store = state_of(call.request).runtime.store
    if context_id:
        async with store.begin() as conn:
            session = await sessions.get(conn, context_id, tenant_id=call.tenant.id) if len(context_id) <= 128 else None
        if session is None:
            raise HTTPError(404, f"context {context_id!r} not found")
        if session.agent_id != call.agent:
            raise HTTPError(400, f"context {context_id!r} runs agent {session.agent_id!r}, not {call.agent!r}")
        return session.id, False
    async with store.begin() as conn:
        session = await sessions.create(
            conn, id="ses_" + new_id(), tenant_id=call.tenant.id, agent_id=call.agent, policy="reject", metadata={"created_by": "a2a"}
        )
    return session.id, True


async def _send(call: Call, params: SendMessageRequest) -> tuple[str, str, Message]:
    """Submit the message (idempotent by messageId): (task id, context id, the message as recorded)."""
    message = params.message
    text = _text(message)
    if message.task_id:
        await _own_task(call, message.task_id)  # another tenant's: not found
        raise UnsupportedOperationError(
            f"task {message.task_id!r} takes no more messages: send the next one with its contextId to continue the conversation"
        )
    config = params.configuration
    if config.HasField("task_push_notification_config"):
        raise PushNotificationNotSupportedError("push notifications are not supported: stream, or poll GetTask")
    if config.accepted_output_modes and not TEXT_MODES & set(config.accepted_output_modes):
        raise ContentTypeNotSupportedError(f"the agent answers text/plain or application/json, not {list(config.accepted_output_modes)}")
    priority = _priority(call, params)
    fingerprint = orjson.dumps({"agent": call.agent, "message": MessageToDict(message)}, option=orjson.OPT_SORT_KEYS)

    async def submit(request: Request, ctx: TenantContext, body: bytes) -> tuple[int, Any]:
        session_id, fresh = await _context(call, message.context_id)
        try:
            _, chat = await send_message(request, ctx, ChatRequest(content=text, priority=priority), session_id)
        except HTTPError:
            if fresh:  # refused (limits, Kafka): the context it was to start goes too
                async with state_of(request).runtime.store.begin() as conn:
                    await sessions.delete(conn, session_id)
            raise
        return 202, {"execution_id": chat["execution_id"], "context_id": session_id}

    try:
        with a2a_errors():
            _, accepted, _ = await with_key(call.request, call.tenant, fingerprint, f"a2a-message:{message.message_id}", submit)
    except InvalidParamsError as exc:
        if "different request" in exc.message:
            raise InvalidParamsError(f"messageId {message.message_id!r} was already sent with another message") from None
        raise
    recorded = Message()
    recorded.CopyFrom(message)
    recorded.task_id, recorded.context_id = accepted["execution_id"], accepted["context_id"]
    return accepted["execution_id"], accepted["context_id"], recorded


# -- tasks ------------------------------------------------------------------------------------
async def _own_task(call: Call, task_id: str) -> StoredTask:
    if not 1 <= len(task_id) <= 128:
        raise TaskNotFoundError(f"task {task_id[:128]!r} not found")
    async with state_of(call.request).runtime.store.begin() as conn:
        task = await tasks.get(conn, task_id, tenant_id=call.tenant.id)
    if task is None or task.kind != "execution" or task.session_id is None:
        raise TaskNotFoundError(f"task {task_id!r} not found")
    return task


async def _history(call: Call, task: StoredTask) -> list[Message]:
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


async def _feed(call: Call, task_id: str) -> Feed:
    with a2a_errors():
        return await follow(state_of(call.request).bridge, call.tenant.id, task_id, **common.stream_settings(call.request))


def _end(call: Call, mapper: TaskMapper, ended: Ended) -> list[Any]:
    status = state_of(call.request).status.get(mapper.task_id)
    state = ended.status or (status.state if status is not None else "failed")
    return mapper.end(state, ended.error or (status.error if status is not None else None))


_CAUGHT_UP = object()


async def _events(call: Call, feed: Feed, mapper: TaskMapper, after: tuple[int, int]) -> AsyncGenerator[Event]:
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
                    for event in _end(call, mapper, item):
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


async def _task_now(call: Call, task: StoredTask, history_length: int | None) -> Task:
    assert task.session_id is not None
    mapper = TaskMapper(task_id=task.id, context_id=task.session_id, history=await _history(call, task))
    status = state_of(call.request).status.get(task.id)
    if task.open or status is not None:
        try:
            feed = await _feed(call, task.id)
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


def _history_length(config_length: int, has: bool) -> int | None:
    if not has:
        return None
    if not 0 <= config_length <= 10_000:
        raise InvalidParamsError("historyLength must be 0-10000")
    return config_length


class AgentstreamHandler(RequestHandler):
    async def on_message_send(self, params: SendMessageRequest, context: ServerCallContext) -> Task | Message:
        call = _call(context, params.tenant)
        length = _history_length(params.configuration.history_length, params.configuration.HasField("history_length"))
        task_id, context_id, message = await _send(call, params)
        mapper = TaskMapper(task_id=task_id, context_id=context_id, history=[message])
        if params.configuration.return_immediately:
            return mapper.task(history_length=length)
        feed = await _feed(call, task_id)
        try:
            async with asyncio.timeout(state_of(call.request).settings.execution_timeout_s + 30):
                async for item in feed.items():
                    if isinstance(item, Item):
                        mapper.feed(item.cursor, item.event)
                    elif isinstance(item, Ended) and not mapper.finished:
                        _end(call, mapper, item)
        finally:
            feed.close()
        return mapper.task(history_length=length)

    async def on_message_send_stream(self, params: SendMessageRequest, context: ServerCallContext) -> AsyncGenerator[Event]:
        call = _call(context, params.tenant)
        task_id, context_id, message = await _send(call, params)
        mapper = TaskMapper(task_id=task_id, context_id=context_id, history=[message])
        async for event in _events(call, await _feed(call, task_id), mapper, _START):
            yield event

    async def on_subscribe_to_task(self, params: SubscribeToTaskRequest, context: ServerCallContext) -> AsyncGenerator[Event]:
        call = _call(context, params.tenant)
        after = _after(call.request)
        task = await _own_task(call, params.id)
        assert task.session_id is not None
        mapper = TaskMapper(task_id=task.id, context_id=task.session_id, history=await _history(call, task))
        async for event in _events(call, await _feed(call, task.id), mapper, after):
            yield event

    async def on_get_task(self, params: GetTaskRequest, context: ServerCallContext) -> Task | None:
        call = _call(context, params.tenant)
        length = _history_length(params.history_length, params.HasField("history_length"))
        return await _task_now(call, await _own_task(call, params.id), length)

    async def on_cancel_task(self, params: CancelTaskRequest, context: ServerCallContext) -> Task | None:
        call = _call(context, params.tenant)
        task = await _own_task(call, params.id)
        state = state_of(call.request)
        try:
            await state.runtime.lifecycle.cancel(task.id, call.tenant.id)
        except HTTPError as exc:
            if exc.status == 409:
                raise TaskNotCancelableError(f"task {task.id!r} cannot be cancelled: {exc.error}") from None
            raise translated(exc) from None
        await state.status.wait_until(task.id, lambda s: s.terminal, timeout=5.0)
        return await _task_now(call, await _own_task(call, task.id), None)

    async def on_list_tasks(self, params: ListTasksRequest, context: ServerCallContext) -> ListTasksResponse:
        raise UnsupportedOperationError("ListTasks is not supported: keep the task ids SendMessage returns")

    async def on_create_task_push_notification_config(
        self, params: TaskPushNotificationConfig, context: ServerCallContext
    ) -> TaskPushNotificationConfig:
        raise PushNotificationNotSupportedError("push notifications are not supported: stream, or poll GetTask")

    async def on_get_task_push_notification_config(
        self, params: GetTaskPushNotificationConfigRequest, context: ServerCallContext
    ) -> TaskPushNotificationConfig:
        raise PushNotificationNotSupportedError("push notifications are not supported")

    async def on_list_task_push_notification_configs(
        self, params: ListTaskPushNotificationConfigsRequest, context: ServerCallContext
    ) -> ListTaskPushNotificationConfigsResponse:
        raise PushNotificationNotSupportedError("push notifications are not supported")

    async def on_delete_task_push_notification_config(
        self, params: DeleteTaskPushNotificationConfigRequest, context: ServerCallContext
    ) -> None:
        raise PushNotificationNotSupportedError("push notifications are not supported")

    async def on_get_extended_agent_card(self, params: GetExtendedAgentCardRequest, context: ServerCallContext) -> AgentCard:
        raise ExtendedAgentCardNotConfiguredError("the agent card is the same for every caller")
