"""Cancel: ``execution.cancel_requested`` on the control topic (every executor reads it), and for an
execution that has not started a terminal snapshot, so no executor runs it."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from aiokafka.errors import KafkaError

from schemas.events import ExecutionCancelRequested
from schemas.status import ExecutionStatus
from schemas.status import State as ExecutionState
from services.common.errors import Conflict, NotFound, Unavailable
from services.common.kafka import encode, envelope_headers, status_headers
from services.orchestrator.store import tasks

WITHDRAWN = "withdrawn"  # in a terminal snapshot's ``extra``: the submission it ends was never accepted

if TYPE_CHECKING:
    from services.orchestrator.lifecycle import Lifecycle


async def request_cancel(
    lc: Lifecycle,
    execution_id: str,
    tenant_id: str,
    *,
    terminal_state: ExecutionState | None = None,
    error: str | None = None,
    withdrawn: bool = False,
) -> None:
    """Publish ``execution.cancel_requested``; with ``terminal_state`` also a terminal snapshot,
    so an executor that has not started the execution skips it. ``withdrawn``: the submission was
    not accepted (its acknowledgement failed): the projection removes a row its queued snapshot made."""
    topics = lc.settings.kafka.topics
    event = ExecutionCancelRequested(tenant_id=tenant_id, execution_id=execution_id)
    sends = [
        lc.producer.send_and_wait(
            topics.control,
            value=encode(event),
            key=execution_id.encode(),
            headers=envelope_headers(event, service="orchestrator"),
        )
    ]
    snapshot = None
    if terminal_state is not None:
        current = lc.status.get(execution_id)
        base = current or ExecutionStatus(execution_id=execution_id, tenant_id=tenant_id)
        update: dict[str, object] = {"state": terminal_state, "error": error, "updated_at": datetime.now(UTC)}
        if withdrawn:
            update["extra"] = {**base.extra, WITHDRAWN: True}
        snapshot = base.model_copy(update=update)
        sends.append(
            lc.producer.send_and_wait(
                topics.status, value=encode(snapshot), key=execution_id.encode(), headers=status_headers(snapshot, "orchestrator")
            )
        )
    await asyncio.gather(*sends)
    if snapshot is not None:
        lc.status.apply(snapshot)


async def cancel(lc: Lifecycle, execution_id: str, tenant_id: str) -> tuple[str, bool]:
    """Cancel an execution of this tenant: (state now, whether a cancel was requested)."""
    async with lc.store.begin() as conn:
        task = await tasks.get(conn, execution_id, tenant_id=tenant_id)
    if task is not None and task.kind != "execution":
        task = None  # a job's id is not an execution's: cancelling it would invent an execution status
    status = lc.status.get(execution_id)
    if status is not None and status.tenant_id != tenant_id:
        status = None
    if task is None and status is None:
        raise NotFound("execution not found")
    if task is None and status is not None and status.agent_id.startswith("workflow:"):
        # A workflow run's id names its stream, not an execution an executor runs (issue 20).
        raise Conflict(f"{execution_id} is a workflow run: cancel it with POST /v1/workflows/runs/{execution_id}/cancel")
    state: str = status.state if status is not None else "queued"
    if task is not None and not task.open:
        state = task.state
    if state == "cancelled":
        return "cancelled", False  # cancelling twice is harmless
    if state in ("completed", "failed", "timed_out"):
        raise Conflict(f"execution already finished ({state}); nothing to cancel", detail={"status": state})
    # Queued, or waiting for an approval (parked in the log, issue 16): no executor runs it, so none
    # would report the cancel; it ends here.
    queued = state in ("queued", "waiting")
    error = "cancelled while waiting for approval" if state == "waiting" else "cancelled before it started"
    try:
        await request_cancel(
            lc, execution_id, tenant_id, terminal_state="cancelled" if queued else None, error=error if state == "waiting" else None
        )
    except KafkaError as exc:
        raise Unavailable(f"Kafka did not acknowledge the cancel ({type(exc).__name__}); retry", retry_after=1) from exc
    if queued:
        await lc.finalize(execution_id, "cancelled", error=error)
        return "cancelled", True
    return "cancelling", True
