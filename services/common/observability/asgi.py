"""ASGI middleware: a server span and request metrics for each HTTP request, and the ``/metrics`` endpoint."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from opentelemetry.trace import SpanKind, Status, StatusCode
from prometheus_client import CollectorRegistry
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common.observability import metrics
from services.common.observability.logs import log_context
from services.common.observability.tracing import context_from, tracer


class TelemetryMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method: str = scope["method"]
        status = 500
        started = time.perf_counter()
        traceparent = next((v.decode(errors="replace") for k, v in scope["headers"] if k == b"traceparent"), None)
        log_context.set({})

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        with tracer.start_as_current_span(
            f"{method} {scope['path']}",
            context=context_from(traceparent),
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": scope["path"]},
        ) as span:
            try:
                await self.app(scope, receive, send_and_record)
            finally:
                route = getattr(scope.get("route"), "path", None) or "unmatched"
                span.update_name(f"{method} {route}")
                span.set_attribute("http.route", route)
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    span.set_status(Status(StatusCode.ERROR))
                if route != "/metrics":
                    metrics.HTTP_REQUESTS.labels(method=method, route=route, status=str(status)).inc()
                    metrics.HTTP_DURATION.labels(method=method, route=route).observe(time.perf_counter() - started)


def metrics_endpoint(*registries: CollectorRegistry) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        body, content_type = metrics.exposition(*registries)
        return Response(body, media_type=content_type)

    return endpoint
