"""The Responses API through the official ``openai`` SDK: stream, background + polling, resume, cancel,
previous_response_id, delete."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import openai
import pytest

from services.orchestrator.lifecycle import Lifecycle
from tests.e2e.conftest import Stack
from tests.e2e.openai_door.test_chat_completions import clients

pytestmark = pytest.mark.kafka


async def test_create_returns_the_whole_response_sync_and_async(stack: Stack) -> None:
    sync, client = clients(stack)
    response = await client.responses.create(model="default", input="what is 6*7?", instructions="be brief", metadata={"ticket": "t-1"})
    assert response.status == "completed" and response.id.startswith("resp_")
    assert "The calculator says 42" in response.output_text
    assert [item.type for item in response.output] == ["message", "function_call", "function_call_output", "message"]
    call = response.output[1]
    assert call.type == "function_call" and call.name == "calculator" and call.status == "completed"
    assert response.usage is not None and response.usage.total_tokens > 0
    assert response.instructions == "be brief" and response.metadata == {"ticket": "t-1"}
    again = await asyncio.to_thread(lambda: sync.responses.retrieve(response.id))
    assert again.status == "completed" and again.output_text == response.output_text


async def test_stream_events_map_ours_with_sequence_numbers_as_cursors(stack: Stack) -> None:
    _, client = clients(stack)
    stream = await client.responses.create(model="default", input="what is 2*4?", stream=True)
    events = [e async for e in stream]
    types = [e.type for e in events]
    assert types[:2] == ["response.created", "response.in_progress"] and types[-1] == "response.completed"
    assert "response.output_text.delta" in types and "response.function_call_arguments.done" in types
    numbers = [e.sequence_number for e in events]
    assert numbers == sorted(numbers)
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = events[-1]
    assert final.type == "response.completed"
    assert text == "".join(
        t for i in final.response.output if i.type == "message" for t in [c.text for c in i.content if c.type == "output_text"]
    )
    # the cursors are the events' own: the same numbers as /v1/executions/{id}/events
    sync, _ = clients(stack)

    def sync_stream() -> tuple[list[str], str]:
        with sync.responses.create(model="default", input="what is 2*4?", stream=True) as events:
            seen = list(events)
        return [e.type for e in seen], "".join(e.delta for e in seen if e.type == "response.output_text.delta")

    sync_types, sync_text = await asyncio.to_thread(sync_stream)  # another execution: its deltas are coalesced differently
    assert sync_types[:2] == types[:2] and sync_types[-1] == types[-1] and sync_text == text
    r = await stack.http.get(f"/v1/executions/{final.response.id.removeprefix('resp_')}/events", headers={"Authorization": "Bearer key-a"})
    cursors = {int(line[4:]) for line in r.text.splitlines() if line.startswith("id: ")}
    assert set(numbers) <= cursors


async def test_a_stream_dropped_midway_resumes_after_its_sequence_number_exactly_once(stack: Stack) -> None:
    _, client = clients(stack)
    long_input = "what is 1+1? " + "word " * 300
    stream = await client.responses.create(model="default", input=long_input, stream=True, background=True)
    seen: list[Any] = []
    async for event in stream:
        seen.append(event)
        if event.type == "response.output_text.delta" and len(seen) > 12:
            break
    await stream.close()  # the client drops the connection mid-way
    response_id = seen[0].response.id
    last = seen[-1].sequence_number
    # everything after the last sequence number seen: from another client, later
    rest = [e async for e in await client.responses.retrieve(response_id, stream=True, starting_after=last)]
    full = [e async for e in await client.responses.retrieve(response_id, stream=True)]
    assert rest[-1].type == "response.completed"
    assert all(e.sequence_number > last for e in rest)
    prefix = [e for e in full if e.sequence_number <= last]
    dump = [e.model_dump(exclude={"response"}) for e in prefix + rest]
    assert dump == [e.model_dump(exclude={"response"}) for e in full]
    seen_text = "".join(e.delta for e in seen if e.type == "response.output_text.delta")
    rest_text = "".join(e.delta for e in rest if e.type == "response.output_text.delta")
    assert seen_text + rest_text == "".join(e.delta for e in full if e.type == "response.output_text.delta")


async def test_background_then_polling(stack: Stack) -> None:
    sync, _ = clients(stack)
    created = await asyncio.to_thread(lambda: sync.responses.create(model="default", input="what is 3*3?", background=True))
    assert created.status in ("queued", "in_progress") and created.background is True
    deadline = time.monotonic() + 30
    polled = created
    while polled.status in ("queued", "in_progress") and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        polled = await asyncio.to_thread(lambda: sync.responses.retrieve(created.id))
    assert polled.status == "completed" and "The calculator says 9" in polled.output_text


async def test_polling_a_running_response_shows_its_output_so_far(stack: Stack) -> None:
    _, client = clients(stack)
    created = await client.responses.create(model="default", input="what is 5*5? " + "word " * 3000, background=True)
    async for event in await client.responses.retrieve(created.id, stream=True):
        if event.type == "response.output_text.delta":
            break
    polled = await client.responses.retrieve(created.id)
    assert polled.status == "in_progress" and polled.output_text.startswith("Let me")
    await client.responses.cancel(created.id)


async def test_cancel_a_background_response(stack: Stack) -> None:
    _, client = clients(stack)
    # A long answer, streamed slowly enough to be cancelled half-way.
    created = await client.responses.create(model="default", input="what is 5*5? " + "word " * 3000, background=True)
    cancelled = await client.responses.cancel(created.id)
    assert cancelled.status == "cancelled"
    assert (await client.responses.retrieve(created.id)).status == "cancelled"
    with pytest.raises(openai.ConflictError):
        await client.responses.cancel((await client.responses.create(model="default", input="hi")).id)  # already completed


async def test_previous_response_id_continues_the_conversation(stack: Stack) -> None:
    _, client = clients(stack)
    first = await client.responses.create(model="default", input="what is 6*7?")
    second = await client.responses.create(model="default", input="and 2+2?", previous_response_id=first.id)
    assert second.status == "completed" and "The calculator says 4" in second.output_text
    # the conversation is a session: its history holds both turns
    execution = (
        await stack.http.get(f"/v1/executions/{second.id.removeprefix('resp_')}", headers={"Authorization": "Bearer key-a"})
    ).json()
    messages = (await stack.http.get(f"/v1/sessions/{execution['session_id']}/messages", headers={"Authorization": "Bearer key-a"})).json()
    contents = [(m["role"], m["content"]) for m in messages["messages"]]
    assert contents[0] == ("user", "what is 6*7?") and ("user", "and 2+2?") in contents
    assert [r for r, _ in contents].count("assistant") == 2
    with pytest.raises(openai.BadRequestError) as branch:
        await client.responses.create(model="default", input="again", previous_response_id=first.id)
    assert branch.value.param == "previous_response_id"
    _, other = clients(stack, key="key-b")
    with pytest.raises(openai.NotFoundError):
        await other.responses.create(model="default", input="steal", previous_response_id=second.id)


async def test_delete_forgets_a_finished_response(stack: Stack) -> None:
    _, client = clients(stack)
    response = await client.responses.create(model="default", input="hello")
    running = await client.responses.create(model="default", input="what is 5*5? " + "word " * 3000, background=True)
    with pytest.raises(openai.ConflictError):
        await client.responses.delete(running.id)  # still in progress: cancel it first
    await client.responses.cancel(running.id)
    await client.responses.delete(response.id)
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(response.id)
    with pytest.raises(openai.NotFoundError):
        await client.responses.create(model="default", input="more", previous_response_id=response.id)


async def test_text_format_json_schema_and_refused_fields(stack: Stack) -> None:
    _, client = clients(stack)
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {"answer": {"type": "string"}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    response = await client.responses.create(
        model="default", input="what is 6*7?", text={"format": {"type": "json_schema", "name": "a", "schema": schema}}
    )
    assert [i.type for i in response.output if i.type == "message"] == ["message"]  # only the final answer
    assert "42" in json.loads(response.output_text)["answer"]
    # a stream of it, resumed from the start later, is the same stream: the fold knows from the events
    live = [
        e
        async for e in await client.responses.create(
            model="default", input="what is 6*7?", stream=True, text={"format": {"type": "json_schema", "name": "a", "schema": schema}}
        )
    ]
    replay = [e async for e in await client.responses.retrieve(live[0].response.id, stream=True)]  # type: ignore[union-attr]
    assert [e.type for e in replay] == [e.type for e in live]
    assert [e.delta for e in replay if e.type == "response.output_text.delta"] == [
        e.delta for e in live if e.type == "response.output_text.delta"
    ]
    assert len([e for e in live if e.type == "response.output_text.delta"]) == 1
    with pytest.raises(openai.BadRequestError) as refused:
        await client.responses.create(model="default", input="hi", tools=[{"type": "web_search"}])
    assert refused.value.param == "tools"
    with pytest.raises(openai.BadRequestError) as bad_schema:
        await client.responses.create(
            model="default", input="hi", text={"format": {"type": "json_schema", "name": "x", "schema": {"type": 7}}}
        )
    assert bad_schema.value.param == "text.format.schema"


async def test_types_and_bounds_are_a_400_naming_the_field(stack: Stack) -> None:
    _, client = clients(stack)
    with pytest.raises(openai.BadRequestError) as hot:
        await client.responses.create(model="default", input="hi", temperature=5)
    assert hot.value.param == "temperature"
    # beyond what an execution.requested holds: refused at the door, not a 500 when it is built
    with pytest.raises(openai.BadRequestError) as long:
        await client.responses.create(model="default", input="hi", store=False, instructions="x" * 200_001)
    assert long.value.param == "instructions"
    with pytest.raises(openai.BadRequestError) as big:
        await client.chat.completions.create(model="default", messages=[{"role": "user", "content": "x" * 200_001}])
    assert big.value.param == "messages[0].content"
    first = await client.responses.create(model="default", input="hi")
    with pytest.raises(openai.BadRequestError) as cursor:
        await client.responses.retrieve(first.id, stream=True, starting_after=-5)
    assert cursor.value.param == "starting_after"
    _, other = clients(stack, key="key-b")
    with pytest.raises(openai.NotFoundError):
        await other.responses.retrieve(first.id)
    with pytest.raises(openai.NotFoundError):
        await other.responses.retrieve(first.id, stream=True)
    with pytest.raises(openai.NotFoundError):
        await other.responses.cancel(first.id)


async def test_a_finished_response_continues_at_once_while_its_end_is_still_being_recorded(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The answer comes from the bridge; the session is freed by the projection, which may run behind.
    recorded = Lifecycle.finalize

    async def late(self: Lifecycle, *args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(0.5)
        return await recorded(self, *args, **kwargs)

    monkeypatch.setattr(Lifecycle, "finalize", late)
    _, client = clients(stack)
    first = await client.responses.create(model="default", input="what is 6*7?")
    assert first.status == "completed"
    second = await client.responses.create(model="default", input="and 2+2?", previous_response_id=first.id)
    assert second.status == "completed" and "The calculator says 4" in second.output_text
    execution = (
        await stack.http.get(f"/v1/executions/{second.id.removeprefix('resp_')}", headers={"Authorization": "Bearer key-a"})
    ).json()
    messages = (await stack.http.get(f"/v1/sessions/{execution['session_id']}/messages", headers={"Authorization": "Bearer key-a"})).json()
    # both answers: the first was in the second's history, the second is there as soon as it is read
    assert [m["role"] for m in messages["messages"]] == ["user", "assistant", "user", "assistant"]
