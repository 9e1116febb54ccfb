"""What applies on /v1/executions applies on the OpenAI door: limits (429 + Retry-After), idempotency,
priority, tracing; and the output schema field on /v1/executions itself."""

from __future__ import annotations

import asyncio
from typing import Any

import openai
import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRecord
from sqlalchemy import func, select

from services.common.kafka import header
from services.orchestrator.app import create_app
from services.orchestrator.store.tables import sessions
from tests.e2e.conftest import Stack
from tests.e2e.openai_door.test_chat_completions import clients
from tests.support import serve

pytestmark = pytest.mark.kafka
AUTH = {"Authorization": "Bearer key-a"}
USER: list[Any] = [{"role": "user", "content": "what is 6*7?"}]


async def test_rate_limit_is_an_openai_429_with_retry_after(stack: Stack) -> None:
    limited = stack.orchestrator_settings.model_copy(update={"requests_per_minute": 1})
    app = create_app(limited)
    async with serve(app) as url:
        client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="key-3", max_retries=0)
        await client.chat.completions.create(model="default", messages=USER)
        with pytest.raises(openai.RateLimitError) as limited_error:
            await client.responses.create(model="default", input="again")
        # the refused response left no session behind (it was made for the conversation it would start)
        async with app.state.agentstream.runtime.store.begin() as conn:
            count = (await conn.execute(select(func.count()).select_from(sessions).where(sessions.c.tenant_id == "tenant-3"))).scalar_one()
        assert count == 0
    assert limited_error.value.code == "rate_limit_exceeded" and int(limited_error.value.response.headers["retry-after"]) >= 1


async def test_idempotency_key_replays_the_same_execution(stack: Stack) -> None:
    _, client = clients(stack)
    headers = {"Idempotency-Key": "door-1"}
    first = await client.chat.completions.create(model="default", messages=USER, extra_headers=headers)
    again = await client.chat.completions.create(model="default", messages=USER, extra_headers=headers)
    assert again.id == first.id and again.choices[0].message.content == first.choices[0].message.content
    with pytest.raises(openai.ConflictError):
        await client.chat.completions.create(model="default", messages=[{"role": "user", "content": "other"}], extra_headers=headers)
    streamed = await client.responses.create(model="default", input="hi", stream=True, extra_headers={"Idempotency-Key": "door-2"})
    first_id = [e async for e in streamed][-1].response.id  # type: ignore[union-attr]
    replayed = await client.responses.create(model="default", input="hi", stream=True, extra_headers={"Idempotency-Key": "door-2"})
    assert [e async for e in replayed][-1].response.id == first_id  # type: ignore[union-attr]


async def test_priority_header_or_metadata_and_traceparent_apply(stack: Stack) -> None:
    _, client = clients(stack)
    critical = await client.chat.completions.create(model="default", messages=USER, extra_headers={"X-Agentstream-Priority": "critical"})
    batch = await client.responses.create(model="default", input="hi", metadata={"priority": "batch"})
    for execution_id, priority in ((critical.id.removeprefix("chatcmpl-"), "critical"), (batch.id.removeprefix("resp_"), "batch")):
        view = (await stack.http.get(f"/v1/executions/{execution_id}", headers=AUTH)).json()
        assert view["priority"] == priority
    with pytest.raises(openai.BadRequestError) as bad:
        await client.responses.create(model="default", input="hi", metadata={"priority": "urgent"})
    assert bad.value.param == "metadata.priority"
    trace = "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"
    traced = await client.chat.completions.create(model="default", messages=USER, extra_headers={"traceparent": trace})
    key = traced.id.removeprefix("chatcmpl-").encode()
    consumer = AIOKafkaConsumer(stack.kafka.topics.events, bootstrap_servers=stack.kafka.bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        records: list[ConsumerRecord[bytes, bytes]] = []
        async with asyncio.timeout(10):
            while not records or header(records[-1].headers, "type") != "execution.completed":
                batch = await consumer.getmany(timeout_ms=500)
                records += [r for rs in batch.values() for r in rs if r.key == key]
    finally:
        await consumer.stop()
    # every event of the execution belongs to the caller's trace
    assert {(header(r.headers, "traceparent") or "").split("-")[1] for r in records} == {"ab" * 16}


async def test_output_schema_on_v1_executions(stack: Stack) -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
    execution_id = await stack.submit(input="what is 6*7?", output_schema=schema)
    for _ in range(200):
        view = (await stack.http.get(f"/v1/executions/{execution_id}", headers=AUTH)).json()
        if view["status"] not in ("queued", "running"):
            break
        await asyncio.sleep(0.05)
    assert view["status"] == "completed" and view["output"].startswith('{"answer": "The calculator says 42')
    r = await stack.http.post("/v1/executions", json={"input": "x", "output_schema": {"type": "nonsense"}}, headers=AUTH)
    assert r.status_code == 422 and "not a valid JSON Schema" in r.text


async def test_session_chat_takes_the_same_new_fields(stack: Stack) -> None:
    session = (await stack.http.post("/v1/sessions", json={"agent": "default"}, headers=AUTH)).json()["session_id"]
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
    body = {"content": "what is 6*7?", "output_schema": schema, "instructions": "Be brief.", "params": {"temperature": 0}}
    chat = (await stack.http.post(f"/v1/sessions/{session}/chat", json=body, headers=AUTH)).json()
    for _ in range(200):
        view = (await stack.http.get(f"/v1/executions/{chat['execution_id']}", headers=AUTH)).json()
        if view["status"] not in ("queued", "running"):
            break
        await asyncio.sleep(0.05)
    assert view["status"] == "completed" and view["output"].startswith('{"answer": "The calculator says 42')
    bad = await stack.http.post(f"/v1/sessions/{session}/chat", json={"content": "x", "output_schema": {"type": 1}}, headers=AUTH)
    assert bad.status_code == 422
    # An enqueued message keeps only its content (it starts later, from the stored history): the new
    # fields are refused there rather than dropped.
    queue = (await stack.http.post("/v1/sessions", json={"agent": "default", "policy": "enqueue"}, headers=AUTH)).json()["session_id"]
    running = await stack.http.post(f"/v1/sessions/{queue}/chat", json={"content": "what is 1+1? " + "word " * 3000}, headers=AUTH)
    assert running.status_code == 202
    refused = await stack.http.post(f"/v1/sessions/{queue}/chat", json={"content": "next", "output_schema": schema}, headers=AUTH)
    assert refused.status_code == 409 and "only plain messages are enqueued" in refused.text
    plain = await stack.http.post(f"/v1/sessions/{queue}/chat", json={"content": "next"}, headers=AUTH)
    assert plain.status_code == 202 and plain.json()["status"] == "enqueued"
