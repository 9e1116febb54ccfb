"""What happens to work, as one object the doors and followers hold: its dependencies, the
coordinator's hooks, and the operations, each in the module of its concern:

- ``admission.py``: limits and concurrency slots (``RateLimited``);
- ``submission.py``: ``Submission``, publish (``Unavailable`` if Kafka does not acknowledge); the rows are
  projected from the log (``projection.py``);
- ``cancel.py``: cancel requests and the terminal snapshot of a cancel before start;
- ``finalize.py``: the one place where work ends, and every effect of its end;
- ``sweep.py``: deadlines;
- ``ids.py``: the ids it makes.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer

from schemas.agents import AgentSpec
from schemas.status import ExecutionStatus
from schemas.status import State as ExecutionState
from services.common.statusview import StatusView
from services.common.taskset import TaskSet
from services.orchestrator import admission, cancel, finalize, submission, sweep
from services.orchestrator.auth import TenantContext
from services.orchestrator.callbacks import Dispatcher
from services.orchestrator.hub import TaskHub
from services.orchestrator.limits import RateLimiter
from services.orchestrator.nextdue import NextDue
from services.orchestrator.settings import OrchestratorSettings
from services.orchestrator.store import Store
from services.orchestrator.store.tasks import Task
from services.orchestrator.submission import Submission, Writes
from services.orchestrator.taskfeed import TaskFeed
from services.orchestrator.waitnotices import WaitNotices

log = logging.getLogger(__name__)

EndHook = Callable[[Task], Awaitable[None]]
LateHook = Callable[[Task, dict[str, Any]], Awaitable[None]]


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
        self.background = TaskSet("lifecycle", log=log)  # a session's next enqueued message, started after an end
        self.wait_notices = WaitNotices()  # callbacks on `waiting`, once per wait (waitnotices.py)
        # When the sweeper next needs the store (nextdue.py): every execution the view learns of, from
        # any replica, hints its deadline; jobs hint theirs where they are created.
        self.deadlines = NextDue(settings.store_refresh_s)
        status.on_new.append(self._hint_deadline)
        # The service coordinator's hooks (coordinator.py): every end applied by ``finalize``, job
        # completions that arrived after their job had ended, checks of delegated jobs' results.
        self.end_hooks: list[EndHook] = []
        self.late_hooks: list[LateHook] = []
        self.result_checks: dict[str, Callable[[Any], str | None]] = {}

    def _hint_deadline(self, status: ExecutionStatus) -> None:
        if status.intake is not None and not status.terminal:
            self.deadlines.hint(status.intake.deadline)

    async def admit(self, ctx: TenantContext, execution_ids: Sequence[str], *, slots: bool = True) -> None:
        """Count one request; check tokens; take a concurrency slot per execution. ``RateLimited`` if over."""
        await admission.admit(self.limiter, ctx, execution_ids, slots=slots, slot_ttl_s=self.settings.execution_timeout_s)

    async def release_slots(self, tenant_id: str, execution_ids: Sequence[str]) -> None:
        await admission.release_slots(self.limiter, tenant_id, execution_ids)

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

    async def submit(self, subs: Sequence[Submission], *, writes: Writes | None = None, undo: Writes | None = None) -> None:
        await submission.submit(self, subs, writes=writes, undo=undo)

    async def request_cancel(
        self,
        execution_id: str,
        tenant_id: str,
        *,
        terminal_state: ExecutionState | None = None,
        error: str | None = None,
        withdrawn: bool = False,
    ) -> None:
        await cancel.request_cancel(self, execution_id, tenant_id, terminal_state=terminal_state, error=error, withdrawn=withdrawn)

    async def cancel(self, execution_id: str, tenant_id: str) -> tuple[str, bool]:
        return await cancel.cancel(self, execution_id, tenant_id)

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
        handed_off_to: str | None = None,
    ) -> Task | None:
        return await finalize.finalize(
            self, task_id, state, output=output, error=error, result=result, usage=usage, attempt=attempt, handed_off_to=handed_off_to
        )

    async def sweep(self) -> int:
        return await sweep.sweep(self)

    async def stop(self) -> None:
        await self.background.stop()
