"""How the orchestrator learns that work ended.

* ``EventsFollower``: its own consumer group on the events topic. It reads only the records whose
  ``type`` header matters (started, tool calls, terminal), so token deltas cost no parsing. Effects
  are idempotent (``Lifecycle.finalize``), offsets are committed after they are applied: at least
  once in, once out. With several replicas the group shares the partitions.
* ``JobsFollower``: the ``jobs.completed`` topic, the Kafka mirror of ``/ws/task_updates``.
* ``apply_job_completed``: the one check both paths go through: the job must be in flight for that
  tenant (and, over the WebSocket, belong to the calling service); otherwise rejected and logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, ConsumerRecord
from aiokafka.errors import KafkaError

from services.common.dlq import park
from services.common.kafka import client_options, header
from services.common.tail import close_tail
from services.orchestrator.lifecycle import Lifecycle
from services.orchestrator.store import tasks

log = logging.getLogger(__name__)

_TERMINAL = {"execution.completed": "completed", "execution.failed": "failed", "execution.cancelled": "cancelled"}
_WANTED = {"execution.started", "tool.call.started", "tool.call.completed", *_TERMINAL}


class _Follower:
    name = "follower"

    def __init__(self, lifecycle: Lifecycle, topic: str, group: str) -> None:
        self._lifecycle = lifecycle
        self._topic = topic
        self._group = group
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        kafka = self._lifecycle.settings.kafka
        consumer = AIOKafkaConsumer(
            self._topic,
            **client_options(kafka),
            group_id=self._group,
            client_id=f"orchestrator-{self.name}",
            enable_auto_commit=False,
            # A new group starts at the beginning: an end that happened while no replica ran is not lost.
            auto_offset_reset="earliest",
        )
        await consumer.start()
        self._consumer = consumer
        self._task = asyncio.create_task(self._run(consumer), name=f"orchestrator-{self.name}")
        async with asyncio.timeout(30):
            while not consumer.assignment():
                await asyncio.sleep(0.05)

    async def stop(self) -> None:
        task, consumer, self._task, self._consumer = self._task, self._consumer, None, None
        await close_tail(task, consumer)

    async def _run(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            try:
                batches = await consumer.getmany(timeout_ms=200, max_records=500)
            except KafkaError as exc:
                log.warning("%s: %s; retrying", self.name, exc)
                await asyncio.sleep(1)
                continue
            for records in batches.values():
                for record in records:
                    await self._handle_until_done(record)
            if batches:
                with contextlib.suppress(KafkaError):
                    await consumer.commit()

    async def _handle_until_done(self, record: ConsumerRecord[bytes, bytes]) -> None:
        delay = 0.2
        while True:
            try:
                await self.handle(record)
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                # The store is down or locked: retry the same record (effects are idempotent).
                log.exception("%s: handling %s:%s@%s failed; retrying", self.name, record.topic, record.partition, record.offset)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def handle(self, record: ConsumerRecord[bytes, bytes]) -> None:
        raise NotImplementedError

    async def reject(self, record: ConsumerRecord[bytes, bytes], reason: str) -> None:
        """Park a record this follower cannot apply in the DLQ, with the reason; then go on."""
        log.warning("%s: rejected %s:%s@%s: %s", self.name, record.topic, record.partition, record.offset, reason)
        await park(self._lifecycle.producer, self._lifecycle.settings.kafka.topics, record, reason, consumer=self.name)


class EventsFollower(_Follower):
    name = "events-follower"

    def __init__(self, lifecycle: Lifecycle) -> None:
        kafka = lifecycle.settings.kafka
        super().__init__(lifecycle, kafka.topics.events, f"{kafka.topic_prefix}orchestrator")

    async def handle(self, record: ConsumerRecord[bytes, bytes]) -> None:
        type_ = header(record.headers, "type")
        if type_ not in _WANTED or record.value is None:
            return
        try:
            event: dict[str, Any] = orjson.loads(record.value)
            execution_id = str(event["execution_id"])
            attempt = int(event.get("attempt", 1))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            await self.reject(record, f"malformed {type_}: {exc}")
            return
        store = self._lifecycle.store
        if type_ in _TERMINAL:
            await self._lifecycle.finalize(
                execution_id,
                _TERMINAL[type_],
                output=event.get("output"),
                error=event.get("reason"),
                usage=_usage(event.get("usage")),
                attempt=attempt,
            )
            return
        async with store.begin() as conn:
            task = await tasks.get(conn, execution_id)
            if task is None or not task.open:
                return
            if type_ == "execution.started":
                await tasks.mark_running(conn, execution_id)
            else:
                await tasks.record_tool_call(
                    conn,
                    execution_id,
                    attempt,
                    {
                        "call_id": str(event.get("call_id", "")),
                        "tool": str(event.get("tool", "")),
                        "arguments": event.get("arguments"),
                        "result": event.get("result"),
                        "error": event.get("error"),
                        "seq": int(event.get("seq", 0)),
                    },
                )


class JobsFollower(_Follower):
    name = "jobs-follower"

    def __init__(self, lifecycle: Lifecycle) -> None:
        kafka = lifecycle.settings.kafka
        super().__init__(lifecycle, kafka.topics.jobs_completed, f"{kafka.topic_prefix}orchestrator-jobs")

    async def handle(self, record: ConsumerRecord[bytes, bytes]) -> None:
        try:
            message = orjson.loads(record.value or b"")
        except orjson.JSONDecodeError as exc:
            await self.reject(record, f"not JSON: {exc}")
            return
        ok, reason = await apply_job_completed(self._lifecycle, message, service=None)
        if not ok:
            await self.reject(record, reason)


async def apply_job_completed(lifecycle: Lifecycle, message: Any, *, service: str | None) -> tuple[bool, str]:
    """Apply ``{event: "job_completed", service, job_id, tenant_id, agent_id, result}`` (or a
    ``job.completed`` envelope). ``service`` is the authenticated caller, None on the topic."""
    if not isinstance(message, dict):
        return False, "message must be a JSON object"
    kind = message.get("event") or message.get("type")
    if kind not in ("job_completed", "job.completed"):
        return False, f"unknown event {kind!r}; expected job_completed"
    job_id, tenant_id, sender = message.get("job_id"), message.get("tenant_id"), message.get("service")
    if not all(isinstance(v, str) and v for v in (job_id, tenant_id, sender)):
        return False, "job_id, tenant_id and service are required strings"
    assert isinstance(job_id, str) and isinstance(tenant_id, str)
    if service is not None and sender != service:
        return False, f"service {sender!r} does not match the token's service {service!r}"
    async with lifecycle.store.begin() as conn:
        task = await tasks.get(conn, job_id, tenant_id=tenant_id)
    if task is None or task.kind != "job" or task.service != sender:
        log.warning("job_completed rejected: unknown job %r for tenant %r from service %r", job_id, tenant_id, sender)
        return False, "unknown job"
    if not task.open:
        for hook in lifecycle.late_hooks:  # recorded (orchestration plan) and ignored
            await hook(task, message)
        return False, f"job is not in flight (it is {task.state})"
    error = message.get("error")
    result = message.get("result")
    check = lifecycle.result_checks.get(str(sender)) if task.origin == "delegated" else None
    if not error and check is not None:
        error = check(result)
    state = "failed" if error else "completed"
    usage = _usage(message.get("usage") or (result.get("usage") if isinstance(result, dict) else None))
    finished = await lifecycle.finalize(job_id, state, result=result, error=str(error) if error else None, usage=usage)
    if finished is None:
        return False, "job is not in flight"
    return True, state


def _usage(value: Any) -> dict[str, int] | None:
    if not isinstance(value, dict):
        return None
    return {k: int(value.get(k, 0) or 0) for k in ("prompt_tokens", "completion_tokens", "total_tokens")}
