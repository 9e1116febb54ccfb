"""The orchestrator: HTTP API, API-key auth with tenant context, and the WebSocket bridge."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.websockets import WebSocket

from schemas.agents import AgentSpec
from schemas.api import ExecutionAccepted, ExecutionRequest, ExecutionView
from schemas.events import ExecutionRequested
from schemas.status import ExecutionStatus
from services.common.agents import load_agents
from services.common.kafka import encode, ensure_topics, event_headers, make_producer, start_client
from services.common.localkafka import answers_metadata
from services.common.statusview import StatusView
from services.orchestrator import streaming
from services.orchestrator.bridge import Bridge
from services.orchestrator.settings import OrchestratorSettings

log = logging.getLogger(__name__)


class HTTPError(Exception):
    def __init__(self, status: int, error: str, detail: Any = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(error)
        self.status, self.error, self.detail, self.headers = status, error, detail, headers


@dataclass
class State:
    settings: OrchestratorSettings
    producer: AIOKafkaProducer
    status: StatusView
    bridge: Bridge
    agents: dict[str, AgentSpec]


def _state(request: Request | WebSocket) -> State:
    state: State = request.app.state.agentstream
    return state


def _api_key(conn: Request | WebSocket) -> str | None:
    auth = conn.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return conn.headers.get("x-api-key") or conn.query_params.get("api_key")


async def authenticate(conn: Request | WebSocket) -> str | None:
    """The tenant of the connection's API key, or None. Used by every HTTP and streaming endpoint."""
    return _state(conn).settings.tenant_for(_api_key(conn))


def _tenant(request: Request) -> str:
    tenant = _state(request).settings.tenant_for(_api_key(request))
    if tenant is None:
        raise HTTPError(401, "missing or invalid API key: send `Authorization: Bearer <key>`", headers={"WWW-Authenticate": "Bearer"})
    return tenant


async def _json_body(request: Request, limit: int) -> Any:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPError(413, f"request body is larger than {limit} bytes")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise HTTPError(413, f"request body is larger than {limit} bytes")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise HTTPError(400, f"request body is not valid JSON: {exc}") from exc


def _view(status: ExecutionStatus) -> ExecutionView:
    return ExecutionView(
        execution_id=status.execution_id,
        agent=status.agent_id,
        priority=status.priority,
        status=status.state,
        attempt=status.attempt,
        session_id=status.session_id,
        output=status.output,
        error=status.error,
        usage=status.usage,
        created_at=status.created_at.isoformat(),
        updated_at=status.updated_at.isoformat(),
    )


async def create_execution(request: Request) -> Response:
    state = _state(request)
    tenant = _tenant(request)
    raw = await _json_body(request, state.settings.max_body_bytes)
    try:
        body = ExecutionRequest.model_validate(raw)
    except ValidationError as exc:
        raise HTTPError(422, "invalid execution request", detail=_errors(exc)) from exc
    if body.agent not in state.agents:
        raise HTTPError(422, f"unknown agent {body.agent!r}; known agents: {sorted(state.agents)}")
    execution_id = uuid.uuid4().hex
    event = ExecutionRequested(
        tenant_id=tenant,
        execution_id=execution_id,
        session_id=body.session_id,
        agent_id=body.agent,
        input=body.input,
        priority=body.priority,
        variables=body.variables,
        history=tuple(body.history),
    )
    status = ExecutionStatus(
        execution_id=execution_id,
        tenant_id=tenant,
        agent_id=body.agent,
        session_id=body.session_id,
        priority=body.priority,
        events_topic=state.settings.kafka.topics.events,
        created_at=event.ts,
        updated_at=event.ts,
    )
    topics = state.settings.kafka.topics
    key = execution_id.encode()
    try:
        # 202 only after the broker acknowledged (acks=all, idempotent producer).
        await asyncio.gather(
            state.producer.send_and_wait(
                topics.lane(body.priority),
                value=encode(event),
                key=tenant.encode(),
                headers=event_headers(type_=event.type, tenant_id=tenant),
            ),
            state.producer.send_and_wait(topics.status, value=encode(status), key=key),
        )
    except KafkaError as exc:
        raise HTTPError(
            503,
            f"Kafka did not acknowledge the request ({type(exc).__name__}); nothing was accepted, retry later",
            headers={"Retry-After": "1"},
        ) from exc
    state.status.apply(status)
    accepted = ExecutionAccepted(
        execution_id=execution_id,
        events_url=f"/v1/executions/{execution_id}",
        stream_url="/v1/stream",
    )
    return JSONResponse(accepted.model_dump(), status_code=202)


async def get_execution(request: Request) -> Response:
    state = _state(request)
    tenant = _tenant(request)
    status = state.status.get(request.path_params["execution_id"])
    if status is None or status.tenant_id != tenant:
        raise HTTPError(404, "execution not found")
    return JSONResponse(_view(status).model_dump(mode="json"))


async def live(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def ready(request: Request) -> Response:
    bootstrap = _state(request).settings.kafka.bootstrap
    if await answers_metadata(bootstrap, timeout=2.0):
        return JSONResponse({"status": "ready", "kafka": bootstrap})
    return JSONResponse({"status": "not ready", "kafka": f"Kafka is not reachable at {bootstrap}"}, status_code=503)


def _errors(exc: ValidationError) -> list[dict[str, Any]]:
    return [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors(include_url=False, include_input=False)]


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
        status = StatusView(settings.kafka)
        bridge = Bridge(
            settings.kafka,
            status,
            reply_topics=reply_topics,
            recent_ttl_s=settings.bridge_recent_ttl_s,
            recent_max_bytes=settings.bridge_recent_max_mb * 1024 * 1024,
        )
        try:
            await status.start()
            await bridge.start()
            app.state.agentstream = State(settings, producer, status, bridge, load_agents(settings.agents_file))
            app.state.authenticate = authenticate
            yield
        finally:
            await bridge.stop()
            await status.stop()
            await producer.stop()

    routes = [
        Route("/v1/executions", create_execution, methods=["POST"]),
        Route("/v1/executions/{execution_id}", get_execution, methods=["GET"]),
        Route("/health/live", live),
        Route("/health/ready", ready),
        *streaming.routes(),
    ]
    return Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPError: _http_error})

