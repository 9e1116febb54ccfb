"""Workflows on the real broker (issue 20): agent steps through an executor and a fake OpenAI server
on loopback, a query step through the reference Query Service (examples/services), a parallel
fan-out and join, a branch; a run cancelled mid-way; an orchestrator restarted during a run."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import websockets
from pydantic import SecretStr

from examples.services.embedders import HashingEmbedder
from examples.services.embedding import embedding_service
from examples.services.jobs import JobService, KafkaReporter
from examples.services.query import Index, load_docs, query_service
from schemas.events import WorkflowRunStarted
from schemas.status import ExecutionStatus
from schemas.workflows import RunRecord, StepRecord
from services.common.kafka import encode, ensure_topics, envelope_headers, make_producer, start_client, status_headers
from services.common.settings import KafkaSettings
from services.executor.app import Executor
from services.executor.settings import ExecutorSettings
from services.orchestrator.app import create_app
from services.orchestrator.settings import ServiceEndpoint
from services.orchestrator.workflows.catalog import load_workflows
from tests.e2e.orchestrator.conftest import Orch, settings_for
from tests.fakes.openai_server import FakeOpenAI, Reply
from tests.support import serve

pytestmark = pytest.mark.kafka

QUERY_TOKEN = "query-svc-token"
EMBEDDING_TOKEN = "embedding-svc-token"
WAIT_S = 60.0

AGENTS = """
agents:
  classifier: {provider: openai_compatible, model: classify-model, system_prompt: Classify.}
  writer: {provider: openai_compatible, model: writer-model, system_prompt: Write.}
  slow: {provider: openai_compatible, model: slow-model, system_prompt: Take your time.}
  greeter: {provider: openai_compatible, model: writer-model, system_prompt: "Greet {{ customer }}."}
workflows:
  triage:
    description: classify and search in parallel, branch on the class, join for the reply
    steps:
      - {name: classify, agent: classifier}
      - {name: search, job: query, payload: {query: "{{ input }}", top_k: 2}}
      - {name: vectors, job: embedding, payload: {texts: ["{{ input }}"]}}
      - name: refund
        agent: writer
        needs: [classify, search]
        when: {step: classify, contains: refund}
        input: "REFUND {{ input }}"
      - name: answer
        agent: writer
        needs: [classify, search]
        when: {step: classify, not_contains: refund}
        input: "ANSWER {{ steps.search.result.answer }}"
      - {name: reply, agent: writer, needs: [refund, answer, vectors], input: "FINAL {{ steps.refund.output }}{{ steps.answer.output }}"}
    output: "{{ steps.reply.output }} ({{ steps.classify.output }}; {{ steps.vectors.result.dim }} dimensions)"
  pair:
    steps:
      - {name: a, agent: slow}
      - {name: b, agent: slow}
      - {name: c, agent: writer, needs: [a, b]}
  deadline:
    steps:
      - {name: quick, agent: slow, timeout_s: 1}
      - {name: long, agent: slow}
      - {name: after, agent: writer, needs: [quick, long]}
  badjob:
    steps:
      - {name: first, agent: writer, input: ""}
      - {name: lookup, job: query, needs: [first], payload: {query: "{{ steps.first.output }}", top_k: 99}}
      - {name: never, agent: writer, needs: [lookup]}
  greet:
    steps:
      - {name: hello, agent: greeter}
  chain:
    steps:
      - {name: first, agent: slow, input: "{{ input }}"}
      - {name: second, agent: writer, needs: [first], input: "after {{ steps.first.output }}"}
"""


def model(body: dict[str, Any]) -> Reply:
    text = str(body["messages"][-1]["content"])
    if body["model"] == "classify-model":
        return Reply(text=["refund" if "refund" in text.lower() else "question"])
    if body["model"] == "slow-model":
        pieces = int(text) if text.isdigit() else 400  # "30": 30 tokens (3 s); anything else: 40 s
        return Reply(text=["tick "] * pieces, token_delay_s=0.1)
    return Reply(text=[f"<{text}>"])


@dataclass
class World:
    url: str
    orch: Orch
    query: JobService

    @property
    def ws_url(self) -> str:
        return self.url.replace("http", "ws", 1)

    async def start(self, workflow: str, input: str, *, key: str = "key-a") -> str:
        r = await self.orch.post(f"/v1/workflows/{workflow}/runs", {"input": input}, key=key)
        assert r.status_code == 202, r.text
        return str(r.json()["run_id"])

    async def run(self, run_id: str, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        return await self.orch.wait_for(f"/v1/workflows/runs/{run_id}", predicate, timeout=WAIT_S)


Launch = Callable[..., contextlib.AbstractAsyncContextManager[World]]


@pytest.fixture
async def parts(kafka_settings: KafkaSettings, tmp_path: Path) -> AsyncIterator[tuple[Path, dict[str, str], JobService]]:
    """The agents-and-workflows file, the URLs of the reference Query and Embedding services, the query
    service; one executor for the test."""
    agents = tmp_path / "agents.yaml"
    agents.write_text(AGENTS)
    reporter = KafkaReporter(kafka_settings.bootstrap, kafka_settings.topics.jobs_completed)
    service = query_service(Index(load_docs(), HashingEmbedder()), token=QUERY_TOKEN, reporter=reporter, delay_s=0.2)
    embedder = embedding_service(HashingEmbedder(dim=64), token=EMBEDDING_TOKEN, reporter=reporter, delay_s=0.1)
    async with contextlib.AsyncExitStack() as stack:
        fake = await stack.enter_async_context(FakeOpenAI(default=model))
        urls = {"query": await stack.enter_async_context(serve(service.app()))}
        urls["embedding"] = await stack.enter_async_context(serve(embedder.app()))
        executor = ExecutorSettings(kafka=kafka_settings, agents_file=agents, compatible_base_url=fake.openai_url)
        await stack.enter_async_context(Executor(executor))
        yield agents, urls, service


@pytest.fixture
def world(kafka_settings: KafkaSettings, sqlite_url: str, parts: tuple[Path, dict[str, str], JobService]) -> Launch:
    agents, urls, service = parts

    @contextlib.asynccontextmanager
    async def _launch(**overrides: Any) -> AsyncIterator[World]:
        settings = settings_for(
            kafka_settings,
            sqlite_url,
            agents_file=agents,
            query_service=ServiceEndpoint(url=urls["query"], token=SecretStr(QUERY_TOKEN), timeout_s=2.0),
            embedding_service=ServiceEndpoint(url=urls["embedding"], token=SecretStr(EMBEDDING_TOKEN), timeout_s=2.0),
            service_tokens={"query": SecretStr(QUERY_TOKEN), "embedding": SecretStr(EMBEDDING_TOKEN)},
            **overrides,
        )
        async with serve(create_app(settings)) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
            yield World(url=url, orch=Orch(url=url, http=http, settings=settings), query=service)

    return _launch


async def follow(ws_url: str, run_id: str, *, cursor: int | None = None, key: str = "key-a") -> list[dict[str, Any]]:
    """The run's own stream (its partition), from the start or after ``cursor``, until the run's end."""
    items: list[dict[str, Any]] = []
    async with websockets.connect(f"{ws_url}/v1/stream?api_key={key}") as ws:
        await ws.send(orjson.dumps({"type": "subscribe", "execution_id": run_id, "cursor": cursor}).decode())
        async with asyncio.timeout(WAIT_S):
            while True:
                frame = orjson.loads(await ws.recv())
                assert frame["type"] != "error", frame
                if frame["type"] == "events":
                    items.extend(frame["events"])
                    if items[-1]["event"]["type"] in {"execution.completed", "execution.failed", "execution.cancelled"}:
                        return items


async def follow_steps(ws_url: str, run_id: str, count: int, *, key: str = "key-a") -> dict[str, list[str]]:
    """Every step execution's own events, through one subscription to the run id as a session label."""
    seen: dict[str, list[str]] = {}
    async with websockets.connect(f"{ws_url}/v1/stream?api_key={key}") as ws:
        await ws.send(orjson.dumps({"type": "subscribe", "session_id": run_id}).decode())
        controls: list[dict[str, Any]] = []
        try:
            async with asyncio.timeout(WAIT_S):
                while sum(types[-1:] == ["execution.completed"] for types in seen.values()) < count:
                    frame = orjson.loads(await ws.recv())
                    assert frame["type"] != "error", frame
                    if frame["type"] != "events":
                        controls.append(frame)
                    for item in frame.get("events", []):
                        seen.setdefault(item["execution_id"], []).append(item["event"]["type"])
        except TimeoutError:
            raise AssertionError(f"not every step's end came: {seen} {controls}") from None
    return seen


def states(view: dict[str, Any]) -> dict[str, str]:
    return {s["name"]: s["state"] for s in view["steps"]}


async def test_a_run_fans_out_joins_branches_and_streams_on_one_cursor(world: Launch) -> None:
    async with world() as w:
        run_id = await w.start("triage", "What do the docs say about a cancel that arrives before start?")
        view = await w.run(run_id, lambda v: v["status"] != "running")

        assert view["status"] == "completed", view
        expected = {"classify": "completed", "search": "completed", "vectors": "completed", "refund": "skipped", "answer": "completed"}
        expected["reply"] = "completed"
        assert states(view) == expected
        steps = {s["name"]: s for s in view["steps"]}
        answer = steps["search"]["result"]["answer"]
        assert steps["answer"]["output"] == f"<ANSWER {answer}>"  # the job's result, templated into the next step
        assert view["output"] == f"<FINAL <ANSWER {answer}>> (question; 64 dimensions)"
        assert steps["vectors"]["output"] == "1 embeddings of 64 dimensions"
        joins = [("classify", "refund"), ("search", "refund"), ("classify", "answer"), ("search", "answer")]
        assert sorted(map(tuple, view["edges"])) == sorted([*joins, ("refund", "reply"), ("answer", "reply"), ("vectors", "reply")])
        # Every step is a task of the registry with an id derived from the run's: the job went to the query service.
        assert steps["search"]["task_id"] == f"{run_id}.search"
        assert [j["job_id"] for j in w.query.received] == [f"{run_id}.search"] and w.query.received[0]["tenant_id"] == "tenant-a"
        job = (await w.orch.get(f"/v1/tasks/{run_id}.search")).json()
        assert job["status"] == "completed" and job["service"] == "query"
        execution = (await w.orch.get(f"/v1/executions/{run_id}.answer")).json()
        assert execution["status"] == "completed" and execution["agent"] == "writer"
        # The parallel pair started before the join: classify and search both before either branch.
        assert max(steps["classify"]["started_at"], steps["search"]["started_at"]) <= steps["answer"]["started_at"]

        # One cursor-resumable stream: the run's start, each step's start and end, then the run's end.
        items = await follow(w.ws_url, run_id)
        types = [(i["event"]["type"], i["event"].get("step")) for i in items]
        assert types[0] == ("workflow.run.started", None) and types[-1] == ("execution.completed", None)
        assert ("workflow.step.failed", "refund") in types and ("workflow.step.completed", "reply") in types
        assert types.index(("workflow.step.completed", "answer")) < types.index(("workflow.step.started", "reply"))
        started = {i["event"]["step"]: i["event"]["task_id"] for i in items if i["event"]["type"] == "workflow.step.started"}
        assert set(started) == {"classify", "search", "vectors", "answer", "reply"}
        cursors = [i["cursor"] for i in items]
        assert cursors == sorted(cursors) and len(set(cursors)) == len(cursors)
        # Resuming after a cursor gives exactly the rest, in order.
        middle = len(items) // 2
        rest = await follow(w.ws_url, run_id, cursor=cursors[middle])
        assert [i["cursor"] for i in rest] == cursors[middle + 1 :]

        # Each step's own events (tokens and all), followed at once through the run id as a session label.
        own = await follow_steps(w.ws_url, run_id, 3)
        assert set(own) == {f"{run_id}.classify", f"{run_id}.answer", f"{run_id}.reply"}
        assert all(types[0] == "execution.started" and "token.delta" in types for types in own.values())
        # Usage counts per tenant as for executions: three agent steps and the query job.
        usage = await w.orch.wait_for("/v1/usage", lambda r: bool(r["rows"]) and r["rows"][0]["executions"] == 4)
        assert usage["rows"][0]["total_tokens"] > 0, usage
        of_run = (await w.orch.get("/v1/usage", session_id=run_id)).json()["rows"]  # the run's own: its steps carry its id
        assert [(r["executions"], r["total_tokens"]) for r in of_run] == [(4, usage["rows"][0]["total_tokens"])]

        # Another tenant sees nothing of it; an unknown workflow is a 404 with the known ones.
        assert (await w.orch.get(f"/v1/workflows/runs/{run_id}", key="key-b")).status_code == 404
        r = await w.orch.post("/v1/workflows/nope/runs", {"input": "x"})
        assert r.status_code == 404 and "triage" in r.text
        assert (await w.orch.post("/v1/workflows/triage/runs", {"input": 5})).status_code == 422
        r = await w.orch.post("/v1/workflows/greet/runs", {"input": "hi"})  # its agent's prompt needs a variable
        assert r.status_code == 422 and "customer" in r.text


async def test_a_branch_takes_the_other_path(world: Launch) -> None:
    async with world() as w:
        body, key = {"input": "I want a refund for my order"}, {"Idempotency-Key": "refund-1"}
        first, again = [await w.orch.post("/v1/workflows/triage/runs", body, headers=key) for _ in range(2)]
        assert first.status_code == again.status_code == 202 and again.headers.get("idempotent-replayed") == "true"
        run_id = first.json()["run_id"]
        assert again.json()["run_id"] == run_id  # the same run, not a second one
        view = await w.run(run_id, lambda v: v["status"] != "running")
        assert view["status"] == "completed", view
        assert states(view)["refund"] == "completed" and states(view)["answer"] == "skipped"
        assert view["output"] == "<FINAL <REFUND I want a refund for my order>> (refund; 64 dimensions)"


async def test_cancel_mid_run_cancels_every_running_step(world: Launch) -> None:
    async with world() as w:
        run_id = await w.start("pair", "slowly")
        for step in ("a", "b"):  # both parallel steps are running in the executor
            await w.orch.wait_for(f"/v1/executions/{run_id}.{step}", lambda e: e["status"] == "running", timeout=WAIT_S)
        wrong = await w.orch.post(f"/v1/executions/{run_id}/cancel")  # a run is not an execution's cancel
        assert wrong.status_code == 409 and f"/v1/workflows/runs/{run_id}/cancel" in wrong.text
        r = await w.orch.post(f"/v1/workflows/runs/{run_id}/cancel")
        assert r.status_code == 202, r.text
        assert r.json()["status"] == "cancelling" and sorted(r.json()["cancelled_steps"]) == ["a", "b"]
        for step in ("a", "b"):
            await w.orch.wait_for(f"/v1/executions/{run_id}.{step}", lambda e: e["status"] == "cancelled", timeout=WAIT_S)
        view = await w.run(run_id, lambda v: v["status"] != "running")
        assert view["status"] == "cancelled" and states(view) == {"a": "cancelled", "b": "cancelled", "c": "pending"}
        assert (await w.orch.get(f"/v1/executions/{run_id}.c")).status_code == 404  # the join never started
        again = await w.orch.post(f"/v1/workflows/runs/{run_id}/cancel")
        assert again.status_code == 200 and again.json()["cancel_requested"] is False
        items = await follow(w.ws_url, run_id)
        assert items[-1]["event"]["type"] == "execution.cancelled"


async def test_a_run_survives_an_orchestrator_restart(world: Launch) -> None:
    async with world() as w:
        run_id = await w.start("chain", "30")  # its first step runs ~3 s in the executor
        await w.orch.wait_for(f"/v1/executions/{run_id}.first", lambda e: e["status"] == "running", timeout=WAIT_S)
    # The orchestrator is gone while the step runs (and ends); a new one rebuilds the run from the log.
    async with world() as w:
        view = await w.run(run_id, lambda v: v["status"] != "running")
        assert view["status"] == "completed", view
        assert states(view) == {"first": "completed", "second": "completed"}
        first = next(s for s in view["steps"] if s["name"] == "first")["output"]
        assert first.startswith("tick") and view["output"] == f"<after {first}>"
        items = await follow(w.ws_url, run_id)
        started = [i["event"]["step"] for i in items if i["event"]["type"] == "workflow.step.started"]
        assert started == ["first", "second"]  # each step submitted once, across the restart


async def test_a_run_recorded_on_the_log_but_never_submitted_is_finished_by_a_new_orchestrator(
    world: Launch, kafka_settings: KafkaSettings, parts: tuple[Path, dict[str, str], JobService]
) -> None:
    """What a driver leaves when it stops between recording a step's start and submitting it: only
    the run's snapshot on the status topic. An orchestrator started afterwards rebuilds the run from
    it, submits the step under its deterministic id, and finishes the run."""
    agents, _, _ = parts
    chain = load_workflows(agents, agents={"slow", "writer", "classifier", "greeter"})["chain"]
    run_id = "wf_" + uuid.uuid4().hex
    record = RunRecord(
        run_id=run_id,
        tenant_id="tenant-a",
        spec=chain,
        input="5",
        steps={"first": StepRecord(state="running", task_id=f"{run_id}.first", started_at=time.time()), "second": StepRecord()},
    )
    await ensure_topics(kafka_settings)
    producer = make_producer(kafka_settings, client_id="test-driver")
    await start_client(producer, kafka_settings)
    try:
        started = WorkflowRunStarted(tenant_id="tenant-a", execution_id=run_id, agent_id="workflow:chain", workflow="chain")
        headers = envelope_headers(started, service="orchestrator")
        meta = await producer.send_and_wait(kafka_settings.topics.events, value=encode(started), key=run_id.encode(), headers=headers)
        status = ExecutionStatus(
            execution_id=run_id,
            tenant_id="tenant-a",
            agent_id="workflow:chain",
            state="running",
            attempt=1,
            events_topic=kafka_settings.topics.events,
            events_partition=meta.partition,
            events_start_offset=meta.offset,
            extra={"workflow": record.model_dump(mode="json")},
        )
        await producer.send_and_wait(
            kafka_settings.topics.status, value=encode(status), key=run_id.encode(), headers=status_headers(status, "orchestrator")
        )
    finally:
        await producer.stop()
    async with world() as w:
        view = await w.run(run_id, lambda v: v["status"] != "running")
        assert view["status"] == "completed", view
        assert states(view) == {"first": "completed", "second": "completed"}
        first = (await w.orch.get(f"/v1/executions/{run_id}.first")).json()
        assert first["status"] == "completed" and first["attempt"] == 1  # submitted once, by the rebuilt driver
        assert view["output"] == f"<after {'tick ' * 5}>"


async def test_agent_steps_take_the_tenants_concurrency_slots(world: Launch) -> None:
    """With one slot, the two parallel steps run one after the other (the second waits for the slot)."""
    async with world(concurrent_executions=1) as w:
        run_id = await w.start("pair", "15")
        view = await w.run(run_id, lambda v: v["status"] != "running")
        assert view["status"] == "completed", view
        # The executions themselves: the second was submitted only once the first had ended (its slot back).
        a, b, c = [(await w.orch.get(f"/v1/executions/{run_id}.{n}")).json() for n in ("a", "b", "c")]
        first, second = sorted((a, b), key=lambda e: datetime.fromisoformat(e["created_at"]))
        for earlier, later in ((first, second), (second, c)):
            assert datetime.fromisoformat(later["created_at"]) >= datetime.fromisoformat(earlier["updated_at"]), (earlier, later)


async def test_two_orchestrators_drive_each_run_once(world: Launch) -> None:
    """Replicas share the runs: the one holding a run's events partition drives it, so each step of
    each run starts once, whichever replica accepted the run or applied a step's end."""
    async with world() as one, world() as two:
        starts = [(one if i % 2 else two).start("triage", f"Question {i}: what does a cancel before start do?") for i in range(8)]
        runs = await asyncio.gather(*starts)
        for run_id in runs:
            view = await one.run(run_id, lambda v: v["status"] != "running")
            assert view["status"] == "completed", view
            assert (await two.orch.get(f"/v1/workflows/runs/{run_id}")).status_code == 200  # either replica answers
            items = await follow(two.ws_url, run_id)
            started = [i["event"]["step"] for i in items if i["event"]["type"] == "workflow.step.started"]
            assert sorted(started) == ["answer", "classify", "reply", "search", "vectors"], started
            ends = [i["event"]["type"] for i in items if i["event"]["type"].startswith("execution.")]
            assert ends == ["execution.completed"]


async def test_a_step_past_its_own_deadline_fails_the_run_and_cancels_the_others(world: Launch) -> None:
    async with world() as w:
        run_id = await w.start("deadline", "slowly")
        view = await w.run(run_id, lambda v: v["status"] != "running")
        assert view["status"] == "failed" and view["error"].startswith("step 'quick' timed_out"), view
        assert states(view) == {"quick": "timed_out", "long": "cancelled", "after": "pending"}
        await w.orch.wait_for(f"/v1/executions/{run_id}.long", lambda e: e["status"] == "cancelled", timeout=WAIT_S)
        items = await follow(w.ws_url, run_id)
        assert [i["event"]["type"] for i in items][-1] == "execution.failed"
        assert ("workflow.step.failed", "long", "cancelled") in [
            (i["event"]["type"], i["event"].get("step"), i["event"].get("status")) for i in items
        ]


async def test_a_step_whose_templated_input_the_service_refuses_fails_the_run(world: Launch) -> None:
    async with world() as w:
        run_id = await w.start("badjob", "x")
        view = await w.run(run_id, lambda v: v["status"] != "running")
        assert view["status"] == "failed" and states(view) == {"first": "completed", "lookup": "failed", "never": "pending"}
        lookup = next(s for s in view["steps"] if s["name"] == "lookup")
        assert lookup["error"].startswith("invalid query input") and lookup["task_id"] is None  # refused before any job
        assert "lookup" in view["error"]
