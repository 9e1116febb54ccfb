"""Approvals (issue 16): the decision on a tool call an execution waits for, and its continuation.

The execution is parked in the log: its ``waiting`` snapshot lists the calls it waits for and holds
its request. A decision is (1) a ``tool.call.approval_decided`` event on the execution's events
partition, under the waiting attempt (what the next attempt rebuilds from), (2) a snapshot that
records it (so the same decision again gets the same answer and a different one a 409, from any
orchestrator), and, once every call waited for is decided, (3) the request back on its lane, so
any executor continues it. The sweeper applies the agent's default when a deadline passes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from aiokafka.errors import KafkaError
from starlette.requests import Request

from schemas.api import ApprovalRequest, ApprovalResponse, InputAnswer, InputReply
from schemas.events import ExecutionRequested, InputProvided, ToolCallApprovalDecided
from schemas.status import ExecutionStatus
from services.common.errors import Conflict, NotFound, Unavailable
from services.common.kafka import RESUME_HEADER, encode, envelope_headers, status_headers
from services.orchestrator.auth import TenantContext
from services.orchestrator.http import parse_json, path_id, state_of, validate
from services.orchestrator.idempotency import idempotent
from services.orchestrator.store import tasks

if TYPE_CHECKING:
    from services.orchestrator.lifecycle import Lifecycle

log = logging.getLogger(__name__)


# How long a decision or an answer waits for the execution's waiting snapshot when it finds the
# execution still running: a client that read the question from the events stream (the CLI prints
# the command at once) can be ahead of the snapshot, which the executor writes after the event.
SETTLE_S = 3.0


async def _settled(lc: Lifecycle, status: ExecutionStatus) -> ExecutionStatus:
    """The execution's snapshot once it is no longer queued or running (or after ``SETTLE_S``)."""
    if status.state not in ("queued", "running"):
        return status
    latest = await lc.status.wait_until(status.execution_id, lambda s: s.state not in ("queued", "running"), timeout=SETTLE_S)
    return latest or status


def _answer(execution_id: str, call_id: str, decided: dict[str, Any]) -> ApprovalResponse:
    return ApprovalResponse.model_validate({"execution_id": execution_id, "call_id": call_id} | decided)


async def decide(
    lc: Lifecycle, execution_id: str, call_id: str, tenant_id: str, body: ApprovalRequest, *, by: Literal["user", "deadline"] = "user"
) -> ApprovalResponse:
    status = lc.status.get(execution_id)
    if status is None or status.tenant_id != tenant_id:
        raise NotFound("execution not found")  # another tenant's execution is not theirs to know about
    status = await _settled(lc, status)
    decisions: dict[str, Any] = dict(status.extra.get("decisions") or {})
    earlier = decisions.get(call_id)
    if earlier is not None:
        if earlier.get("decision") == body.decision:
            return _answer(execution_id, call_id, earlier)  # idempotent: the same answer again
        raise Conflict(f"tool call {call_id!r} was already decided: {earlier.get('decision')}", detail={"decision": earlier})
    if status.state != "waiting":
        raise Conflict(f"execution is not waiting for an approval ({status.state})", detail={"status": status.state})
    approvals, asked = _asked(status, call_id, "approval")
    decided: dict[str, Any] = {"decision": body.decision, "reason": body.reason, "arguments": body.arguments, "by": by}
    event = ToolCallApprovalDecided(
        **_envelope(status),
        call_id=call_id,
        step=int(asked.get("step", 0)),
        decision=body.decision,
        reason=body.reason,
        arguments=body.arguments,
        by=by,
    )
    await _publish(lc, status, event, approvals, decisions | {call_id: decided})
    return _answer(execution_id, call_id, decided)


async def reply(
    lc: Lifecycle, execution_id: str, call_id: str, tenant_id: str, body: InputReply, *, by: Literal["user", "deadline"] = "user"
) -> InputAnswer:
    """The user's answer to an ``ask_user`` call the execution waits for (``input.provided``)."""
    status = lc.status.get(execution_id)
    if status is None or status.tenant_id != tenant_id:
        raise NotFound("execution not found")
    status = await _settled(lc, status)
    decisions: dict[str, Any] = dict(status.extra.get("decisions") or {})
    earlier = decisions.get(call_id)
    if earlier is not None:
        if earlier.get("text") == body.text and earlier.get("by") == by:
            return InputAnswer(execution_id=execution_id, call_id=call_id, text=body.text, by=by)
        raise Conflict(f"question {call_id!r} was already answered", detail={"answer": earlier})
    if status.state != "waiting":
        raise Conflict(f"execution is not waiting for an answer ({status.state})", detail={"status": status.state})
    approvals, asked = _asked(status, call_id, "input")
    answered = {"decision": "approve", "text": body.text, "by": by}
    event = InputProvided(**_envelope(status), call_id=call_id, step=int(asked.get("step", 0)), text=body.text, by=by)
    await _publish(lc, status, event, approvals, decisions | {call_id: answered})
    return InputAnswer(execution_id=execution_id, call_id=call_id, text=body.text, by=by)


def _asked(status: ExecutionStatus, call_id: str, kind: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    approvals: list[dict[str, Any]] = list(status.extra.get("approvals") or [])
    asked = next((a for a in approvals if a.get("call_id") == call_id and a.get("kind", "approval") == kind), None)
    if asked is None:
        what = "tool call waits for approval" if kind == "approval" else "question waits for an answer"
        raise NotFound(f"no {what} with id {call_id!r}; waiting: {[a.get('call_id') for a in approvals]}")
    return approvals, asked


def _envelope(status: ExecutionStatus) -> dict[str, Any]:
    return {
        "tenant_id": status.tenant_id,
        "execution_id": status.execution_id,
        "session_id": status.session_id,
        "agent_id": status.agent_id,
        "attempt": max(status.attempt, 1),  # the waiting attempt's: its lineage is what the next one rebuilds
    }


async def _publish(
    lc: Lifecycle,
    status: ExecutionStatus,
    event: ToolCallApprovalDecided | InputProvided,
    approvals: list[dict[str, Any]],
    decisions: dict[str, Any],
) -> None:
    try:
        await _send(lc, status, event, approvals, decisions)
    except KafkaError as exc:
        raise Unavailable(f"Kafka did not acknowledge the decision ({type(exc).__name__}); retry", retry_after=1) from exc


async def _send(
    lc: Lifecycle,
    status: ExecutionStatus,
    event: ToolCallApprovalDecided | InputProvided,
    approvals: list[dict[str, Any]],
    decisions: dict[str, Any],
) -> None:
    topics = lc.settings.kafka.topics
    # The event first (acknowledged): a resume that finds no decision in the log would only park again.
    await lc.producer.send_and_wait(
        status.events_topic or topics.events,
        value=encode(event),
        key=status.execution_id.encode(),
        partition=status.events_partition,
        headers=envelope_headers(event, service="orchestrator"),
    )
    snapshot = status.model_copy(update={"extra": status.extra | {"decisions": decisions}, "updated_at": datetime.now(UTC)})
    sends = [
        lc.producer.send_and_wait(
            topics.status, value=encode(snapshot), key=status.execution_id.encode(), headers=status_headers(snapshot, "orchestrator")
        )
    ]
    if all(a.get("call_id") in decisions for a in approvals):
        request = ExecutionRequested.model_validate(status.extra.get("request") or {})
        sends.append(
            lc.producer.send_and_wait(
                topics.lane(request.priority),
                value=encode(request),
                key=request.tenant_id.encode(),
                # The executor that takes it waits until its status view knows the waiting attempt (where
                # the events to resume from are), instead of starting over from a view that lags.
                headers=[*envelope_headers(request, service="orchestrator"), (RESUME_HEADER, str(status.attempt).encode())],
            )
        )
    await asyncio.gather(*sends)
    lc.status.apply(snapshot)
    await _extend(lc, status.execution_id, time.time())  # the continued run has its own execution timeout


async def postpone(lc: Lifecycle, execution_id: str) -> bool:
    """If the execution waits for a decision, move its task's deadline past the latest approval deadline
    (plus the execution timeout, for the run after it): a wait of hours is not a timed-out execution."""
    status = lc.status.get(execution_id)
    if status is None or status.state != "waiting":
        return False
    latest = time.time()
    for asked in status.extra.get("approvals") or []:
        with contextlib.suppress(ValueError, TypeError):
            latest = max(latest, datetime.fromisoformat(str(asked.get("deadline"))).timestamp())
    await _extend(lc, execution_id, latest)
    return True


async def _extend(lc: Lifecycle, execution_id: str, after: float) -> None:
    async with lc.store.begin() as conn:
        await tasks.extend_deadline(conn, execution_id, after + lc.settings.execution_timeout_s)


async def apply_deadlines(lc: Lifecycle, *, now: datetime | None = None) -> int:
    """The default decision for every waiting call whose deadline passed; how many were decided."""
    now = now or datetime.now(UTC)
    count = 0
    for status in lc.status.waiting():
        for asked in list(status.extra.get("approvals") or []):
            call_id = str(asked.get("call_id", ""))
            try:
                deadline = datetime.fromisoformat(str(asked.get("deadline")))
            except ValueError:
                continue
            if deadline > now or call_id in (status.extra.get("decisions") or {}):
                continue
            default: Literal["approve", "reject"] = "approve" if asked.get("default") == "approve" else "reject"
            body = ApprovalRequest(decision=default, reason=f"no decision before {deadline.isoformat()}")
            try:
                if asked.get("kind") == "input":
                    await reply(lc, status.execution_id, call_id, status.tenant_id, InputReply(text=""), by="deadline")
                else:
                    await decide(lc, status.execution_id, call_id, status.tenant_id, body, by="deadline")
                count += 1
            except (Conflict, NotFound, Unavailable) as exc:  # decided meanwhile, or Kafka is down: the next sweep tries again
                log.info("deadline of %s/%s not applied: %s", status.execution_id, call_id, exc)
            status = lc.status.get(status.execution_id) or status
    return count


async def _post(request: Request, ctx: TenantContext, body: bytes) -> tuple[int, Any]:
    execution_id = path_id(request, "execution_id", "execution")
    call_id = path_id(request, "call_id", "tool call")
    decision = validate(ApprovalRequest, parse_json(body), "approval")
    answer = await decide(state_of(request).runtime.lifecycle, execution_id, call_id, ctx.id, decision)
    return 200, answer.model_dump(mode="json")


async def _post_input(request: Request, ctx: TenantContext, body: bytes) -> tuple[int, Any]:
    execution_id = path_id(request, "execution_id", "execution")
    call_id = path_id(request, "call_id", "question")
    answer = validate(InputReply, parse_json(body), "answer")
    answered = await reply(state_of(request).runtime.lifecycle, execution_id, call_id, ctx.id, answer)
    return 200, answered.model_dump(mode="json")


post_approval = idempotent(_post)
post_input = idempotent(_post_input)
