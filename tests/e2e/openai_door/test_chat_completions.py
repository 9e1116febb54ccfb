"""The OpenAI door driven by the official ``openai`` SDK, unchanged but for base_url and api_key."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.e2e.conftest import Stack

pytestmark = pytest.mark.kafka


OPENED: list[tuple[openai.OpenAI, openai.AsyncOpenAI]] = []  # closed after each test (conftest.py)


def clients(stack: Stack, key: str = "key-a") -> tuple[openai.OpenAI, openai.AsyncOpenAI]:
    base = f"{stack.url}/v1"
    pair = openai.OpenAI(base_url=base, api_key=key, max_retries=0), openai.AsyncOpenAI(base_url=base, api_key=key, max_retries=0)
    OPENED.append(pair)
    return pair


async def test_chat_completion_runs_the_agent_with_its_tools_sync_and_async(stack: Stack) -> None:
    sync, client = clients(stack)
    answer = await client.chat.completions.create(model="default", messages=[{"role": "user", "content": "what is 6*7?"}])
    assert answer.object == "chat.completion" and answer.model == "default"
    content = answer.choices[0].message.content or ""
    assert "The calculator says 42" in content  # the calculator ran server-side
    assert answer.choices[0].finish_reason == "stop" and answer.usage is not None and answer.usage.total_tokens > 0
    # the sync client, in a thread (the server runs on this loop)
    same = await asyncio.to_thread(
        lambda: sync.chat.completions.create(model="default", messages=[{"role": "user", "content": "what is 6*7?"}])
    )
    assert same.choices[0].message.content == content
    # it is an execution like any other: visible on /v1/executions with its usage
    execution_id = answer.id.removeprefix("chatcmpl-")
    view = (await stack.http.get(f"/v1/executions/{execution_id}", headers={"Authorization": "Bearer key-a"})).json()
    assert view["status"] == "completed" and view["usage"]["total_tokens"] == answer.usage.total_tokens


async def test_chat_completion_streams_chunks_that_add_up_to_the_answer(stack: Stack) -> None:
    _, client = clients(stack)
    messages: list[ChatCompletionMessageParam] = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "what is 2+3?"}]
    stream = await client.chat.completions.create(model="default", messages=messages, stream=True, stream_options={"include_usage": True})
    chunks = [c async for c in stream]
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "The calculator says 5" in text
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0
    full = await client.chat.completions.create(model="default", messages=messages)
    assert full.choices[0].message.content == text
    sync, _ = clients(stack)

    def sync_stream() -> str:
        with sync.chat.completions.create(model="default", messages=messages, stream=True) as chunks:
            return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    assert await asyncio.to_thread(sync_stream) == text


async def test_chat_completion_errors_are_openai_shaped(stack: Stack) -> None:
    _, client = clients(stack)
    with pytest.raises(openai.NotFoundError) as not_found:
        await client.chat.completions.create(model="no-such-agent", messages=[{"role": "user", "content": "hi"}])
    assert not_found.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as refused:
        await client.chat.completions.create(
            model="default",
            messages=[{"role": "user", "content": "hi"}],
            tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        )
    assert refused.value.param == "tools" and "server-side" in refused.value.message
    _, stranger = clients(stack, key="wrong")
    with pytest.raises(openai.AuthenticationError):
        await stranger.chat.completions.create(model="default", messages=[{"role": "user", "content": "hi"}])
    async with httpx.AsyncClient(base_url=stack.url) as http:
        r = await http.post("/v1/chat/completions", content=b"{", headers={"Authorization": "Bearer key-a"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


async def test_tool_choice_none_is_one_model_turn_without_tools(stack: Stack) -> None:
    _, client = clients(stack)
    answer = await client.chat.completions.create(
        model="default", messages=[{"role": "user", "content": "what is 6*7?"}], tool_choice="none"
    )
    assert answer.choices[0].message.content == "You said: what is 6*7?"


async def test_response_format_json_schema_is_honoured(stack: Stack) -> None:
    _, client = clients(stack)
    schema: dict[str, Any] = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
    answer = await client.chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": "what is 6*7?"}],
        response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema}},
    )
    assert "42" in json.loads(answer.choices[0].message.content or "")["answer"]
    impossible: dict[str, Any] = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    with pytest.raises(openai.APIStatusError) as failed:
        await client.chat.completions.create(
            model="default",
            messages=[{"role": "user", "content": "what is 6*7?"}],
            response_format={"type": "json_schema", "json_schema": {"name": "n", "schema": impossible}},
        )
    assert (
        failed.value.status_code == 502
        and "also when asked again" in failed.value.message
        and "'n' is a required property" in failed.value.message
    )


async def test_models_lists_the_agents(stack: Stack) -> None:
    sync, client = clients(stack)
    models = [m.id async for m in client.models.list()]
    assert "default" in models
    assert (await asyncio.to_thread(sync.models.retrieve, "default")).id == "default"
