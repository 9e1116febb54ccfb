"""The OpenAI door's event mapping as a pure fold: what is sent per event, and the final objects,
checked against the official ``openai`` types."""

from __future__ import annotations

from typing import Any

from openai.types.chat import ChatCompletionChunk
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from services.orchestrator.openai.mapping import ChatMapper, ResponseMapper

STREAM_EVENT: TypeAdapter[ResponseStreamEvent] = TypeAdapter(ResponseStreamEvent)


def run(attempt_restart: bool = False) -> list[tuple[int, dict[str, Any]]]:
    events: list[dict[str, Any]] = [
        {"type": "execution.started", "attempt": 1},
        {"type": "token.delta", "text": "Let me", "step": 0},
        {"type": "tool.call.started", "call_id": "c1", "tool": "calculator", "arguments": {"expression": "6*7"}, "step": 0},
        {"type": "tool.call.completed", "call_id": "c1", "tool": "calculator", "result": 42, "step": 0},
        {"type": "token.delta", "text": "lost", "step": 1},
        {"type": "execution.restarted", "step": 1, "text_discarded": True},
        {"type": "token.delta", "text": "It is 42", "step": 1},
        {"type": "execution.completed", "output": "It is 42", "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}},
    ]
    if attempt_restart:  # a crash after the first delta: attempt 2 starts over
        events = events[:2] + [{"type": "execution.started", "attempt": 2}] + [dict(e, attempt=2) for e in events[1:]]
    return [(100 + i, e) for i, e in enumerate(events)]


def test_response_events_are_valid_openai_events_numbered_by_cursor() -> None:
    mapper = ResponseMapper(execution_id="e1", model="default", created_at=1.0, structured=False, request={})
    sent = [(cursor, out) for cursor, e in run() for out in mapper.feed(cursor, e)]
    for cursor, out in sent:
        assert STREAM_EVENT.validate_python(out).sequence_number == cursor
    types = [o["type"] for _, o in sent]
    assert types[:2] == ["response.created", "response.in_progress"] and types[-1] == "response.completed"
    final = Response.model_validate(sent[-1][1]["response"])
    assert [i.type for i in final.output] == ["message", "function_call", "function_call_output", "message"]
    assert final.output_text == "Let meIt is 42"  # the voided "lost" is not in the final output
    assert [i.phase for i in final.output if i.type == "message"] == ["commentary", "final_answer"]
    assert final.usage is not None and final.usage.total_tokens == 7
    voided = [o["item"] for _, o in sent if o["type"] == "response.output_item.done" and o["item"].get("status") == "incomplete"]
    assert [v["content"][0]["text"] for v in voided] == ["lost"]


def test_a_newer_attempt_voids_what_the_older_one_sent() -> None:
    mapper = ResponseMapper(execution_id="e1", model="default", created_at=1.0, structured=False, request={})
    for cursor, e in run(attempt_restart=True):
        mapper.feed(cursor, e)
    final = Response.model_validate(mapper.snapshot())
    assert final.output_text == "Let meIt is 42" and len(final.output) == 4


def test_structured_responses_send_only_the_final_answer() -> None:
    mapper = ResponseMapper(execution_id="e1", model="default", created_at=1.0, structured=True, request={})
    sent = [out for cursor, e in run() for out in mapper.feed(cursor, e)]
    deltas = [o["delta"] for o in sent if o["type"] == "response.output_text.delta"]
    assert deltas == ["It is 42"]


def test_chat_chunks_are_valid_and_add_up_to_the_completion() -> None:
    mapper = ChatMapper(execution_id="e1", model="default", structured=False, include_usage=True)
    chunks = [ChatCompletionChunk.model_validate(c) for _, e in run() for c in mapper.feed(e)]
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == "Let me\n\nlostIt is 42"  # a chat stream cannot take voided text back ...
    assert mapper.completion()["choices"][0]["message"]["content"] == "Let me\n\nIt is 42"  # ... the whole answer leaves it out
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 7


def test_structured_chat_sends_the_final_answer_whole() -> None:
    mapper = ChatMapper(execution_id="e1", model="default", structured=True, include_usage=False)
    chunks = [c for _, e in run() for c in mapper.feed(e)]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == "It is 42"
    assert mapper.completion()["choices"][0]["message"]["content"] == "It is 42"


def test_structured_is_known_from_the_started_event_so_a_resumed_fold_matches() -> None:
    live = ResponseMapper(execution_id="e1", model="default", created_at=1.0, structured=True, request={})
    resumed = ResponseMapper(execution_id="e1", model="default", created_at=1.0, structured=False, request={})  # GET knows no request
    events = [(c, dict(e, structured=True) if e["type"] == "execution.started" else e) for c, e in run()]
    first = [o for c, e in events for o in live.feed(c, e)]
    again = [o for c, e in events for o in resumed.feed(c, e)]
    assert [o["type"] for o in again] == [o["type"] for o in first]
    assert resumed.snapshot()["output"] == live.snapshot()["output"]


def resumed_run() -> list[dict[str, Any]]:
    """Attempt 1 finishes step 0 and is cut off in step 1; attempt 2 resumes from step 1."""
    return [
        {"type": "execution.started", "attempt": 1},
        {"type": "token.delta", "text": "Let me", "step": 0, "attempt": 1},
        {"type": "tool.call.started", "call_id": "c1", "tool": "calculator", "step": 0, "attempt": 1},
        {"type": "tool.call.completed", "call_id": "c1", "tool": "calculator", "result": 42, "step": 0, "attempt": 1},
        {"type": "token.delta", "text": "cut", "step": 1, "attempt": 1},
        {"type": "execution.started", "attempt": 2},
        {"type": "execution.resumed", "attempt": 2, "from_step": 1, "previous_attempt": 1, "reused_calls": 1},
        {"type": "token.delta", "text": "It is 42", "step": 1, "attempt": 2},
        {"type": "execution.completed", "output": "It is 42", "attempt": 2},
    ]


def test_a_resumed_attempt_keeps_the_steps_it_reuses_in_the_chat_completion() -> None:
    mapper = ChatMapper(execution_id="e1", model="default", structured=False, include_usage=False)
    for e in resumed_run():
        mapper.feed(e)
    assert mapper.completion()["choices"][0]["message"]["content"] == "Let me\n\nIt is 42"  # step 0 stands, "cut" is void


def resumed_with_a_rerun() -> list[dict[str, Any]]:
    """Attempt 1 dies inside call c2 of step 0; attempt 2 resumes from step 1 and runs c2 again."""
    return [
        {"type": "execution.started", "attempt": 1},
        {"type": "token.delta", "text": "Let me", "step": 0, "attempt": 1},
        {"type": "tool.call.started", "call_id": "c1", "tool": "calculator", "step": 0, "attempt": 1},
        {"type": "tool.call.completed", "call_id": "c1", "tool": "calculator", "result": 42, "step": 0, "attempt": 1},
        {"type": "tool.call.started", "call_id": "c2", "tool": "calculator", "step": 0, "attempt": 1},
        {"type": "execution.started", "attempt": 2},
        {"type": "execution.resumed", "attempt": 2, "from_step": 1, "reused_calls": 1, "rerun_calls": ["c2"]},
        {"type": "tool.call.started", "call_id": "c2", "tool": "calculator", "step": 0, "attempt": 2},
        {"type": "tool.call.completed", "call_id": "c2", "tool": "calculator", "result": 7, "step": 0, "attempt": 2},
        {"type": "token.delta", "text": "It is 42", "step": 1, "attempt": 2},
        {"type": "execution.completed", "output": "It is 42", "attempt": 2},
    ]


def test_a_resumed_attempt_keeps_the_steps_it_reuses_in_the_response() -> None:
    mapper = ResponseMapper(execution_id="e1", model="default", created_at=1.0, structured=False, request={})
    for cursor, e in enumerate(resumed_with_a_rerun()):
        mapper.feed(cursor, e)
    final = Response.model_validate(mapper.snapshot())
    kinds = [(i.type, getattr(i, "call_id", None)) for i in final.output]
    assert kinds == [
        ("message", None),
        ("function_call", "c1"),
        ("function_call_output", "c1"),
        ("function_call", "c2"),  # the rerun's, not the interrupted one
        ("function_call_output", "c2"),
        ("message", None),
    ]
    assert final.output_text == "Let meIt is 42"
