"""The orchestrator's composition root for its state: store, auth, limits, task registry, callbacks.

``Runtime`` opens everything in order inside the app's lifespan and closes it in reverse; every
``stop`` is idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from types import TracebackType

from aiokafka import AIOKafkaProducer

from schemas.agents import AgentSpec
from services.common.reader import Reader
from services.common.shutdown import bounded
from services.common.statusview import StatusView
from services.orchestrator import tenantlog
from services.orchestrator.auth import Authenticator
from services.orchestrator.callbacks import Dispatcher
from services.orchestrator.completions import EventsFollower, JobsFollower
from services.orchestrator.coordinator import ServiceCoordinator
from services.orchestrator.hub import TaskHub
from services.orchestrator.idemkeys import make_keys
from services.orchestrator.ingress import IngressFollower
from services.orchestrator.lifecycle import Lifecycle
from services.orchestrator.limits import RateLimiter, make_limiter
from services.orchestrator.projection import Projection
from services.orchestrator.schedules.scheduler import Scheduler
from services.orchestrator.settings import OrchestratorSettings
from services.orchestrator.store import Store
from services.orchestrator.taskfeed import TaskFeed
from services.orchestrator.workflows.catalog import load_workflows
from services.orchestrator.workflows.driver import WorkflowDriver

log = logging.getLogger(__name__)


class Runtime:
    def __init__(
        self, settings: OrchestratorSettings, *, producer: AIOKafkaProducer, status: StatusView, agents: dict[str, AgentSpec]
    ) -> None:
        self.settings = settings
        self.store = Store(settings.database_url.get_secret_value())
        self.auth = Authenticator(settings, self.store)
        redis_url = settings.redis_url.get_secret_value() if settings.redis_url else None
        self.limiter: RateLimiter = make_limiter(redis_url, prefix=settings.redis_key_prefix)
        self.keys = make_keys(self.store, redis_url, prefix=settings.redis_key_prefix)  # Idempotency-Key (idemkeys.py)
        self.hub = TaskHub()
        # Updates reach every replica's hub through Kafka (taskfeed.py), not only the one that applied them.
        self.feed = TaskFeed(settings.kafka, hub=self.hub, producer=producer)
        self.dispatcher = Dispatcher(settings, self.store)
        self.lifecycle = Lifecycle(
            settings=settings,
            store=self.store,
            producer=producer,
            status=status,
            limiter=self.limiter,
            hub=self.feed,
            dispatcher=self.dispatcher,
            agents=agents,
        )
        # The task registry is a projection of the status topic (projection.py): a 202 waits for Kafka only.
        self.projection = Projection(self.lifecycle)
        self.events = EventsFollower(self.lifecycle)
        self.jobs = JobsFollower(self.lifecycle)
        # The Kafka door (ingress.py) opens when some tenant has a signing key for it.
        self.ingress = IngressFollower(self.lifecycle, self.auth) if settings.ingress_signing_keys else None
        # Query and Embedding services: delegation, completions, plans (coordinator.py).
        self.coordinator = ServiceCoordinator(settings, self.lifecycle)
        # Workflows (issue 20): runs live on the log; the driver rebuilds the open ones at start.
        definitions = load_workflows(settings.workflows_file or settings.agents_file, agents=agents)
        self.workflows = WorkflowDriver(self.lifecycle, self.coordinator, definitions, owns=self.events.owns)
        self.events.run_cancels.append(self.workflows.apply_cancel)
        # Schedules: definitions and slot claims on the schedules topic (schedules/).
        self.scheduler = Scheduler(self.lifecycle, self.auth)
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        # The producer learns the intake's topics now, not on the first POST: the first 202s after a
        # start would otherwise wait for a metadata round trip each.
        topics = self.settings.kafka.topics
        await asyncio.gather(*(self.lifecycle.producer.partitions_for(t) for t in (*topics.lanes, topics.status, topics.control)))
        await self.store.start()
        await self.auth.bootstrap()
        # Executors learn tenants (and their reply topics) from the log: every one again at start.
        await tenantlog.publish_all(self.lifecycle.producer, self.settings, self.store)
        await self.limiter.start()
        await self.keys.start()
        await self.dispatcher.start()
        await self.feed.start()
        await asyncio.gather(
            self.projection.start(),
            self.events.start(),
            self.jobs.start(),
            self.coordinator.start(),
            self.scheduler.start(),
            *([self.ingress.start()] if self.ingress else []),
        )
        await self.workflows.start()
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="task-sweeper")

    async def stop(self) -> None:
        """Stop the parts in reverse order of start, each bounded (services/common/shutdown.py): one that
        hangs is logged with its stack and left behind, and the rest still stop."""
        sweeper, self._sweeper = self._sweeper, None
        if sweeper is not None:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
        before: list[tuple[str, Callable[[], Awaitable[object]]]] = [
            ("workflows", self.workflows.stop),
            *([("ingress", self.ingress.stop)] if self.ingress is not None else []),
            ("scheduler", self.scheduler.stop),
        ]
        # The Kafka followers are independent of each other: they stop together, so parts that hang
        # cost one bound, not one each (four group readers once hung at once, 20 s one by one).
        followers: list[tuple[str, Callable[[], Awaitable[object]]]] = [
            ("service coordinator", self.coordinator.stop),
            ("jobs follower", self.jobs.stop),
            ("events follower", self.events.stop),
            ("projection", self.projection.stop),
        ]
        after: list[tuple[str, Callable[[], Awaitable[object]]]] = [
            ("lifecycle", self.lifecycle.stop),
            ("feed", self.feed.stop),
            ("callback dispatcher", self.dispatcher.stop),
            ("keys", self.keys.stop),
            ("limiter", self.limiter.stop),
            ("store", self.store.stop),
        ]
        for name, stop in before:
            await bounded(name, stop)
        await asyncio.gather(*(bounded(name, stop) for name, stop in followers))
        for name, stop in after:
            await bounded(name, stop)

    def readers(self) -> list[Reader]:
        """The readers this runtime runs (for ``/health/ready``)."""
        readers = [self.projection.reader, self.events.reader, self.jobs.reader, self.coordinator.requests.reader, self.feed.reader]
        if self.coordinator.invalidations is not None:
            readers.append(self.coordinator.invalidations.reader)
        readers.append(self.scheduler.log.reader)
        if self.ingress is not None:
            readers.append(self.ingress.reader)
        return [r for r in readers if r is not None]

    async def __aenter__(self) -> Runtime:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.sweep_interval_s)
            try:
                await self.lifecycle.sweep()
            except Exception:
                log.exception("task sweeper round failed")
