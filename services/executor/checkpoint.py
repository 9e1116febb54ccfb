"""An execution's checkpoint, rebuilt from the events its attempts wrote (the log is the state).

A step is checkpointed by its ``turn.completed`` (the model's text and tool calls, acknowledged
before any tool runs) and done when every call of it has its ``tool.call.completed``. A new
attempt continues after the last done step; calls of a checkpointed step that never completed run
again, with the same call id, so with the same idempotency key. A step without a checkpoint (a turn
cut off mid-stream, or a final answer whose end never reached the log) runs again from its start.

Lineage: the records are read in log order. An ``execution.started`` of a newer attempt voids what
came before, unless that attempt's ``execution.resumed`` says it kept steps below ``from_step``;
records of an attempt older than the newest started one (a fenced run's late writes) are ignored.
So a resume of a resume reuses exactly what the attempt it follows built on.

A step whose ``transfer_to_agent`` call wrote ``agent.handoff`` (issue 20, handoffs.py) holds the
target: a resume continues after it with that agent, once the call itself is done.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime

import orjson
from pydantic import ValidationError

from schemas.events import (
    AgentHandoff,
    ExecutionResumed,
    InputProvided,
    InputRequested,
    ToolCallApprovalDecided,
    ToolCallApprovalRequested,
    ToolCallCompleted,
    TurnCompleted,
    Usage,
)
from services.executor.approvals import Decision
from services.executor.providers.base import ToolCall

# The only record types a rebuild reads (from the record's ``type`` header: token deltas are not parsed).
READ_TYPES = frozenset(
    {
        "execution.started",
        "execution.resumed",
        "turn.completed",
        "tool.call.completed",
        "tool.call.approval_requested",
        "tool.call.approval_decided",
        "input.requested",
        "input.provided",
        "agent.handoff",
    }
)


@dataclass(frozen=True, slots=True)
class LoggedRecord:
    """One record of the execution on its events topic: offset, type and attempt (headers), value."""

    offset: int
    type: str
    attempt: int
    value: bytes


@dataclass(frozen=True, slots=True)
class DoneStep:
    """A checkpointed step: its model turn, and the tool results already in the log."""

    step: int
    text: str
    calls: tuple[ToolCall, ...]
    usage: Usage
    results: dict[str, str] = field(default_factory=dict)  # call id -> the tool message the model saw
    attempts: frozenset[int] = frozenset()  # the attempts whose events this step is made of
    requested: dict[str, datetime] = field(default_factory=dict)  # call id -> approval deadline (approvals.py)
    decisions: dict[str, Decision] = field(default_factory=dict)  # call id -> the first decision in the log
    handoff: tuple[str, str] | None = None  # (call id, target agent) of the step's agent.handoff

    @property
    def missing(self) -> tuple[str, ...]:
        return tuple(c.id for c in self.calls if c.id not in self.results)


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """What a new attempt reuses: steps 0..n-1 (the last may miss some tool results)."""

    steps: tuple[DoneStep, ...]
    previous_attempt: int
    from_offset: int

    @property
    def from_step(self) -> int:
        """The first step whose model turn runs again."""
        return self.steps[-1].step + 1 if self.steps else 0

    @property
    def rerun_calls(self) -> tuple[str, ...]:
        return self.steps[-1].missing if self.steps else ()

    @property
    def reused_calls(self) -> int:
        return sum(len(s.results) for s in self.steps)

    @property
    def attempts(self) -> tuple[int, ...]:
        return tuple(sorted(frozenset().union(*(s.attempts for s in self.steps))))

    @property
    def usage(self) -> Usage:
        total = Usage()
        for s in self.steps:
            total = total + s.usage
        return total


def tool_content(result: object, error: str | None) -> str:
    """The tool message the model gets for a call's outcome (the same when rebuilt from the log)."""
    try:
        return orjson.dumps({"error": error} if error is not None else {"result": result}).decode()
    except TypeError:
        return orjson.dumps({"result": str(result)}).decode()


def rebuild(records: Iterable[LoggedRecord], *, from_offset: int) -> Checkpoint:
    """The checkpoint the records (one execution's, in log order) hold; no steps if nothing is reusable."""
    newest = 0
    steps: dict[int, DoneStep] = {}
    before: dict[int, DoneStep] = {}  # the lineage as it stood when the newest attempt started
    for record in records:
        if record.type == "execution.started":
            if record.attempt > newest:
                newest, before, steps = record.attempt, steps, {}
            continue
        if record.attempt != newest:
            continue  # an older (fenced) attempt's late record, or one of an attempt that never said it started
        try:
            if record.type == "execution.resumed":
                resumed = ExecutionResumed.model_validate_json(record.value)
                steps = {n: s for n, s in before.items() if n < resumed.from_step}
            elif record.type == "turn.completed":
                turn = TurnCompleted.model_validate_json(record.value)
                calls = tuple(ToolCall(id=c.id, name=c.name, arguments=c.arguments) for c in turn.tool_calls)
                steps = {n: s for n, s in steps.items() if n < turn.step}
                steps[turn.step] = DoneStep(turn.step, turn.text, calls, turn.usage, {}, frozenset({record.attempt}))
            elif record.type == "tool.call.completed":
                done = ToolCallCompleted.model_validate_json(record.value)
                step = steps.get(done.step)
                if step is not None and any(c.id == done.call_id for c in step.calls):
                    results = {**step.results, done.call_id: tool_content(done.result, done.error)}
                    steps[done.step] = replace(step, results=results, attempts=step.attempts | {record.attempt})
            elif record.type in ("tool.call.approval_requested", "input.requested"):
                model = ToolCallApprovalRequested if record.type == "tool.call.approval_requested" else InputRequested
                asked = model.model_validate_json(record.value)
                step = steps.get(asked.step)
                if step is not None and asked.call_id not in step.requested:
                    steps[asked.step] = replace(step, requested={**step.requested, asked.call_id: asked.deadline})
            elif record.type == "tool.call.approval_decided":
                # Written by the orchestrator under the attempt that waited: the first one in the log wins.
                decided = ToolCallApprovalDecided.model_validate_json(record.value)
                step = steps.get(decided.step)
                if step is not None and decided.call_id not in step.decisions and any(c.id == decided.call_id for c in step.calls):
                    decision = Decision(decided.decision, decided.reason, decided.arguments, decided.by)
                    steps[decided.step] = replace(step, decisions={**step.decisions, decided.call_id: decision})
            elif record.type == "agent.handoff":
                handed = AgentHandoff.model_validate_json(record.value)
                step = steps.get(handed.step)
                if step is not None and any(c.id == handed.call_id for c in step.calls):
                    steps[handed.step] = replace(step, handoff=(handed.call_id, handed.to_agent))
            elif record.type == "input.provided":
                answer = InputProvided.model_validate_json(record.value)
                step = steps.get(answer.step)
                if step is not None and answer.call_id not in step.decisions and any(c.id == answer.call_id for c in step.calls):
                    decision = Decision("approve", by=answer.by, text=answer.text)
                    steps[answer.step] = replace(step, decisions={**step.decisions, answer.call_id: decision})
        except ValidationError:
            continue  # not one of ours (the topic is the tenant's reply_to): it cannot be reused
    return Checkpoint(steps=_prefix(steps), previous_attempt=newest, from_offset=from_offset)


def _prefix(steps: dict[int, DoneStep]) -> tuple[DoneStep, ...]:
    """Steps 0, 1, ... while each before the last is done: a gap or an unfinished step ends the reuse."""
    kept: list[DoneStep] = []
    for n in range(len(steps)):
        step = steps.get(n)
        if step is None:
            break
        kept.append(step)
        if step.missing:
            break
    return tuple(kept)
