"""Sessions and chat: history recorded with tool calls, handed to the next execution; policies."""

from __future__ import annotations

import pytest

from tests.e2e.orchestrator.conftest import Launcher

pytestmark = pytest.mark.kafka


async def test_chat_records_answer_and_tool_calls_and_passes_history(launch: Launcher, database_url: str) -> None:
    async with launch(database_url) as orch:
        r = await orch.post("/v1/sessions", {"agent": "default", "metadata": {"user": "u1"}})
        assert r.status_code == 201
        session_id = r.json()["session_id"]
        assert (await orch.get(f"/v1/sessions/{session_id}", key="key-b")).status_code == 404
        chat = await orch.post(f"/v1/sessions/{session_id}/chat", {"content": "what is 12*7?"})
        assert chat.status_code == 202 and chat.json()["status"] == "queued"
        await orch.wait_for(f"/v1/sessions/{session_id}", lambda s: s["state"] == "idle")
        messages = (await orch.get(f"/v1/sessions/{session_id}/messages")).json()["messages"]
        assert [(m["seq"], m["role"]) for m in messages] == [(1, "user"), (2, "assistant")]
        assert "84" in messages[1]["content"] and messages[1]["execution_id"] == chat.json()["execution_id"]
        (call,) = messages[1]["tool_calls"]
        assert call["tool"] == "calculator" and call["result"] is not None

        second = await orch.post(f"/v1/sessions/{session_id}/chat", {"content": "and 2+2?"})
        assert second.status_code == 202
        view = await orch.wait_for(f"/v1/executions/{second.json()['execution_id']}", lambda v: v["status"] == "completed")
        assert view["session_id"] == session_id
        await orch.wait_for(f"/v1/sessions/{session_id}", lambda s: s["state"] == "idle")
        messages = (await orch.get(f"/v1/sessions/{session_id}/messages")).json()["messages"]
        assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
        assert [m["seq"] for m in (await orch.get(f"/v1/sessions/{session_id}/messages", after=2)).json()["messages"]] == [3, 4]


async def test_second_message_policies(launch: Launcher, sqlite_url: str) -> None:
    async with launch(sqlite_url, executor=False) as orch:  # nothing runs: the first message stays in flight
        reject = (await orch.post("/v1/sessions", {"policy": "reject"})).json()["session_id"]
        first = (await orch.post(f"/v1/sessions/{reject}/chat", {"content": "one"})).json()["execution_id"]
        r = await orch.post(f"/v1/sessions/{reject}/chat", {"content": "two"})
        assert r.status_code == 409 and r.json()["detail"] == {"active_execution_id": first}
        assert len((await orch.get(f"/v1/sessions/{reject}/messages")).json()["messages"]) == 1  # nothing half-written

        enqueue = (await orch.post("/v1/sessions", {"policy": "enqueue"})).json()["session_id"]
        first = (await orch.post(f"/v1/sessions/{enqueue}/chat", {"content": "one"})).json()["execution_id"]
        r = await orch.post(f"/v1/sessions/{enqueue}/chat", {"content": "two"})
        assert r.status_code == 202 and r.json()["status"] == "enqueued" and r.json()["execution_id"] is None
        assert (await orch.post(f"/v1/executions/{first}/cancel")).status_code == 202  # the first ends ...
        state = await orch.wait_for(f"/v1/sessions/{enqueue}", lambda s: s["active_execution_id"] not in (None, first))
        messages = (await orch.get(f"/v1/sessions/{enqueue}/messages")).json()["messages"]
        assert [(m["content"], m["status"]) for m in messages] == [("one", "done"), ("two", "done")]
        assert messages[1]["execution_id"] == state["active_execution_id"]  # ... and the enqueued one started

        interrupt = (await orch.post("/v1/sessions", {"policy": "interrupt"})).json()["session_id"]
        first = (await orch.post(f"/v1/sessions/{interrupt}/chat", {"content": "one"})).json()["execution_id"]
        r = await orch.post(f"/v1/sessions/{interrupt}/chat", {"content": "two"})
        assert r.status_code == 202 and r.json()["interrupted_execution_id"] == first
        assert (await orch.get(f"/v1/executions/{first}")).json()["status"] == "cancelled"
        assert (await orch.get(f"/v1/sessions/{interrupt}")).json()["active_execution_id"] == r.json()["execution_id"]
