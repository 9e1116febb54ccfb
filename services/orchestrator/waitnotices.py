"""Callbacks on a wait (issue 16): an execution with a ``callback_url`` that parks ``waiting`` for an
approval or an answer is told to it, once per wait, signed like every delivery (callbacks.py).

The trigger is the sweeper's round (every ``sweep_interval_s``) over the status view's waiting
executions, not a listener on the view: the view is the current state, so a replica starting up
(which reads the status topic from its beginning) never notifies a wait that was long over. A wait
is (execution, waiting attempt): a continuation that parks again is a new attempt, a new wait. Every
replica sweeps; the delivery id is derived from the wait, so the store's primary key lets only one
of them enqueue it, and a replica restarted mid-wait finds it there.
"""

from __future__ import annotations

import hashlib
import logging
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import IntegrityError

from schemas.status import ExecutionStatus
from services.orchestrator.store import records

if TYPE_CHECKING:
    from services.orchestrator.lifecycle import Lifecycle

log = logging.getLogger(__name__)

Wait = tuple[str, int]  # execution id, the attempt that parked


def delivery_id(execution_id: str, attempt: int) -> str:
    """Stable per wait (the store's ``deliveries.id`` is 40 characters at most)."""
    return "msg_w" + hashlib.sha256(f"{execution_id}:{attempt}".encode()).hexdigest()[:32]


def payload(status: ExecutionStatus) -> dict[str, Any]:
    """What the receiver needs to decide: the calls or questions waited for, and where to post."""
    base = f"/v1/executions/{status.execution_id}"
    waiting_for = []
    for asked in status.extra.get("approvals") or []:
        call_id, kind = str(asked.get("call_id", "")), asked.get("kind", "approval")
        item: dict[str, Any] = {
            "kind": kind,
            "call_id": call_id,
            "tool": asked.get("tool"),
            "step": asked.get("step"),
            "deadline": asked.get("deadline"),
            "default": asked.get("default"),
        }
        if kind == "input":
            item |= {"question": (asked.get("arguments") or {}).get("question", ""), "answer": f"POST {base}/inputs/{call_id}"}
        else:
            item |= {"arguments": asked.get("arguments"), "decide": f"POST {base}/approvals/{call_id}"}
        waiting_for.append(item)
    return {
        "type": "execution.waiting",
        "execution_id": status.execution_id,
        "status": "waiting",
        "attempt": status.attempt,
        "agent_id": status.agent_id,
        "session_id": status.session_id,
        "batch_id": status.intake.batch_id if status.intake else None,
        "waiting_for": waiting_for,
    }


class WaitNotices:
    """The waits this replica has seen enqueued (or enqueued itself): no store round trip per sweep."""

    def __init__(self) -> None:
        self._done: set[Wait] = set()

    async def run(self, lc: Lifecycle) -> int:
        """Enqueue the callback of every wait not notified yet; how many this replica enqueued."""
        waits: dict[Wait, ExecutionStatus] = {
            (s.execution_id, s.attempt): s
            for s in lc.status.waiting()
            if s.intake is not None and s.intake.callback_url and s.extra.get("approvals")
        }
        self._done &= waits.keys()  # bounded by what waits now
        count = 0
        for wait, status in waits.items():
            if wait in self._done:
                continue
            if await self._enqueue(lc, status):
                count += 1
            self._done.add(wait)  # on a store error this raises before: the next sweep tries again
        if count:
            lc.dispatcher.wake()
        return count

    async def _enqueue(self, lc: Lifecycle, status: ExecutionStatus) -> bool:
        assert status.intake is not None and status.intake.callback_url
        msg_id = delivery_id(status.execution_id, status.attempt)
        try:
            async with lc.store.begin() as conn:
                if await records.get_delivery(conn, msg_id) is not None:
                    return False  # another replica (or this one before a restart) enqueued it
                await records.enqueue_delivery(
                    conn,
                    id=msg_id,
                    tenant_id=status.tenant_id,
                    target_kind="execution",
                    target_id=status.execution_id,
                    url=status.intake.callback_url,
                    payload=payload(status),
                )
        except IntegrityError:  # another replica's insert won the race
            return False
        return True
