"""The workflow driver: starts runs, advances them when a step ends, cancels them, and rebuilds
the open ones from the log at start.

A run's state lives on the log, twice: its events (``workflow.run.started``, ``workflow.step.*``,
then ``execution.completed|failed|cancelled`` under the run's id) in the run's own partition of the
events topic, which is what a client follows with a cursor, and its whole record
(``schemas.workflows.RunRecord``) in ``extra["workflow"]`` of the run's snapshot on the compacted
status topic, which every replica's status view reads from the beginning at start: no process holds
a run only in memory. The driver reacts to the ends ``finalize`` applies (``lc.end_hooks``) and,
every sweep interval, reconciles open runs with the registry (an end that reached another replica,
a step refused a concurrency slot, a driver that stopped between writing a step's start and
submitting it). Writes for one run are serialized here; see docs/workflows.md for replicas.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from aiokafka.errors import KafkaError

from schemas.events import (
    Envelope,
    WorkflowCancelRequested,
    WorkflowRunStarted,
    WorkflowStepCompleted,
    WorkflowStepFailed,
    WorkflowStepStarted,
)
from schemas.status import ExecutionStatus
from schemas.workflows import RunRecord, StepRecord, WorkflowRunRequest, WorkflowSpec
from services.common.errors import NotFound, Unavailable
from services.common.taskset import TaskSet
from services.orchestrator.auth import TenantContext
from services.orchestrator.executions import checked_prompt
from services.orchestrator.ids import new_id
from services.orchestrator.store import tasks
from services.orchestrator.store.tasks import Task
from services.orchestrator.workflows import steps
from services.orchestrator.workflows.graph import next_steps, step_of
from services.orchestrator.workflows.runlog import RUN_KEY, RunLog, end_event, envelope, is_run, record_of
from services.orchestrator.workflows.steps import RUN_PREFIX, StepRefused, agent_label, run_of_task, step_task_id

if TYPE_CHECKING:
    from services.orchestrator.coordinator import ServiceCoordinator
    from services.orchestrator.lifecycle import Lifecycle

log = logging.getLogger(__name__)


class WorkflowDriver:
    def __init__(
        self,
        lifecycle: Lifecycle,
        coordinator: ServiceCoordinator,
        workflows: dict[str, WorkflowSpec],
        *,
        owns: Callable[[int | None], bool] = lambda _: True,
    ) -> None:
        self.lc = lifecycle
        self.coordinator = coordinator
        self.workflows = workflows
        # Whether this replica drives a run: it holds the run's events partition in the events
        # follower's group (runtime.py), so one replica at a time writes a run's records.
        self.owns = owns
        self._locks: dict[str, asyncio.Lock] = {}
        self._open: set[str] = set()  # the runs not ended, as far as this replica's view knows
        self.runlog = RunLog(lifecycle.producer, lifecycle.settings.kafka, lifecycle.status)
        self._background = TaskSet("workflows", log=log)
        self._ticker: asyncio.Task[None] | None = None
        lifecycle.end_hooks.append(self._on_end)

    async def start(self) -> None:
        # The status view was read to its end before the runtime started: its open runs are the ones to finish.
        # The reconcile visits only open runs: those of the view now, and each new one it learns of
        # (from any replica), not every execution the view holds.
        self.lc.status.on_new.append(self._learn)
        for status in self.lc.status.matching(lambda s: is_run(s) and not s.terminal):
            self._open.add(status.execution_id)
            self._background.spawn(self.advance(status.execution_id), name=f"rebuild-{status.execution_id}")
        self._ticker = asyncio.create_task(self._tick_forever(), name="workflow-ticker")

    async def stop(self) -> None:
        with contextlib.suppress(ValueError):
            self.lc.status.on_new.remove(self._learn)
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        await self._background.stop()

    # -- reads ----------------------------------------------------------------------------------
    def current(self, run_id: str) -> ExecutionStatus | None:
        return self.runlog.current(run_id)

    def get(self, run_id: str, tenant_id: str) -> tuple[ExecutionStatus, RunRecord]:
        status = self.current(run_id)
        run = record_of(status) if status is not None and is_run(status) else None
        if status is None or run is None or status.tenant_id != tenant_id:
            raise NotFound("workflow run not found")
        return status, run

    # -- start ----------------------------------------------------------------------------------
    async def start_run(self, ctx: TenantContext, name: str, req: WorkflowRunRequest) -> RunRecord:
        spec = self.workflows.get(name)
        if spec is None:
            raise NotFound(f"unknown workflow {name!r}; known workflows: {sorted(self.workflows)}")
        for step in spec.steps:  # a variable an agent's prompt needs is a 422 now, not a failed step later
            if step.agent is not None:
                checked_prompt(self.lc.agents, step.agent, req.variables, "")
        run_id = RUN_PREFIX + new_id()
        await self.lc.admit(ctx, [run_id], slots=False)  # one request of the tenant's; each agent step takes a slot
        run = RunRecord(
            run_id=run_id,
            tenant_id=ctx.id,
            spec=spec,
            input=req.input,
            variables=req.variables,
            concurrent=ctx.limits.concurrent,
            steps={s.name: StepRecord() for s in spec.steps},
        )
        started = WorkflowRunStarted(
            tenant_id=ctx.id, execution_id=run_id, agent_id=agent_label(run), workflow=name, steps=tuple(s.name for s in spec.steps)
        )
        topics = self.lc.settings.kafka.topics
        try:
            async with asyncio.timeout(self.lc.settings.kafka.request_timeout_ms / 1000):
                meta = await self.runlog.send_event(started)
                now = datetime.now(UTC)
                status = ExecutionStatus(
                    execution_id=run_id,
                    tenant_id=ctx.id,
                    agent_id=agent_label(run),
                    priority=spec.priority,
                    state="running",
                    attempt=1,
                    events_topic=topics.events,
                    events_partition=meta.partition,
                    events_start_offset=meta.offset,
                    attempt_start_offset=meta.offset,
                    created_at=now,
                    updated_at=now,
                    extra={RUN_KEY: run.model_dump(mode="json")},
                )
                await self.runlog.send_status(status)
        except (KafkaError, TimeoutError) as exc:
            problem = f"Kafka did not acknowledge the run ({type(exc).__name__}); nothing was accepted, retry later"
            raise Unavailable(problem, retry_after=1) from exc
        self._background.spawn(self.advance(run_id), name=f"advance-{run_id}")
        return run

    # -- cancel ---------------------------------------------------------------------------------
    async def cancel(self, run_id: str, tenant_id: str) -> tuple[str, bool, list[str]]:
        """Ask for the run's cancel: ``workflow.run.cancel_requested`` in the run's partition, which
        the replica driving the run applies (``apply_cancel``). (run state, requested, steps running now)."""
        _, run = self.get(run_id, tenant_id)
        if run.state != "running":
            return run.state, False, []
        try:
            async with asyncio.timeout(self.lc.settings.kafka.request_timeout_ms / 1000):
                await self.runlog.send_event(WorkflowCancelRequested(**envelope(run)))
        except (KafkaError, TimeoutError) as exc:
            raise Unavailable(f"Kafka did not acknowledge the cancel ({type(exc).__name__}); retry", retry_after=1) from exc
        return "cancelling", True, [name for name, rec in run.steps.items() if rec.state == "running"]

    async def apply_cancel(self, run_id: str, tenant_id: str) -> None:
        """Cancel every running step, then end the run ``cancelled`` (the events follower calls this
        with a cancel request from the run's partition, so only the run's driver does)."""
        async with self._lock(run_id):
            status = self.current(run_id)
            run = record_of(status) if status is not None else None
            if status is None or run is None or status.tenant_id != tenant_id or run.state != "running":
                return
            if not run.cancel_requested:  # recorded first: a driver that stops here finishes the cancel after its restart
                run = run.model_copy(update={"cancel_requested": True})
                await self.runlog.write(status, run, [])
            await self._finish_cancel(run)

    async def _finish_cancel(self, run: RunRecord) -> None:
        status = self.current(run.run_id)
        assert status is not None
        running = [name for name, rec in run.steps.items() if rec.state == "running" and rec.task_id]
        for name in running:
            await self._cancel_task(run, name, reason="workflow run cancelled")
        now = time.time()
        updated = {
            name: rec.model_copy(update={"state": "cancelled", "error": "workflow run cancelled", "ended_at": now})
            for name, rec in run.steps.items()
            if name in running
        }
        run = run.model_copy(update={"state": "cancelled", "error": "cancelled by request", "steps": run.steps | updated})
        events: list[Envelope] = [
            WorkflowStepFailed(**envelope(run), step=n, task_id=run.steps[n].task_id, status="cancelled", reason="workflow run cancelled")
            for n in running
        ]
        events.append(end_event(run))
        await self.runlog.write(status, run, events)

    async def _cancel_task(self, run: RunRecord, name: str, *, reason: str) -> None:
        rec = run.steps[name]
        assert rec.task_id is not None
        try:
            if run.spec.steps[self._index(run, name)].agent is not None:
                with contextlib.suppress(NotFound):
                    await self.lc.cancel(rec.task_id, run.tenant_id)
            else:
                await self.lc.finalize(rec.task_id, "cancelled", error=reason)
        except Exception:
            log.exception("could not cancel step %s of run %s", name, run.run_id)

    # -- advance --------------------------------------------------------------------------------
    async def _on_end(self, task: Task) -> None:
        found = run_of_task(task.id)
        if found is not None:
            self._background.spawn(self.advance(found[0]), name=f"advance-{found[0]}")

    async def advance(self, run_id: str) -> None:
        """Bring the run up to date with its steps' ends, start what is ready, end it when all ended."""
        async with self._lock(run_id):
            status = self.current(run_id)
            run = record_of(status) if status is not None else None
            if status is None or run is None or not self.owns(status.events_partition):
                return
            if run.state != "running":
                if not status.terminal:  # the end's record was written, its end event and terminal snapshot not (a stop)
                    await self.runlog.write(status, run, [end_event(run)])
                return
            if run.cancel_requested:
                await self._finish_cancel(run)
                return
            run, events, resubmit = await self._collect_ends(run)
            plan = next_steps(run)
            now = time.time()
            starting: list[tuple[str, str | dict[str, Any]]] = []
            updated = dict(run.steps)
            for step in plan.skip:
                updated[step.name] = StepRecord(state="skipped", ended_at=now, error="condition not met")
                events.append(WorkflowStepFailed(**envelope(run), step=step.name, status="skipped", reason="condition not met"))
            for step in plan.start:
                task_id = step_task_id(run_id, step.name)
                try:
                    prepared: str | dict[str, Any] = steps.rendered_input(run, step) if step.agent else steps.job_payload(run, step)
                except StepRefused as exc:
                    updated[step.name] = StepRecord(state="failed", error=str(exc), started_at=now, ended_at=now)
                    events.append(WorkflowStepFailed(**envelope(run), step=step.name, status="failed", reason=str(exc)))
                    continue
                if not await steps.take_slot(self.lc, run, step):
                    continue  # the tenant is at its concurrency limit: the ticker tries again
                updated[step.name] = StepRecord(state="running", task_id=task_id, started_at=now)
                events.append(WorkflowStepStarted(**envelope(run), step=step.name, kind=step.kind, task_id=task_id))
                starting.append((step.name, prepared))
            run = run.model_copy(update={"steps": updated})
            if plan.end is None and any(rec.state == "failed" for rec in updated.values()):
                plan = next_steps(run)  # a step refused at start (its template, its input) fails the run now
            if plan.end is not None:
                run, end_events = await self._end(run, plan.end, output=plan.output, error=plan.error, cancel=plan.cancel)
                events.extend(end_events)
            if events or run != record_of(status):
                await self.runlog.write(status, run, events)
            # Submitted after the record says they run: a driver that stops in between submits them after its restart.
            for name, prepared in starting + resubmit:
                await self._submit(run, name, prepared)

    async def _collect_ends(self, run: RunRecord) -> tuple[RunRecord, list[Envelope], list[tuple[str, str | dict[str, Any]]]]:
        events: list[Envelope] = []
        resubmit: list[tuple[str, str | dict[str, Any]]] = []
        updated = dict(run.steps)
        for step in run.spec.steps:
            rec = step_of(run, step.name)
            if rec.state != "running" or rec.task_id is None:
                continue
            end = await steps.ended(self.lc, run, step, rec)
            if end is None:
                if not await self._submitted(run, step.name, rec.task_id):
                    try:
                        resubmit.append((step.name, steps.rendered_input(run, step) if step.agent else steps.job_payload(run, step)))
                    except StepRefused as exc:
                        end = rec.model_copy(update={"state": "failed", "error": str(exc), "ended_at": time.time()})
                if end is None:
                    continue
            updated[step.name] = end
            if end.state == "completed":
                events.append(WorkflowStepCompleted(**envelope(run), step=step.name, task_id=rec.task_id, output=end.output))
            else:
                events.append(
                    WorkflowStepFailed(**envelope(run), step=step.name, task_id=rec.task_id, status=end.state, reason=end.error or "")
                )
        return run.model_copy(update={"steps": updated}), events, resubmit

    async def _submitted(self, run: RunRecord, name: str, task_id: str) -> bool:
        if run.spec.steps[self._index(run, name)].agent is not None:
            return task_id in self.lc.status
        async with self.lc.store.begin() as conn:
            return await tasks.get(conn, task_id) is not None

    async def _submit(self, run: RunRecord, name: str, prepared: str | dict[str, Any]) -> None:
        step = run.spec.steps[self._index(run, name)]
        try:
            if step.agent is not None:
                assert isinstance(prepared, str)
                await steps.start_agent(self.lc, run, step, text=prepared)
            else:
                assert isinstance(prepared, dict)
                await steps.start_job(self.lc, self.coordinator, run, step, prepared)
        except Exception:
            # Kafka or the store refused: the record says it runs, the ticker finds it unsubmitted and tries again.
            log.warning("could not submit step %s of run %s; retrying on the next tick", name, run.run_id, exc_info=True)

    async def _end(
        self, run: RunRecord, state: str, *, output: str | None, error: str | None, cancel: list[str]
    ) -> tuple[RunRecord, list[Envelope]]:
        reason = f"workflow run failed: {error}"
        events: list[Envelope] = []
        steps = dict(run.steps)
        for name in cancel:
            await self._cancel_task(run, name, reason=reason)
            steps[name] = steps[name].model_copy(update={"state": "cancelled", "error": reason, "ended_at": time.time()})
            events.append(WorkflowStepFailed(**envelope(run), step=name, task_id=steps[name].task_id, status="cancelled", reason=reason))
        failure = None if state == "completed" else error or "a step failed"
        ended = run.model_copy(update={"state": state, "output": output, "error": failure, "steps": steps})
        return ended, [*events, end_event(ended)]

    # -- housekeeping ---------------------------------------------------------------------------
    def _lock(self, run_id: str) -> asyncio.Lock:
        if len(self._locks) > 10_000:  # bounded: drop the idle ones
            self._locks = {k: v for k, v in self._locks.items() if v.locked()}
        return self._locks.setdefault(run_id, asyncio.Lock())

    @staticmethod
    def _index(run: RunRecord, name: str) -> int:
        return next(i for i, s in enumerate(run.spec.steps) if s.name == name)

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(self.lc.settings.sweep_interval_s)
            for run_id in list(self._open):
                status = self.lc.status.get(run_id)
                if status is None or status.terminal:
                    self._open.discard(run_id)
                    self.runlog.forget(run_id)
                    continue
                try:
                    await self.advance(run_id)
                except Exception:
                    log.exception("advancing workflow run %s failed", run_id)

    def _learn(self, status: ExecutionStatus) -> None:
        if is_run(status) and not status.terminal:
            self._open.add(status.execution_id)


__all__ = ["WorkflowDriver", "is_run", "record_of"]
