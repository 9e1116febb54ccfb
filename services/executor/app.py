"""The executor: a Kafka consumer group over the three lane topics, one supervised reader per lane (lanes.py).

Each request runs as its own task, so executions run concurrently also within one partition. A
request's offset is committed only when its execution reached a terminal event that the broker
acknowledged; the committed offset is the contiguous watermark of finished requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections import OrderedDict
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from pydantic import ValidationError

from schemas.agents import AgentSpec
from schemas.events import (
    ExecutionCancelRequested,
    ExecutionFailed,
    ExecutionRequested,
)
from schemas.status import ExecutionStatus
from services.common.agents import AgentCatalog, AgentSource, HttpAgents, StaticAgents, load_agents
from services.common.dlq import Publisher, park
from services.common.errors import AgentstreamError
from services.common.kafka import RESUME_HEADER, encode, ensure_topics, header, make_producer, start_client, status_headers
from services.common.memory import Trimmer
from services.common.observability import metrics, tracing
from services.common.reader import Reader
from services.common.shutdown import bounded
from services.common.sources import Record
from services.common.statusview import StatusView
from services.common.taskset import TaskSet
from services.common.urlguard import guarded_client
from services.executor.admission import Refusal, check_key, check_request
from services.executor.attempt import AttemptRun, Ended
from services.executor.control import ControlTail
from services.executor.emitter import EventEmitter
from services.executor.eventlog import KafkaEventLog
from services.executor.fence import Claim, Tenure
from services.executor.httptools import ToolRegistry, load_http_tools
from services.executor.jobtools import JobClient, job_tools
from services.executor.lanes import LaneOpener, Lanes, group_opener
from services.executor.loop import ExecutionError, LoopSettings
from services.executor.mcptools import McpTools
from services.executor.metrics_server import MetricsServer, watch
from services.executor.providers.base import Provider
from services.executor.providers.registry import PROVIDER_NAMES, build_providers, close_providers, default_agent
from services.executor.settings import ExecutorSettings
from services.executor.slots import PrioritySlots
from services.executor.tenants import TenantsView
from services.executor.tools import Tool, builtin_tools
from services.executor.watermark import PartitionWatermark

log = logging.getLogger(__name__)


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, executor: Executor, claim: Claim) -> None:
        self._executor = executor
        self._claim = claim
        self._revoked: set[TopicPartition] = set()

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        self._revoked = set(revoked)
        if self._claim.revoked():
            # We were stalled past our lease: the group may have given these partitions to another member
            # meanwhile, which ran their executions as a newer attempt. Ours are fenced, even where we get
            # the partition back: its records come again and run as the next attempt.
            self._executor.drop_partitions({tp for tp, _ in self._executor.running() if tp.topic == self._claim.name} | self._revoked)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        # Executions of partitions we lost will be redelivered to their new owner: stop ours.
        self._executor.drop_partitions(self._revoked - set(assigned))
        self._revoked = set()
        self._claim.assigned()


_RECENT_CANCELS = 10_000


class Executor:
    def __init__(
        self,
        settings: ExecutorSettings,
        *,
        providers: dict[str, Provider] | None = None,
        tools: dict[str, Tool] | None = None,
        agents: dict[str, AgentSpec] | None = None,
        agent_sources: list[AgentSource] | None = None,
        lane_opener: LaneOpener | None = None,
        lane_dlq: Publisher | None = None,
    ) -> None:
        """``lane_opener`` and ``lane_dlq``: where the lanes' records come from and where refused ones
        are parked (default: the broker, as a member of ``consumer_group``, and our producer)."""
        self.settings = settings
        self.topics = settings.kafka.topics
        self.providers: dict[str, Provider] = providers if providers is not None else build_providers(settings)
        self.tools = tools if tools is not None else builtin_tools()
        known = PROVIDER_NAMES | set(self.providers)
        if agents is None:
            agents = load_agents(settings.agents_file, providers=known)
            if settings.agents_file is None or "default" not in agents:
                agents["default"] = default_agent(settings)
        self.agents = agents
        sources: list[AgentSource] = [StaticAgents(agents), *(agent_sources or ())]
        if settings.agent_service_url:
            sources.append(
                HttpAgents(
                    settings.agent_service_url,
                    ttl_s=settings.agent_cache_ttl_s,
                    timeout_s=settings.agent_service_timeout_s,
                    providers=known,
                )
            )
        self.catalog = AgentCatalog(*sources)
        self.loop_settings = LoopSettings(
            retry=settings.retry,
            timeouts=settings.timeouts,
            tool_timeout_s=settings.tool_timeout_s,
            tool_retries=settings.tool_retries,
            tool_retry_backoff_s=settings.tool_retry_backoff_s,
        )
        self.mcp = McpTools(settings)  # sessions open on first use: a server that is down never fails the start
        self.http = guarded_client(timeout=settings.tool_timeout_s, allow_private=settings.allow_private_tool_urls)
        self.producer: AIOKafkaProducer = make_producer(
            settings.kafka, client_id=f"{settings.instance_id}-producer", linger_ms=settings.events_linger_ms
        )
        self.status = StatusView(settings.kafka, dlq=self.producer, name=f"{settings.instance_id}-status-view")
        self.tenants = TenantsView(settings.kafka, dlq=self.producer, name=f"{settings.instance_id}-tenants-view")
        self.control = ControlTail(
            settings.kafka, on_cancel=self.request_cancel, client_id=f"{settings.instance_id}-control", dlq=self.producer
        )
        # knowledge_search / embed: jobs delegated through the orchestrator (jobtools.py).
        self.jobs = JobClient(
            settings.kafka, producer=self.producer, client_id=f"{settings.instance_id}-jobs", timeout_s=settings.job_timeout_s
        )
        if tools is None:
            self.tools |= job_tools(self.jobs)
        # An attempt after the first reads back what earlier ones completed (checkpoint.py): never the same work twice.
        self.event_log = KafkaEventLog(settings.kafka, client_id=f"{settings.instance_id}-history")
        self._slots = PrioritySlots(settings.max_concurrency)
        self._watermarks: dict[TopicPartition, PartitionWatermark] = {}
        self._running: dict[str, tuple[TopicPartition, asyncio.Task[None]]] = {}
        # Running executions' cancel events, with the tenant that may cancel each (a control record
        # naming another tenant's execution must not stop it).
        self._cancels: dict[str, tuple[str, asyncio.Event]] = {}
        self._recent_cancels: OrderedDict[tuple[str, str], None] = OrderedDict()  # (execution_id, tenant_id) asked to cancel
        self._dropped: OrderedDict[str, int] = OrderedDict()  # execution_id -> attempt it ran when its partition was lost
        self._attempts: dict[str, int] = {}  # execution_id -> the attempt running here
        self._stack: contextlib.AsyncExitStack | None = None  # what start() started, to unwind in stop()
        self._closed = False  # the adapters built here (providers, HTTP client, MCP sessions)
        self._stopping = False
        self._retries: dict[str, int] = {}
        self._background = TaskSet(f"{settings.instance_id}-background", log=log)  # retries, the claims ticker
        self.completed = 0
        self.cancelled = 0
        # One consumer per lane, all in one group: a lane whose requests wait for a slot does not hold
        # back the others, and PrioritySlots hands freed slots to critical first (batch last).
        # Each lane consumer's claim on its partitions: a run writes only while it holds (fence.py).
        ttl_s = settings.session_timeout_ms / 2000
        self._claims = {lane: Claim(lane, ttl_s=ttl_s, confirm_s=settings.fence_confirm_s) for lane in self.topics.lanes}
        opener = lane_opener or group_opener(
            settings.kafka, group=settings.consumer_group, client_id=settings.instance_id, session_timeout_ms=settings.session_timeout_ms
        )
        self.lanes = Lanes(
            self._on_request,
            listeners={lane: _Rebalance(self, self._claims[lane]) for lane in self.topics.lanes},
            open=opener,
            topics=self.topics,
            dlq=lane_dlq if lane_dlq is not None else self.producer,
            name=f"{settings.instance_id}-lane",
        )
        self.metrics_server = MetricsServer(host=settings.metrics_host, port=settings.metrics_port) if settings.metrics_port else None

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        """Start every part in order, each registering its own stop as soon as it runs: a step that fails
        unwinds exactly what started before it, in reverse order, and ``stop()`` unwinds the same way."""
        self._stopping = False
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(bounded, "adapters", self._close_adapters)  # built in __init__: ours from here on
            await self._load_tools()
            await ensure_topics(self.settings.kafka)
            await start_client(self.producer, self.settings.kafka)
            stack.push_async_callback(bounded, "producer", self.producer.stop)
            for part in (self.status, self.tenants, self.jobs):
                await part.start()
                stack.push_async_callback(bounded, type(part).__name__, part.stop)
            self._background.spawn(self._tick_claims(), name=f"{self.settings.instance_id}-claims")
            self._background.spawn(Trimmer().run(), name=f"{self.settings.instance_id}-memory")  # memory.py
            # Executions, their retries and the ticker end after the lanes and the control tail (nothing
            # starts or cancels them any more), before the job client and producer they write through.
            stack.push_async_callback(bounded, "executions", self._stop_work)
            await self.control.start()
            stack.push_async_callback(bounded, "control tail", self.control.stop)
            await self.lanes.start()
            stack.push_async_callback(bounded, "lanes", self.lanes.stop)
            stack.push_async_callback(watch, self, stop=True)  # ahead of watch(): it adds the gauges, then binds
            await watch(self)
            self._stack = stack.pop_all()

    async def _tick_claims(self) -> None:
        # A tenth of the lease: a stall is still seen long before the broker could evict us (half a
        # session timeout), and an idle executor wakes twice a second for it, not ten times.
        period = min(claim.ttl_s for claim in self._claims.values()) / 10 if self._claims else 0.5
        while True:
            await asyncio.sleep(period)
            for claim in self._claims.values():
                claim.tick()

    async def _load_tools(self) -> None:
        secret = self.settings.tool_secret.get_secret_value().encode() if self.settings.tool_secret else None
        allow = self.settings.allow_private_tool_urls
        if self.settings.tools_file is not None:
            self.tools |= load_http_tools(self.settings.tools_file, client=self.http, secret=secret, allow_private=allow)
        if self.settings.tool_registry_url:
            registry = ToolRegistry(self.settings.tool_registry_url, client=self.http, secret=secret, allow_private=allow)
            self.tools |= await registry.list()

    async def stop(self) -> None:
        """Idempotent; closes what ``__init__`` built also when the executor never started."""
        self._stopping = True
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()
        elif not self._closed:
            await self._close_adapters()

    async def _stop_work(self) -> None:
        self._stopping = True  # also when a failed start unwinds: an execution cancelled now schedules no retry
        running = [task for _, task in self._running.values()]
        for task in running:
            task.cancel()
        await self._background.stop()  # cancels the retries before any could start another execution
        await asyncio.gather(*running, return_exceptions=True)

    async def _close_adapters(self) -> None:
        self._closed = True
        await close_providers(self.providers)
        for source in self.catalog.sources:
            close = getattr(source, "aclose", None)
            if close is not None:
                await close()
        await self.http.aclose()
        await self.mcp.aclose()

    async def __aenter__(self) -> Executor:
        await self.start()  # unwinds by itself when a step fails
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def consumers(self) -> list[AIOKafkaConsumer]:
        return self.lanes.consumers()

    def assigned(self) -> set[TopicPartition]:
        return self.lanes.assignment()

    def readers(self) -> list[Reader]:
        """Every reader of this executor, lanes first: what ``/health/ready`` reports."""
        parts = (self.status, self.tenants, self.control, self.jobs)
        return [*self.lanes.readers.values(), *(part.reader for part in parts if part.reader is not None)]

    # -- cancel ---------------------------------------------------------------------------
    def request_cancel(self, request: ExecutionCancelRequested) -> None:
        """From the control topic. Idempotent: a second cancel of the same execution changes nothing."""
        execution_id = request.execution_id
        self._recent_cancels[(execution_id, request.tenant_id)] = None  # another tenant's cancel cannot replace it
        self._recent_cancels.move_to_end((execution_id, request.tenant_id))
        while len(self._recent_cancels) > _RECENT_CANCELS:
            self._recent_cancels.popitem(last=False)
        tenant_id, event = self._cancels.get(execution_id, ("", None))
        if tenant_id != request.tenant_id:
            return
        if event is not None:
            event.set()

    def _cancel_requested(self, request: ExecutionRequested) -> bool:
        return (request.execution_id, request.tenant_id) in self._recent_cancels

    # -- consuming ------------------------------------------------------------------------
    async def _on_request(self, record: Record) -> None:
        """One lane record, from its lane's reader. What this raises the reader retries (transient) or
        parks: so nothing is marked begun in the watermark until the record's fate is decided, and a
        record given up on never holds its partition's commits."""
        tp = TopicPartition(record.topic, record.partition)
        mark = self._watermarks.setdefault(tp, PartitionWatermark(next_offset=record.offset, committed=record.offset))
        if record.offset in mark.inflight:
            return  # redelivered after a rebalance while we still run it
        request, refusal = await self._admit(record)
        mark.begin(record.offset)
        if request is None or refusal is not None:
            try:
                await self._refuse(record, request, refusal)
            finally:  # whatever happened, a refused record never holds its partition's commits
                await self._finish(tp, record.offset)
            return
        if request.execution_id in self._running:
            await self._finish(tp, record.offset)
            return
        current = await self._current(request.execution_id, header(record.headers, RESUME_HEADER))
        if current is not None and current.terminal:
            await self._finish(tp, record.offset)
            return
        # This lane's reader waits here for a slot; the other lanes' readers go on.
        await self._slots.acquire(request.priority)
        if self._watermarks.get(tp) is not mark:  # the partition went to another member meanwhile: it runs it
            self._slots.release()
            return
        work = tracing.consumed(
            self._execute(request, current, tp, record.offset),
            headers=record.headers,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            tenant_id=request.tenant_id,
            execution_id=request.execution_id,
            agent_id=request.agent_id,
            lane=request.priority,
        )
        task = asyncio.create_task(work, name=request.execution_id)
        self._running[request.execution_id] = (tp, task)

    async def _current(self, execution_id: str, resume: str | None) -> ExecutionStatus | None:
        """The execution's snapshot. A record that continues a parked execution (approvals) waits,
        bounded, until our view knows the attempt that waited: it holds where the events to resume
        from are. Only such records wait: a new request's queued snapshot is not needed to run it."""
        current = self.status.get(execution_id)
        if resume is None or not resume.isdigit() or len(resume) > 9:
            return current
        waited = int(resume)
        if current is None or current.attempt < waited:
            current = await self.status.wait_until(execution_id, lambda s: s.attempt >= waited, timeout=self.settings.resume_wait_s)
        return current

    async def _admit(self, record: Record) -> tuple[ExecutionRequested | None, Refusal | None]:
        """The request, and why it must not run (admission.py); (None, reason) if it is not one."""
        refusal = check_key(record.key)
        try:
            request = ExecutionRequested.model_validate_json(record.value or b"")
        except ValidationError as exc:  # a bad key is the first thing to say: it is what a producer gets wrong
            return None, refusal or Refusal(f"invalid execution.requested: {exc}")
        if refusal is not None or record.key is None:
            return request, refusal
        tenant = await self.tenants.lookup(request.tenant_id) if request.tenant_id else None
        current = self.status.get(request.execution_id)
        return request, check_request(record.key, request, tenant=tenant, current=current, events_topic=self.topics.events)

    async def _refuse(self, record: Record, request: ExecutionRequested | None, refusal: Refusal | None) -> None:
        reason = refusal.reason if refusal is not None else "refused"
        # Under the group's name (as before the lanes had readers), so one DLQ consumer name covers every lane.
        await park(self.lanes.dlq, self.topics, record, reason, consumer=self.settings.consumer_group)
        if request is None or refusal is None or not refusal.fail_execution:
            return
        # The orchestrator writes the queued snapshot next to the lane record: our view may not have it yet.
        current = await self.status.wait_until(request.execution_id, lambda s: True, timeout=2.0)
        # Only one that has not started: a running one (the same request delivered again) goes on.
        if current is None or current.state != "queued" or current.tenant_id != request.tenant_id or request.execution_id in self._running:
            return
        # The tenant's execution ends here, visibly: an execution.failed on the shared events topic (never on
        # the refused reply_to) and a failed snapshot, so its client, GET and the task registry see why.
        # Attempt 1 (it never started): newer than the queued snapshot, not fenced by any reader.
        attempt = max(current.attempt, 1)
        envelope = {
            "tenant_id": request.tenant_id,
            "execution_id": request.execution_id,
            "session_id": request.session_id,
            "agent_id": request.agent_id,
            "attempt": attempt,
        }
        emitter = EventEmitter(self.producer, topic=self.topics.events, envelope=envelope, max_chars=1)
        try:
            meta = await (await emitter.emit(ExecutionFailed, reason=reason, retriable=False))
            await self._publish_status(
                current.model_copy(
                    update={
                        "state": "failed",
                        "attempt": attempt,
                        "error": reason,
                        "events_topic": self.topics.events,
                        "events_partition": meta.partition,
                        "events_start_offset": meta.offset if current.events_start_offset is None else current.events_start_offset,
                        "updated_at": datetime.now(UTC),
                    }
                )
            )
        except Exception:  # the DLQ has the record and its reason; the sweeper ends the task at its deadline
            log.exception("could not fail refused execution %s", request.execution_id)
        finally:
            emitter.close()

    async def _finish(self, tp: TopicPartition, offset: int) -> None:
        mark = self._watermarks.get(tp)
        if mark is None:
            return
        commit_at = mark.finish(offset)
        if commit_at is not None:
            try:
                await self.lanes.commit(tp, commit_at)
            except Exception as exc:  # a rebalance took the partition: the new owner redoes it
                log.info("commit of %s@%s skipped: %s", tp, commit_at, exc)

    def running(self) -> list[tuple[TopicPartition, str]]:
        """(partition, execution id) of every execution this member runs now."""
        return [(tp, execution_id) for execution_id, (tp, _) in self._running.items()]

    def drop_partitions(self, lost: set[TopicPartition]) -> None:
        for execution_id, (tp, task) in list(self._running.items()):
            if tp in lost:
                task.cancel()
                self._running.pop(execution_id, None)
                self._remember_dropped(execution_id, self._attempts.get(execution_id, 0))
        for tp in lost:
            self._watermarks.pop(tp, None)

    def _remember_dropped(self, execution_id: str, attempt: int) -> None:
        self._dropped[execution_id] = max(attempt, self._dropped.get(execution_id, 0))
        self._dropped.move_to_end(execution_id)
        while len(self._dropped) > _RECENT_CANCELS:
            self._dropped.popitem(last=False)

    def _next_attempt(self, execution_id: str, previous: ExecutionStatus | None) -> int:
        """One more than the newest attempt known. For an execution we dropped at attempt N (our partition
        went to another member), at least N + 2: the new owner may have started N + 1 without our status
        view knowing yet (or without its ``running`` snapshot ever being written), and two runs must never
        share an attempt number, or clients could not tell their events apart. Numbers may skip; they never repeat."""
        known = previous.attempt if previous is not None else 0
        dropped = self._dropped.pop(execution_id, None)
        return max(known, dropped + 1 if dropped is not None else 0) + 1

    # -- running one execution --------------------------------------------------------------
    async def _execute(self, request: ExecutionRequested, previous: ExecutionStatus | None, tp: TopicPartition, offset: int) -> None:
        attempt = self._attempts[request.execution_id] = self._next_attempt(request.execution_id, previous)
        envelope: dict[str, Any] = {
            "tenant_id": request.tenant_id,
            "execution_id": request.execution_id,
            "session_id": request.session_id,
            "agent_id": request.agent_id,
            "attempt": attempt,
        }
        topic = request.reply_to or self.topics.events
        tenure = Tenure(self._claims[tp.topic]) if tp.topic in self._claims else None
        emitter = EventEmitter(
            self.producer,
            topic=topic,
            envelope=envelope,
            max_chars=self.settings.coalesce_max_chars,
            traceparent=tracing.current_traceparent(),
            tenure=tenure,
        )
        publish = functools.partial(self._publish_status, tenure=tenure)
        base = ExecutionStatus(
            execution_id=request.execution_id,
            tenant_id=request.tenant_id,
            agent_id=request.agent_id,
            session_id=request.session_id,
            priority=request.priority,
            attempt=attempt,
            events_topic=topic,
            created_at=previous.created_at if previous else request.ts,
        )
        cancel = asyncio.Event()
        self._cancels[request.execution_id] = (request.tenant_id, cancel)
        if self._cancel_requested(request):
            cancel.set()
        ended = Ended(finished=False)
        run = AttemptRun(
            providers=self.providers,
            tools=self.tools,
            settings=self.loop_settings,
            cancel_grace_s=self.settings.cancel_grace_s,
            lookup=self._lookup,
            mcp=self.mcp,
            events=self.event_log,
        )
        try:
            ended = await run.run(request, emitter=emitter, publish=publish, base=base, cancel=cancel, previous=previous)
            if ended.state == "completed":
                self.completed += 1
            elif ended.state == "cancelled":
                self.cancelled += 1
        finally:
            emitter.close()
            self._slots.release()
            if self._cancels.get(request.execution_id, ("", None))[1] is cancel:
                del self._cancels[request.execution_id]
            if self._running.get(request.execution_id, (None, None))[1] is asyncio.current_task():
                self._running.pop(request.execution_id, None)
            if self._attempts.get(request.execution_id) == attempt:
                del self._attempts[request.execution_id]
            if ended.finished:
                self._retries.pop(request.execution_id, None)
                await self._finish(tp, offset)
            elif not self._stopping and not ended.fenced:
                # No terminal event reached the broker (e.g. Kafka was down): the request is not
                # committed, and nothing would deliver it again while we keep the partition. Run it
                # again, as the next attempt, once the broker may be back.
                self._schedule_retry(request, tp, offset)

    def _schedule_retry(self, request: ExecutionRequested, tp: TopicPartition, offset: int) -> None:
        tries = self._retries.get(request.execution_id, 0) + 1
        self._retries[request.execution_id] = tries
        delay = min(30.0, 0.5 * 2**tries)

        async def again() -> None:
            await asyncio.sleep(delay)
            mark = self._watermarks.get(tp)
            if self._stopping or mark is None or offset not in mark.inflight or request.execution_id in self._running:
                self._retries.pop(request.execution_id, None)
                return  # the partition moved to another member, which runs it
            current = self.status.get(request.execution_id)
            if current is not None and current.terminal:
                await self._finish(tp, offset)
                return
            await self._slots.acquire(request.priority)
            task = asyncio.create_task(self._execute(request, current, tp, offset), name=request.execution_id)
            self._running[request.execution_id] = (tp, task)

        self._background.spawn(again(), name=f"retry-{request.execution_id}")

    async def _lookup(self, agent_id: str) -> tuple[AgentSpec | None, ExecutionError | None]:
        try:
            return await self.catalog.get(agent_id), None
        except AgentstreamError as exc:
            return None, ExecutionError(str(exc), retriable=exc.retriable)

    async def _publish_status(self, status: ExecutionStatus, *, tenure: Tenure | None = None) -> None:
        if tenure is not None and not tenure.ok():
            await tenure.check()
        self.status.apply(status)
        metrics.EXECUTOR_EXECUTIONS.labels(state=status.state, lane=status.priority).inc()
        written = await self.producer.send_and_wait(
            self.topics.status, key=status.execution_id.encode(), value=encode(status), headers=status_headers(status, "executor")
        )
        self.status.own_write(written.partition, written.offset)
