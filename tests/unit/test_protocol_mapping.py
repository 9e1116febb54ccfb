"""The AG-UI and A2A folds over our events: voided text, newer attempts, structured answers, ends
without a terminal event. The e2e tests (tests/e2e/test_agui.py, test_a2a.py) run the plain path."""

from __future__ import annotations

from typing import Any

from a2a.types import TaskArtifactUpdateEvent, TaskState, TaskStatusUpdateEvent
from ag_ui.core import AssistantMessage, Event, EventType, ToolMessage
from ag_ui.encoder import EventEncoder
from google.protobuf.json_format import MessageToDict
from pydantic import TypeAdapter

from services.orchestrator.a2a.mapping import CURSOR_KEY, A2AEvent, TaskMapper
from services.orchestrator.agui.mapping import RunMapper
from services.orchestrator.openai.mapping import ChatMapper

EVENTS: TypeAdapter[Event] = TypeAdapter(Event)
PREFIX = [{"id": "u1", "role": "user", "content": "what is 1+1?"}]


def started(attempt: int = 1, **extra: Any) -> dict[str, Any]:
    return {"type": "execution.started", "attempt": attempt, **extra}


def token(text: str, step: int = 0) -> dict[str, Any]:
    return {"type": "token.delta", "text": text, "step": step}


RESTARTED = {"type": "execution.restarted", "step": 0, "text_discarded": True}
TOOL = {"type": "tool.call.started", "call_id": "c1", "tool": "calculator", "arguments": {"expression": "1+1"}, "step": 0}
TOOL_DONE = {"type": "tool.call.completed", "call_id": "c1", "tool": "calculator", "result": 2, "step": 0}
COMPLETED = {"type": "execution.completed", "output": "It is 2.", "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}}


def agui(mapper: RunMapper, events: list[dict[str, Any]]) -> list[Any]:
    """Each AG-UI event through the encoder and back through the SDK's models (what a client parses)."""
    encoder = EventEncoder()
    out = []
    for event in events:
        for e in mapper.feed(event):
            out.append(EVENTS.validate_json(encoder.encode(e).removeprefix("data: ")))
    return out


def test_agui_voided_text_is_replaced_by_a_messages_snapshot() -> None:
    mapper = RunMapper(thread_id="t", run_id="r", execution_id="x", prefix=PREFIX)
    out = agui(mapper, [started(), token("Hel"), token("lo"), RESTARTED, token("Hi"), TOOL, TOOL_DONE, token("It is 2.", 1), COMPLETED])
    types = [e.type for e in out]
    assert types[0] == EventType.RUN_STARTED and types[-1] == EventType.RUN_FINISHED
    snapshot = next(e for e in out if e.type == EventType.MESSAGES_SNAPSHOT)
    assert [m.role for m in snapshot.messages] == ["user"]  # "Hello" is gone, the input stays
    # the message with the voided text was closed before the snapshot, a new one opened for "Hi"
    starts = [e.message_id for e in out if e.type == EventType.TEXT_MESSAGE_START]
    ends = [e.message_id for e in out if e.type == EventType.TEXT_MESSAGE_END]
    assert len(starts) == 3 and starts == ends
    call = next(e for e in out if e.type == EventType.TOOL_CALL_START)
    assert call.parent_message_id == starts[1] and call.tool_call_name == "calculator"
    result = next(e for e in out if e.type == EventType.TOOL_CALL_RESULT)
    assert result.tool_call_id == call.tool_call_id and result.content == '{"result":2}'
    finished = out[-1]
    assert finished.result == "It is 2." and finished.usage[0].total_tokens == 7
    final = mapper.snapshot()
    assert [(m.role, getattr(m, "content", None)) for m in final.messages][:2] == [("user", "what is 1+1?"), ("assistant", "Hi")]
    holder = final.messages[1]
    assert isinstance(holder, AssistantMessage) and holder.tool_calls and holder.tool_calls[0].function.arguments == '{"expression":"1+1"}'


def test_agui_a_newer_attempt_voids_the_older_one() -> None:
    mapper = RunMapper(thread_id="t", run_id="r", execution_id="x", prefix=PREFIX, state={"k": 1})
    out = agui(mapper, [started(), token("old"), TOOL, started(2), token("new"), COMPLETED])
    assert [e.type for e in out[:2]] == [EventType.RUN_STARTED, EventType.STATE_SNAPSHOT] and out[1].snapshot == {"k": 1}
    snapshot = next(e for e in out if e.type == EventType.MESSAGES_SNAPSHOT)
    assert [m.role for m in snapshot.messages] == ["user"]
    assert [m.content for m in mapper.snapshot().messages] == ["what is 1+1?", "new"]
    # the second attempt's ids differ from the first's (a client keeps both apart)
    starts = [e.message_id for e in out if e.type == EventType.TEXT_MESSAGE_START]
    assert len(set(starts)) == 2


def test_agui_structured_answer_ends_and_failures() -> None:
    structured = RunMapper(thread_id="t", run_id="r", execution_id="x", prefix=[])
    out = agui(structured, [started(structured=True), token('{"a"'), {"type": "execution.completed", "output": '{"a": 1}'}])
    assert [e.delta for e in out if e.type == EventType.TEXT_MESSAGE_CONTENT] == ['{"a": 1}']
    failed = agui(
        RunMapper(thread_id="t", run_id="r", execution_id="x", prefix=[]), [started(), {"type": "execution.failed", "reason": "boom"}]
    )
    assert failed[-1].type == EventType.RUN_ERROR and "boom" in failed[-1].message
    cancelled = agui(RunMapper(thread_id="t", run_id="r", execution_id="x", prefix=[]), [started(), {"type": "execution.cancelled"}])
    assert cancelled[-1].type == EventType.RUN_FINISHED and cancelled[-1].outcome.type == "cancelled"
    queued = RunMapper(thread_id="t", run_id="r", execution_id="x", prefix=[])
    ended: list[Any] = [
        EVENTS.validate_json(EventEncoder().encode(e).removeprefix("data: ")) for e in queued.end("timed_out", "deadline passed")
    ]
    assert [e.type for e in ended] == [EventType.RUN_STARTED, EventType.RUN_ERROR] and "deadline passed" in ended[1].message
    assert queued.end("failed", "again") == []  # once


def artifact(event: A2AEvent) -> TaskArtifactUpdateEvent:
    assert isinstance(event, TaskArtifactUpdateEvent)
    return event


def status(event: A2AEvent) -> TaskStatusUpdateEvent:
    assert isinstance(event, TaskStatusUpdateEvent)
    return event


def test_a2a_voided_text_resends_the_artifact_and_the_end_replaces_it() -> None:
    mapper = TaskMapper(task_id="x", context_id="ses_1", history=[])
    out = [mapper.feed(i, e) for i, e in enumerate([started(), token("Hel"), token("lo"), RESTARTED, token("Hi"), TOOL, TOOL_DONE])]
    assert status(out[0][0]).status.state == TaskState.TASK_STATE_WORKING
    assert [(artifact(u).append, artifact(u).artifact.parts[0].text) for u in (out[1][0], out[2][0])] == [(False, "Hel"), (True, "lo")]
    assert not artifact(out[3][0]).append and artifact(out[3][0]).artifact.parts[0].text == ""  # the voided step is taken back
    assert MessageToDict(status(out[5][0]).status.message.parts[0].data)["toolCall"]["tool"] == "calculator"
    assert MessageToDict(status(out[6][0]).status.message.parts[0].data)["toolResult"]["result"] == 2
    end = mapper.feed(9, COMPLETED)
    assert artifact(end[0]).last_chunk and artifact(end[0]).artifact.parts[0].text == "It is 2."
    assert status(end[1]).status.state == TaskState.TASK_STATE_COMPLETED
    assert [MessageToDict(e.metadata)[CURSOR_KEY] for e in end] == ["9:0", "9"]  # the earlier one of a group: N:k
    task = mapper.task()
    assert task.artifacts[0].parts[0].text == "It is 2." and MessageToDict(task.metadata)[CURSOR_KEY] == "9"


def test_a2a_newer_attempt_and_ends_without_an_event() -> None:
    mapper = TaskMapper(task_id="x", context_id="ses_1", history=[])
    mapper.feed(0, started())
    mapper.feed(1, token("old"))
    [restart] = mapper.feed(2, started(2))
    assert not artifact(restart).append and artifact(restart).artifact.parts[0].text == ""
    mapper.feed(3, token("new"))
    assert mapper.task().artifacts[0].parts[0].text == "new"
    queued = TaskMapper(task_id="y", context_id="ses_1", history=[])
    [end] = queued.end("timed_out", "deadline passed")
    assert status(end).status.state == TaskState.TASK_STATE_FAILED and "deadline passed" in status(end).status.message.parts[0].text
    assert queued.end("cancelled", None) == [] and queued.task().status.state == TaskState.TASK_STATE_FAILED


def test_a2a_a_resumed_attempt_keeps_the_steps_it_reuses() -> None:
    mapper = TaskMapper(task_id="x", context_id="ses_1", history=[])
    mapper.feed(0, started())
    mapper.feed(1, token("Step zero."))
    mapper.feed(2, {"type": "token.delta", "text": "cut", "step": 1})
    mapper.feed(3, started(2))
    [again] = mapper.feed(4, {"type": "execution.resumed", "attempt": 2, "from_step": 1})
    assert not artifact(again).append and artifact(again).artifact.parts[0].text == "Step zero."
    mapper.feed(5, {"type": "token.delta", "text": "Step one.", "step": 1, "attempt": 2})
    assert mapper.task().artifacts[0].parts[0].text == "Step zero.\n\nStep one."


def test_agui_a_resumed_attempt_keeps_the_steps_it_reuses() -> None:
    from tests.unit.test_openai_mapping import resumed_with_a_rerun

    mapper = RunMapper(thread_id="t", run_id="r", execution_id="x", prefix=[])
    for event in resumed_with_a_rerun():
        mapper.feed(event)
    messages = mapper.snapshot().messages
    assert [(m.role, m.content) for m in messages if m.role == "assistant"] == [("assistant", "Let me"), ("assistant", "It is 42")]
    holder = messages[0]
    assert isinstance(holder, AssistantMessage)
    assert [c.id for c in holder.tool_calls or ()] == ["x.1.c1", "x.2.c2"]  # the interrupted x.1.c2 is gone
    assert [m.tool_call_id for m in messages if isinstance(m, ToolMessage)] == ["x.1.c1", "x.2.c2"]


HANDOFF = {"type": "agent.handoff", "call_id": "h1", "from_agent": "triage", "to_agent": "billing", "reason": "invoice", "step": 0}
HANDED = [started(), token("Let me get billing."), HANDOFF, token("Billing here.", 1), {**COMPLETED, "output": "Billing here."}]


def test_a_handoff_is_a_custom_agui_event_and_an_a2a_status_data_part_and_the_doors_keep_the_text() -> None:
    out = agui(RunMapper(thread_id="t", run_id="r", execution_id="x", prefix=PREFIX), HANDED)
    [custom] = [e for e in out if e.type == EventType.CUSTOM]
    assert custom.name == "agent.handoff" and custom.value == {"from": "triage", "to": "billing", "reason": "invoice"}
    assert out[-1].type == EventType.RUN_FINISHED and out[-1].result == "Billing here."
    mapper = TaskMapper(task_id="x", context_id="ses_1", history=[])
    mapper.feed(0, started())
    [handoff] = mapper.feed(2, HANDOFF)
    data = MessageToDict(status(handoff).status.message.parts[0].data)
    assert data["handoff"] == {"from": "triage", "to": "billing", "reason": "invoice"}
    assert status(handoff).status.state == TaskState.TASK_STATE_WORKING
    # The OpenAI chat door has no place for it: it skips the event, the text of both agents stands.
    chat = ChatMapper(execution_id="x", model="triage", structured=False, include_usage=False)
    chunks = [c for e in HANDED for c in chat.feed(e)]
    assert chat.content() == "Let me get billing.\n\nBilling here." and chunks[-1]["choices"][0]["finish_reason"] == "stop"
