"""One attempt of one execution: its events and status snapshots, in order, from start to end.

The model is called without waiting for acknowledgements it does not need: ``execution.started``
goes to the producer, and the ``running`` snapshot (which holds where the events start, so it
needs that record's offset) is published when the broker acknowledged it, while the model
request is already out. Order is kept where it matters: on the events topic by the one emitter
(records go to the producer in order; one key, one partition), on the status topic by awaiting
the ``running`` snapshot before the terminal one. Nothing is counted finished (and the request
committed) before the terminal event and snapshot are acknowledged. Fencing is the emitter's and
the publisher's: both check the run's tenure before each record (fence.py).

The executor (app.py) owns the bookkeeping around an attempt: its number, its cancel event, its
slot, the commit or retry that follows what ``AttemptRun.run`` answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from aiokafka.errors import KafkaError
from aiokafka.structs import RecordMetadata

from schemas.agents import AgentSpec
from schemas.events import (
    ExecutionCancelled,
    ExecutionCompleted,
    ExecutionFailed,
    ExecutionRequested,
    ExecutionResumed,
    ExecutionStarted,
)
from schemas.status import ExecutionStatus
from services.executor.approvals import Parked
from services.executor.checkpoint import Checkpoint, rebuild
from services.executor.emitter import EventEmitter
from services.executor.eventlog import EventLog
from services.executor.fence import Fenced
from services.executor.handoffs import Agent
from services.executor.loop import ExecutionError, LoopSettings, Outcome, render_system_prompt, run_agent, started_fields
from services.executor.mcptools import McpTools
from services.executor.providers.base import Provider, ProviderError
from services.executor.tools import Tool, ToolError

log = logging.getLogger(__name__)

Publish = Callable[[ExecutionStatus], Awaitable[None]]
Lookup = Callable[[str], Awaitable[tuple[AgentSpec | None, ExecutionError | None]]]


@dataclass(frozen=True, slots=True)
class Ended:
    """How an attempt ended. ``finished``: its terminal event and snapshot are acknowledged (commit it).
    ``fenced``: this member lost the execution's partition; another runs it. Neither: Kafka failed, run it again."""

    finished: bool
    fenced: bool = False
    state: Literal["completed", "failed", "cancelled", "waiting"] | None = None


@dataclass(frozen=True, slots=True)
class AttemptRun:
    """What running one attempt needs from the executor."""

    providers: dict[str, Provider]
    tools: dict[str, Tool]
    settings: LoopSettings
    cancel_grace_s: float
    lookup: Lookup
    mcp: McpTools | None = None  # the agents' MCP servers' tools (mcptools.py)
    events: EventLog | None = None  # where earlier attempts' events are read back from, to resume (eventlog.py)

    async def run(
        self,
        request: ExecutionRequested,
        *,
        emitter: EventEmitter,
        publish: Publish,
        base: ExecutionStatus,
        cancel: asyncio.Event,
        previous: ExecutionStatus | None = None,
    ) -> Ended:
        """``previous``: the execution's snapshot before this attempt; where an earlier attempt's events are."""
        running: asyncio.Future[dict[str, Any]] | None = None

        async def publish_after_running(status: ExecutionStatus) -> None:
            if running is not None:
                await running  # the running snapshot first: the status topic keeps the order
            await publish(status)

        try:
            if cancel.is_set():  # cancelled before it started: no execution.started, just the end
                meta = await (await emitter.emit(ExecutionCancelled, reason="cancelled before start"))
                await publish(
                    base.model_copy(
                        update={"state": "cancelled", "error": "cancelled before start"}
                        | {"events_partition": meta.partition, "events_start_offset": meta.offset}
                    )
                )
                return Ended(finished=True, state="cancelled")
            spec, lookup_error = await self.lookup(request.agent_id)
            checkpoint = await self._checkpoint(request, previous, base) if spec is not None else None
            decisions = decisions_of(checkpoint)
            if decisions:  # every snapshot of this attempt, its end too: a repeated decision gets the same answer
                base = base.model_copy(update={"extra": base.extra | {"decisions": decisions}})
            started = await emitter.emit(ExecutionStarted, **started_fields(request, spec))
            # A resumed attempt's events start where the ones it reuses do: a replay from the start shows them.
            running = asyncio.ensure_future(_publish_running(started, publish, base, checkpoint))
            try:
                if spec is None:
                    raise lookup_error or ExecutionError(f"unknown agent {request.agent_id!r}")
                if checkpoint is not None:
                    await emitter.emit(
                        ExecutionResumed,
                        from_step=checkpoint.from_step,
                        previous_attempt=checkpoint.previous_attempt,
                        reused_attempts=checkpoint.attempts,
                        reused_from_offset=checkpoint.from_offset,
                        reused_calls=checkpoint.reused_calls,
                        rerun_calls=checkpoint.rerun_calls,
                    )
                outcome = await self._until_end(spec, request, emitter, cancel, checkpoint)
            except Parked as parked:
                # Parked in the log, not in this process: the waiting snapshot says where the events start
                # and holds the request, so the orchestrator can put it back on its lane once decided.
                await emitter.drain()
                update = await running
                extra = {
                    "approvals": [p.as_json() for p in parked.pending],
                    "decisions": base.extra.get("decisions", {}),
                    "request": request.model_dump(mode="json"),
                }
                await publish(base.model_copy(update=update | {"state": "waiting", "extra": extra}))
                return Ended(finished=True, state="waiting")
            except (ExecutionError, ProviderError) as exc:
                await emitter.emit(ExecutionFailed, reason=str(exc), retriable=exc.retriable)
                await emitter.drain()
                await publish_after_running(base.model_copy(update={"state": "failed", "error": str(exc)}))
                return Ended(finished=True, state="failed")
            if outcome is None:
                await emitter.emit(ExecutionCancelled, reason="cancelled by request")
                await emitter.drain()
                await publish_after_running(base.model_copy(update={"state": "cancelled", "error": "cancelled by request"}))
                return Ended(finished=True, state="cancelled")
            handed_off_to = outcome.agent if outcome.agent and outcome.agent != spec.name else None
            await emitter.emit(ExecutionCompleted, output=outcome.output, usage=outcome.usage, handed_off_to=handed_off_to)
            await emitter.drain()
            done: dict[str, Any] = {"state": "completed", "output": outcome.output, "usage": outcome.usage}
            if handed_off_to is not None:
                done["extra"] = base.extra | {"handed_off_to": handed_off_to}
            await publish_after_running(base.model_copy(update=done))
            return Ended(finished=True, state="completed")
        except asyncio.CancelledError:
            raise
        except Fenced as exc:
            # Nothing more is written for this attempt, and it is not run again here: the partition's new
            # owner runs it (or, if it is us again, its record comes again and runs as the next attempt).
            log.warning("execution %s (attempt %s): %s", request.execution_id, base.attempt, exc)
            return Ended(finished=False, fenced=True)
        except KafkaError as exc:
            # Kafka trouble is not the execution's fault: it is not failed but run again as the next
            # attempt once the broker answers.
            log.warning("execution %s: Kafka error %s; it will run again", request.execution_id, type(exc).__name__)
            return Ended(finished=False)
        except Exception as exc:  # never lose a request silently: record why, then commit
            log.exception("execution %s crashed", request.execution_id)
            try:
                await emitter.emit(ExecutionFailed, reason=f"internal error: {type(exc).__name__}: {exc}")
                await emitter.drain()
                if running is not None:
                    with contextlib.suppress(Exception):
                        await running
                await publish(base.model_copy(update={"state": "failed", "error": str(exc)}))
            except Exception:
                return Ended(finished=False)
            return Ended(finished=True, state="failed")
        finally:
            if running is not None:
                if not running.done():
                    running.cancel()
                with contextlib.suppress(BaseException):
                    await running  # its outcome is known (or irrelevant) by now; never left unretrieved

    async def _checkpoint(self, request: ExecutionRequested, previous: ExecutionStatus | None, base: ExecutionStatus) -> Checkpoint | None:
        """What earlier attempts completed, read back from the events topic; None if nothing can be reused."""
        if self.events is None or previous is None or previous.terminal or request.mode == "completion":
            return None
        if previous.events_partition is None or previous.events_start_offset is None or previous.events_topic != base.events_topic:
            return None
        start = previous.events_start_offset
        records = await self.events.records(base.events_topic, previous.events_partition, start, request.execution_id)
        checkpoint = rebuild(records, from_offset=start)
        return checkpoint if checkpoint.steps else None

    async def _until_end(
        self, spec: AgentSpec, request: ExecutionRequested, emitter: EventEmitter, cancel: asyncio.Event, checkpoint: Checkpoint | None
    ) -> Outcome | None:
        """Run the loop until it ends, the execution times out, or a cancel arrives (None)."""
        if spec.provider not in self.providers:
            raise ExecutionError(f"agent {spec.name!r} names provider {spec.provider!r}, which is not configured")
        work = asyncio.create_task(self._agent(spec, request, emitter, checkpoint), name=f"{request.execution_id}-loop")
        cancelled = asyncio.create_task(cancel.wait())
        try:
            done, _ = await asyncio.wait({work, cancelled}, timeout=spec.timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            cancelled.cancel()
            if not work.done():
                work.cancel()
                # Stops the provider stream and the tools; bounded, so a tool that ignores
                # cancellation cannot hold the execution (or its partition's commits) forever.
                await asyncio.wait({work}, timeout=self.cancel_grace_s)
        if work in done:
            return work.result()
        if cancel.is_set():
            return None
        raise ExecutionError(f"execution exceeded its timeout of {spec.timeout_s:g}s", retriable=True)

    async def _agent(self, spec: AgentSpec, request: ExecutionRequested, emitter: EventEmitter, checkpoint: Checkpoint | None) -> Outcome:
        """The loop, with the agent's MCP servers' tools (mcptools.py) beside the executor's."""
        spec, tools, notices = await self._tools_of(spec, request)

        async def resolve(name: str) -> Agent:
            """A handoff's target (handoffs.py): what cannot run here is the model's tool error."""
            target, problem = await self.lookup(name)
            if target is None:
                retriable = problem is not None and problem.retriable
                raise ToolError(f"agent {name!r} is not available: {problem or 'unknown agent'}", retriable=retriable)
            if target.provider not in self.providers:
                raise ToolError(f"agent {name!r} names provider {target.provider!r}, which is not configured")
            target, found, its_notices = await self._tools_of(target, request)
            try:
                prompt = render_system_prompt(target, request)
            except ExecutionError as exc:
                raise ToolError(f"agent {name!r} cannot take over: {exc}") from exc
            return Agent(target, found, (prompt, *its_notices))

        return await run_agent(
            resolve=resolve,
            spec=spec,
            request=request,
            providers=self.providers,
            tools=tools,
            emitter=emitter,
            settings=self.settings,
            notices=notices,
            resume=checkpoint,
        )

    async def _tools_of(self, spec: AgentSpec, request: ExecutionRequested) -> tuple[AgentSpec, dict[str, Tool], list[str]]:
        tools, notices = self.tools, list[str]()
        if spec.mcp_servers and self.mcp is not None:
            found, notices = await self.mcp.tools_for(spec, request.tenant_id)
            tools = self.tools | found
            spec = spec.model_copy(update={"tools": (*spec.tools, *found)})
        return spec, tools, notices


async def _publish_running(
    started: asyncio.Future[RecordMetadata], publish: Publish, base: ExecutionStatus, checkpoint: Checkpoint | None
) -> dict[str, Any]:
    """The ``running`` snapshot, once ``execution.started`` is acknowledged: it says where the events start
    (for a resumed attempt, where the events it reuses start; the next resume reads from there too)."""
    meta = await started
    start = meta.offset if checkpoint is None else min(checkpoint.from_offset, meta.offset)
    update: dict[str, Any] = {
        "state": "running",
        "events_partition": meta.partition,
        "events_start_offset": start,
        "attempt_start_offset": meta.offset,
    }
    await publish(base.model_copy(update=update))
    return update


def decisions_of(checkpoint: Checkpoint | None) -> dict[str, Any]:
    if checkpoint is None:
        return {}
    return {
        call_id: {"decision": d.decision, "reason": d.reason, "arguments": d.arguments, "by": d.by, "text": d.text}
        for step in checkpoint.steps
        for call_id, d in step.decisions.items()
    }
