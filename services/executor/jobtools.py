"""Built-in tools that go through the orchestrator to its Query and Embedding services.

``knowledge_search`` and ``embed`` never call those services: they publish ``job.requested`` on
``jobs.requested`` and wait (a future, not a thread: other executions go on) for the orchestrator's
``job.updated`` on ``jobs.updates``, which every executor tails. ``accepted`` carries the job id,
then one end: ``completed`` with the result, or ``failed`` / ``timed_out`` / ``cancelled`` with the
reason, which becomes the tool's error result for the model. Each step is a ``tool.call.progress``
event of the call. Without an answer from the orchestrator the wait ends after the job's deadline
plus a grace, with that reason.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from pydantic import ValidationError

from schemas.events import JobRequested, JobUpdated, ToolCallProgress
from services.common.errors import PoisonRecord
from services.common.kafka import encode, envelope_headers
from services.common.reader import Reader, start_tail_reader
from services.common.settings import KafkaSettings
from services.common.sources import Record
from services.executor.providers.base import ToolSpec
from services.executor.tools import Tool, ToolContext, ToolError, current_tool_call

log = logging.getLogger(__name__)


class JobClient:
    def __init__(
        self, settings: KafkaSettings, *, producer: AIOKafkaProducer, client_id: str, timeout_s: float, grace_s: float = 5.0
    ) -> None:
        self._settings = settings
        self._producer = producer
        self._client_id = client_id
        self.timeout_s = timeout_s
        self.grace_s = grace_s
        self._waiters: dict[str, tuple[str, asyncio.Queue[JobUpdated]]] = {}  # request_id -> (tenant, updates)
        self.reader: Reader | None = None

    async def start(self) -> None:
        # From the end: an update for a request sent right after start is seen.
        topics = [self._settings.topics.jobs_updates]
        self.reader = await start_tail_reader(self._settings, topics, self._handle, name=self._client_id, dlq=self._producer)

    async def stop(self) -> None:
        reader, self.reader = self.reader, None
        if reader is not None:
            await reader.stop()

    def _handle(self, record: Record) -> None:
        problem = self._deliver(record.value or b"")
        if problem is not None:
            raise PoisonRecord(problem)

    def _deliver(self, value: bytes) -> str | None:
        """Hand an update to its waiter; return why the record is malformed, if it is."""
        try:
            raw = orjson.loads(value)
            if not isinstance(raw, dict) or raw.get("type") != "job.updated":
                return None if isinstance(raw, dict) else "jobs.updates record is not a JSON object"
            update = JobUpdated.model_validate(raw)
        except (orjson.JSONDecodeError, ValidationError) as exc:
            return f"invalid job.updated: {exc}"
        waiter = self._waiters.get(update.request_id)
        if waiter is None:
            return None  # another executor's, or a wait that already ended
        tenant_id, queue = waiter
        if update.tenant_id != tenant_id:
            log.warning("jobs.updates: update for request %s names tenant %r; ignored", update.request_id, update.tenant_id)
            return None
        queue.put_nowait(update)
        return None

    async def run(self, service: str, payload: dict[str, Any]) -> tuple[str, Any]:
        """Delegate one job for the current tool call; return (job_id, result) or raise ToolError."""
        ctx = current_tool_call.get()
        if ctx is None:
            raise ToolError(f"the {service} tool only runs inside an execution")
        env = ctx.emitter.envelope
        request = JobRequested(
            **env,
            request_id=f"{env['execution_id']}:{env['attempt']}:{ctx.step}:{ctx.call_id}",
            service=service,
            payload=payload,
            call_id=ctx.call_id,
            timeout_s=self.timeout_s,
        )
        queue: asyncio.Queue[JobUpdated] = asyncio.Queue()
        self._waiters[request.request_id] = (request.tenant_id, queue)
        job_id = ""
        try:
            try:
                await ctx.emitter.check_tenure()  # a woken executor that lost the partition asks for nothing more
                await self._producer.send_and_wait(
                    self._settings.topics.jobs_requested,
                    value=encode(request),
                    key=request.execution_id.encode(),
                    headers=envelope_headers(request, service="executor"),
                )
            except KafkaError as exc:
                raise ToolError(f"could not ask the orchestrator for a {service} job: {type(exc).__name__}", retriable=True) from exc
            await _progress(ctx, "", "requested", f"{service} job requested from the orchestrator")
            async with asyncio.timeout(self.timeout_s + self.grace_s):
                while True:
                    update = await queue.get()
                    job_id = update.job_id or job_id
                    if update.status == "accepted":
                        await _progress(ctx, job_id, "accepted", f"the {service} service accepted the job")
                        continue
                    detail = update.error or ("served from the orchestrator's result cache" if update.cached else "")
                    await _progress(ctx, job_id, update.status, detail)
                    if update.status == "completed":
                        return job_id, update.result
                    ref = f"{service} job {job_id}" if job_id else f"{service} job"
                    raise ToolError(f"{ref} {update.status.replace('_', ' ')}: {update.error or 'no reason given'}")
        except TimeoutError:
            raise ToolError(
                f"{service} job {job_id or '(not accepted)'}: no answer from the orchestrator within {self.timeout_s + self.grace_s:g}s"
            ) from None
        finally:
            self._waiters.pop(request.request_id, None)


async def _progress(ctx: ToolContext, job_id: str, status: str, detail: str) -> None:
    await ctx.emitter.emit(ToolCallProgress, call_id=ctx.call_id, tool=ctx.tool, job_id=job_id, status=status, detail=detail, step=ctx.step)


class KnowledgeSearch:
    spec = ToolSpec(
        name="knowledge_search",
        description="Search the knowledge base (documents) for a question; returns an answer and the documents it is based on.",
        parameters={
            "type": "object",
            "properties": {
                "query": {"type": "string", "minLength": 1, "maxLength": 2000},
                "top_k": {"type": "integer", "minimum": 1, "maximum": 10},
            },
            "required": ["query"],
            "additionalProperties": False,
        },
    )

    def __init__(self, jobs: JobClient) -> None:
        self._jobs = jobs
        self.timeout_s = jobs.timeout_s + jobs.grace_s + 1.0  # the loop's limit: past the client's own

    async def __call__(self, arguments: dict[str, Any]) -> Any:
        job_id, result = await self._jobs.run("query", arguments)
        return {"job_id": job_id, **(result if isinstance(result, dict) else {"result": result})}


class Embed:
    spec = ToolSpec(
        name="embed",
        description="Embed texts into vectors with the embedding service.",
        parameters={
            "type": "object",
            "properties": {"texts": {"type": "array", "items": {"type": "string", "maxLength": 8000}, "minItems": 1, "maxItems": 64}},
            "required": ["texts"],
            "additionalProperties": False,
        },
    )

    def __init__(self, jobs: JobClient) -> None:
        self._jobs = jobs
        self.timeout_s = jobs.timeout_s + jobs.grace_s + 1.0

    async def __call__(self, arguments: dict[str, Any]) -> Any:
        job_id, result = await self._jobs.run("embedding", arguments)
        if not isinstance(result, dict):
            return {"job_id": job_id, "result": result}
        vectors = result.get("embeddings") or []
        return {
            "job_id": job_id,
            "model": result.get("model"),
            "dim": len(vectors[0]) if vectors else 0,
            "embeddings": [[round(float(x), 6) for x in v] for v in vectors],
        }


def job_tools(jobs: JobClient) -> dict[str, Tool]:
    tools: list[Tool] = [KnowledgeSearch(jobs), Embed(jobs)]
    return {t.spec.name: t for t in tools}
