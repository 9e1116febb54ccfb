"""``StatusView.wait_until`` wakes when the view changes, whoever applied the change (the tail, the
bridge's terminal event, the orchestrator's own write), and one execution's waiters only for it."""

from __future__ import annotations

import asyncio

from schemas.status import ExecutionStatus, Intake
from services.common.statusview import StatusView
from tests.unit.test_fencing import KAFKA


async def test_a_snapshot_applied_directly_wakes_its_waiters_at_once() -> None:
    view = StatusView(KAFKA)
    waiters = [asyncio.ensure_future(view.wait_until("e1", lambda s: s.events_start_offset is not None, timeout=120)) for _ in range(1000)]
    other = asyncio.ensure_future(view.wait_until("e2", lambda _: True, timeout=120))
    await asyncio.sleep(0)  # all of them waiting
    view.apply(ExecutionStatus(execution_id="e1", tenant_id="t"))  # not what they wait for: they wait on
    view.apply(ExecutionStatus(execution_id="e1", tenant_id="t", state="running", events_partition=0, events_start_offset=7))
    async with asyncio.timeout(10):  # far below their own timeout: woken by the change, not timed out
        got = await asyncio.gather(*waiters)
    assert {s.events_start_offset for s in got if s is not None} == {7} and len(got) == 1000
    assert not other.done()
    view.apply(ExecutionStatus(execution_id="e2", tenant_id="t"))
    async with asyncio.timeout(10):
        assert (await other) is not None
    assert view._waiters == {}  # nothing left behind


async def test_a_waiter_that_times_out_leaves_nothing_behind() -> None:
    view = StatusView(KAFKA)
    assert await view.wait_until("e1", lambda _: True, timeout=0.01) is None
    assert view._waiters == {}


def test_an_intake_applied_after_a_newer_snapshot_is_kept() -> None:
    """Our own queued snapshot (with the intake) applied at its acknowledgement, after the executor's
    running one came in by the tail: the view keeps the newer state and gains the intake (an end
    then writes the row from it; without it the end was ignored as not ours)."""
    view = StatusView(KAFKA)
    view.apply(ExecutionStatus(execution_id="e1", tenant_id="t", state="running", attempt=1))
    intake = Intake(deadline=1.0, accepted_at=0.0, origin="api")
    assert not view.apply(ExecutionStatus(execution_id="e1", tenant_id="t", intake=intake))
    got = view.get("e1")
    assert got is not None and got.state == "running" and got.intake == intake
