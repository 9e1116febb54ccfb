from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from schemas import EventAdapter, ExecutionCompleted, TokenDelta, Topics
from schemas.export import events_json_schema
from schemas.status import ExecutionStatus


def test_events_round_trip_through_the_discriminated_union() -> None:
    event = TokenDelta(tenant_id="t", execution_id="e", text="hi", seq=3)
    parsed = EventAdapter.validate_json(event.model_dump_json())
    assert parsed == event
    assert isinstance(parsed, TokenDelta)


def test_unknown_fields_are_ignored_and_unknown_types_rejected() -> None:
    raw = {"type": "execution.completed", "tenant_id": "t", "execution_id": "e", "output": "ok", "future_field": 1}
    assert isinstance(EventAdapter.validate_python(raw), ExecutionCompleted)
    with pytest.raises(ValidationError):
        EventAdapter.validate_python({**raw, "type": "execution.exploded"})


def test_events_are_frozen() -> None:
    event = TokenDelta(tenant_id="t", execution_id="e", text="hi")
    with pytest.raises(ValidationError):
        event.text = "changed"


def test_json_schema_export_names_every_type() -> None:
    schema = events_json_schema()
    kinds = {d["properties"]["type"]["const"] for d in schema["$defs"].values() if "type" in d.get("properties", {})}
    assert {"execution.requested", "token.delta", "tool.call.started", "execution.completed", "job.completed"} <= kinds
    json.dumps(schema)


def test_topic_names_come_from_one_place() -> None:
    topics = Topics("x.")
    assert topics.lane("critical") == "x.executions.critical"
    assert topics.events == "x.executions.events"
    assert len(set(topics.all())) == len(topics.all()) == 15  # + cache.invalidations, schedules (issue 20)


def test_status_view_ordering_never_goes_back() -> None:
    queued = ExecutionStatus(execution_id="e", tenant_id="t", state="queued")
    running = queued.model_copy(update={"state": "running", "attempt": 1, "events_partition": 0, "events_start_offset": 7})
    done = queued.model_copy(update={"state": "completed", "attempt": 1})
    retry = queued.model_copy(update={"state": "running", "attempt": 2})
    assert running.supersedes(queued) and not queued.supersedes(running)
    assert done.supersedes(running) and not retry.supersedes(done)
    assert retry.supersedes(running)
    assert done.merged_over(running).events_start_offset == 7
