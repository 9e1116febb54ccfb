"""The bridge as a service of its own (``agentstream bridge``): only the fan-out.

``/v1/stream`` (WebSocket) and ``/v1/executions/{id}/events`` (SSE), the same handlers as the
orchestrator's (streaming.py), plus ``/health/live``, ``/health/ready`` and ``/metrics``. It reads
Kafka (the status view and the bridge tail) and the state store, and writes nothing but DLQ
records: API keys are the orchestrator's (settings-configured keys, and hashed keys in the store,
looked up and rechecked by the same ``Authenticator``, so a revoked key's streams close here too),
and it never gives tenants rows (``Authenticator.bootstrap`` is the API's). Any number of bridges
run beside any number of API replicas: each bridge reads every partition itself, so a client can
resume on any of them with the cursor another one gave it.

It imports none of the orchestrator's runtime (lifecycle, limits, callbacks, coordinator):
tests/unit/test_bridge_app.py holds it to that.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from services.common.errors import DomainError
from services.common.heap import freeze_startup_heap
from services.common.kafka import ensure_topics, make_producer, start_client
from services.common.observability import metrics
from services.common.observability.asgi import TelemetryMiddleware, metrics_endpoint
from services.common.statusview import StatusView
from services.orchestrator import fanout, problems, streaming
from services.orchestrator.auth import Authenticator
from services.orchestrator.bridge import Bridge
from services.orchestrator.settings import OrchestratorSettings
from services.orchestrator.store import Store


@dataclass(frozen=True)
class BridgeState:
    """The bridge service's state (``app.state.agentstream``); a ``streaming.StreamState``."""

    settings: OrchestratorSettings
    producer: AIOKafkaProducer  # DLQ records of what the tail cannot read, nothing else
    status: StatusView
    bridge: Bridge
    auth: Authenticator
    store: Store

    @property
    def status_wait_s(self) -> float:
        return self.settings.bridge_status_wait_s


@contextlib.asynccontextmanager
async def open_bridge(settings: OrchestratorSettings) -> AsyncIterator[BridgeState]:
    """Open the bridge service's parts in order on one stack; closed in reverse, also when a later
    step fails to start (each stop is registered before its start)."""
    async with contextlib.AsyncExitStack() as stack:
        # The API creates the topics too; a bridge that starts first must not fail on missing ones.
        await ensure_topics(settings.kafka, extra=fanout.reply_topics(settings))
        producer = make_producer(settings.kafka, client_id="bridge")
        await start_client(producer, settings.kafka)
        stack.push_async_callback(producer.stop)
        parts = await fanout.open_fanout(stack, settings, producer=producer, name="bridge")
        # The store answers key lookups; its schema is migrated like every replica's (idempotent, locked).
        store = Store(settings.database_url.get_secret_value())
        stack.push_async_callback(store.stop)
        await store.start()
        yield BridgeState(settings, producer, parts.status, parts.bridge, Authenticator(settings, store), store)


async def ready(request: Request) -> Response:
    """Ready when Kafka answers and the status view and the bridge tail are fetching."""
    state = streaming.stream_state_of(request)
    return await fanout.ready(state.settings.kafka.bootstrap, fanout.Fanout(state.bridge.status, state.bridge).readers())


def create_bridge_app(settings: OrchestratorSettings | None = None) -> Starlette:
    settings = settings or OrchestratorSettings()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with open_bridge(settings) as state:
            app.state.agentstream = state
            freeze_startup_heap()
            yield

    routes = [
        Route("/health/live", fanout.live),
        Route("/health/ready", ready),
        *streaming.routes(),
        Route("/metrics", metrics_endpoint(metrics.ORCHESTRATOR), methods=["GET"]),
    ]
    return Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={DomainError: problems.handler},
        middleware=[Middleware(TelemetryMiddleware)],
    )
