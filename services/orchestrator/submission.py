"""Submission: publish ``execution.requested`` to its lane and the ``queued`` snapshot (which carries
the row's ``Intake``), and answer once the broker acknowledged both: a 202 waits for Kafka and
nothing else. The task row and plan are projected from the log behind it (projection.py)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from aiokafka.errors import KafkaError
from sqlalchemy.ext.asyncio import AsyncConnection

from schemas.events import ExecutionRequested, Message
from schemas.status import ExecutionStatus, Intake, PlanCall
from schemas.topics import Priority
from services.common.errors import Unavailable
from services.common.kafka import encode, envelope_headers, status_headers
from services.common.observability import metrics
from services.common.observability.tracing import producer_span
from services.orchestrator.ids import new_id
from services.orchestrator.plans import PlannedCall
from services.orchestrator.store.tasks import INPUT_PREVIEW_CHARS

if TYPE_CHECKING:
    from services.orchestrator.lifecycle import Lifecycle

log = logging.getLogger(__name__)

Writes = Callable[[AsyncConnection], Awaitable[None]]


@dataclass
class Submission:
    tenant_id: str
    agent_id: str
    input: str
    priority: Priority = "standard"
    variables: dict[str, Any] = field(default_factory=dict)
    history: tuple[Message, ...] = ()
    session_id: str | None = None
    callback_url: str | None = None
    batch_id: str | None = None
    custom_id: str | None = None
    traceparent: str | None = None
    origin: str = "api"  # api | chat | batch: only chat executions write the session's history
    reply_to: str | None = None  # an allowlisted topic of the tenant's; None: the shared events topic
    execution_id: str = field(default_factory=new_id)
    plan: list[PlannedCall] = field(default_factory=list)  # service calls made before submission (plans.py)
    # What the OpenAI door adds (openai/): see ExecutionRequested.
    mode: Literal["agent", "completion"] = "agent"
    params: dict[str, Any] = field(default_factory=dict)
    model: str | None = None
    instructions: str | None = None
    output_schema: dict[str, Any] | None = None
    no_cache: bool = False  # Cache-Control: no-cache: its service jobs skip the result cache (servicecache.py)
    timeout_s: float | None = None  # its own deadline (a workflow step's); None: the orchestrator's execution timeout


async def submit(lc: Lifecycle, subs: Sequence[Submission], *, writes: Writes | None = None, undo: Writes | None = None) -> None:
    """Publish the requests; the caller's ``writes`` (a batch's record, a session's claim), if any,
    in one transaction first. The task rows are not written here: the projection writes them from
    the acknowledged snapshots.

    If Kafka does not acknowledge, the caller's writes are undone (``undo``), whatever was
    acknowledged is cancelled, and the request is ``Unavailable`` (503): nothing is accepted.
    """
    deadline = time.time() + lc.settings.execution_timeout_s
    if writes is not None:
        async with lc.store.begin() as conn:
            await writes(conn)
    try:
        # aiokafka retries an unreachable broker without end: bound the wait, so an outage is a 503.
        async with asyncio.timeout(lc.settings.kafka.request_timeout_ms / 1000):
            if len(subs) == 1:  # the common case, without a Task
                await _publish(lc, subs[0], _deadline(subs[0], deadline))
            else:
                await asyncio.gather(*(_publish(lc, sub, _deadline(sub, deadline)) for sub in subs))
    except (KafkaError, TimeoutError) as exc:
        await _cancel_published(lc, subs)
        if undo is not None:
            async with lc.store.begin() as conn:
                await undo(conn)
        raise Unavailable(
            f"Kafka did not acknowledge the request ({type(exc).__name__}); nothing was accepted, retry later",
            retry_after=1,
        ) from exc


def _deadline(sub: Submission, default: float) -> float:
    return default if sub.timeout_s is None else time.time() + sub.timeout_s


def intake_of(sub: Submission, deadline: float) -> Intake:
    return Intake(
        origin=sub.origin,
        callback_url=sub.callback_url,
        batch_id=sub.batch_id,
        custom_id=sub.custom_id,
        deadline=deadline,
        input_preview=sub.input[:INPUT_PREVIEW_CHARS],
        no_cache=sub.no_cache,
        accepted_at=time.time(),
        plan=tuple(
            PlanCall(kind=c.kind, target=c.target, outcome=c.outcome, detail=c.detail, started_at=c.started_at, ended_at=c.ended_at)
            for c in sub.plan
        ),
    )


async def _publish(lc: Lifecycle, sub: Submission, deadline: float) -> None:
    event = ExecutionRequested(
        tenant_id=sub.tenant_id,
        execution_id=sub.execution_id,
        session_id=sub.session_id,
        agent_id=sub.agent_id,
        input=sub.input,
        priority=sub.priority,
        variables=sub.variables,
        history=sub.history,
        reply_to=sub.reply_to,
        deadline=datetime.fromtimestamp(deadline, UTC),
        mode=sub.mode,
        params=sub.params,
        model=sub.model,
        instructions=sub.instructions,
        output_schema=sub.output_schema,
    )
    status = ExecutionStatus(
        execution_id=sub.execution_id,
        tenant_id=sub.tenant_id,
        agent_id=sub.agent_id,
        session_id=sub.session_id,
        priority=sub.priority,
        events_topic=sub.reply_to or lc.settings.kafka.topics.events,
        created_at=event.ts,
        updated_at=event.ts,
        intake=intake_of(sub, deadline),
    )
    topics = lc.settings.kafka.topics
    lane = topics.lane(sub.priority)
    # 202 only after the broker acknowledged both (acks=all, idempotent producer).
    span = producer_span(lane, fallback_traceparent=sub.traceparent, tenant_id=sub.tenant_id, execution_id=sub.execution_id)
    with span as traceparent:
        # Both sends queued before either is awaited: one produce request carries them (no Task each).
        headers = envelope_headers(event, service="orchestrator", traceparent=traceparent)
        request_sent = await lc.producer.send(lane, value=encode(event), key=sub.tenant_id.encode(), headers=headers)
        status_sent = await lc.producer.send(
            topics.status, value=encode(status), key=sub.execution_id.encode(), headers=status_headers(status, "orchestrator")
        )
        try:
            await request_sent
            written = await status_sent
        except BaseException:
            status_sent.cancel()  # as gather did: nothing waits for it any more (the caller cancels the execution)
            raise
    lc.status.applied_write(status, written.partition, written.offset)
    metrics.EXECUTIONS.labels(state="queued", lane=sub.priority).inc()


async def _cancel_published(lc: Lifecycle, subs: Sequence[Submission]) -> None:
    # Some of a failed group may have been acknowledged: make sure they never run.
    for sub in subs:
        try:
            # Bounded too: what is not acknowledged now stays queued and is delivered when Kafka is back.
            async with asyncio.timeout(2):
                await lc.request_cancel(
                    sub.execution_id,
                    sub.tenant_id,
                    terminal_state="cancelled",
                    error="not accepted: Kafka did not acknowledge",
                    withdrawn=True,
                )
        except (KafkaError, TimeoutError):
            log.warning("could not cancel %s after a failed submission", sub.execution_id)
