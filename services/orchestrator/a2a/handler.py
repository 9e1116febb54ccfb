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
from collections.abc import AsyncGenerator

from a2a.server.context import ServerCallContext
from a2a.server.events import Event
from a2a.server.request_handlers.request_handler import RequestHandler
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
    SendMessageRequest,
    SubscribeToTaskRequest,
    Task,
    TaskPushNotificationConfig,
)
from a2a.utils.errors import (
    ExtendedAgentCardNotConfiguredError,
    PushNotificationNotSupportedError,
    TaskNotCancelableError,
    UnsupportedOperationError,
)

from services.common.errors import Conflict, DomainError
from services.orchestrator.a2a.calls import call_of, position, translated
from services.orchestrator.a2a.mapping import TaskMapper
from services.orchestrator.a2a.send import send
from services.orchestrator.a2a.tasks import ended, events, feed_of, history_length_of, history_of, own_task, task_now
from services.orchestrator.http import state_of
from services.orchestrator.openai.feed import Ended, Item
from services.orchestrator.positions import START


class AgentstreamHandler(RequestHandler):
    async def on_message_send(self, params: SendMessageRequest, context: ServerCallContext) -> Task | Message:
        call = call_of(context, params.tenant)
        length = history_length_of(params.configuration.history_length, params.configuration.HasField("history_length"))
        task_id, context_id, message = await send(call, params)
        mapper = TaskMapper(task_id=task_id, context_id=context_id, history=[message])
        if params.configuration.return_immediately:
            return mapper.task(history_length=length)
        feed = await feed_of(call, task_id)
        try:
            # Past the execution's own timeout the task is answered as it is (the client may poll it).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(state_of(call.request).settings.execution_timeout_s + 30):
                    async for item in feed.items():
                        if isinstance(item, Item):
                            mapper.feed(item.cursor, item.event)
                        elif isinstance(item, Ended) and not mapper.finished:
                            ended(call, mapper, item)
        finally:
            feed.close()
        return mapper.task(history_length=length)

    async def on_message_send_stream(self, params: SendMessageRequest, context: ServerCallContext) -> AsyncGenerator[Event]:
        call = call_of(context, params.tenant)
        task_id, context_id, message = await send(call, params)
        mapper = TaskMapper(task_id=task_id, context_id=context_id, history=[message])
        async for event in events(call, await feed_of(call, task_id), mapper, START):
            yield event

    async def on_subscribe_to_task(self, params: SubscribeToTaskRequest, context: ServerCallContext) -> AsyncGenerator[Event]:
        call = call_of(context, params.tenant)
        after = position(call.request)
        task = await own_task(call, params.id)
        assert task.session_id is not None
        mapper = TaskMapper(task_id=task.id, context_id=task.session_id, history=await history_of(call, task))
        async for event in events(call, await feed_of(call, task.id), mapper, after):
            yield event

    async def on_get_task(self, params: GetTaskRequest, context: ServerCallContext) -> Task | None:
        call = call_of(context, params.tenant)
        length = history_length_of(params.history_length, params.HasField("history_length"))
        return await task_now(call, await own_task(call, params.id), length)

    async def on_cancel_task(self, params: CancelTaskRequest, context: ServerCallContext) -> Task | None:
        call = call_of(context, params.tenant)
        task = await own_task(call, params.id)
        state = state_of(call.request)
        try:
            await state.runtime.lifecycle.cancel(task.id, call.tenant.id)
        except DomainError as exc:
            if isinstance(exc, Conflict):
                raise TaskNotCancelableError(f"task {task.id!r} cannot be cancelled: {exc.error}") from None
            raise translated(exc) from None
        await state.status.wait_until(task.id, lambda s: s.terminal, timeout=5.0)
        return await task_now(call, await own_task(call, task.id), None)

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
