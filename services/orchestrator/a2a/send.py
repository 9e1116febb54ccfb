"""``SendMessage``'s submission: checks of the message, its context (a session), and the idempotent
submission by ``messageId`` through ``sessions.send_message`` (admission, limits, usage, priority)."""

from __future__ import annotations

from typing import Any, get_args

import orjson
from a2a.types import Message, Role, SendMessageRequest
from a2a.utils.errors import (
    ContentTypeNotSupportedError,
    InvalidParamsError,
    PushNotificationNotSupportedError,
    UnsupportedOperationError,
)
from google.protobuf.json_format import MessageToDict
from starlette.requests import Request

from schemas.api import ChatRequest
from schemas.events import MAX_INPUT_CHARS
from schemas.topics import Priority
from services.common.errors import DomainError
from services.orchestrator.a2a.calls import Call, a2a_errors
from services.orchestrator.a2a.tasks import own_task
from services.orchestrator.auth import TenantContext
from services.orchestrator.handoffs import addressable
from services.orchestrator.http import HTTPError, state_of
from services.orchestrator.idempotency import with_key
from services.orchestrator.ids import new_id
from services.orchestrator.openai import common
from services.orchestrator.sessions import send_message
from services.orchestrator.store import sessions

TEXT_MODES = {"text/plain", "text", "application/json", "*/*"}


def message_text(message: Message) -> str:
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


def priority_of(call: Call, params: SendMessageRequest) -> Priority:
    metadata = MessageToDict(params.metadata) if params.HasField("metadata") else {}
    value = call.request.headers.get(common.PRIORITY_HEADER) or metadata.get("priority") or "standard"
    if value not in get_args(Priority):
        raise InvalidParamsError(f"priority must be one of {list(get_args(Priority))}, not {value!r}")
    return value  # type: ignore[return-value]  # checked against the Literal's values just above


async def context_of(call: Call, context_id: str) -> tuple[str, bool]:
    """The session a message goes to: its ``contextId`` (this tenant's, this agent's), or a new one."""
    store = state_of(call.request).runtime.store
    if context_id:
        async with store.begin() as conn:
            session = await sessions.get(conn, context_id, tenant_id=call.tenant.id) if len(context_id) <= 128 else None
        if session is None:
            raise HTTPError(404, f"context {context_id!r} not found")
        if not addressable(state_of(call.request).agents, call.agent, session.agent_id):  # after a handoff: its target goes on
            raise HTTPError(400, f"context {context_id!r} runs agent {session.agent_id!r}, not {call.agent!r}")
        return session.id, False
    async with store.begin() as conn:
        session = await sessions.create(
            conn, id="ses_" + new_id(), tenant_id=call.tenant.id, agent_id=call.agent, policy="reject", metadata={"created_by": "a2a"}
        )
    return session.id, True


async def send(call: Call, params: SendMessageRequest) -> tuple[str, str, Message]:
    """Submit the message (idempotent by messageId): (task id, context id, the message as recorded)."""
    message = params.message
    text = message_text(message)
    if message.task_id:
        await own_task(call, message.task_id)  # another tenant's: not found
        raise UnsupportedOperationError(
            f"task {message.task_id!r} takes no more messages: send the next one with its contextId to continue the conversation"
        )
    config = params.configuration
    if config.HasField("task_push_notification_config"):
        raise PushNotificationNotSupportedError("push notifications are not supported: stream, or poll GetTask")
    if config.accepted_output_modes and not TEXT_MODES & set(config.accepted_output_modes):
        raise ContentTypeNotSupportedError(f"the agent answers text/plain or application/json, not {list(config.accepted_output_modes)}")
    priority = priority_of(call, params)
    fingerprint = orjson.dumps({"agent": call.agent, "message": MessageToDict(message)}, option=orjson.OPT_SORT_KEYS)

    async def submit(request: Request, ctx: TenantContext, body: bytes) -> tuple[int, Any]:
        session_id, fresh = await context_of(call, message.context_id)
        try:
            _, chat = await send_message(request, ctx, ChatRequest(content=text, priority=priority), session_id)
        except DomainError:
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
