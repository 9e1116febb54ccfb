"""The A2A door driven by the ``a2a-sdk`` client on loopback, on the real broker: card, send,
stream, get, cancel, resubscribe after a drop (exactly once), another tenant refused, limits."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from a2a.client import A2AClientError, Client, ClientCallContext, ClientConfig, create_client
from a2a.types import (
    CancelTaskRequest,
    ContentTypeNotSupportedError,
    GetTaskRequest,
    InvalidParamsError,
    Message,
    Part,
    Role,
    SendMessageRequest,
    StreamResponse,
    SubscribeToTaskRequest,
    TaskNotCancelableError,
    TaskNotFoundError,
    TaskState,
)
from google.protobuf.json_format import MessageToDict

from services.orchestrator.app import create_app
from tests.e2e.conftest import Stack
from tests.support import serve

pytestmark = pytest.mark.kafka
CURSOR = "agentstream.cursor"


@contextlib.asynccontextmanager
async def a2a_client(url: str, key: str = "key-a", *, streaming: bool = True, polling: bool = False) -> AsyncIterator[Client]:
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=60) as http:
        client = await create_client(
            f"{url}/v1/a2a/default", client_config=ClientConfig(httpx_client=http, streaming=streaming, polling=polling)
        )
        try:
            yield client
        finally:
            await client.close()


def message(text: str = "what is 6*7?", *, context_id: str = "") -> SendMessageRequest:
    return SendMessageRequest(
        message=Message(message_id=uuid.uuid4().hex, role=Role.ROLE_USER, parts=[Part(text=text)], context_id=context_id)
    )


def text_of(response: StreamResponse) -> str:
    return "".join(p.text for a in response.task.artifacts for p in a.parts)


async def test_the_card_declares_the_endpoint_streaming_and_bearer_auth(stack: Stack) -> None:
    r = await stack.http.get("/v1/a2a/default/.well-known/agent-card.json", headers={"Authorization": "Bearer key-a"})
    assert r.status_code == 200
    card = r.json()
    assert card["name"] == "default" and card["capabilities"]["streaming"] is True
    assert card["supportedInterfaces"][0]["url"] == f"{stack.url}/v1/a2a/default"
    assert card["supportedInterfaces"][0]["protocolBinding"] == "JSONRPC"
    scheme = next(iter(card["securitySchemes"].values()))
    assert scheme["httpAuthSecurityScheme"]["scheme"] == "bearer"
    assert (await stack.http.get("/v1/a2a/default/.well-known/agent-card.json")).status_code == 401
    assert (
        await stack.http.get("/v1/a2a/nobody/.well-known/agent-card.json", headers={"Authorization": "Bearer key-a"})
    ).status_code == 404


async def test_send_runs_the_agent_and_get_returns_the_task(stack: Stack) -> None:
    async with a2a_client(stack.url, streaming=False) as client:
        [answer] = [r async for r in client.send_message(message())]
        task = answer.task
        assert task.status.state == TaskState.TASK_STATE_COMPLETED and "The calculator says 42" in text_of(answer)
        assert task.context_id.startswith("ses_") and task.history[0].parts[0].text == "what is 6*7?"
        got = await client.get_task(GetTaskRequest(id=task.id))
        assert got.status.state == TaskState.TASK_STATE_COMPLETED and "".join(p.text for p in got.artifacts[0].parts) == text_of(answer)
        # the next message of the conversation: the same context (an agentstream session)
        [second] = [r async for r in client.send_message(message("what is 2+3?", context_id=task.context_id))]
        assert second.task.context_id == task.context_id and second.task.id != task.id
    r = await stack.http.get(f"/v1/sessions/{task.context_id}/messages", headers={"Authorization": "Bearer key-a"})
    assert [m["content"] for m in r.json()["messages"] if m["role"] == "user"] == ["what is 6*7?", "what is 2+3?"]


async def test_stream_sends_status_artifacts_and_tool_calls_with_cursors(stack: Stack) -> None:
    async with a2a_client(stack.url) as client:
        events = [r async for r in client.send_message(message())]
    assert events[0].HasField("task") and events[0].task.status.state == TaskState.TASK_STATE_SUBMITTED
    states = [e.status_update.status.state for e in events if e.HasField("status_update")]
    assert states[0] == TaskState.TASK_STATE_WORKING and states[-1] == TaskState.TASK_STATE_COMPLETED
    tools = [
        MessageToDict(p.data)
        for e in events
        if e.HasField("status_update")
        for p in e.status_update.status.message.parts
        if p.HasField("data")
    ]
    assert tools[0]["toolCall"]["tool"] == "calculator" and "toolResult" in tools[1]
    artifacts = [e.artifact_update for e in events if e.HasField("artifact_update")]
    assert artifacts[-1].last_chunk and "The calculator says 42" in artifacts[-1].artifact.parts[0].text
    cursors = [
        int(str(MessageToDict(getattr(e, e.WhichOneof("payload") or "task").metadata)[CURSOR]).partition(":")[0]) for e in events[1:]
    ]
    assert cursors == sorted(cursors)


async def test_resubscribe_after_a_drop_resumes_exactly_once(stack: Stack) -> None:
    async with a2a_client(stack.url) as client:
        first: list[StreamResponse] = []
        stream = client.send_message(message())
        async for event in stream:
            first.append(event)
            if event.HasField("status_update") and event.status_update.status.message.parts:
                break  # dropped right after the first tool call
        await stream.aclose()  # type: ignore[attr-defined]
        task_id = first[0].task.id
        last = MessageToDict(first[-1].status_update.metadata)[CURSOR]
        resumed = [
            e
            async for e in client.subscribe(
                SubscribeToTaskRequest(id=task_id), context=ClientCallContext(service_parameters={"Last-Event-ID": last})
            )
        ]
        whole = [e async for e in client.subscribe(SubscribeToTaskRequest(id=task_id))]
    assert resumed[0].HasField("task") and whole[0].HasField("task")  # the task as of the position, first

    def dump(events: list[StreamResponse]) -> list[dict[str, Any]]:
        return [MessageToDict(e) for e in events]

    # what the first stream got, then what the resumed one got = every event once, in order
    assert dump(first[1:] + resumed[1:]) == dump(whole[1:])
    assert resumed[-1].status_update.status.state == TaskState.TASK_STATE_COMPLETED
    # the snapshot at the position holds what had streamed before it
    assert resumed[0].task.status.state == TaskState.TASK_STATE_WORKING
    # resumed after the last event: the finished task, nothing more
    end = MessageToDict(whole[-1].status_update.metadata)[CURSOR]
    async with a2a_client(stack.url) as client:
        after_end = [
            e
            async for e in client.subscribe(
                SubscribeToTaskRequest(id=task_id), context=ClientCallContext(service_parameters={"Last-Event-ID": end})
            )
        ]
    assert len(after_end) == 1 and after_end[0].task.status.state == TaskState.TASK_STATE_COMPLETED


async def test_cancel_a_running_task_and_not_a_finished_one(stack: Stack) -> None:
    async with a2a_client(stack.url, streaming=False, polling=True) as client:
        [submitted] = [r async for r in client.send_message(message("what is 1+1? " + "word " * 3000))]
        assert submitted.task.status.state == TaskState.TASK_STATE_SUBMITTED  # returned at once (polling)
        running = await client.get_task(GetTaskRequest(id=submitted.task.id, history_length=0))
        assert running.status.state in (TaskState.TASK_STATE_SUBMITTED, TaskState.TASK_STATE_WORKING) and not running.history
        cancelled = await client.cancel_task(CancelTaskRequest(id=submitted.task.id))
        assert cancelled.status.state == TaskState.TASK_STATE_CANCELED
    async with a2a_client(stack.url, streaming=False) as client:
        [done] = [r async for r in client.send_message(message())]
        with pytest.raises(TaskNotCancelableError):
            await client.cancel_task(CancelTaskRequest(id=done.task.id))


async def test_another_tenant_is_refused(stack: Stack) -> None:
    async with a2a_client(stack.url, streaming=False) as client:
        [done] = [r async for r in client.send_message(message())]
    async with a2a_client(stack.url, key="key-b") as other:
        with pytest.raises(TaskNotFoundError):
            await other.get_task(GetTaskRequest(id=done.task.id))
        with pytest.raises(TaskNotFoundError):
            await other.cancel_task(CancelTaskRequest(id=done.task.id))
        with pytest.raises(TaskNotFoundError):
            _ = [e async for e in other.subscribe(SubscribeToTaskRequest(id=done.task.id))]
        with pytest.raises(TaskNotFoundError):
            _ = [e async for e in other.send_message(message(context_id=done.task.context_id))]
    with pytest.raises(A2AClientError):
        async with a2a_client(stack.url, key="wrong"):
            pass


async def test_limits_and_idempotency_are_those_of_v1_executions(stack: Stack) -> None:
    async with a2a_client(stack.url, streaming=False) as client:
        request = message()
        [first] = [r async for r in client.send_message(request)]
        [again] = [r async for r in client.send_message(request)]  # the same messageId: the same task
        assert again.task.id == first.task.id
    limited = stack.orchestrator_settings.model_copy(update={"requests_per_minute": 1})
    async with serve(create_app(limited)) as url, a2a_client(url, key="key-6", streaming=False) as client:
        _ = [r async for r in client.send_message(message())]
        with pytest.raises(A2AClientError) as refused:
            _ = [r async for r in client.send_message(message())]
    assert "429" in str(refused.value)


async def test_bad_input_is_refused_with_the_reason(stack: Stack) -> None:
    async with a2a_client(stack.url, streaming=False) as client:
        data = SendMessageRequest(message=Message(message_id="m-data", role=Role.ROLE_USER, parts=[Part(url="https://example.com/x")]))
        with pytest.raises(ContentTypeNotSupportedError):
            _ = [r async for r in client.send_message(data)]
        with pytest.raises(InvalidParamsError, match="tenant"):
            _ = [r async for r in client.send_message(SendMessageRequest(tenant="tenant-b", message=message().message))]
        with pytest.raises(InvalidParamsError, match="ROLE_USER"):
            agent = SendMessageRequest(message=Message(message_id="m-agent", role=Role.ROLE_AGENT, parts=[Part(text="hi")]))
            _ = [r async for r in client.send_message(agent)]
        [done] = [r async for r in client.send_message(message())]
    async with a2a_client(stack.url) as client:
        with pytest.raises(InvalidParamsError, match="Last-Event-ID"):
            bad = ClientCallContext(service_parameters={"Last-Event-ID": "-5"})
            _ = [e async for e in client.subscribe(SubscribeToTaskRequest(id=done.task.id), context=bad)]
    auth = {"Authorization": "Bearer key-a", "A2A-Version": "1.0"}
    deep: Any = "x"
    for _ in range(40):
        deep = [deep]
    rpc = {"jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": {"metadata": {"deep": deep}}}
    r = await stack.http.post("/v1/a2a/default", json=rpc, headers=auth)
    assert r.status_code == 400 and "deeper" in r.json()["error"]["message"]
    big = await stack.http.post("/v1/a2a/default", content=b"{" + b" " * 1_100_000 + b"}", headers=auth)
    assert big.status_code == 413
    assert (await stack.http.post("/v1/a2a/default", json=rpc)).status_code == 401
    assert (await stack.http.post("/v1/a2a/nobody", json=rpc, headers=auth)).status_code == 404
