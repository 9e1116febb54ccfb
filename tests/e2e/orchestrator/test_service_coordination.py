"""Service coordination on the real broker: knowledge_search through the orchestrator to the reference
Query Service (examples/services), completion over the WebSocket and over the topic, timeouts, bad
completions, orchestration plans, and the query service's tokens in the tenant's usage."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
import websockets
from pydantic import SecretStr

from examples.services.embedders import HashingEmbedder
from examples.services.jobs import JobService, KafkaReporter, Reporter, WebSocketReporter
from examples.services.query import Index, load_docs, query_service
from services.common.settings import KafkaSettings
from services.executor.app import Executor
from services.executor.settings import ExecutorSettings
from services.orchestrator.app import create_app
from services.orchestrator.settings import ServiceEndpoint
from tests.e2e.orchestrator.conftest import Orch, settings_for
from tests.support import collect_events, serve

pytestmark = pytest.mark.kafka

QUERY_TOKEN = "query-svc-token"  # the orchestrator's credential at the service, and the service's on /ws/task_updates
QUESTION = "What do the docs say about a cancel that arrives before start?"


@dataclass
class World:
    orch: Orch
    query: JobService

    async def ask(self, question: str = QUESTION, *, key: str = "key-a") -> tuple[str, list[dict[str, Any]]]:
        r = await self.orch.post("/v1/executions", {"input": question, "agent": "docs"}, key=key)
        assert r.status_code == 202, r.text
        execution_id = str(r.json()["execution_id"])
        items = await collect_events(self.orch.ws_url, key, execution_id, timeout=30)
        return execution_id, [i["event"] for i in items]


Launch = Callable[..., contextlib.AbstractAsyncContextManager[World]]


@pytest.fixture
def world(kafka_settings: KafkaSettings, sqlite_url: str) -> Launch:
    @contextlib.asynccontextmanager
    async def _launch(*, report: str = "ws", behaviour: str = "ok", job_timeout_s: float = 10.0, **overrides: Any) -> AsyncIterator[World]:
        reporter: Reporter
        reporter = (
            WebSocketReporter("", QUERY_TOKEN)
            if report == "ws"
            else KafkaReporter(kafka_settings.bootstrap, kafka_settings.topics.jobs_completed)
        )
        service = query_service(Index(load_docs(), HashingEmbedder()), token=QUERY_TOKEN, reporter=reporter, delay_s=0.3)
        service.behaviour = behaviour
        async with contextlib.AsyncExitStack() as stack:
            service_url = await stack.enter_async_context(serve(service.app()))
            settings = settings_for(
                kafka_settings,
                sqlite_url,
                query_service=ServiceEndpoint(url=service_url, token=SecretStr(QUERY_TOKEN), timeout_s=2.0),
                **({"service_tokens": {"query": SecretStr(QUERY_TOKEN)}, "service_backoff_s": 0.05} | overrides),
            )
            executor_settings = ExecutorSettings(kafka=kafka_settings, scripted_token_delay_ms=1, job_timeout_s=job_timeout_s)
            await stack.enter_async_context(Executor(executor_settings))
            url = await stack.enter_async_context(serve(create_app(settings)))
            if isinstance(reporter, WebSocketReporter):
                reporter.url = url
            import httpx

            http = await stack.enter_async_context(httpx.AsyncClient(base_url=url, timeout=30))
            yield World(orch=Orch(url=url, http=http, settings=settings), query=service)

    return _launch


def of_type(events: list[dict[str, Any]], type_: str) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == type_]


async def wait_plan(orch: Orch, execution_id: str, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    return await orch.wait_for(f"/v1/executions/{execution_id}/plan", predicate, timeout=15)


def plan_done(plan: dict[str, Any]) -> bool:
    return all(c["ended_at"] is not None for c in plan["calls"])


async def test_knowledge_search_completes_over_the_websocket_and_the_answer_uses_it(world: Launch) -> None:
    async with world() as w:
        execution_id, events = await w.ask()
        started = of_type(events, "tool.call.started")
        assert [e["tool"] for e in started] == ["knowledge_search"]
        assert started[0]["arguments"] == {"query": QUESTION}
        progress = of_type(events, "tool.call.progress")
        assert [p["status"] for p in progress] == ["requested", "accepted", "completed"]
        job_id = progress[-1]["job_id"]
        assert job_id.startswith("job_") and progress[1]["job_id"] == job_id
        result = of_type(events, "tool.call.completed")[0]["result"]
        assert result["job_id"] == job_id and result["documents"][0]["id"] == "cancel"
        output = events[-1]["output"]
        assert events[-1]["type"] == "execution.completed"
        assert output.startswith("According to the documents:") and result["answer"] in output and job_id in output

        # The service received the job from the orchestrator (not the executor), with the tenant.
        assert w.query.received[0]["job_id"] == job_id and w.query.received[0]["tenant_id"] == "tenant-a"
        assert w.query.reports[0][1]["type"] == "accepted"
        task = (await w.orch.get(f"/v1/tasks/{job_id}")).json()
        assert task["status"] == "completed" and task["service"] == "query" and task["agent"] == "docs"

        # The plan shows every call, in order, with timings and outcomes; another tenant gets 404.
        plan = await wait_plan(w.orch, execution_id, plan_done)
        calls = plan["calls"]
        assert [(c["kind"], c["outcome"]) for c in calls] == [("agent_config", "ok"), ("execution", "completed"), ("job", "completed")]
        assert calls[2]["job_id"] == job_id and calls[2]["target"] == "query" and calls[2]["duration_ms"] >= 250
        assert (await w.orch.get(f"/v1/executions/{execution_id}/plan", key="key-b")).status_code == 404
        assert (await w.orch.get("/v1/executions/nope/plan")).status_code == 404

        # The query service's tokens count toward the tenant's usage, beside the model's.
        usage = w.query.reports[0][0]["usage"]
        report = await w.orch.wait_for("/v1/usage", lambda r: bool(r["rows"]) and r["rows"][0]["executions"] == 2)
        model_tokens = events[-1]["usage"]["total_tokens"]
        assert report["rows"][0]["total_tokens"] == model_tokens + usage["total_tokens"]


async def test_knowledge_search_completes_over_the_topic_in_a_chat_session(world: Launch) -> None:
    async with world(report="kafka") as w:
        session = (await w.orch.post("/v1/sessions", {"agent": "docs"})).json()
        r = await w.orch.post(
            f"/v1/sessions/{session['session_id']}/chat", {"content": "Do the docs say what a request over a rate limit gets?"}
        )
        assert r.status_code == 202, r.text
        execution_id = r.json()["execution_id"]
        events = [i["event"] for i in await collect_events(w.orch.ws_url, "key-a", execution_id)]
        assert events[-1]["type"] == "execution.completed"
        result = of_type(events, "tool.call.completed")[0]["result"]
        assert result["documents"][0]["id"] == "limits"
        assert result["answer"] in events[-1]["output"]
        assert w.query.reports[0][1] == {"type": "sent"}
        plan = await wait_plan(w.orch, execution_id, plan_done)
        kinds = [c["kind"] for c in plan["calls"]]
        assert kinds == ["agent_config", "history_load", "execution", "job"]
        assert plan["calls"][3]["outcome"] == "completed"


async def test_a_job_past_its_deadline_fails_the_step_and_a_late_completion_is_ignored(world: Launch) -> None:
    async with world(behaviour="never", job_timeout_s=1.0) as w:
        execution_id, events = await w.ask()
        completed = of_type(events, "tool.call.completed")[0]
        assert completed["result"] is None and "timed out" in completed["error"] and "deadline passed" in completed["error"]
        job_id = of_type(events, "tool.call.progress")[-1]["job_id"]
        assert of_type(events, "tool.call.progress")[-1]["status"] == "timed_out"
        assert events[-1]["type"] == "execution.completed"
        assert events[-1]["output"].startswith("I could not search the documents:") and job_id in events[-1]["output"]

        verdict = await send_completion(w.orch, {"job_id": job_id, "tenant_id": "tenant-a", "result": {"answer": "late", "documents": []}})
        assert verdict["type"] == "rejected" and "timed_out" in verdict["error"]
        plan = await wait_plan(w.orch, execution_id, lambda p: any(c["kind"] == "late_completion" for c in p["calls"]))
        job = next(c for c in plan["calls"] if c["kind"] == "job")
        late = next(c for c in plan["calls"] if c["kind"] == "late_completion")
        assert job["outcome"] == "timed_out" and "deadline passed" in job["detail"]
        assert late["outcome"] == "ignored" and late["job_id"] == job_id
        task = (await w.orch.get(f"/v1/tasks/{job_id}")).json()
        assert task["status"] == "timed_out" and task["result"] is None


async def send_completion(orch: Orch, fields: dict[str, Any], *, token: str = QUERY_TOKEN, raw: str | None = None) -> dict[str, Any]:
    async with websockets.connect(f"{orch.ws_url}/ws/task_updates?token={token}") as ws:
        await ws.send(raw if raw is not None else orjson.dumps({"event": "job_completed", "service": "query", **fields}).decode())
        verdict: dict[str, Any] = orjson.loads(await ws.recv())
        return verdict


async def test_foreign_unknown_duplicate_and_malformed_completions_are_rejected(world: Launch) -> None:
    async with world(behaviour="never", service_tokens={"query": SecretStr(QUERY_TOKEN), "embedding": SecretStr("emb")}) as w:
        r = await w.orch.post("/v1/executions", {"input": QUESTION, "agent": "docs"})
        execution_id = r.json()["execution_id"]
        plan = await wait_plan(w.orch, execution_id, lambda p: any(c["kind"] == "job" and c["outcome"] == "running" for c in p["calls"]))
        job_id = next(c["job_id"] for c in plan["calls"] if c["kind"] == "job")
        good = {"answer": "Forged? No: the real one.", "documents": [{"id": "cancel", "text": "t"}]}

        bad = [
            ({"job_id": "job_unknown", "tenant_id": "tenant-a", "result": good}, QUERY_TOKEN, "unknown job"),
            ({"job_id": job_id, "tenant_id": "tenant-b", "result": good}, QUERY_TOKEN, "unknown job"),  # another tenant's
            ({"job_id": job_id, "tenant_id": "tenant-a", "result": good}, "emb", "does not match"),  # another service's token
            ({"tenant_id": "tenant-a", "result": good}, QUERY_TOKEN, "required"),
        ]
        for fields, token, reason in bad:
            verdict = await send_completion(w.orch, fields, token=token)
            assert verdict["type"] == "rejected" and reason in verdict["error"], (fields, verdict)
        verdict = await send_completion(w.orch, {}, raw="{not json")
        assert verdict["type"] == "rejected" and "malformed" in verdict["error"]
        async with websockets.connect(f"{w.orch.ws_url}/ws/task_updates?token=wrong") as ws:
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await ws.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
        assert (await w.orch.get(f"/v1/tasks/{job_id}")).json()["status"] == "running"

        # The right completion is applied, a duplicate is not; the answer uses it.
        assert (await send_completion(w.orch, {"job_id": job_id, "tenant_id": "tenant-a", "result": good}))["type"] == "accepted"
        duplicate = await send_completion(w.orch, {"job_id": job_id, "tenant_id": "tenant-a", "result": {"answer": "x", "documents": []}})
        assert duplicate["type"] == "rejected" and "not in flight" in duplicate["error"]
        events = [i["event"] for i in await collect_events(w.orch.ws_url, "key-a", execution_id)]
        assert "Forged? No: the real one." in events[-1]["output"]
        # Only the session-less tenant-a execution saw it; tenant-b has no such task.
        assert (await w.orch.get(f"/v1/tasks/{job_id}", key="key-b")).status_code == 404


@pytest.mark.parametrize(
    ("behaviour", "reason"),
    [
        ("garbage_answer", "not JSON"),
        ("garbage_result", "invalid result"),
        ("down", "answered 503"),
    ],
)
async def test_a_service_answering_garbage_or_down_fails_the_step_cleanly(world: Launch, behaviour: str, reason: str) -> None:
    async with world(behaviour=behaviour) as w:
        execution_id, events = await w.ask()
        completed = of_type(events, "tool.call.completed")[0]
        assert completed["result"] is None and reason in completed["error"]
        assert of_type(events, "tool.call.progress")[-1]["status"] == "failed"
        assert events[-1]["type"] == "execution.completed" and events[-1]["output"].startswith("I could not search the documents")
        plan = await wait_plan(w.orch, execution_id, plan_done)
        job = next(c for c in plan["calls"] if c["kind"] == "job")
        assert job["outcome"] == "failed" and reason in job["detail"]


async def test_the_circuit_opens_after_repeated_failures_and_fails_fast(world: Launch) -> None:
    async with world(behaviour="down", breaker_failures=2, breaker_reset_s=60) as w:
        for _ in range(2):
            await w.ask()
        posts = len(w.query.received)
        _, events = await w.ask()
        error = of_type(events, "tool.call.completed")[0]["error"]
        assert "circuit open" in error and len(w.query.received) == posts


async def test_a_question_without_docs_does_not_search(world: Launch) -> None:
    async with world() as w:
        _, events = await w.ask("What is 6*7?")
        assert [e["tool"] for e in of_type(events, "tool.call.started")] == ["calculator"]
        assert not w.query.received
        await asyncio.sleep(0)
