"""The orchestrator: HTTP API, API-key auth with tenant context, and the WebSocket bridge."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.websockets import WebSocket

from schemas.agents import AgentSpec
from services.common.agents import load_agents
from services.common.kafka import ensure_topics, make_producer, start_client
from services.common.localkafka import answers_metadata
from services.common.observability import metrics
from services.common.observability.asgi import TelemetryMiddleware, metrics_endpoint
from services.common.reader import readers_health
from services.common.statusview import StatusView
from services.orchestrator import docs, streaming
from services.orchestrator import routes as api
from services.orchestrator.bridge import Bridge
from services.orchestrator.http import HTTPError, api_key
from services.orchestrator.runtime import Runtime
from services.orchestrator.settings import OrchestratorSettings

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


def _state(request: Request | WebSocket) -> State:
    state: State = request.app.state.agentstream
    return state


async def authenticate(conn: Request | WebSocket) -> str | None:
    """The tenant of the connection's API key, or None. Used by every HTTP and streaming endpoint.

    Settings-configured (bootstrap) keys first, then hashed keys in the state store."""
    return await _state(conn).runtime.auth.tenant_for(api_key(conn))


async def live(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def ready(request: Request) -> Response:
    """Ready when Kafka answers and every reader is fetching; 503 names what is not."""
    state = _state(request)
    bootstrap = state.settings.kafka.bootstrap
    readers = [r for r in (state.status.reader, state.bridge.reader) if r is not None] + state.runtime.readers()
    readers_ok, states = readers_health(readers)
    kafka_ok = await answers_metadata(bootstrap, timeout=2.0)
    body: dict[str, Any] = {"status": "ready", "kafka": bootstrap, "readers": states}
    if kafka_ok and readers_ok:
        return JSONResponse(body)
    body["status"] = "not ready"
    if not kafka_ok:
        body["kafka"] = f"Kafka is not reachable at {bootstrap}"
    if not readers_ok:
        body["not_running"] = sorted(name for name, s in states.items() if s != "running")
    return JSONResponse(body, status_code=503)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPError)
    body: dict[str, Any] = {"error": exc.error}
    if exc.detail is not None:
        body["detail"] = exc.detail
    return JSONResponse(body, status_code=exc.status, headers=exc.headers)


def create_app(settings: OrchestratorSettings | None = None) -> Starlette:
    settings = settings or OrchestratorSettings()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        reply_topics = sorted({t for topics in settings.reply_topics.values() for t in topics})
        await ensure_topics(settings.kafka, extra=reply_topics)
        producer = make_producer(settings.kafka, client_id="orchestrator")
        await start_client(producer, settings.kafka)
        status = StatusView(settings.kafka, dlq=producer, name="orchestrator-status-view")
        bridge = Bridge(
            settings.kafka,
            status,
            dlq=producer,
            reply_topics=reply_topics,
            recent_ttl_s=settings.bridge_recent_ttl_s,
            recent_max_bytes=settings.bridge_recent_max_mb * 1024 * 1024,
        )
        agents = load_agents(settings.agents_file)
        runtime = Runtime(settings, producer=producer, status=status, agents=agents)
        try:
            await status.start()
            await bridge.start()
            await runtime.start()
            app.state.agentstream = State(settings, producer, status, bridge, agents, runtime)
            app.state.authenticate = authenticate
            yield
        finally:
            await runtime.stop()
            await bridge.stop()
            await status.stop()
            await producer.stop()

    routes = [
        *api.routes(),
        Route("/health/live", live),
        Route("/health/ready", ready),
        *streaming.routes(),
        Route("/metrics", metrics_endpoint(metrics.ORCHESTRATOR), methods=["GET"]),
        *docs.routes(),
    ]
    return Starlette(
        routes=routes, lifespan=lifespan, exception_handlers={HTTPError: _http_error}, middleware=[Middleware(TelemetryMiddleware)]
    )
