"""The bounds of schemas/bounds.py: one validation for the API models and the records the executor reads.

The property tests draw odd values (deep and wide JSON, huge and negative numbers, odd ids) and
check that the orchestrator's request model either refuses them or yields an ``execution.requested``
that survives the executor's own parse (``ExecutionRequested.model_validate_json`` of its bytes).
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from schemas.api import ChatRequest, ExecutionRequest, SessionCreate
from schemas.bounds import MAX_CURSOR, MAX_JSON_DEPTH, MAX_TOKENS, Cursor, json_problem, parse_cursor
from schemas.events import ExecutionCompleted, ExecutionRequested, Usage
from schemas.jobs import JobCompletion
from services.common.kafka import encode
from services.orchestrator.sinks import CLOSE_INTERNAL_ERROR, SSESink
from services.orchestrator.tasks import _encoded


def nested(depth: int, leaf: Any = 1) -> Any:
    value = leaf
    for _ in range(depth - 1):
        value = {"a": value}
    return value


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 200, 255, 256, 5000])
def test_variables_nested_too_deep_are_refused_by_the_api_model_and_the_event_alike(depth: int) -> None:
    # Today 200-255 levels pass the API model and are refused by the executor's parse; 256+ are a 500.
    variables = {"x": nested(depth)}
    with pytest.raises(ValidationError, match="nested deeper than"):
        ExecutionRequest.model_validate({"input": "hi", "variables": variables})
    with pytest.raises(ValidationError, match="nested deeper than"):
        ExecutionRequested(tenant_id="t", execution_id="e", input="hi", variables=variables)
    with pytest.raises(ValidationError, match="nested deeper than"):
        SessionCreate.model_validate({"metadata": variables})


def test_variables_at_the_depth_bound_pass_the_api_model_and_the_executors_parse() -> None:
    variables = {"x": nested(MAX_JSON_DEPTH - 1)}
    assert json_problem(variables) is None
    request = ExecutionRequest.model_validate({"input": "hi", "variables": variables})
    record = encode(ExecutionRequested(tenant_id="t", execution_id="e", input="hi", variables=request.variables))
    assert ExecutionRequested.model_validate_json(record).variables == variables


@pytest.mark.parametrize(
    "value, reason",
    [
        (list(range(200_001)), "more than 200000 values"),
        ({"s": "x" * 2_000_001}, "characters"),
        ({"n": 2**64}, "64-bit"),
        ({"f": float("inf")}, "not finite"),
        ({"f": float("nan")}, "not finite"),
        ({1: "non-string key"}, "not a string"),
        ({10**5000: "huge key"}, "not a string"),
        ({"b": b"bytes"}, "not a JSON value"),
    ],
)
def test_free_form_json_is_bounded_in_size_and_kind(value: Any, reason: str) -> None:
    problem = json_problem(value)
    assert problem is not None and reason in problem


@pytest.mark.parametrize("bad", [10**19, 2**31, -1, -992_704, "abc", "12", 1.5, True, None])
def test_usage_counts_are_bounded_non_negative_integers(bad: Any) -> None:
    # Today Usage takes any int (SQLite then overflows) and negative counts (a tenant's total went negative).
    with pytest.raises(ValidationError):
        Usage.model_validate({"prompt_tokens": bad})
    with pytest.raises(ValidationError):  # the same on the events topic (the orchestrator's follower, the bridge)
        ExecutionCompleted.model_validate_json(
            orjson.dumps({"tenant_id": "t", "execution_id": "e", "output": "", "usage": {"total_tokens": bad}})
        )


def test_usage_sums_saturate_at_the_bound() -> None:
    big = Usage(prompt_tokens=MAX_TOKENS, completion_tokens=1, total_tokens=MAX_TOKENS)
    total = big + big
    assert total == Usage(prompt_tokens=MAX_TOKENS, completion_tokens=2, total_tokens=MAX_TOKENS)


@pytest.mark.parametrize("raw", ["99999999999999999999", 2**63, "9223372036854775808", -2, "-2", "1e3", "abc", " ", 1.0, True, "٣"])
def test_cursors_outside_a_kafka_offset_are_refused(raw: Any) -> None:
    with pytest.raises(ValueError):
        parse_cursor(raw)


@pytest.mark.parametrize("raw, value", [("-1", -1), (0, 0), ("42", 42), (MAX_CURSOR, MAX_CURSOR), (str(MAX_CURSOR), MAX_CURSOR)])
def test_cursors_of_kafka_offsets_are_taken(raw: Any, value: int) -> None:
    assert parse_cursor(raw) == value


def test_websocket_cursors_are_json_integers_of_a_kafka_offset() -> None:
    cursor: TypeAdapter[int | None] = TypeAdapter(Cursor | None)
    for bad in (2**63, -2, "12", 1.5, True):
        with pytest.raises(ValidationError):
            cursor.validate_python(bad)
    assert cursor.validate_python(2**63 - 1) == 2**63 - 1 and cursor.validate_python(None) is None


def test_job_completions_name_the_field_out_of_bounds() -> None:
    base = {"event": "job_completed", "job_id": "job-1", "tenant_id": "t", "service": "query"}
    with pytest.raises(ValidationError) as exc:
        JobCompletion.model_validate(base | {"usage": {"prompt_tokens": 1e19}})
    assert exc.value.errors()[0]["loc"] == ("usage", "prompt_tokens")
    with pytest.raises(ValidationError) as exc:
        JobCompletion.model_validate(base | {"result": nested(256)})
    assert exc.value.errors()[0]["loc"] == ("result",)
    with pytest.raises(ValidationError):
        JobCompletion.model_validate(base | {"result": {"usage": {"total_tokens": -5}}}).reported_usage()
    envelope = JobCompletion.model_validate({"type": "job.completed", **{k: v for k, v in base.items() if k != "event"}})
    assert envelope.event == "job.completed"


# -- the property: what the API model accepts, the executor accepts -----------------------------

json_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
json_values = st.recursive(json_leaves, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4))


@st.composite
def deep(draw: st.DrawFn) -> Any:
    return nested(draw(st.integers(min_value=1, max_value=300)), draw(json_leaves))


odd_ids = st.one_of(st.text(max_size=140), st.from_regex(r"[A-Za-z0-9_.:@\-]{1,140}", fullmatch=True))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    variables=st.dictionaries(st.text(max_size=8), json_values | deep(), max_size=4),
    session_id=st.none() | odd_ids,
    agent=odd_ids,
)
def test_what_the_api_accepts_is_a_record_the_executor_accepts(variables: dict[str, Any], session_id: str | None, agent: str) -> None:
    body = {"input": "hi", "variables": variables, "session_id": session_id, "agent": agent}
    try:
        request = ExecutionRequest.model_validate(body)
    except ValidationError:
        return  # a 422 at the edge
    event = ExecutionRequested(
        tenant_id="tenant-a",
        execution_id="0" * 32,
        session_id=request.session_id,
        agent_id=request.agent,
        input=request.input,
        variables=request.variables,
        history=tuple(request.history),
    )
    parsed = ExecutionRequested.model_validate_json(encode(event))  # exactly what the executor does with the record
    assert parsed.variables == event.variables


@settings(max_examples=300, deadline=None)
@given(content=st.text(min_size=1, max_size=50), variables=st.dictionaries(st.text(max_size=8), json_values | deep(), max_size=3))
def test_chat_variables_follow_the_same_rule(content: str, variables: dict[str, Any]) -> None:
    try:
        request = ChatRequest.model_validate({"content": content, "variables": variables})
    except ValidationError:
        return
    event = ExecutionRequested(tenant_id="t", execution_id="e", input=request.content, variables=request.variables)
    ExecutionRequested.model_validate_json(encode(event))


def test_a_control_frame_that_cannot_be_encoded_closes_only_its_own_client() -> None:
    # The bridge's tail calls push_control; an unencodable value there once killed the tail for everyone.
    sink = SSESink(max_bytes=1 << 20, heartbeat_s=15)
    sink.push_control({"type": "end", "cursor": 10**20})
    assert sink.closed.is_set() and sink.close_code == CLOSE_INTERNAL_ERROR


def test_a_task_update_that_cannot_be_encoded_becomes_an_error_frame() -> None:
    frame = orjson.loads(_encoded({"task_id": "job-1", "status": "completed", "result": 10**30}))
    assert frame == {"type": "error", "task_id": "job-1", "error": "this update cannot be encoded"}
