"""The status view keeps where an execution's events start when its end came first (issue 20 found it:
a workflow step that ended in milliseconds was streamed as an `end` without any event)."""

from __future__ import annotations

from schemas.status import ExecutionStatus
from services.common.settings import KafkaSettings
from services.common.statusview import StatusView


def test_a_running_snapshot_after_the_end_still_tells_where_the_events_start() -> None:
    view = StatusView(KafkaSettings())
    queued = ExecutionStatus(execution_id="e1", tenant_id="t", state="queued")
    view.apply(queued)
    # The bridge applied the terminal event from the events tail before the status tail brought "running".
    view.apply(queued.model_copy(update={"state": "completed", "attempt": 1, "output": "done"}))
    running = queued.model_copy(
        update={
            "state": "running",
            "attempt": 1,
            "events_topic": "ev",
            "events_partition": 2,
            "events_start_offset": 40,
            "attempt_start_offset": 40,
        }
    )
    assert view.apply(running) is False  # an end stays the end
    status = view.get("e1")
    assert status is not None and status.state == "completed" and status.output == "done"
    assert (status.events_topic, status.events_partition, status.events_start_offset, status.attempt_start_offset) == ("ev", 2, 40, 40)
    # An older attempt's start is not this attempt's.
    view.apply(ExecutionStatus(execution_id="e2", tenant_id="t", state="completed", attempt=2))
    view.apply(running.model_copy(update={"execution_id": "e2", "attempt": 1}))
    other = view.get("e2")
    assert other is not None and other.events_start_offset is None
