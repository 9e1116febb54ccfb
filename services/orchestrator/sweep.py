"""Timeouts: open work past its deadline ends ``timed_out`` (through ``finalize``), and such an
execution is cancelled on the control topic so an executor still running it stops."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from aiokafka.errors import KafkaError

from services.orchestrator import approvals
from services.orchestrator.store import tasks

if TYPE_CHECKING:
    from services.orchestrator.lifecycle import Lifecycle

log = logging.getLogger(__name__)


async def sweep(lc: Lifecycle) -> int:
    """Mark open work past its deadline timed out; cancel such executions; apply the default decision
    to approvals past their deadline (approvals.py); enqueue the callback of each new wait. Returns how
    many timed out or were decided."""
    decided = await approvals.apply_deadlines(lc)
    await lc.wait_notices.run(lc)  # callbacks of new waits (waitnotices.py)
    now = time.time()
    if not lc.deadlines.due(now):  # nothing in the store falls due yet (nextdue.py): no round trip
        return decided
    lc.deadlines.polling()
    async with lc.store.begin() as conn:
        expired = await tasks.expired(conn, now=now)
    count = decided
    for task in expired:
        if task.kind == "execution" and await approvals.postpone(lc, task.id):
            continue  # waiting for a human: the approval's deadline governs it, not the execution's
        error = f"deadline passed ({datetime.fromtimestamp(task.deadline, UTC).isoformat()})"
        if await lc.finalize(task.id, "timed_out", error=error) is None:
            continue
        count += 1
        log.warning("%s %s of tenant %s timed out", task.kind, task.id, task.tenant_id)
        if task.kind == "execution":
            try:
                await lc.request_cancel(task.id, task.tenant_id, terminal_state="timed_out", error=error)
            except KafkaError:
                log.warning("could not publish the cancel of timed-out execution %s", task.id)
    async with lc.store.begin() as conn:  # after the round: what it ended or postponed is not next
        lc.deadlines.polled(now, await tasks.next_deadline(conn))
    return count
