"""The orchestrator: HTTP API, API-key auth with tenant context, and the WebSocket bridge."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from schemas.agents import AgentSpec
from services.common.agents import load_agents
from services.common.errors import DomainError
from services.common.heap import freeze_startup_heap
from services.common.kafka import ensure_topics, make_producer, start_client
from services.common.memory import Trimmer
from services.common.observability import metrics
from services.common.observability.asgi import TelemetryMiddleware, metrics_endpoint
from services.common.shutdown import bounded
from services.common.statusview import StatusView
from services.orchestrator import docs, fanout, problems, streaming
from services.orchestrator import routes as api
from services.orchestrator.auth import Authenticator
from services.orchestrator.bridge import Bridge
from services.orchestrator.http import state_of
from services.orchestrator.runtime import Runtime
from services.orchestrator.settings import OrchestratorSettings
from services.orchestrator.store import Store

log = logging.getLogger(__name__)


@dataclass
class State:
    settings: OrchestratorSettings
    producer: AIOKafkaProducer
    status: StatusView
    bridge: Bridge
    agents: dict[str, AgentSpec]
    # State store, auth, limits, task registry, callbacks (services/orchestrator/runtime.py).
    runtime: Runtime

    # What the streaming endpoints read (streaming.StreamState), the same names as the bridge service's state.
    @property
    def auth(self) -> Authenticator:
        return self.runtime.auth

    @property
    def store(self) -> Store:
        return self.runtime.store

    @property
    def status_wait_s(self) -> float:
        return 0.0  # the API applies a new execution's snapshot to its own view before it answers 202


async def ready(request: Request) -> Response:
    """Ready when Kafka answers and every reader is fetching; 503 names what is not."""
    state = state_of(request)
    readers = [r for r in (state.status.reader, state.bridge.reader) if r is not None] + state.runtime.readers()
    return await fanout.ready(state.settings.kafka.bootstrap, readers)


@contextlib.asynccontextmanager
async def open_state(settings: OrchestratorSettings) -> AsyncIterator[State]:
    """Everything the orchestrator runs, opened in order on one stack; closed in reverse, also when a
    later step fails to start."""
    async with contextlib.AsyncExitStack() as stack:
        await ensure_topics(settings.kafka, extra=fanout.reply_topics(settings))
        producer = make_producer(settings.kafka, client_id="orchestrator")
        await start_client(producer, settings.kafka)
        stack.push_async_callback(bounded, "producer", producer.stop)
        trimmer = Trimmer()  # a burst's freed memory back to the system once it is over (memory.py)
        trimmer.start()
        stack.push_async_callback(bounded, "trimmer", trimmer.stop)
        parts = await fanout.open_fanout(stack, settings, producer=producer, name="orchestrator")
        agents = load_agents(settings.agents_file)
        runtime = await stack.enter_async_context(Runtime(settings, producer=producer, status=parts.status, agents=agents))
        yield State(settings, producer, parts.status, parts.bridge, agents, runtime)


def create_app(settings: OrchestratorSettings | None = None) -> Starlette:
    settings = settings or OrchestratorSettings()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with open_state(settings) as state:
            app.state.agentstream = state
            freeze_startup_heap()
            yield

    routes = [
        *api.routes(),
        Route("/health/live", fanout.live),
        Route("/health/ready", ready),
        *streaming.routes(),
        Route("/metrics", metrics_endpoint(metrics.ORCHESTRATOR), methods=["GET"]),
        *docs.routes(),
    ]
    return Starlette(
        routes=routes, lifespan=lifespan, exception_handlers={DomainError: problems.handler}, middleware=[Middleware(TelemetryMiddleware)]
    )
