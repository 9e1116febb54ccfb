"""The status view keeps only its most recently used snapshots as objects (statusview.HOT); the rest
are packed to JSON bytes the cyclic collector does not track, and every read still sees them whole."""

from __future__ import annotations

import gc

from schemas.status import ExecutionStatus, Intake, PlanCall
from services.common.settings import KafkaSettings
from services.common.statusview import StatusView


def _queued(i: int) -> ExecutionStatus:
    intake = Intake(deadline=1e9, accepted_at=1.0, plan=(PlanCall(kind="query", target="t", outcome="ok", started_at=1.0),))
    return ExecutionStatus(execution_id=f"e{i}", tenant_id="t", session_id=f"s{i % 3}", intake=intake, extra={"k": [i]})


def _tracked(view: StatusView) -> int:
    ids = {id(o) for o in gc.get_objects()}
    # What the view holds that the collector walks: its entries' objects (models, dicts, sets).
    return sum(1 for o in gc.get_referents(*view._cold.values(), *view._hot.values()) if id(o) in ids)


def test_a_big_view_keeps_few_objects_and_reads_every_snapshot_whole() -> None:
    view = StatusView(KafkaSettings(), hot=16)
    for i in range(2000):
        assert view.apply(_queued(i))
    assert len(view) == 2000
    assert len(view._hot) == 16 and all(isinstance(v, bytes) for v in view._cold.values())
    gc.collect()
    assert _tracked(view) < 16 * 4  # bytes are not tracked: only the hot models' parts are

    old = view.get("e3")
    assert old is not None and old.session_id == "s0" and old.intake is not None
    assert old.intake.plan[0].target == "t" and old.extra == {"k": [3]}
    assert "e3" in view and "e99999" not in view and view.get("e99999") is None
    # A later snapshot of a packed execution merges over it as before: the intake is carried over.
    running = ExecutionStatus(execution_id="e5", tenant_id="t", state="running", attempt=1, events_start_offset=7)
    assert view.apply(running)
    merged = view.get("e5")
    assert merged is not None and merged.state == "running" and merged.intake is not None and merged.events_start_offset == 7
    # An older one still does not win.
    assert not view.apply(_queued(5))
    assert [s.execution_id for s in view.for_session("t", "s1")][:3] == ["e1", "e4", "e7"]
    assert {s.execution_id for s in view.matching(lambda s: s.state == "running")} == {"e5"}


class _Record:
    def __init__(self, partition: int, offset: int, value: bytes) -> None:
        self.partition, self.offset, self.value = partition, offset, value


def test_the_tail_skips_our_own_acknowledged_snapshot_and_reads_every_other() -> None:
    view = StatusView(KafkaSettings())
    ours = _queued(1)
    assert view.applied_write(ours, 2, 40)
    # Read back at its offset: not decoded again (a value that would not even parse shows it).
    view._handle(_Record(2, 40, b"not json"))
    assert view.get("e1") == ours
    # The same offset again (a reopened tail), or another record: decoded as usual.
    running = ExecutionStatus(execution_id="e1", tenant_id="t", state="running", attempt=1)
    view._handle(_Record(2, 40, running.model_dump_json().encode()))
    assert (got := view.get("e1")) is not None and got.state == "running"


def test_own_writes_never_read_back_are_forgotten_past_a_bound() -> None:
    from services.common import statusview

    view = StatusView(KafkaSettings())
    for offset in range(statusview.OWN_MAX + 10):
        view.own_write(0, offset)
    assert len(view._own) == statusview.OWN_MAX and (0, 0) not in view._own
