"""Workflows without a broker (issue 20): definitions, templates, and what a run does next."""

from __future__ import annotations

import io
from pathlib import Path
from typing import cast

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from pydantic import ValidationError
from rich.console import Console

from schemas.status import ExecutionStatus
from schemas.workflows import RunRecord, StepRecord, WorkflowRunRequest, WorkflowSpec
from services.cli.render import Transcript
from services.common.settings import KafkaSettings
from services.common.sources import MemoryProducer
from services.common.statusview import StatusView
from services.orchestrator.workflows.catalog import WorkflowCatalogError, load_workflows, parse_workflow
from services.orchestrator.workflows.graph import next_steps
from services.orchestrator.workflows.runlog import RunLog, end_event, record_of
from services.orchestrator.workflows.steps import run_of_task, step_task_id
from services.orchestrator.workflows.templates import TemplateError, render, render_value

AGENTS = frozenset({"a", "b"})


def spec(*steps: dict[str, object], output: str | None = None) -> WorkflowSpec:
    body: dict[str, object] = {"steps": list(steps)}
    if output is not None:
        body["output"] = output
    return parse_workflow("w", body, agents=AGENTS)


def run_of(workflow: WorkflowSpec, **states: StepRecord) -> RunRecord:
    return RunRecord(run_id="wf_1", tenant_id="t", spec=workflow, input="hi", steps=dict(states))


DIAMOND: tuple[dict[str, object], ...] = (
    {"name": "x", "agent": "a"},
    {"name": "y", "job": "query", "payload": {"query": "{{ input }}"}},
    {"name": "yes", "agent": "b", "needs": ["x", "y"], "when": {"step": "x", "contains": "yes"}},
    {"name": "no", "agent": "b", "needs": ["x", "y"], "when": {"step": "x", "not_contains": "yes"}},
    {"name": "z", "agent": "a", "needs": ["yes", "no"], "input": "{{ steps.yes.output }}{{ steps.no.output }}"},
)


def test_templates_substitute_paths_and_never_evaluate() -> None:
    steps = {"s": {"output": "out", "result": {"docs": [{"id": "d1"}], "n": 3}}}
    assert render("{{ input }}/{{ steps.s.output }}/{{steps.s.result.docs.0.id}}", input="in", steps=steps, max_chars=100) == "in/out/d1"
    assert render("{{ steps.s.result.n }} {{ steps.s.result }}", input="", steps=steps, max_chars=100).startswith('3 {"docs"')
    assert render_value({"q": ["{{ input }}", 2]}, input="v", steps={}, max_chars=10) == {"q": ["v", 2]}
    for bad in ("{{ __import__('os') }}", "{{ steps.s }}", "{{ vars.x }}", "{{ steps.s.result.missing }}", "{{ steps.t.output }}"):
        with pytest.raises(TemplateError):
            render(bad, input="", steps=steps, max_chars=100)
    with pytest.raises(TemplateError, match="at most 5"):
        render("{{ input }}", input="toolong", steps={}, max_chars=5)


@pytest.mark.parametrize(
    ("steps", "problem"),
    [
        (({"name": "x", "agent": "nope"},), "unknown agent"),
        (({"name": "x", "agent": "a", "needs": ["y"]}, {"name": "y", "agent": "a"}), "not steps declared before"),
        (({"name": "x", "agent": "a"}, {"name": "x", "agent": "b"}), "two steps"),
        (({"name": "x", "agent": "a"}, {"name": "y", "agent": "a", "input": "{{ steps.x.output }}"}), "add them to its `needs`"),
        (({"name": "x", "agent": "a"}, {"name": "y", "agent": "a", "when": {"step": "x", "contains": "k"}}), "add them to its `needs`"),
        (({"name": "x", "agent": "a", "job": "query"},), "exactly one of `agent` or `job`"),
        (({"name": "x", "agent": "a", "when": {"step": "x"}},), "exactly one of contains"),
        (({"name": "x", "agent": "a", "timeout_s": 0},), "greater than 0"),
        (({"name": "bad name", "agent": "a"},), "pattern"),
    ],
)
def test_definitions_are_checked_at_load(steps: tuple[dict[str, object], ...], problem: str) -> None:
    with pytest.raises(WorkflowCatalogError, match=problem):
        spec(*steps)


def test_workflows_load_from_the_agents_file(tmp_path: Path) -> None:
    path = tmp_path / "agents.yaml"
    path.write_text("agents:\n  a: {}\nworkflows:\n  w:\n    steps:\n      - {name: x, agent: a}\n")
    assert list(load_workflows(path, agents={"a"})) == ["w"]
    path.write_text("agents:\n  a: {}\n")
    assert load_workflows(path, agents={"a"}) == {}
    assert load_workflows(None, agents=()) == {}
    path.write_text("workflows: [1]\n")
    with pytest.raises(WorkflowCatalogError):
        load_workflows(path, agents={"a"})


def test_parallel_steps_start_together_then_the_branch_and_the_join() -> None:
    w = spec(*DIAMOND)
    first = next_steps(run_of(w))
    assert [s.name for s in first.start] == ["x", "y"] and first.end is None
    # Both parallel steps running: nothing new; one done: the join still waits.
    assert next_steps(run_of(w, x=StepRecord(state="running"), y=StepRecord(state="running"))).start == []
    assert next_steps(run_of(w, x=StepRecord(state="completed", output="Yes"), y=StepRecord(state="running"))).start == []
    done = {"x": StepRecord(state="completed", output="Yes!"), "y": StepRecord(state="completed", output="r")}
    branch = next_steps(run_of(w, **done))
    assert [s.name for s in branch.start] == ["yes"] and [s.name for s in branch.skip] == ["no"]
    # The skipped branch counts as met: the join runs after the taken one.
    joined = next_steps(run_of(w, **done, yes=StepRecord(state="completed", output="Y"), no=StepRecord(state="skipped")))
    assert [s.name for s in joined.start] == ["z"]
    end = next_steps(
        run_of(
            w,
            **done,
            yes=StepRecord(state="completed", output="Y"),
            no=StepRecord(state="skipped"),
            z=StepRecord(state="completed", output="last"),
        )
    )
    assert end.end == "completed" and end.output == "last"


def test_a_failed_step_fails_the_run_and_cancels_the_running_ones() -> None:
    w = spec(*DIAMOND)
    out = next_steps(run_of(w, x=StepRecord(state="timed_out", error="deadline passed"), y=StepRecord(state="running")))
    assert out.end == "failed" and out.cancel == ["y"] and out.start == []
    assert out.error == "step 'x' timed_out: deadline passed"


def test_the_output_template_and_an_all_skipped_run() -> None:
    w = spec(
        {"name": "x", "agent": "a"},
        {"name": "y", "agent": "a", "needs": ["x"], "when": {"step": "x", "equals": "go"}},
        output="[{{ steps.x.output }}|{{ steps.y.output }}]",
    )
    out = next_steps(run_of(w, x=StepRecord(state="completed", output="stop")))
    assert [s.name for s in out.skip] == ["y"] and out.end == "completed" and out.output == "[stop|]"


def test_a_finished_run_does_nothing() -> None:
    w = spec(*DIAMOND)
    assert next_steps(run_of(w).model_copy(update={"state": "cancelled"})).start == []


def test_step_ids_derive_from_the_run() -> None:
    assert step_task_id("wf_abc", "x-1") == "wf_abc.x-1"
    assert run_of_task("wf_abc.x-1") == ("wf_abc", "x-1")
    assert run_of_task("abc.x") is None and run_of_task("wf_abc") is None


def test_run_requests_are_bounded() -> None:
    with pytest.raises(ValidationError):
        WorkflowRunRequest.model_validate({"input": "x" * 200_001})
    with pytest.raises(ValidationError):
        WorkflowRunRequest.model_validate({"input": "x", "extra": 1})


def _record(status: ExecutionStatus | None) -> RunRecord:
    found = record_of(status) if status is not None else None
    assert found is not None
    return found


async def test_the_driver_reads_its_newest_snapshot_when_the_tail_brings_an_older_one_back() -> None:
    """Our own older snapshot of a run, read back from the status topic after a newer one was applied,
    takes the newer one's place in the view (same state, same attempt): the driver reads its newest."""
    kafka = KafkaSettings()
    view = StatusView(kafka)
    producer = MemoryProducer()
    runlog = RunLog(cast(AIOKafkaProducer, producer), kafka, view)
    run = run_of(spec(*DIAMOND))
    first = ExecutionStatus(execution_id="wf_1", tenant_id="t", state="running", attempt=1, extra={"workflow": run.model_dump(mode="json")})
    view.apply(first)
    await runlog.write(first, run.model_copy(update={"steps": {"x": StepRecord(state="running")}}), [])
    older = view.get("wf_1")
    assert older is not None
    await runlog.write(older, run.model_copy(update={"steps": {"x": StepRecord(state="completed", output="yes")}}), [])
    view.apply(older)  # the tail reads the first write back, after the second was applied here
    assert _record(view.get("wf_1")).steps["x"].state == "running"
    assert _record(runlog.current("wf_1")).steps["x"].state == "completed"
    assert [topic for topic, *_ in producer.sent] == [kafka.topics.status] * 2


async def test_the_end_is_written_record_first_then_the_end_event_then_the_terminal_snapshot() -> None:
    kafka = KafkaSettings()
    view = StatusView(kafka)
    producer = MemoryProducer()
    runlog = RunLog(cast(AIOKafkaProducer, producer), kafka, view)
    run = run_of(spec(*DIAMOND))
    status = ExecutionStatus(
        execution_id="wf_1", tenant_id="t", state="running", attempt=1, extra={"workflow": run.model_dump(mode="json")}
    )
    ended = run.model_copy(update={"state": "completed", "output": "done"})
    await runlog.write(status, ended, [end_event(ended)])
    kinds = [
        (topic, orjson.loads(value or b"{}").get("state") or orjson.loads(value or b"{}").get("type"))
        for topic, _, value, _ in producer.sent
    ]
    assert kinds == [(kafka.topics.status, "running"), (kafka.topics.events, "execution.completed"), (kafka.topics.status, "completed")]
    assert _record(view.get("wf_1")).state == "completed" and runlog.current("wf_1") == view.get("wf_1")


def test_the_cli_shows_a_runs_steps() -> None:
    out = io.StringIO()
    console = Console(file=out, width=200, color_system=None)
    transcript = Transcript()
    events: list[dict[str, object]] = [
        {"type": "workflow.run.started", "workflow": "triage", "steps": ["classify", "search"]},
        {"type": "workflow.step.started", "step": "classify", "kind": "agent", "task_id": "wf_1.classify"},
        {"type": "workflow.step.completed", "step": "classify", "output": "question"},
        {"type": "workflow.step.failed", "step": "refund", "status": "skipped", "reason": "condition not met"},
        {"type": "workflow.step.failed", "step": "search", "status": "timed_out", "reason": "deadline passed"},
        {"type": "execution.failed", "reason": "step 'search' timed_out"},
    ]
    for event in events:
        for line in transcript.apply(event):
            console.print(line)
    printed = out.getvalue()
    assert "▶ workflow triage: classify, search" in printed and "▶ classify (agent) as wf_1.classify" in printed
    assert "✓ classify → question" in printed and "· refund skipped" in printed and "✗ search timed_out: deadline passed" in printed
    assert transcript.outcome is not None and transcript.outcome["type"] == "execution.failed"
