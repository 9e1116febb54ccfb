"""The AG-UI door on the real broker: the stream parsed with the ``ag_ui`` models, resumed with
``Last-Event-ID`` exactly once, tenant isolation, clear 4xx, the limits of /v1/executions."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from ag_ui.core import Event, EventType, RunAgentInput, UserMessage
from httpx_sse import aconnect_sse
from pydantic import TypeAdapter

from services.orchestrator.app import create_app
from tests.e2e.conftest import Stack
from tests.support import serve

pytestmark = pytest.mark.kafka
EVENTS: TypeAdapter[Event] = TypeAdapter(Event)


def run_input(text: str = "what is 6*7?", *, thread: str | None = None, run: str | None = None, **extra: Any) -> dict[str, Any]:
    body = RunAgentInput(
        thread_id=thread or f"thread-{uuid.uuid4().hex}",
        run_id=run or f"run-{uuid.uuid4().hex}",
        messages=[UserMessage(id="m1", content=text)],
    ).model_dump(mode="json", by_alias=True)
    return body | extra


async def stream(
    http: httpx.AsyncClient,
    body: dict[str, Any],
    *,
    key: str = "key-a",
    last_event_id: str | None = None,
    stop_after: EventType | None = None,
) -> list[tuple[str | None, Event]]:
    """(SSE id, parsed event) of an AG-UI run; with ``stop_after``, the connection is dropped there."""
    headers = {"Authorization": f"Bearer {key}"} | ({"Last-Event-ID": last_event_id} if last_event_id else {})
    out: list[tuple[str | None, Event]] = []
    async with aconnect_sse(http, "POST", "/v1/agui/default", json=body, headers=headers) as source:
        assert source.response.status_code == 200, await source.response.aread()
        async for sse in source.aiter_sse():
            event = EVENTS.validate_json(sse.data)
            out.append((sse.id or None, event))
            if event.type == stop_after:
                break
    return out


async def test_a_run_streams_agui_events_with_cursors_as_ids(stack: Stack) -> None:
    body = run_input(state={"todo": ["compute"]})
    events = await stream(stack.http, body)
    types = [e.type for _, e in events]
    assert types[0] == EventType.RUN_STARTED and types[1] == EventType.STATE_SNAPSHOT and types[-1] == EventType.RUN_FINISHED
    for kind in ("TOOL_CALL_START", "TOOL_CALL_ARGS", "TOOL_CALL_END", "TOOL_CALL_RESULT", "TEXT_MESSAGE_START", "TEXT_MESSAGE_END"):
        assert EventType(kind) in types
    started = events[0][1]
    assert started.type == EventType.RUN_STARTED and started.thread_id == body["threadId"] and started.run_id == body["runId"]
    text = "".join(e.delta for _, e in events if e.type == EventType.TEXT_MESSAGE_CONTENT)
    assert "The calculator says 42" in text
    call = next(e for _, e in events if e.type == EventType.TOOL_CALL_START)
    result = next(e for _, e in events if e.type == EventType.TOOL_CALL_RESULT)
    assert call.tool_call_name == "calculator" and result.tool_call_id == call.tool_call_id and "42" in str(result.content)
    finished = events[-1][1]
    assert finished.type == EventType.RUN_FINISHED and finished.usage and (finished.usage[0].total_tokens or 0) > 0
    # every event has an id: our cursor (the partition offset), "N:k" inside the events one of ours became
    cursors = [int(i.partition(":")[0]) for i, _ in events if i is not None]
    assert len(cursors) == len(events) and cursors == sorted(cursors)
    # the same POST again is the same run (runId is the idempotency key): the same events, no second execution
    again = await stream(stack.http, body)
    assert [(i, e.model_dump()) for i, e in again] == [(i, e.model_dump()) for i, e in events]


async def test_a_dropped_stream_resumes_after_last_event_id_exactly_once(stack: Stack) -> None:
    body = run_input()
    # dropped inside a group: TOOL_CALL_START/ARGS/END come from one event of ours
    first = await stream(stack.http, body, stop_after=EventType.TOOL_CALL_ARGS)
    last_id = first[-1][0]
    assert last_id is not None and ":" in last_id
    rest = await stream(stack.http, body, last_event_id=last_id)
    whole = await stream(stack.http, body)  # the run from its first event (a replay)
    assert [(i, e.model_dump()) for i, e in first + rest] == [(i, e.model_dump()) for i, e in whole]
    assert rest[0][1].type == EventType.TOOL_CALL_END and rest[-1][1].type == EventType.RUN_FINISHED
    # resumed after the last event: nothing more
    assert await stream(stack.http, body, last_event_id=whole[-1][0]) == []


async def test_a_thread_is_a_session_of_the_tenant(stack: Stack) -> None:
    thread = f"thread-{uuid.uuid4().hex}"
    await stream(stack.http, run_input("what is 2+3?", thread=thread))
    second = await stream(stack.http, run_input("what is 6*7?", thread=thread))
    assert second[-1][1].type == EventType.RUN_FINISHED
    r = await stack.http.get(f"/v1/sessions/{thread}/messages", headers={"Authorization": "Bearer key-a"})
    assert r.status_code == 200
    contents = [m["content"] for m in r.json()["messages"] if m["role"] == "user"]
    assert contents == ["what is 2+3?", "what is 6*7?"]


async def test_another_tenants_thread_or_run_is_not_found(stack: Stack) -> None:
    body = run_input()
    events = await stream(stack.http, body)
    headers = {"Authorization": "Bearer key-b"}
    other_thread = await stack.http.post("/v1/agui/default", json=run_input(thread=body["threadId"]), headers=headers)
    assert other_thread.status_code == 404 and "thread" in other_thread.json()["error"]
    resumed = await stack.http.post("/v1/agui/default", json=body, headers=headers | {"Last-Event-ID": str(events[0][0])})
    assert resumed.status_code == 404 and "run" in resumed.json()["error"]
    # nor can the other tenant read the thread as a session
    assert (await stack.http.get(f"/v1/sessions/{body['threadId']}", headers=headers)).status_code == 404


async def test_bad_input_is_a_clear_4xx(stack: Stack) -> None:
    auth = {"Authorization": "Bearer key-a"}
    tools = run_input(tools=[{"name": "f", "description": "a frontend tool", "parameters": {"type": "object"}}])
    cases: list[tuple[dict[str, Any] | bytes, dict[str, str], int, str]] = [
        (tools, auth, 400, "server-side"),
        (b"{", auth, 400, "not JSON"),
        ({"threadId": "t"}, auth, 400, "RunAgentInput"),
        (run_input(thread="no spaces allowed"), auth, 400, "threadId"),
        (run_input(messages=[{"id": "1", "role": "assistant", "content": "hi"}]), auth, 400, "last message"),
        (run_input(), {}, 401, "API key"),
        (run_input(), auth | {"Last-Event-ID": "abc"}, 400, "Last-Event-ID"),
        (run_input(), auth | {"X-Agentstream-Priority": "urgent"}, 400, "priority"),
        (run_input(context=[{"description": "d", "value": "v" * 199_990}]), auth, 400, "context"),
    ]
    for body, headers, status, words in cases:
        kwargs: dict[str, Any] = {"content": body} if isinstance(body, bytes) else {"json": body}
        r = await stack.http.post("/v1/agui/default", headers=headers, **kwargs)
        assert r.status_code == status and words in r.json()["error"], (body, r.text)
    r = await stack.http.post("/v1/agui/nobody", json=run_input(), headers=auth)
    assert r.status_code == 404 and "agent" in r.json()["error"]
    body = run_input()
    await stream(stack.http, body)
    reused = await stack.http.post("/v1/agui/default", json=body | {"state": {"other": 1}}, headers=auth)
    assert reused.status_code == 409 and "runId" in reused.json()["error"]


async def test_limits_priority_and_usage_are_those_of_v1_executions(stack: Stack) -> None:
    limited = stack.orchestrator_settings.model_copy(update={"requests_per_minute": 1})
    async with serve(create_app(limited)) as url, httpx.AsyncClient(base_url=url) as http:
        auth = {"Authorization": "Bearer key-5"}
        body = run_input(forwardedProps={"priority": "critical"})
        ran = await stream(http, body, key="key-5")
        refused_input = run_input()
        refused = await http.post("/v1/agui/default", json=refused_input, headers=auth)
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
        # the thread the refused run was to start is not left behind
        assert (await http.get(f"/v1/sessions/{refused_input['threadId']}", headers=auth)).status_code == 404
        messages = (await http.get(f"/v1/sessions/{body['threadId']}/messages", headers=auth)).json()["messages"]
        view = (await http.get(f"/v1/executions/{messages[0]['execution_id']}", headers=auth)).json()
    assert ran[-1][1].type == EventType.RUN_FINISHED
    assert view["priority"] == "critical" and view["status"] == "completed" and view["usage"]["total_tokens"] > 0
