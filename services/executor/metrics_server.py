"""The executor's small HTTP server: ``GET /metrics`` (Prometheus), ``GET /health/live`` and
``GET /health/ready`` (503 naming a reader that is not running: a lane, a view, the control or jobs tail).

The executor has no web framework; this is a few lines of ``asyncio.start_server`` answering one
request per connection, so a scrape never competes with the agent loops for more than a moment.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import orjson

from services.common.observability import metrics
from services.common.reader import Reader, readers_health

log = logging.getLogger(__name__)


class MetricsServer:
    def __init__(self, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host, self.port = host, port
        self._server: asyncio.Server | None = None
        self.readers: Callable[[], list[Reader]] = list

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("executor metrics on %s/metrics", self.url)

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2)

    async def __aenter__(self) -> MetricsServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(5):
                head = await reader.readuntil(b"\r\n\r\n")
            parts = head.split(b" ", 2)
            path = parts[1].split(b"?")[0] if len(parts) > 1 else b""
            if parts[0] != b"GET":
                status, body, content_type = b"405 Method Not Allowed", b"GET only\n", "text/plain"
            elif path == b"/metrics":
                body, content_type = metrics.exposition(metrics.EXECUTOR)
                status = b"200 OK"
            elif path == b"/health/live":
                status, body, content_type = b"200 OK", b'{"status":"ok"}', "application/json"
            elif path == b"/health/ready":
                ok, states = readers_health(self.readers())
                status = b"200 OK" if ok else b"503 Service Unavailable"
                body, content_type = orjson.dumps({"status": "ready" if ok else "not ready", "readers": states}), "application/json"
            else:
                status, body, content_type = b"404 Not Found", b"not found\n", "text/plain"
            writer.write(
                b"HTTP/1.1 "
                + status
                + b"\r\nContent-Type: "
                + content_type.encode()
                + b"\r\nContent-Length: "
                + str(len(body)).encode()
                + b"\r\nConnection: close\r\n\r\n"
                + body
            )
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


async def watch(executor: Any, *, stop: bool = False) -> None:
    """Register the executor's live gauges (lag, in flight) and start its metrics server; or undo both."""
    if stop:
        metrics.CONSUMER_LAG.remove(executor)
        metrics.IN_FLIGHT.remove(executor)
        if executor.metrics_server is not None:
            await executor.metrics_server.stop()
        return
    group = executor.settings.consumer_group

    def lag() -> list[tuple[tuple[str, ...], float]]:
        out: list[tuple[tuple[str, ...], float]] = []
        for consumer in executor.consumers():
            for tp in consumer.assignment():
                high = consumer.highwater(tp)
                mark = executor._watermarks.get(tp)
                behind = 0 if high is None or mark is None else max(0, high - mark.committed)
                out.append(((group, tp.topic, str(tp.partition)), float(behind)))
        return out

    metrics.CONSUMER_LAG.add(executor, lag)
    metrics.IN_FLIGHT.add(executor, lambda: [((), float(len(executor._running)))])
    if executor.metrics_server is not None:
        executor.metrics_server.readers = executor.readers  # its lanes, views and tails
        await executor.metrics_server.start()
