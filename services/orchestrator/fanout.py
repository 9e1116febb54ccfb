"""The fan-out's parts, shared by the orchestrator's app and the bridge service (bridgeapp.py).

``open_fanout`` starts the status view and the bridge tail on an ``AsyncExitStack`` (each one's stop
registered before its start, so a start that fails half-way still closes what it opened), and
``ready`` answers ``/health/ready`` from Kafka and the readers a service runs. Both apps call them,
so the single-process orchestrator and the bridge service cannot drift apart.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from services.common.localkafka import answers_metadata
from services.common.reader import Reader, readers_health
from services.common.shutdown import bounded
from services.common.statusview import StatusView
from services.orchestrator.bridge import Bridge
from services.orchestrator.settings import OrchestratorSettings


@dataclass(frozen=True)
class Fanout:
    status: StatusView
    bridge: Bridge

    def readers(self) -> list[Reader]:
        return [r for r in (self.status.reader, self.bridge.reader) if r is not None]


def reply_topics(settings: OrchestratorSettings) -> list[str]:
    """Every tenant's reply topics: the bridge serves them beside the events topic."""
    return sorted({t for topics in settings.reply_topics.values() for t in topics})


async def open_fanout(stack: contextlib.AsyncExitStack, settings: OrchestratorSettings, *, producer: AIOKafkaProducer, name: str) -> Fanout:
    """Start the status view, then the bridge tail; both stop when ``stack`` closes (bridge first)."""
    status = StatusView(settings.kafka, dlq=producer, name=f"{name}-status-view")
    bridge = Bridge(
        settings.kafka,
        status,
        dlq=producer,
        reply_topics=reply_topics(settings),
        recent_ttl_s=settings.bridge_recent_ttl_s,
        recent_max_bytes=settings.bridge_recent_max_mb * 1024 * 1024,
    )
    stack.push_async_callback(bounded, "status view", status.stop)
    await status.start()
    stack.push_async_callback(bounded, "bridge", bridge.stop)
    await bridge.start()
    return Fanout(status, bridge)


async def live(request: Request) -> Response:
    # `instance` (AGENTSTREAM_INSTANCE_ID): how a launcher (`agentstream demo`) knows it talks to the server it started.
    settings = getattr(getattr(request.app.state, "agentstream", None), "settings", None)
    instance = getattr(settings, "instance_id", None)
    return JSONResponse({"status": "ok", **({"instance": instance} if instance else {})})


async def ready(bootstrap: str, readers: Iterable[Reader]) -> Response:
    """Ready when Kafka answers and every reader is fetching; 503 names what is not."""
    readers_ok, states = readers_health(list(readers))
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
