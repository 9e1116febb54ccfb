"""What both reference services share: ``POST /jobs`` answers with the job id at once; the work runs
after a delay and its completion is reported to the orchestrator.

Request: ``{job_id, tenant_id, service, input, deadline}`` with ``Authorization: Bearer <token>``;
a repeated ``job_id`` (a retry) is answered again, not run twice. Completion: ``{event:
"job_completed", service, job_id, tenant_id, result, usage}`` over ``/ws/task_updates`` (the
reporter's connection is kept open and re-opened when it drops) or on the ``jobs.completed`` topic.

``behaviour`` makes the service misbehave on purpose, for tests: ``never`` (accepts, never reports),
``garbage_answer`` (answers the POST with non-JSON), ``garbage_result`` (reports nonsense),
``down`` (503 to everything).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

import orjson
import websockets
from aiokafka import AIOKafkaProducer
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from schemas.jobs import JobAccepted, JobSubmission

log = logging.getLogger(__name__)

Work = Callable[[dict[str, Any]], Awaitable[tuple[Any, dict[str, int] | None]]]


class Reporter(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def report(self, message: dict[str, Any]) -> dict[str, Any]: ...


class WebSocketReporter:
    """One connection to ``/ws/task_updates``; each report waits for the orchestrator's verdict."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url  # the orchestrator's base URL (ws:// or http://); may be set after construction
        self._token = token
        self._ws: websockets.ClientConnection | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        if self._ws is not None:
            await self._ws.close()
            self._ws = None

    async def report(self, message: dict[str, Any]) -> dict[str, Any]:
        async with self._lock:
            for attempt in range(3):
                try:
                    if self._ws is None:
                        base = self.url.replace("http", "ws", 1).rstrip("/")
                        self._ws = await websockets.connect(f"{base}/ws/task_updates?token={self._token}")
                    await self._ws.send(orjson.dumps(message).decode())
                    verdict: dict[str, Any] = orjson.loads(await self._ws.recv())
                    return verdict
                except (OSError, websockets.WebSocketException) as exc:
                    self._ws = None
                    log.warning("task_updates connection failed (%s); attempt %d", exc, attempt + 1)
                    await asyncio.sleep(0.2 * 2**attempt)
        return {"type": "error", "error": "orchestrator unreachable"}


class KafkaReporter:
    """Completions on the ``jobs.completed`` topic (key job_id)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self._producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
        self._topic = topic

    async def start(self) -> None:
        await self._producer.start()

    async def stop(self) -> None:
        await self._producer.stop()

    async def report(self, message: dict[str, Any]) -> dict[str, Any]:
        await self._producer.send_and_wait(self._topic, value=orjson.dumps(message), key=str(message.get("job_id", "")).encode())
        return {"type": "sent"}


class JobService:
    def __init__(self, name: str, work: Work, *, token: str, reporter: Reporter, delay_s: float = 0.3, behaviour: str = "ok") -> None:
        self.name = name
        self.behaviour = behaviour
        self.delay_s = delay_s
        self.reporter = reporter
        self.received: list[dict[str, Any]] = []  # every accepted job request
        self.reports: list[tuple[dict[str, Any], dict[str, Any]]] = []  # (completion, the orchestrator's verdict)
        self._work = work
        self._token = token
        self._jobs: dict[str, asyncio.Task[None]] = {}

    def app(self) -> Starlette:
        @contextlib.asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            await self.reporter.start()
            try:
                yield
            finally:
                for task in self._jobs.values():
                    task.cancel()
                await asyncio.gather(*self._jobs.values(), return_exceptions=True)
                await self.reporter.stop()

        return Starlette(routes=[Route("/jobs", self._submit, methods=["POST"]), Route("/health", self._health)], lifespan=lifespan)

    async def _health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok", "service": self.name})

    async def _submit(self, request: Request) -> Response:
        if self.behaviour == "down":
            return JSONResponse({"error": "down for maintenance"}, status_code=503)
        auth = request.headers.get("authorization", "")
        if not hmac.compare_digest(auth, f"Bearer {self._token}"):
            return JSONResponse({"error": "bad token"}, status_code=401)
        try:
            body = orjson.loads(await request.body())
            submission = JobSubmission.model_validate(body)
            job_id, tenant_id, data = submission.job_id, submission.tenant_id, submission.input
        except (orjson.JSONDecodeError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
            return JSONResponse({"error": f"bad request: {exc}"}, status_code=400)
        if self.behaviour == "garbage_answer":
            return PlainTextResponse("<html>surprise</html>")
        if job_id not in self._jobs:
            self.received.append(body)
            self._jobs[job_id] = asyncio.create_task(self._run(job_id, tenant_id, data))
        return JSONResponse(JobAccepted(job_id=job_id).model_dump(), status_code=202)

    async def _run(self, job_id: str, tenant_id: str, data: dict[str, Any]) -> None:
        if self.behaviour == "never":
            return
        await asyncio.sleep(self.delay_s)
        message: dict[str, Any] = {"event": "job_completed", "service": self.name, "job_id": job_id, "tenant_id": tenant_id}
        try:
            if self.behaviour == "garbage_result":
                message["result"] = {"nonsense": True}
            else:
                result, usage = await self._work(data)
                message["result"] = result
                if usage:
                    message["usage"] = usage
        except Exception as exc:  # the job failed: say so, with the reason
            message["error"] = f"{type(exc).__name__}: {exc}"
        verdict = await self.reporter.report(message)
        self.reports.append((message, verdict))
        if verdict.get("type") == "rejected":
            log.warning("%s: completion of %s rejected: %s", self.name, job_id, verdict.get("error"))
