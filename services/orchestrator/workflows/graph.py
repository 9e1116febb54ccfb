"""What a run does next, from its record alone (pure: the driver applies it, and a rebuilt driver
computes the same from the same record). Steps whose needs all ended well start together (a
parallel fan-out); a step with several needs is their join; a step whose ``when`` is false is
skipped (a branch not taken), and a skipped need counts as met, so branches join again. The first
step that fails, is cancelled or times out fails the run (its running steps are cancelled)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from schemas.workflows import MAX_STEP_OUTPUT_CHARS, STEP_ENDS, STEP_FAILURES, RunRecord, RunState, StepRecord, StepSpec
from services.orchestrator.workflows.templates import TemplateError, render


@dataclass
class Next:
    start: list[StepSpec] = field(default_factory=list)
    skip: list[StepSpec] = field(default_factory=list)
    cancel: list[str] = field(default_factory=list)  # running steps to cancel (the run failed)
    end: RunState | None = None
    output: str | None = None
    error: str | None = None


def step_of(run: RunRecord, name: str) -> StepRecord:
    return run.steps.get(name) or StepRecord()


def outputs(run: RunRecord) -> dict[str, dict[str, Any]]:
    """What templates see: the steps that ended, completed or skipped (a skipped one renders empty)."""
    return {name: {"output": rec.output, "result": rec.result} for name, rec in run.steps.items() if rec.state in ("completed", "skipped")}


def next_steps(run: RunRecord) -> Next:
    out = Next()
    if run.state != "running":
        return out
    states = {s.name: step_of(run, s.name).state for s in run.spec.steps}
    failed = next((s.name for s in run.spec.steps if states[s.name] in STEP_FAILURES), None)
    if failed is not None:
        rec = step_of(run, failed)
        out.cancel = [name for name, state in states.items() if state == "running"]
        out.end, out.error = "failed", f"step {failed!r} {rec.state}: {rec.error or ''}".rstrip(": ")
        return out
    for step in run.spec.steps:
        if states[step.name] != "pending" or any(states[n] not in ("completed", "skipped") for n in step.needs):
            continue
        if step.when is not None and not step.when.holds(step_of(run, step.when.step).output or ""):
            states[step.name] = "skipped"  # later steps of this same pass see it met
            out.skip.append(step)
        else:
            out.start.append(step)
    if out.start or any(state not in STEP_ENDS for state in states.values()):
        return out
    out.end = "completed"
    try:
        out.output = run_output(run, skipped=[s.name for s in out.skip])
    except TemplateError as exc:
        out.end, out.error = "failed", f"output: {exc}"
    return out


def run_output(run: RunRecord, *, skipped: list[str]) -> str:
    seen = outputs(run) | {name: {"output": "", "result": None} for name in skipped}
    if run.spec.output is not None:
        return render(run.spec.output, input=run.input, steps=seen, max_chars=MAX_STEP_OUTPUT_CHARS)
    done = [s.name for s in run.spec.steps if step_of(run, s.name).state == "completed"]
    return (step_of(run, done[-1]).output or "") if done else ""
