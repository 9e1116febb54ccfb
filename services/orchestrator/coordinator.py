"""Service coordination: the orchestrator is the only door to the Query (LLM + RAG) and Embedding services.

An executor's tool publishes ``job.requested`` (``jobs.requested``); the coordinator checks it
against the execution it names (same tenant, still running), registers a job in the task registry
(tenant, session, execution, agent, deadline) and an entry in the execution's plan, then delegates:
``POST {service}/jobs`` with the job id it chose. The service answers at once; the job ends when it
reports over ``/ws/task_updates`` or ``jobs.completed`` (``completions.apply_job_completed``), or
when the sweeper finds it past its deadline. Every end goes through ``Lifecycle.finalize``; the
coordinator's end hook then publishes ``job.updated`` on ``jobs.updates``, where the waiting
executor picks it up.

The parts: the wire models in ``schemas/jobs.py``, the errors in ``serviceerrors.py``, the HTTP
client in ``serviceclient.py``, the ``jobs.requested`` consumer in ``jobrequests.py``; this module is
the domain logic (checks, registration, delegation, ends).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import httpx
from aiokafka.errors import KafkaError
from pydantic import ValidationError

from schemas.events import JobRequested, JobStatus, JobUpdated, Usage
from schemas.jobs import SERVICE_INPUTS, EmbeddingResult, QueryResult
from services.common.kafka import encode, envelope_headers
from services.common.taskset import TaskSet
from services.orchestrator.breaker import CircuitBreaker
from services.orchestrator.cachefeed import CacheInvalidations
from services.orchestrator.ids import new_id
from services.orchestrator.jobrequests import JobRequests
from services.orchestrator.lifecycle import Lifecycle
from services.orchestrator.projection import row_of
from services.orchestrator.resultcache import CacheKey
from services.orchestrator.servicecache import CachedResult, ServiceCache, make_cache
from services.orchestrator.serviceclient import ServiceClient
from services.orchestrator.serviceerrors import ServiceError
from services.orchestrator.settings import OrchestratorSettings
from services.orchestrator.store import plans, tasks
from services.orchestrator.store.tables import service_calls
from services.orchestrator.store.tasks import Task
from services.orchestrator.validation import first_error

log = logging.getLogger(__name__)

SERVICES = ("query", "embedding")


def check_query_result(result: Any) -> str | None:
    try:
        QueryResult.model_validate(result)
    except ValidationError as exc:
        return f"the query service reported an invalid result: {first_error(exc)}"
    return None


def check_embedding_result(result: Any) -> str | None:
    try:
        parsed = EmbeddingResult.model_validate(result)
    except ValidationError as exc:
        return f"the embedding service reported an invalid result: {first_error(exc)}"
    if len({len(v) for v in parsed.embeddings}) != 1 or not parsed.embeddings[0]:
        return "the embedding service reported vectors of different or zero dimensions"
    return None


# A job answered from the cache cost no tokens, and its usage says why.
CACHED_USAGE = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0, "cached": True}


def _plan_meta(request: JobRequested, deadline: float, key: CacheKey | None, hit: CachedResult | None) -> dict[str, Any]:
    meta: dict[str, Any] = {"call_id": request.call_id, "attempt": request.attempt, "deadline": deadline}
    if hit is not None:
        meta |= {"cached": True, "cached_from": hit.job_id}
    elif key is not None:  # where the result goes when the job completes
        meta["cache_key"] = {"model": key.model, "digest": key.digest}
    return meta


def job_status(job: Task) -> JobStatus:
    """A delegated job's row as ``job.updated`` tells it: its end, or ``accepted`` while it is open."""
    match job.state:
        case "completed" | "failed" | "timed_out" | "cancelled" as end:
            return end
        case _:
            return "accepted"


class ServiceCoordinator:
    def __init__(self, settings: OrchestratorSettings, lifecycle: Lifecycle, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.settings = settings
        self.lifecycle = lifecycle
        self.clients: dict[str, ServiceClient] = {}
        for name, endpoint in (("query", settings.query_service), ("embedding", settings.embedding_service)):
            if endpoint is not None:
                breaker = CircuitBreaker(failures=settings.breaker_failures, reset_s=settings.breaker_reset_s)
                self.clients[name] = ServiceClient(
                    name,
                    endpoint,
                    attempts=settings.service_attempts,
                    backoff_s=settings.service_backoff_s,
                    breaker=breaker,
                    transport=transport,
                )
        self.requests = JobRequests(lifecycle, self)
        # Results of identical requests are answered from here, not paid for again (servicecache.py).
        self.cache: ServiceCache | None = make_cache(settings)
        # Invalidations reach every replica's in-process cache through the log (cachefeed.py).
        self.invalidations = (
            CacheInvalidations(settings.kafka, cache=self.cache, producer=lifecycle.producer) if self.cache is not None else None
        )
        self._background = TaskSet("coordinator", log=log)
        lifecycle.end_hooks.append(self._on_end)
        lifecycle.late_hooks.append(self._on_late)
        lifecycle.result_checks.update({"query": check_query_result, "embedding": check_embedding_result})

    async def start(self) -> None:
        if self.cache is not None:
            await self.cache.start()
        if self.invalidations is not None:
            await self.invalidations.start()
        await self.requests.start()

    async def stop(self) -> None:
        await self.requests.stop()
        if self.invalidations is not None:
            await self.invalidations.stop()
        await self._background.stop()
        for client in self.clients.values():
            await client.aclose()
        if self.cache is not None:
            await self.cache.stop()

    # -- delegation -----------------------------------------------------------------------------
    async def accept(self, request: JobRequested) -> None:
        """Register and delegate one request (once: a redelivered one only repeats what became of it)."""
        store = self.lifecycle.store
        key, hit = await self._look_up(request)
        async with store.begin() as conn:
            known = await plans.by_request(conn, request.request_id)
            if known is not None:
                job = await tasks.get(conn, known.job_id) if known.job_id else None
            else:
                execution = await row_of(conn, self.lifecycle.status, request.execution_id, tenant_id=request.tenant_id)
                problem = self._problem(request, execution)
                if problem is None:
                    assert execution is not None
                    job_id = "job_" + new_id()
                    timeout_s = min(request.timeout_s or self.settings.delegated_job_timeout_s, self.settings.delegated_job_timeout_s)
                    deadline = time.time() + timeout_s
                    await tasks.create(
                        conn,
                        id=job_id,
                        kind="job",
                        origin="delegated",
                        tenant_id=request.tenant_id,
                        agent_id=execution.agent_id,
                        service=request.service,
                        session_id=execution.session_id,
                        deadline=deadline,
                    )
                    self.lifecycle.deadlines.hint(deadline)  # the sweeper's next look at the store
                    await plans.add(
                        conn,
                        execution_id=request.execution_id,
                        tenant_id=request.tenant_id,
                        kind="job",
                        target=request.service,
                        job_id=job_id,
                        request_id=request.request_id,
                        outcome="pending",
                        meta=_plan_meta(request, deadline, key, hit),
                    )
        if known is not None:
            if job is not None:
                await self._publish(request, job.id, job_status(job), job=job)
            return
        if problem is not None:
            log.warning("job request %s of execution %s refused: %s", request.request_id, request.execution_id, problem)
            await self._publish(request, "", "failed", error=problem)
            return
        if hit is not None:
            # Answered now: the end hook tells the executor, with ``cached`` (plan meta) and no tokens.
            await self.lifecycle.finalize(job_id, "completed", result=hit.result, usage=dict(CACHED_USAGE))
            return
        self._background.spawn(self._delegate(request, job_id, deadline), name=f"delegate-{job_id}")

    async def invalidate_tenant(self, tenant_id: str) -> int:
        """Drop one tenant's cached results here (in Redis: everywhere) and tell every replica; the
        count is what this replica's store dropped. ``Unavailable`` if the store or Kafka fails."""
        assert self.cache is not None and self.invalidations is not None
        dropped = await self.cache.invalidate(tenant_id)
        await self.invalidations.publish(tenant_id)
        return dropped

    async def _look_up(self, request: JobRequested) -> tuple[CacheKey | None, CachedResult | None]:
        """The request's cache entry and, unless the request bypasses the cache, what it holds."""
        if self.cache is None or request.service not in self.clients:
            return None, None
        key = self.cache.key_for(request.tenant_id, request.service, request.payload)
        if key is None:
            return None, None
        if request.no_cache or self._execution_says_no_cache(request.execution_id):
            self.cache.bypassed(request.service)
            return key, None  # still stored when it completes: a bypass refreshes the entry
        return key, await self.cache.get(key)

    def _execution_says_no_cache(self, execution_id: str) -> bool:
        status = self.lifecycle.status.get(execution_id)
        return bool(status is not None and status.intake is not None and status.intake.no_cache)

    def _problem(self, request: JobRequested, execution: Task | None) -> str | None:
        if execution is None or execution.kind != "execution":
            return f"execution {request.execution_id!r} is not known for tenant {request.tenant_id!r}"
        if not execution.open:
            return f"execution {request.execution_id!r} already ended ({execution.state})"
        if request.service not in SERVICES:
            return f"unknown service {request.service!r}; known: {list(SERVICES)}"
        if request.service not in self.clients:
            env = f"AGENTSTREAM_{request.service.upper()}_SERVICE"
            return f"the {request.service} service is not configured on the orchestrator (set {env})"
        try:
            SERVICE_INPUTS[request.service].model_validate(request.payload)
        except ValidationError as exc:
            return f"invalid {request.service} input: {first_error(exc)}"
        return None

    async def _delegate(self, request: JobRequested, job_id: str, deadline: float) -> None:
        try:
            client = self.clients[request.service]
            await client.submit(job_id=job_id, tenant_id=request.tenant_id, payload=request.payload, deadline=deadline)
            async with self.lifecycle.store.begin() as conn:
                await tasks.mark_running(conn, job_id)
                await plans.set_outcome(conn, job_id, "running", f"accepted by the {request.service} service")
        except ServiceError as exc:
            log.warning("delegating %s job %s failed: %s", request.service, job_id, exc)
            await self.lifecycle.finalize(job_id, "failed", error=str(exc))  # the end hook tells the executor
            return
        except Exception as exc:
            log.exception("delegating %s job %s failed", request.service, job_id)
            await self.lifecycle.finalize(job_id, "failed", error=f"delegation failed: {type(exc).__name__}")
            return
        await self._publish(request, job_id, "accepted")

    # -- ends -------------------------------------------------------------------------------------
    async def _on_end(self, task: Task) -> None:
        if task.kind == "execution":
            await self._end_execution(task)
        elif task.kind == "job" and task.origin == "delegated":
            await self._end_job(task)

    async def _end_execution(self, task: Task) -> None:
        async with self.lifecycle.store.begin() as conn:
            await plans.end(conn, execution_id=task.id, kind="execution", outcome=task.state, detail=task.error)
            rows = await conn.execute(
                service_calls.select().where(
                    service_calls.c.execution_id == task.id, service_calls.c.kind == "job", service_calls.c.ended_at.is_(None)
                )
            )
            open_jobs = [r.job_id for r in rows if r.job_id]
        for job_id in open_jobs:  # nobody waits for them any more
            await self.lifecycle.finalize(job_id, "cancelled", error=f"execution {task.id} ended ({task.state})")

    async def _end_job(self, task: Task) -> None:
        async with self.lifecycle.store.begin() as conn:
            row = await plans.of_job(conn, task.id)
            if row is None:
                return
            meta = row.meta or {}
            cached = bool(meta.get("cached"))
            detail = f"served from the result cache (the result of job {meta.get('cached_from')})" if cached else task.error
            await plans.end(conn, execution_id=row.execution_id, kind="job", job_id=task.id, outcome=task.state, detail=detail)
        update = JobUpdated(
            tenant_id=task.tenant_id,
            execution_id=row.execution_id,
            session_id=task.session_id,
            agent_id=task.agent_id,
            attempt=int(meta.get("attempt", 1)),
            request_id=row.request_id or "",
            job_id=task.id,
            service=task.service or "",
            status=job_status(task),
            result=task.result if task.state == "completed" else None,
            error=task.error,
            usage=Usage.model_validate(task.usage) if task.usage else None,
            cached=cached,
        )
        await self._send(update)  # the waiting executor first; the cache after
        if task.state == "completed" and not cached:
            await self._store_result(task, meta)

    async def _store_result(self, task: Task, meta: dict[str, Any]) -> None:
        entry = meta.get("cache_key")
        if self.cache is None or not isinstance(entry, dict) or task.service is None:
            return
        model, digest = str(entry.get("model", "")), str(entry.get("digest", ""))
        key = CacheKey(tenant_id=task.tenant_id, service=task.service, model=model, digest=digest)
        await self.cache.put(key, task.result, job_id=task.id)

    async def _on_late(self, task: Task, message: dict[str, Any]) -> None:
        log.warning("late completion of %s job %s ignored: the job already ended (%s)", task.service, task.id, task.state)
        if task.origin != "delegated":
            return
        async with self.lifecycle.store.begin() as conn:
            row = await plans.of_job(conn, task.id)
            if row is None:
                return
            now = time.time()
            await plans.add(
                conn,
                execution_id=row.execution_id,
                tenant_id=task.tenant_id,
                kind="late_completion",
                target=task.service or "",
                job_id=task.id,
                outcome="ignored",
                detail=f"completion arrived after the job ended ({task.state})",
                started_at=now,
                ended_at=now,
                meta={"error": message.get("error")} if message.get("error") else None,
            )

    async def _publish(
        self, request: JobRequested, job_id: str, status: JobStatus, *, job: Task | None = None, error: str | None = None
    ) -> None:
        update = JobUpdated(
            tenant_id=request.tenant_id,
            execution_id=request.execution_id,
            session_id=request.session_id,
            agent_id=request.agent_id,
            attempt=request.attempt,
            request_id=request.request_id,
            job_id=job_id,
            service=request.service,
            status=status,
            result=job.result if job is not None and status == "completed" else None,
            error=error or (job.error if job is not None else None),
            cached=bool(job is not None and job.usage and job.usage.get("cached")),  # a redelivered request of a hit
        )
        await self._send(update)

    async def _send(self, update: JobUpdated) -> None:
        try:
            await self.lifecycle.producer.send_and_wait(
                self.settings.kafka.topics.jobs_updates,
                value=encode(update),
                key=update.execution_id.encode(),
                headers=envelope_headers(update, service="orchestrator"),
            )
        except KafkaError:
            # The executor then ends the wait on its own timeout, with that reason.
            log.exception("could not publish job.updated (%s) of job %s", update.status, update.job_id)
