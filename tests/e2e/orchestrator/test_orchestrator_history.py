"""Run history over HTTP on the real broker: GET /v1/executions, GET /v1/sessions, GET /v1/agents,
DELETE /v1/sessions/{id}, and the 422 for a prompt variable a request lacks."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from tests.e2e.orchestrator.conftest import Launcher, Orch

pytestmark = pytest.mark.kafka

AGENTS = """
agents:
  default: {}
  support:
    system_prompt: "You help {{ customer }} with order {{ order.id }}. Asked: {{ input }} ({{ agent }})"
    tools: [calculator]
  polite:
    system_prompt: "{% if name is defined %}Greet {{ name }}.{% endif %} Be brief."
"""


def agents_file(tmp_path: Path) -> Path:
    path = tmp_path / "agents.yaml"
    path.write_text(AGENTS)
    return path


async def _submit(orch: Orch, key: str = "key-a", **body: object) -> str:
    body.setdefault("input", "what is 6*7?")
    r = await orch.post("/v1/executions", body, key=key)
    assert r.status_code == 202, r.text
    return str(r.json()["execution_id"])


def _ids(page: dict[str, list[dict[str, str]]], name: str = "executions") -> list[str]:
    return [row["execution_id" if name == "executions" else "session_id"] for row in page[name]]


async def test_list_executions_newest_first_paged_filtered_and_tenant_scoped(launch: Launcher, database_url: str) -> None:
    async with launch(database_url, executor=False) as orch:  # nothing runs: every execution stays queued
        mine = [await _submit(orch, input=f"question {i}") for i in range(5)]
        other = await _submit(orch, key="key-b")
        session = (await orch.post("/v1/sessions", {})).json()["session_id"]
        chat = (await orch.post(f"/v1/sessions/{session}/chat", {"content": "hello there"})).json()["execution_id"]
        assert (await orch.post(f"/v1/executions/{mine[0]}/cancel")).status_code == 202  # queued: cancelled at once

        r = await orch.get("/v1/executions", limit=3)
        assert r.status_code == 200, r.text
        first = r.json()
        assert _ids(first) == [chat, mine[4], mine[3]]
        assert first["executions"][1]["input_preview"] == "question 4" and first["executions"][1]["status"] == "queued"
        assert first["executions"][0]["origin"] == "chat" and first["executions"][0]["session_id"] == session
        second = (await orch.get("/v1/executions", limit=3, cursor=first["next_cursor"])).json()
        assert _ids(second) == [mine[2], mine[1], mine[0]]
        assert second["next_cursor"] is None  # exactly six: the second page is the last
        whole = (await orch.get("/v1/executions")).json()
        assert whole["next_cursor"] is None and len(whole["executions"]) == 6 and other not in _ids(whole)
        assert _ids((await orch.get("/v1/executions", key="key-b")).json()) == [other]
        # A cursor of tenant A's pages through tenant B's executions only.
        assert _ids((await orch.get("/v1/executions", key="key-b", cursor=first["next_cursor"])).json()) == []

        assert _ids((await orch.get("/v1/executions", status="cancelled")).json()) == [mine[0]]
        assert len((await orch.get("/v1/executions", status="cancelled,queued")).json()["executions"]) == 6
        assert _ids((await orch.get("/v1/executions", session_id=session)).json()) == [chat]
        assert (await orch.get("/v1/executions", agent="nobody")).json()["executions"] == []
        assert len((await orch.get("/v1/executions", agent="default")).json()["executions"]) == 6
        assert (await orch.get("/v1/executions", since="9000-01-01T00:00:00Z")).json()["executions"] == []
        assert len((await orch.get("/v1/executions", until="9000-01-01T00:00:00Z")).json()["executions"]) == 6

        # Bounded where they enter: each is a 4xx naming the parameter, never a 500.
        for params in (
            {"status": "done"},
            {"limit": "0"},
            {"limit": "201"},
            {"cursor": "x" * 300},
            {"cursor": "bm90LWEtY3Vyc29y"},  # "not-a-cursor"
            {"cursor": base64.urlsafe_b64encode(b"inf|abc").decode()},
            {"agent": "a b"},
            {"since": "yesterday"},
        ):
            r = await orch.get("/v1/executions", **params)
            assert r.status_code in (400, 422), (params, r.status_code, r.text)
            assert next(iter(params)) in r.json()["error"], r.json()
        assert (await orch.get("/v1/executions", key="nobody")).status_code == 401


async def test_list_executions_shows_ends_and_batches(launch: Launcher, sqlite_url: str) -> None:
    async with launch(sqlite_url) as orch:
        done = await _submit(orch)
        await orch.wait_for(f"/v1/executions/{done}", lambda v: v["status"] == "completed")
        batch = (await orch.post("/v1/batches", {"items": [{"input": "1+1"}, {"input": "2+2"}]})).json()
        wanted = {done, *batch["execution_ids"]}
        rows = await orch.wait_for("/v1/executions?status=completed", lambda page: wanted <= set(_ids(page)))
        row = next(e for e in rows["executions"] if e["execution_id"] == done)
        assert row["usage"]["total_tokens"] > 0 and row["attempt"] == 1 and row["origin"] == "api"
        of_batch = (await orch.get("/v1/executions", batch_id=batch["batch_id"])).json()["executions"]
        assert sorted(e["execution_id"] for e in of_batch) == sorted(batch["execution_ids"])
        assert {e["origin"] for e in of_batch} == {"batch"}


async def test_sessions_list_and_delete(launch: Launcher, database_url: str) -> None:
    async with launch(database_url, executor=False) as orch:
        auth = {"Authorization": "Bearer key-a"}
        ids = [(await orch.post("/v1/sessions", {"metadata": {"n": i}})).json()["session_id"] for i in range(3)]
        theirs = (await orch.post("/v1/sessions", {}, key="key-b")).json()["session_id"]
        page = (await orch.get("/v1/sessions", limit=2)).json()
        assert _ids(page, "sessions") == [ids[2], ids[1]]
        rest = (await orch.get("/v1/sessions", limit=2, cursor=page["next_cursor"])).json()
        assert _ids(rest, "sessions") == [ids[0]] and rest["next_cursor"] is None
        assert _ids((await orch.get("/v1/sessions", key="key-b")).json(), "sessions") == [theirs]

        running = (await orch.post(f"/v1/sessions/{ids[1]}/chat", {"content": "hi"})).json()["execution_id"]
        r = await orch.http.delete(f"/v1/sessions/{ids[1]}", headers=auth)
        assert r.status_code == 409 and r.json()["detail"] == {"active_execution_id": running}
        assert len((await orch.get(f"/v1/sessions/{ids[1]}/messages")).json()["messages"]) == 1  # the refusal deleted nothing
        assert (await orch.http.delete(f"/v1/sessions/{theirs}", headers=auth)).status_code == 404
        assert (await orch.get(f"/v1/sessions/{theirs}", key="key-b")).status_code == 200

        assert (await orch.http.delete(f"/v1/sessions/{ids[0]}", headers=auth)).status_code == 204
        assert (await orch.get(f"/v1/sessions/{ids[0]}")).status_code == 404
        assert (await orch.http.delete(f"/v1/sessions/{ids[0]}", headers=auth)).status_code == 404
        assert ids[0] not in _ids((await orch.get("/v1/sessions")).json(), "sessions")

        assert (await orch.post(f"/v1/executions/{running}/cancel")).status_code == 202
        await orch.wait_for(f"/v1/sessions/{ids[1]}", lambda s: s["state"] == "idle")
        assert (await orch.http.delete(f"/v1/sessions/{ids[1]}", headers=auth)).status_code == 204
        # The executions it ran stay in the history.
        assert _ids((await orch.get("/v1/executions", session_id=ids[1])).json()) == [running]


async def test_agents_and_prompt_variables_checked_at_submit(launch: Launcher, sqlite_url: str, tmp_path: Path) -> None:
    async with launch(sqlite_url, executor=False, agents_file=agents_file(tmp_path)) as orch:
        agents = (await orch.get("/v1/agents")).json()["agents"]
        assert [a["name"] for a in agents] == ["default", "polite", "support"]
        support = agents[2]
        assert support["variables"] == ["customer", "order"] and support["tools"] == ["calculator"]
        assert support["provider"] == "scripted" and support["model"] == "scripted-1"
        assert "system_prompt" not in support
        assert (await orch.get("/v1/agents", key="nobody")).status_code == 401

        r = await orch.post("/v1/executions", {"input": "where is it?", "agent": "support", "variables": {"order": {"id": 7}}})
        assert r.status_code == 422, r.text
        assert "'customer'" in r.json()["error"] and r.json()["detail"]["missing"] == "customer"
        given = {"customer": "Ada", "order": {"id": 7}}
        assert (await orch.post("/v1/executions", {"input": "where?", "agent": "support", "variables": given})).status_code == 202
        # `input` and `agent` are ours (a variable of that name does not break the render); one read only when defined is optional.
        assert (await orch.post("/v1/executions", {"input": "hi", "agent": "polite", "variables": {"input": "x"}})).status_code == 202

        items = [{"input": "a", "agent": "default"}, {"input": "b", "agent": "support"}]
        batch = await orch.post("/v1/batches", {"items": items})
        assert batch.status_code == 422 and batch.json()["detail"]["item"] == 1 and batch.json()["detail"]["missing"] == "customer"

        session = (await orch.post("/v1/sessions", {"agent": "support"})).json()["session_id"]
        chat = await orch.post(f"/v1/sessions/{session}/chat", {"content": "hi", "variables": {"customer": "Ada"}})
        assert chat.status_code == 422 and chat.json()["detail"]["missing"] == "order"
        assert (await orch.get(f"/v1/sessions/{session}/messages")).json()["messages"] == []  # nothing written
        assert (await orch.get(f"/v1/sessions/{session}")).json()["state"] == "idle"
