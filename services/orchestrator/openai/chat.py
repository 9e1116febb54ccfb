"""``POST /v1/chat/completions``: an agent behind the Chat Completions API, streamed or not.

``model`` names the agent; ``messages`` are the history and the last (user) message the input; the
agent's tools run server-side. ``tool_choice: "none"`` is the completion mode (``schemas/completions.py``):
one model turn over the caller's own messages, without the agent's prompt and tools. The request is
an ``execution.requested`` submitted like ``/v1/executions`` (admission, limits, ``Idempotency-Key``,
usage, priority, ``traceparent``); the answer is read from the bridge like any stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from schemas.events import Message, Role
from schemas.openai_door import ChatCompletionRequest
from services.common.errors import Conflict
from services.orchestrator.auth import TenantContext
from services.orchestrator.http import HTTPError, require_tenant, state_of
from services.orchestrator.idempotency import run_idempotently
from services.orchestrator.openai import common
from services.orchestrator.openai.errors import error_body, invalid, openai_errors
from services.orchestrator.openai.feed import Ended, Feed, Item, follow
from services.orchestrator.openai.mapping import ChatMapper
from services.orchestrator.openai.models import resolve

PARAMS = ("temperature", "top_p", "max_tokens", "max_completion_tokens", "stop", "seed", "presence_penalty", "frequency_penalty")
ACCEPTED = tuple(ChatCompletionRequest.model_fields)
REFUSED = {
    "tools": "the agent's own tools run server-side; client-side tools are not supported",
    "functions": "the agent's own tools run server-side; client-side tools are not supported",
    "function_call": "the agent's own tools run server-side",
    "parallel_tool_calls": "the agent's own tools run server-side",
    "logprobs": "log probabilities are not streamed through Kafka",
    "top_logprobs": "log probabilities are not streamed through Kafka",
    "audio": "only text is supported",
    "modalities": "only text is supported",
}
_ROLES: dict[str, Role] = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


def _messages(raw: Any) -> tuple[tuple[Message, ...], str]:
    if not isinstance(raw, list) or not raw:
        raise invalid("messages must be a non-empty array", param="messages")
    if len(raw) > 1000:
        raise invalid("at most 1000 messages", param="messages")
    out = []
    for i, m in enumerate(raw):
        role = m.get("role") if isinstance(m, dict) else None
        if role not in _ROLES:
            raise invalid(
                f"role {role!r} is not supported: use system, developer, user or assistant (tools run server-side)",
                param=f"messages[{i}].role",
            )
        if m.get("tool_calls"):
            raise invalid("assistant tool_calls are not supported: the agent's tools run server-side", param=f"messages[{i}].tool_calls")
        out.append(Message(role=_ROLES[role], content=common.text_of(m.get("content") or "", f"messages[{i}].content")))
    if out[-1].role != "user" or not out[-1].content:
        raise invalid("the last message must be a non-empty user message: it is the agent's input", param=f"messages[{len(out) - 1}]")
    return tuple(out[:-1]), out[-1].content


async def _submit(request: Request, ctx: TenantContext, body: bytes) -> tuple[int, Any]:
    raw = common.parse_body(body)
    common.refuse_unknown(raw, ACCEPTED, REFUSED)
    common.validated(ChatCompletionRequest, raw)
    target = resolve(state_of(request).agents, raw.get("model"))
    history, text = _messages(raw.get("messages"))
    if raw.get("n") not in (None, 1):
        raise invalid("only n=1 is supported", param="n")
    tool_choice = raw.get("tool_choice")
    if tool_choice not in (None, "auto", "none"):
        raise invalid("tool_choice may be auto (the agent's tools) or none (one model turn, no tools)", param="tool_choice")
    schema, model_format = common.schema_format(raw.get("response_format"), "response_format")
    params = {k: raw[k] for k in PARAMS if raw.get(k) is not None}
    if model_format is not None:
        params["response_format"] = model_format
    metadata = common.metadata_of(raw.get("metadata"))
    sub = common.new_submission(
        request,
        ctx,
        agent_id=target.agent,
        input=text,
        history=history,
        priority=common.priority_of(request, metadata),
        mode="completion" if tool_choice == "none" else "agent",
        params=params,
        model=target.model,
        output_schema=schema,
    )
    await common.submit(request, ctx, sub)
    options = raw.get("stream_options") or {}
    return 202, {
        "execution_id": sub.execution_id,
        "model": str(raw["model"]),
        "stream": bool(raw.get("stream")),
        "include_usage": bool(isinstance(options, dict) and options.get("include_usage")),
        "structured": schema is not None,
    }


@openai_errors
async def chat_completions(request: Request) -> Response:
    """Chat Completions (OpenAI-compatible): run an agent over messages; stream chunks with `stream: true`."""
    _, accepted, _ = await run_idempotently(request, _submit)
    ctx = await require_tenant(request)
    state = state_of(request)
    mapper = ChatMapper(
        execution_id=accepted["execution_id"],
        model=accepted["model"],
        structured=accepted["structured"],
        include_usage=accepted["include_usage"],
    )
    feed = await follow(state.bridge, ctx.id, accepted["execution_id"], **common.stream_settings(request))
    if accepted["stream"]:
        return StreamingResponse(_stream(feed, mapper), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    ended: Ended | None = None
    try:
        async with asyncio.timeout(state.settings.execution_timeout_s + 30):
            async for item in feed.items():
                if isinstance(item, Item):
                    mapper.feed(item.event)
                elif isinstance(item, Ended):
                    ended = item
    finally:
        feed.close()
    if mapper.state == "completed":
        return JSONResponse(mapper.completion())
    if mapper.state == "cancelled":
        raise Conflict(f"the execution was cancelled: {mapper.error}", detail={"code": "cancelled"})
    reason = mapper.error or (ended.error if ended else None) or f"the execution ended {ended.status if ended else 'without an answer'}"
    raise HTTPError(502, f"the agent failed: {reason}", detail={"code": "execution_failed"})


async def _stream(feed: Feed, mapper: ChatMapper) -> AsyncIterator[bytes]:
    try:
        async for item in feed.items():
            if item is None:
                yield b": keep-alive\n\n"
            elif isinstance(item, Item):
                chunks = mapper.feed(item.event)
                if chunks:
                    yield b"".join(common.sse(c) for c in chunks)
                if mapper.state in ("failed", "cancelled"):
                    yield common.sse(error_body(502, f"the execution {mapper.state}: {mapper.error}", code="execution_failed"))
            elif item.error or mapper.state is None:
                yield common.sse(
                    error_body(502, item.error or f"the execution ended ({item.status}) without an answer", code="execution_failed")
                )
    finally:
        feed.close()
    yield b"data: [DONE]\n\n"
