"""The executor: a FastStream Kafka consumer group over the three lane topics.

Each request runs as its own task, so executions run concurrently also within one partition. A
request's offset is committed only when its execution reached a terminal event that the broker
acknowledged; the committed offset is the contiguous watermark of finished requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from pydantic import ValidationError

from schemas.agents import AgentSpec
from schemas.events import (
    ExecutionCancelled,
    ExecutionCancelRequested,
    ExecutionCompleted,
    ExecutionFailed,
    ExecutionRequested,
    ExecutionStarted,
)
from schemas.status import ExecutionStatus
from services.common.agents import AgentCatalog, AgentSource, HttpAgents, StaticAgents, load_agents
from services.common.dlq import send_to_dlq
from services.common.errors import AgentstreamError
from services.common.kafka import broker_options, encode, ensure_topics, make_producer, start_client
from services.common.observability import metrics, tracing
from services.common.statusview import StatusView
from services.executor.control import ControlTail
from services.executor.emitter import EventEmitter
from services.executor.httptools import ToolRegistry, load_http_tools
from services.executor.jobtools import JobClient, job_tools
from services.executor.loop import ExecutionError, LoopSettings, Outcome, run_agent
from services.executor.metrics_server import MetricsServer, watch
from services.executor.providers.base import Provider, ProviderError
from services.executor.providers.registry import PROVIDER_NAMES, build_providers, close_providers, default_agent
from services.executor.settings import ExecutorSettings
from services.executor.slots import PrioritySlots
from services.executor.tools import Tool, builtin_tools
from services.executor.watermark import PartitionWatermark

log = logging.getLogger(__name__)


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, executor: Executor) -> None:
        self._executor = executor
        self._revoked: set[TopicPartition] = set()

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        self._revoked = set(revoked)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        # Executions of partitions we lost will be redelivered to their new owner: stop ours.
        self._executor.drop_partitions(self._revoked - set(assigned))
        self._revoked = set()


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
    ) -> None:
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
        self.http = httpx.AsyncClient(timeout=settings.tool_timeout_s)
        self.producer: AIOKafkaProducer = make_producer(settings.kafka, client_id=f"{settings.instance_id}-producer")
        self.status = StatusView(settings.kafka, dlq=self.producer, name=f"{settings.instance_id}-status-view")
        self.control = ControlTail(
            settings.kafka, on_cancel=self.request_cancel, client_id=f"{settings.instance_id}-control", dlq=self.producer
        )
        self.broker = KafkaBroker(**broker_options(settings.kafka), client_id=settings.instance_id, log_level=logging.DEBUG)
        # knowledge_search / embed: jobs delegated through the orchestrator (jobtools.py).
        self.jobs = JobClient(
            settings.kafka, producer=self.producer, client_id=f"{settings.instance_id}-jobs", timeout_s=settings.job_timeout_s
        )
        if tools is None:
            self.tools |= job_tools(self.jobs)
        self._slots = PrioritySlots(settings.max_concurrency)
        self._watermarks: dict[TopicPartition, PartitionWatermark] = {}
        self._running: dict[str, tuple[TopicPartition, asyncio.Task[None]]] = {}
        self._cancels: dict[str, asyncio.Event] = {}
        self._recent_cancels: OrderedDict[str, str] = OrderedDict()  # execution_id -> tenant_id
        self._started = False
        self._stopping = False
        self._retries: dict[str, int] = {}
        self._background: set[asyncio.Task[None]] = set()
        self.completed = 0
        self.cancelled = 0
        # One consumer per lane, all in one group: a lane whose requests wait for a slot does not hold
        # back the others, and PrioritySlots hands freed slots to critical first (batch last).
        self._subscribers = {
            lane: self.broker.subscriber(
                lane,
                group_id=settings.consumer_group,
                ack_policy=AckPolicy.MANUAL,
                auto_offset_reset="earliest",
                listener=_Rebalance(self),
                max_poll_records=50,
                session_timeout_ms=settings.session_timeout_ms,
                # Short: a rebalance (three lane consumers join per executor) completes once every member
                # has heard of it on a heartbeat, so this paces how fast an executor starts.
                heartbeat_interval_ms=300,
            )
            for lane in self.topics.lanes
        }
        for subscriber in self._subscribers.values():
            subscriber(self._on_request)
        self.metrics_server = MetricsServer(host=settings.metrics_host, port=settings.metrics_port) if settings.metrics_port else None

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        await self._load_tools()
        await ensure_topics(self.settings.kafka)
        await start_client(self.producer, self.settings.kafka)
        await self.status.start()
        await self.control.start()
        await self.jobs.start()
        await self.broker.start()
        self._started = True
        await watch(self)

    async def _load_tools(self) -> None:
        secret = self.settings.tool_secret.get_secret_value().encode() if self.settings.tool_secret else None
        allow = self.settings.allow_private_tool_urls
        if self.settings.tools_file is not None:
            self.tools |= load_http_tools(self.settings.tools_file, client=self.http, secret=secret, allow_private=allow)
        if self.settings.tool_registry_url:
            registry = ToolRegistry(self.settings.tool_registry_url, client=self.http, secret=secret, allow_private=allow)
            self.tools |= await registry.list()

    async def stop(self) -> None:
        if not self._started:
            await self._close_adapters()
            return
        self._started = False
        self._stopping = True
        await watch(self, stop=True)
        await self.broker.stop()
        await self.control.stop()
        tasks = [task for _, task in self._running.values()] + list(self._background)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.jobs.stop()
        await self.status.stop()
        await self.producer.stop()
        await self._close_adapters()

    async def _close_adapters(self) -> None:
        await close_providers(self.providers)
        for source in self.catalog.sources:
            close = getattr(source, "aclose", None)
            if close is not None:
                await close()
        await self.http.aclose()

    async def __aenter__(self) -> Executor:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def consumers(self) -> list[AIOKafkaConsumer]:
        return [s.consumer for s in self._subscribers.values() if s.consumer is not None]

    def _consumer_of(self, tp: TopicPartition) -> AIOKafkaConsumer | None:
        subscriber = self._subscribers.get(tp.topic)
        return subscriber.consumer if subscriber is not None else None

    def assigned(self) -> set[TopicPartition]:
        return {tp for consumer in self.consumers() for tp in consumer.assignment()}

    # -- cancel ---------------------------------------------------------------------------
    def request_cancel(self, request: ExecutionCancelRequested) -> None:
        """From the control topic. Idempotent: a second cancel of the same execution changes nothing."""
        execution_id = request.execution_id
        self._recent_cancels[execution_id] = request.tenant_id
        self._recent_cancels.move_to_end(execution_id)
        while len(self._recent_cancels) > _RECENT_CANCELS:
            self._recent_cancels.popitem(last=False)
        event = self._cancels.get(execution_id)
        if event is not None:
            event.set()

    def _cancel_requested(self, request: ExecutionRequested) -> bool:
        return self._recent_cancels.get(request.execution_id) == request.tenant_id

    # -- consuming ------------------------------------------------------------------------
    async def _on_request(self, msg: KafkaMessage) -> None:
        record: ConsumerRecord[bytes, bytes] = msg.raw_message
        tp = TopicPartition(record.topic, record.partition)
        mark = self._watermarks.setdefault(tp, PartitionWatermark(next_offset=record.offset, committed=record.offset))
        if record.offset in mark.inflight:
            return  # redelivered after a rebalance while we still run it
        mark.begin(record.offset)
        try:
            request = ExecutionRequested.model_validate_json(record.value or b"")
        except ValidationError as exc:
            await send_to_dlq(
                self.producer, self.topics, record, f"invalid execution.requested: {exc}", consumer=self.settings.consumer_group
            )
            await self._finish(tp, record.offset)
            return
        if request.execution_id in self._running:
            await self._finish(tp, record.offset)
            return
        current = self.status.get(request.execution_id)
        if current is not None and current.terminal:
            await self._finish(tp, record.offset)
            return
        await self._slots.acquire(request.priority)
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

    async def _finish(self, tp: TopicPartition, offset: int) -> None:
        mark = self._watermarks.get(tp)
        if mark is None:
            return
        commit_at = mark.finish(offset)
        consumer = self._consumer_of(tp)
        if commit_at is not None and consumer is not None and tp in consumer.assignment():
            try:
                await consumer.commit({tp: OffsetAndMetadata(commit_at, "")})
            except Exception as exc:  # a rebalance took the partition: the new owner redoes it
                log.info("commit of %s@%s skipped: %s", tp, commit_at, exc)

    def drop_partitions(self, lost: set[TopicPartition]) -> None:
        for execution_id, (tp, task) in list(self._running.items()):
            if tp in lost:
                task.cancel()
                self._running.pop(execution_id, None)
        for tp in lost:
            self._watermarks.pop(tp, None)

    # -- running one execution --------------------------------------------------------------
    async def _execute(self, request: ExecutionRequested, previous: ExecutionStatus | None, tp: TopicPartition, offset: int) -> None:
        attempt = (previous.attempt if previous is not None else 0) + 1
        envelope: dict[str, Any] = {
            "tenant_id": request.tenant_id,
            "execution_id": request.execution_id,
            "session_id": request.session_id,
            "agent_id": request.agent_id,
            "attempt": attempt,
        }
        topic = request.reply_to or self.topics.events
        emitter = EventEmitter(
            self.producer,
            topic=topic,
            envelope=envelope,
            interval_s=self.settings.coalesce_interval_ms / 1000,
            max_chars=self.settings.coalesce_max_chars,
            traceparent=tracing.current_traceparent(),
        )
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
        cancel = self._cancels[request.execution_id] = asyncio.Event()
        if self._cancel_requested(request):
            cancel.set()
        finished = False
        try:
            if cancel.is_set():  # cancelled before it started: no execution.started, just the end
                meta = await (await emitter.emit(ExecutionCancelled, reason="cancelled before start"))
                await self._publish_status(
                    base.model_copy(
                        update={"state": "cancelled", "error": "cancelled before start"}
                        | {"events_partition": meta.partition, "events_start_offset": meta.offset}
                    )
                )
                self.cancelled += 1
                finished = True
                return
            spec, lookup_error = await self._lookup(request.agent_id)
            started = await emitter.emit(ExecutionStarted, provider=spec.provider if spec else "", model=spec.model if spec else "")
            meta = await started
            await self._publish_status(
                base.model_copy(update={"state": "running", "events_partition": meta.partition, "events_start_offset": meta.offset})
            )
            try:
                if spec is None:
                    raise lookup_error or ExecutionError(f"unknown agent {request.agent_id!r}")
                outcome = await self._run(spec, request, emitter, cancel)
            except (ExecutionError, ProviderError) as exc:
                await emitter.emit(ExecutionFailed, reason=str(exc), retriable=exc.retriable)
                await emitter.drain()
                await self._publish_status(base.model_copy(update={"state": "failed", "error": str(exc)}))
            else:
                if outcome is None:
                    await emitter.emit(ExecutionCancelled, reason="cancelled by request")
                    await emitter.drain()
                    await self._publish_status(base.model_copy(update={"state": "cancelled", "error": "cancelled by request"}))
                    self.cancelled += 1
                else:
                    await emitter.emit(ExecutionCompleted, output=outcome.output, usage=outcome.usage)
                    await emitter.drain()
                    await self._publish_status(
                        base.model_copy(update={"state": "completed", "output": outcome.output, "usage": outcome.usage})
                    )
                    self.completed += 1
            finished = True
        except asyncio.CancelledError:
            raise
        except KafkaError as exc:
            # Kafka trouble is not the execution's fault: it is not failed but run again as the next
            # attempt once the broker answers (finished stays False: see _schedule_retry below).
            log.warning("execution %s: Kafka error %s; it will run again", request.execution_id, type(exc).__name__)
        except Exception as exc:  # never lose a request silently: record why, then commit
            log.exception("execution %s crashed", request.execution_id)
            with contextlib.suppress(Exception):
                await emitter.emit(ExecutionFailed, reason=f"internal error: {type(exc).__name__}: {exc}")
                await emitter.drain()
                await self._publish_status(base.model_copy(update={"state": "failed", "error": str(exc)}))
                finished = True
        finally:
            emitter.close()
            self._slots.release()
            if self._cancels.get(request.execution_id) is cancel:
                del self._cancels[request.execution_id]
            if self._running.get(request.execution_id, (None, None))[1] is asyncio.current_task():
                self._running.pop(request.execution_id, None)
            if finished:
                self._retries.pop(request.execution_id, None)
                await self._finish(tp, offset)
            elif not self._stopping:
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

        retry = asyncio.create_task(again(), name=f"retry-{request.execution_id}")
        self._background.add(retry)
        retry.add_done_callback(self._background.discard)

    async def _lookup(self, agent_id: str) -> tuple[AgentSpec | None, ExecutionError | None]:
        try:
            return await self.catalog.get(agent_id), None
        except AgentstreamError as exc:
            return None, ExecutionError(str(exc), retriable=exc.retriable)

    async def _run(self, spec: AgentSpec, request: ExecutionRequested, emitter: EventEmitter, cancel: asyncio.Event) -> Outcome | None:
        """Run the loop until it ends, the execution times out, or a cancel arrives (None)."""
        if spec.provider not in self.providers:
            raise ExecutionError(f"agent {spec.name!r} names provider {spec.provider!r}, which is not configured")
        work = asyncio.create_task(
            run_agent(spec=spec, request=request, providers=self.providers, tools=self.tools, emitter=emitter, settings=self.loop_settings),
            name=f"{request.execution_id}-loop",
        )
        cancelled = asyncio.create_task(cancel.wait())
        try:
            done, _ = await asyncio.wait({work, cancelled}, timeout=spec.timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            cancelled.cancel()
            if not work.done():
                work.cancel()
                # Stops the provider stream and the tools; bounded, so a tool that ignores
                # cancellation cannot hold the execution (or its partition's commits) forever.
                await asyncio.wait({work}, timeout=self.settings.cancel_grace_s)
        if work in done:
            return work.result()
        if cancel.is_set():
            return None
        raise ExecutionError(f"execution exceeded its timeout of {spec.timeout_s:g}s", retriable=True)

    async def _publish_status(self, status: ExecutionStatus) -> None:
        self.status.apply(status)
        metrics.EXECUTOR_EXECUTIONS.labels(state=status.state, lane=status.priority).inc()
        await self.producer.send_and_wait(self.topics.status, key=status.execution_id.encode(), value=encode(status))
