"""What happens to work: admission (limits), submission to Kafka, cancel, and the one place where
an execution or job ends (``finalize``): history, usage, batch progress, callbacks, limits, updates.

Every end (a terminal event from the executor, a cancel before start, a timeout, a job result) goes
through ``finalize``, whose conditional update lets exactly one of racing callers apply the effects.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from sqlalchemy.ext.asyncio import AsyncConnection

from schemas.agents import AgentSpec
from schemas.events import ExecutionCancelRequested, ExecutionRequested, Message
from schemas.status import ExecutionStatus
from schemas.topics import Priority
from services.common.errors import Conflict, NotFound, RateLimited, Unavailable
from services.common.kafka import encode, event_headers
from services.common.observability import metrics
from services.common.observability.tracing import producer_span
from services.common.statusview import StatusView
from services.common.taskset import TaskSet
from services.orchestrator.auth import TenantContext
from services.orchestrator.callbacks import Dispatcher
from services.orchestrator.hub import TaskHub
from services.orchestrator.limits import RateLimiter
from services.orchestrator.plans import PlannedCall
from services.orchestrator.settings import OrchestratorSettings
from services.orchestrator.store import Store, plans, records, sessions, tasks
from services.orchestrator.store.tasks import Task
from services.orchestrator.taskfeed import TaskFeed

log = logging.getLogger(__name__)

Writes = Callable[[AsyncConnection], Awaitable[None]]
EndHook = Callable[[Task], Awaitable[None]]
LateHook = Callable[[Task, dict[str, Any]], Awaitable[None]]


def new_id() -> str:
    return uuid.uuid4().hex


def new_traceparent() -> str:
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


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


class Lifecycle:
    def __init__(
        self,
        *,
        settings: OrchestratorSettings,
        store: Store,
        producer: AIOKafkaProducer,
        status: StatusView,
        limiter: RateLimiter,
        hub: TaskHub | TaskFeed,
        dispatcher: Dispatcher,
        agents: dict[str, AgentSpec],
    ) -> None:
        self.settings = settings
        self.store = store
        self.producer = producer
        self.status = status
        self.limiter = limiter
        self.hub = hub
        self.dispatcher = dispatcher
        self.agents = agents
        self._background = TaskSet("lifecycle", log=log)
        # The service coordinator's hooks (coordinator.py): every end applied by ``finalize``, job
        # completions that arrived after their job had ended, checks of delegated jobs' results.
        self.end_hooks: list[EndHook] = []
        self.late_hooks: list[LateHook] = []
        self.result_checks: dict[str, Callable[[Any], str | None]] = {}

    # -- admission --------------------------------------------------------------------------
    async def admit(self, ctx: TenantContext, execution_ids: Sequence[str], *, slots: bool = True) -> None:
        """Count one request; check tokens; take a concurrency slot per execution. 429 if over."""
        limits = ctx.limits
        retry = await self.limiter.hit_request(ctx.id, limits.requests_per_minute)
        if retry is not None:
            metrics.RATE_LIMITED.labels(tenant=ctx.id, limit="requests_per_minute").inc()
            raise _too_many(f"rate limit: more than {limits.requests_per_minute} requests per minute", retry)
        retry = await self.limiter.check_tokens(ctx.id, limits.tokens_per_minute)
        if retry is not None:
            metrics.RATE_LIMITED.labels(tenant=ctx.id, limit="tokens_per_minute").inc()
            raise _too_many(f"rate limit: more than {limits.tokens_per_minute} tokens per minute used", retry)
        if not slots:
            return
        taken: list[str] = []
        for execution_id in execution_ids:
            retry = await self.limiter.acquire_slot(ctx.id, execution_id, limits.concurrent, self.settings.execution_timeout_s)
            if retry is not None:
                await self.release_slots(ctx.id, taken)
                metrics.RATE_LIMITED.labels(tenant=ctx.id, limit="concurrent").inc()
                raise _too_many(f"concurrency limit: {limits.concurrent} executions already running", retry)
            taken.append(execution_id)

    async def release_slots(self, tenant_id: str, execution_ids: Sequence[str]) -> None:
        for execution_id in execution_ids:
            try:
                await self.limiter.release_slot(tenant_id, execution_id)
            except Exception:  # the slot expires with its deadline anyway
                log.warning("could not release the concurrency slot of %s", execution_id, exc_info=True)

    async def accept(self, ctx: TenantContext, subs: Sequence[Submission]) -> None:
        """Admission (limits, a concurrency slot each), then ``submit``: what every door does with a
        request (HTTP, the OpenAI door, the Kafka door). The slots go back if Kafka does not acknowledge."""
        ids = [sub.execution_id for sub in subs]
        await self.admit(ctx, ids)
        try:
            await self.submit(subs)
        except BaseException:
            await self.release_slots(ctx.id, ids)
            raise

    # -- submission -------------------------------------------------------------------------
    async def submit(self, subs: Sequence[Submission], *, writes: Writes | None = None, undo: Writes | None = None) -> None:
        """Record the tasks (with the caller's ``writes``, one transaction), then publish them.

        If Kafka does not acknowledge, the tasks and the caller's writes are undone (``undo``) and
        the request is a 503: nothing is accepted that is not stored, and nothing half-written stays.
        """
        deadline = time.time() + self.settings.execution_timeout_s
        async with self.store.begin() as conn:
            if writes is not None:
                await writes(conn)
            for sub in subs:
                await tasks.create(
                    conn,
                    id=sub.execution_id,
                    kind="execution",
                    tenant_id=sub.tenant_id,
                    agent_id=sub.agent_id,
                    session_id=sub.session_id,
                    batch_id=sub.batch_id,
                    custom_id=sub.custom_id,
                    priority=sub.priority,
                    callback_url=sub.callback_url,
                    origin=sub.origin,
                    deadline=deadline,
                )
                await _record_plan(conn, sub)
        try:
            # aiokafka retries an unreachable broker without end: bound the wait, so an outage is a 503.
            async with asyncio.timeout(self.settings.kafka.request_timeout_ms / 1000):
                await asyncio.gather(*(self._publish(sub, deadline) for sub in subs))
        except (KafkaError, TimeoutError) as exc:
            await self._cancel_published(subs)
            async with self.store.begin() as conn:
                await tasks.delete(conn, [s.execution_id for s in subs])
                if undo is not None:
                    await undo(conn)
            raise Unavailable(
                f"Kafka did not acknowledge the request ({type(exc).__name__}); nothing was accepted, retry later",
                retry_after=1,
            ) from exc

    async def _publish(self, sub: Submission, deadline: float) -> None:
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
            events_topic=sub.reply_to or self.settings.kafka.topics.events,
            created_at=event.ts,
            updated_at=event.ts,
        )
        topics = self.settings.kafka.topics
        lane = topics.lane(sub.priority)
        # 202 only after the broker acknowledged both (acks=all, idempotent producer).
        span = producer_span(lane, fallback_traceparent=sub.traceparent, tenant_id=sub.tenant_id, execution_id=sub.execution_id)
        with span as traceparent:
            await asyncio.gather(
                self.producer.send_and_wait(
                    lane,
                    value=encode(event),
                    key=sub.tenant_id.encode(),
                    headers=event_headers(type_=event.type, tenant_id=sub.tenant_id, traceparent=traceparent),
                ),
                self.producer.send_and_wait(topics.status, value=encode(status), key=sub.execution_id.encode()),
            )
        self.status.apply(status)
        metrics.EXECUTIONS.labels(state="queued", lane=sub.priority).inc()

    async def _cancel_published(self, subs: Sequence[Submission]) -> None:
        # Some of a failed group may have been acknowledged: make sure they never run.
        for sub in subs:
            try:
                # Bounded too: what is not acknowledged now stays queued and is delivered when Kafka is back.
                async with asyncio.timeout(2):
                    await self.request_cancel(sub.execution_id, sub.tenant_id, terminal_state="cancelled")
            except (KafkaError, TimeoutError):
                log.warning("could not cancel %s after a failed submission", sub.execution_id)

    # -- cancel -----------------------------------------------------------------------------
    async def request_cancel(
        self, execution_id: str, tenant_id: str, *, terminal_state: str | None = None, error: str | None = None
    ) -> None:
        """Publish ``execution.cancel_requested``; with ``terminal_state`` also a terminal snapshot,
        so an executor that has not started the execution skips it."""
        topics = self.settings.kafka.topics
        event = ExecutionCancelRequested(tenant_id=tenant_id, execution_id=execution_id)
        sends = [
            self.producer.send_and_wait(
                topics.control,
                value=encode(event),
                key=execution_id.encode(),
                headers=event_headers(type_=event.type, tenant_id=tenant_id),
            )
        ]
        snapshot = None
        if terminal_state is not None:
            current = self.status.get(execution_id)
            base = current or ExecutionStatus(execution_id=execution_id, tenant_id=tenant_id)
            snapshot = base.model_copy(update={"state": terminal_state, "error": error, "updated_at": datetime.now(UTC)})
            sends.append(self.producer.send_and_wait(topics.status, value=encode(snapshot), key=execution_id.encode()))
        await asyncio.gather(*sends)
        if snapshot is not None:
            self.status.apply(snapshot)

    async def cancel(self, execution_id: str, tenant_id: str) -> tuple[str, bool]:
        """Cancel an execution of this tenant: (state now, whether a cancel was requested)."""
        async with self.store.begin() as conn:
            task = await tasks.get(conn, execution_id, tenant_id=tenant_id)
        if task is not None and task.kind != "execution":
            task = None  # a job's id is not an execution's: cancelling it would invent an execution status
        status = self.status.get(execution_id)
        if status is not None and status.tenant_id != tenant_id:
            status = None
        if task is None and status is None:
            raise NotFound("execution not found")
        state: str = status.state if status is not None else "queued"
        if task is not None and not task.open:
            state = task.state
        if state == "cancelled":
            return "cancelled", False  # cancelling twice is harmless
        if state in ("completed", "failed", "timed_out"):
            raise Conflict(f"execution already finished ({state}); nothing to cancel", detail={"status": state})
        queued = state == "queued"
        try:
            await self.request_cancel(execution_id, tenant_id, terminal_state="cancelled" if queued else None)
        except KafkaError as exc:
            raise Unavailable(f"Kafka did not acknowledge the cancel ({type(exc).__name__}); retry", retry_after=1) from exc
        if queued:
            # No executor will report this one: it ends here.
            await self.finalize(execution_id, "cancelled", error="cancelled before it started")
            return "cancelled", True
        return "cancelling", True

    # -- the end of work --------------------------------------------------------------------
    async def finalize(
        self,
        task_id: str,
        state: str,
        *,
        output: str | None = None,
        error: str | None = None,
        result: Any = None,
        usage: dict[str, int] | None = None,
        attempt: int | None = None,
    ) -> Task | None:
        """End an open task once; apply every effect of its end. None if it had already ended, or if
        ``attempt`` (the executor attempt that reported this end) is older than the newest attempt
        started: a paused executor's late end is not projected (no history, usage, callback)."""
        follow_up: list[Submission] = []
        async with self.store.begin() as conn:
            task = await tasks.finish(conn, task_id, state, output=output, result=result, error=error, usage=usage, attempt=attempt)
            if task is None:
                if attempt is not None:
                    log.info("end of %s by attempt %s not applied: already ended, or a newer attempt started", task_id, attempt)
                return None
            if usage:  # executions and delegated jobs (the query service's tokens) alike
                await records.record_usage(
                    conn, execution_id=task.id, tenant_id=task.tenant_id, agent_id=task.agent_id, session_id=task.session_id, tokens=usage
                )
            if task.session_id is not None and task.origin in ("chat", "job"):
                follow_up = await self._session_effects(conn, task, attempt if attempt is not None else max(task.attempt, 1))
            if task.batch_id is not None:
                await self._batch_effects(conn, task.batch_id, task.tenant_id)
            if task.callback_url:
                await records.enqueue_delivery(
                    conn,
                    id="msg_" + new_id(),
                    tenant_id=task.tenant_id,
                    target_kind="execution" if task.kind == "execution" else "job",
                    target_id=task.id,
                    url=task.callback_url,
                    payload=_callback_payload(task),
                )
        if task.kind == "execution":
            metrics.EXECUTIONS.labels(state=task.state, lane=task.priority or "").inc()
            await self.release_slots(task.tenant_id, [task.id])
        if usage and usage.get("total_tokens"):
            try:
                await self.limiter.add_tokens(task.tenant_id, task.id, int(usage["total_tokens"]))
            except Exception:
                log.warning("could not count the tokens of %s", task.id, exc_info=True)
        self.hub.publish(task.tenant_id, task_update(task))
        for hook in self.end_hooks:
            try:
                await hook(task)
            except Exception:
                log.exception("end hook failed for %s %s", task.kind, task.id)
        self.dispatcher.wake()
        for sub in follow_up:
            self._background.spawn(self._start_enqueued(sub), name=f"enqueued-{sub.execution_id}")
        return task

    async def _session_effects(self, conn: AsyncConnection, task: Task, attempt: int) -> list[Submission]:
        assert task.session_id is not None
        if task.kind == "job":
            content = _json_text(task.result)
            await sessions.append(conn, task.session_id, role="tool", content=content, name=task.service, execution_id=task.id)
            return []
        if task.state == "completed":
            calls = await tasks.tool_calls_of(conn, task.id, attempt)
            await sessions.append(
                conn, task.session_id, role="assistant", content=task.output or "", execution_id=task.id, tool_calls=calls or None
            )
        if not await sessions.release(conn, task.session_id, task.id):
            return []
        pending = await sessions.next_pending(conn, task.session_id)
        if pending is None:
            return []
        session = await sessions.get(conn, task.session_id, tenant_id=task.tenant_id)
        assert session is not None
        sub = Submission(tenant_id=task.tenant_id, agent_id=session.agent_id, input=pending.content, session_id=session.id, origin="chat")
        # Claim now, in this transaction, so a chat arriving meanwhile sees the session busy.
        await sessions.claim(conn, session.id, sub.execution_id, expect_active=None)
        await sessions.promote(conn, pending, sub.execution_id)
        sub.history = await history_messages(conn, session.id, before_seq=None, exclude_execution=sub.execution_id)
        return [sub]

    async def _start_enqueued(self, sub: Submission) -> None:
        try:
            await self.limiter.acquire_slot(sub.tenant_id, sub.execution_id, 0, self.settings.execution_timeout_s)
            await self.submit([sub])
        except Exception:
            log.exception("could not start the enqueued message of session %s", sub.session_id)
            async with self.store.begin() as conn:
                assert sub.session_id is not None
                await sessions.release(conn, sub.session_id, sub.execution_id)

    async def _batch_effects(self, conn: AsyncConnection, batch_id: str, tenant_id: str) -> None:
        members = await tasks.of_batch(conn, batch_id)
        if any(t.open for t in members):
            return
        if not await records.complete_batch(conn, batch_id):
            return
        batch = await records.get_batch(conn, batch_id, tenant_id=tenant_id)
        if batch is not None and batch.callback_url:
            counts: dict[str, int] = {}
            for t in members:
                counts[t.state] = counts.get(t.state, 0) + 1
            await records.enqueue_delivery(
                conn,
                id="msg_" + new_id(),
                tenant_id=tenant_id,
                target_kind="batch",
                target_id=batch_id,
                url=batch.callback_url,
                payload={"type": "batch.completed", "batch_id": batch_id, "total": batch.total, "counts": counts},
            )

    # -- timeouts ---------------------------------------------------------------------------
    async def sweep(self) -> int:
        """Mark open work past its deadline timed out; cancel such executions. Returns how many."""
        async with self.store.begin() as conn:
            expired = await tasks.expired(conn, now=time.time())
        count = 0
        for task in expired:
            error = f"deadline passed ({datetime.fromtimestamp(task.deadline, UTC).isoformat()})"
            if await self.finalize(task.id, "timed_out", error=error) is None:
                continue
            count += 1
            log.warning("%s %s of tenant %s timed out", task.kind, task.id, task.tenant_id)
            if task.kind == "execution":
                try:
                    await self.request_cancel(task.id, task.tenant_id, terminal_state="timed_out", error=error)
                except KafkaError:
                    log.warning("could not publish the cancel of timed-out execution %s", task.id)
        return count

    async def stop(self) -> None:
        await self._background.stop()


async def history_messages(
    conn: AsyncConnection, session_id: str, *, before_seq: int | None, exclude_execution: str | None
) -> tuple[Message, ...]:
    """The session's finished conversation as the model sees it (user and assistant turns)."""
    out = []
    for m in await sessions.history(conn, session_id, done_only=True, limit=10_000):
        if before_seq is not None and m.seq >= before_seq:
            break
        if exclude_execution is not None and m.execution_id == exclude_execution and m.role == "user":
            continue
        if m.role in ("user", "assistant", "system"):
            out.append(Message(role=m.role, content=m.content))  # type: ignore[arg-type]
        elif m.role == "tool":
            out.append(Message(role="user", content=f"[{m.name or 'tool'} result] {m.content}"))
    return tuple(out)


async def _record_plan(conn: AsyncConnection, sub: Submission) -> None:
    for call in sub.plan:
        await plans.add(
            conn,
            execution_id=sub.execution_id,
            tenant_id=sub.tenant_id,
            kind=call.kind,
            target=call.target,
            outcome=call.outcome,
            detail=call.detail,
            started_at=call.started_at,
            ended_at=call.ended_at,
        )
    await plans.add(conn, execution_id=sub.execution_id, tenant_id=sub.tenant_id, kind="execution", target=sub.agent_id, outcome="pending")


def task_update(task: Task) -> dict[str, Any]:
    return {
        "type": "task.updated",
        "task_id": task.id,
        "kind": task.kind,
        "status": task.state,
        "service": task.service,
        "agent_id": task.agent_id,
        "session_id": task.session_id,
        "batch_id": task.batch_id,
        "result": task.result,
        "output": task.output,
        "error": task.error,
    }


def _callback_payload(task: Task) -> dict[str, Any]:
    kind = "execution" if task.kind == "execution" else "job"
    return {
        "type": f"{kind}.{task.state}",
        f"{kind}_id": task.id,
        "status": task.state,
        "agent_id": task.agent_id,
        "session_id": task.session_id,
        "batch_id": task.batch_id,
        "output": task.output,
        "result": task.result,
        "error": task.error,
        "usage": task.usage,
    }


def _json_text(value: Any) -> str:
    import orjson

    return value if isinstance(value, str) else orjson.dumps(value).decode()


def _too_many(message: str, retry_after: float) -> RateLimited:
    return RateLimited(message, retry_after=retry_after)
