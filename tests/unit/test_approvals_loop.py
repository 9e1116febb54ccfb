"""Approval in the agent loop (loop.py, approvals.py) and in the checkpoint (checkpoint.py), in memory."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, cast

import orjson
import pytest
from a2a.types import TaskState
from aiokafka import AIOKafkaProducer

from schemas.agents import AgentSpec, ApprovalPolicy
from schemas.events import ExecutionRequested, ToolCallApprovalDecided, ToolCallApprovalRequested, TurnCompleted, TurnToolCall, Usage
from services.common.kafka import encode, header
from services.executor.approvals import Decision, Parked
from services.executor.checkpoint import Checkpoint, DoneStep, LoggedRecord, rebuild
from services.executor.emitter import EventEmitter
from services.executor.loop import run_agent
from services.executor.providers.base import ToolCall
from services.orchestrator.a2a.mapping import task_state
from services.orchestrator.openai.mapping import response_status
from tests.unit.test_emitter import ENVELOPE, HeldProducer
from tests.unit.test_loop_resume import SETTINGS, Book, TwoTurns

CALLS = (ToolCall("c1", "book", '{"item": "A"}'), ToolCall("c2", "book", '{"item": "B"}'))


def _run(producer: HeldProducer, book: Book, policy: ApprovalPolicy, resume: Checkpoint | None = None) -> Any:
    emitter = EventEmitter(cast(AIOKafkaProducer, producer), topic="events", envelope=dict(ENVELOPE), max_chars=1000)
    return run_agent(
        spec=AgentSpec(name="a", tools=("book",), approval=policy),
        request=ExecutionRequested(tenant_id="t", execution_id="e1", agent_id="a", input="book"),
        providers={"scripted": cast(Any, TwoTurns())},
        tools={"book": book},
        emitter=emitter,
        settings=SETTINGS,
        resume=resume,
    )


def _sent(producer: HeldProducer, type_: str) -> list[dict[str, Any]]:
    return [orjson.loads(value) for value, headers in producer.sent if header(headers, "type") == type_]


async def test_calls_that_need_approval_park_the_run_after_the_others_ran() -> None:
    producer, book = HeldProducer(auto_ack=True), Book()
    with pytest.raises(Parked) as parked:
        await _run(producer, book, ApprovalPolicy(tools=("book",), timeout_s=60))
    assert book.calls == []
    assert [p.call.id for p in parked.value.pending] == ["c1", "c2"]
    asked = _sent(producer, "tool.call.approval_requested")
    assert [(a["call_id"], a["arguments"], a["step"]) for a in asked] == [("c1", {"item": "A"}, 0), ("c2", {"item": "B"}, 0)]
    assert len(_sent(producer, "turn.completed")) == 1


async def test_a_resume_applies_the_default_past_the_deadline_and_parks_again_for_the_rest() -> None:
    producer, book = HeldProducer(auto_ack=True), Book()
    now = datetime.now(UTC)
    done = DoneStep(0, "Booking.", CALLS, Usage(), requested={"c1": now - timedelta(seconds=1), "c2": now + timedelta(hours=1)})
    with pytest.raises(Parked) as parked:
        await _run(producer, book, ApprovalPolicy(timeout_s=60), Checkpoint(steps=(done,), previous_attempt=1, from_offset=0))
    assert [p.call.id for p in parked.value.pending] == ["c2"]
    assert book.calls == []  # c1 rejected by its deadline's default; c2 still waits
    decided = _sent(producer, "tool.call.approval_decided")
    assert [(d["call_id"], d["decision"], d["by"]) for d in decided] == [("c1", "reject", "deadline")]
    [completed] = _sent(producer, "tool.call.completed")
    assert completed["call_id"] == "c1" and "deadline" in completed["error"]
    assert _sent(producer, "tool.call.approval_requested") == []  # c2 was announced before: its deadline stands


async def test_decisions_fold_in_approved_with_edited_arguments_rejected_with_the_reason() -> None:
    producer, book = HeldProducer(auto_ack=True), Book()
    decisions = {"c1": Decision("approve", arguments={"item": "Z"}), "c2": Decision("reject", "no budget")}
    done = DoneStep(0, "Booking.", CALLS, Usage(), decisions=decisions)
    outcome = await _run(producer, book, ApprovalPolicy(), Checkpoint(steps=(done,), previous_attempt=1, from_offset=0))
    assert outcome.output == "Done."
    assert book.calls == [("e1:c1", {"item": "Z"})]
    errors = {c["call_id"]: c["error"] for c in _sent(producer, "tool.call.completed")}
    assert errors["c1"] is None and "no budget" in errors["c2"]


def _record(offset: int, event: Any) -> LoggedRecord:
    return LoggedRecord(offset, event.type, event.attempt, encode(event))


def test_the_checkpoint_keeps_the_first_decision_of_each_call() -> None:
    env: dict[str, Any] = {"tenant_id": "t", "execution_id": "e1", "attempt": 1}
    deadline = datetime.now(UTC)
    turn = TurnCompleted(**env, step=0, tool_calls=(TurnToolCall(id="c1", name="book", arguments="{}"),))
    records = [
        LoggedRecord(0, "execution.started", 1, b"{}"),
        _record(1, turn),
        _record(2, ToolCallApprovalRequested(**env, call_id="c1", tool="book", deadline=deadline)),
        _record(3, ToolCallApprovalDecided(**env, call_id="c1", decision="reject", reason="first")),
        _record(4, ToolCallApprovalDecided(**env, call_id="c1", decision="approve")),
        _record(5, ToolCallApprovalDecided(**env, call_id="other", decision="approve")),
    ]
    [step] = rebuild(records, from_offset=0).steps
    assert step.requested == {"c1": deadline}
    assert step.decisions == {"c1": Decision("reject", "first", None, "user")}
    assert step.missing == ("c1",)  # decided but not run yet: the next attempt runs (or rejects) it


def test_waiting_is_in_progress_on_the_doors_not_failed() -> None:
    assert task_state("waiting") == TaskState.TASK_STATE_INPUT_REQUIRED
    assert response_status("waiting") == "in_progress"
