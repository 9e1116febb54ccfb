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

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiokafka import ConsumerRecord, TopicPartition
from pydantic import TypeAdapter, ValidationError

from schemas.bounds import AgentName
from schemas.events import Usage
from schemas.jobs import JobCompletion
from services.common.errors import PoisonRecord
from services.common.kafka import header
from services.common.reader import Reader
from services.common.sources import open_group
from services.orchestrator.lifecycle import Lifecycle
from services.orchestrator.projection import ensure_row_from_view
from services.orchestrator.store import tasks
from services.orchestrator.transient import transient

log = logging.getLogger(__name__)

_TERMINAL = {"execution.completed": "completed", "execution.failed": "failed", "execution.cancelled": "cancelled"}
_RUN_CANCEL = "workflow.run.cancel_requested"  # issue 20: applied by the member that holds the run's partition
_WANTED = {"execution.started", "tool.call.started", "tool.call.completed", _RUN_CANCEL, *_TERMINAL}

RunCancel = Callable[[str, str], Awaitable[None]]


class _Follower:
    """A group reader (``services/common/reader.py``) whose ``handle`` applies one record to the store.
    A record it cannot apply (``PoisonRecord``, a data error) is parked; a store that is down or
    locked is retried with backoff up to the reader's cap; offsets are committed after handling."""

    name = "follower"

    def __init__(self, lifecycle: Lifecycle, topic: str, group: str) -> None:
        self._lifecycle = lifecycle
        self._topic = topic
        self._group = group
        self.reader: Reader | None = None

    async def start(self) -> None:
        kafka = self._lifecycle.settings.kafka
        client_id = f"orchestrator-{self.name}"
        source = await open_group(kafka, self._topic, group=self._group, client_id=client_id)
        self.reader = Reader(
            self.name,
            source,
            self.handle,
            topics=kafka.topics,
            dlq=self._lifecycle.producer,
            transient=transient,
            max_records=500,
            reopen=lambda: open_group(kafka, self._topic, group=self._group, client_id=client_id),
        )
        self.reader.start()

    async def stop(self) -> None:
        reader, self.reader = self.reader, None
        if reader is not None:
            await reader.stop()

    def handle(self, record: ConsumerRecord[bytes, bytes]) -> Awaitable[None] | None:
        """Apply one record: a coroutine to await, or None for a record with nothing to do."""
        raise NotImplementedError

    async def reject(self, record: ConsumerRecord[bytes, bytes], reason: str) -> None:
        """Park a record this follower refuses and go on: for a handler with more to do after the
        refusal than raising ``PoisonRecord`` allows (the Kafka door answers on a reply topic too)."""
        assert self.reader is not None, "reject() is for handlers, which run only while the reader does"
        await self.reader.park(record, reason)


class EventsFollower(_Follower):
    name = "events-follower"

    def __init__(self, lifecycle: Lifecycle) -> None:
        kafka = lifecycle.settings.kafka
        super().__init__(lifecycle, kafka.topics.events, f"{kafka.topic_prefix}orchestrator")
        self.run_cancels: list[RunCancel] = []  # the workflow driver's (run id, tenant id)

    def owns(self, partition: int | None) -> bool:
        """This member holds that partition of the events topic now (a workflow run's driver is the one that does)."""
        reader = self.reader
        return reader is not None and partition is not None and TopicPartition(self._topic, partition) in reader.source.assignment()

    def handle(self, record: ConsumerRecord[bytes, bytes]) -> Awaitable[None] | None:
        # Nearly every record is a token delta: skipped by its header, without a coroutine made for it.
        type_ = header(record.headers, "type")
        if type_ not in _WANTED or record.value is None:
            return None
        return self._apply(record, type_)

    async def _apply(self, record: ConsumerRecord[bytes, bytes], type_: str) -> None:
        assert record.value is not None
        try:
            event: dict[str, Any] = orjson.loads(record.value)
            execution_id = str(event["execution_id"])
            attempt = int(event.get("attempt", 1))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise PoisonRecord(f"malformed {type_}: {exc}") from exc
        if type_ == _RUN_CANCEL:
            for cancel in self.run_cancels:
                await cancel(execution_id, str(event.get("tenant_id", "")))
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
                handed_off_to=_agent_name(event.get("handed_off_to")),
            )
            return
        async with store.begin() as conn:
            task = await tasks.get(conn, execution_id)
            if task is None and await ensure_row_from_view(conn, self._lifecycle.status, execution_id):
                task = await tasks.get(conn, execution_id)  # it started before the projection wrote its row
            if task is None or not task.open:
                return
            if type_ == "execution.started":
                await tasks.mark_running(conn, execution_id, attempt=attempt)  # fences older attempts' ends (finalize)
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
            raise PoisonRecord(f"not JSON: {exc}") from exc
        ok, reason = await apply_job_completed(self._lifecycle, message, service=None)
        if not ok:
            raise PoisonRecord(reason)


async def apply_job_completed(lifecycle: Lifecycle, message: Any, *, service: str | None) -> tuple[bool, str]:
    """Apply ``{event: "job_completed", service, job_id, tenant_id, agent_id, result}`` (or a
    ``job.completed`` envelope). ``service`` is the authenticated caller, None on the topic.

    The message is validated first (``schemas.jobs.JobCompletion``, with the bounds of
    ``schemas/bounds.py``): a refusal names the field, and nothing out of range reaches the store."""
    if not isinstance(message, dict):
        return False, "message must be a JSON object"
    kind = message.get("event") or message.get("type")
    if kind not in ("job_completed", "job.completed"):
        return False, f"unknown event {str(kind)[:100]!r}; expected job_completed"
    try:
        completion = JobCompletion.model_validate(message)
    except ValidationError as exc:
        return False, _invalid("job_completed", exc)
    try:
        usage = completion.reported_usage()
    except ValidationError as exc:
        return False, _invalid("job_completed", exc, prefix="result.usage")
    job_id, tenant_id, sender = completion.job_id, completion.tenant_id, completion.service
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
    error: str | None = completion.error
    result = completion.result
    check = lifecycle.result_checks.get(sender) if task.origin == "delegated" else None
    if not error and check is not None:
        error = check(result)
    state = "failed" if error else "completed"
    finished = await lifecycle.finalize(
        job_id, state, result=result, error=error or None, usage=usage.model_dump() if usage is not None else None
    )
    if finished is None:
        return False, "job is not in flight"
    return True, state


def _invalid(what: str, exc: ValidationError, *, prefix: str = "") -> str:
    """``invalid job_completed: usage.prompt_tokens: Input should be less than or equal to 2147483647``."""
    problems = []
    for e in exc.errors(include_url=False, include_input=False)[:5]:
        loc = ".".join(str(p) for p in (*([prefix] if prefix else []), *e["loc"]))
        problems.append(f"{loc}: {e['msg']}" if loc else e["msg"])
    return f"invalid {what}: " + "; ".join(problems)


_AGENT_NAME: TypeAdapter[str] = TypeAdapter(AgentName)


def _agent_name(value: Any) -> str | None:
    """``handed_off_to`` if it is an agent's name; anything else is ignored (the end itself still counts)."""
    if value is None:
        return None
    try:
        return _AGENT_NAME.validate_python(value)
    except ValidationError:
        log.warning("ignoring an execution.completed's handed_off_to: not an agent name")
        return None


def _usage(value: Any) -> dict[str, int] | None:
    """An event's ``usage``, bounded like every token count (schemas/bounds.py); PoisonRecord if out of range."""
    if value is None:
        return None
    try:
        return Usage.model_validate(value).model_dump()
    except ValidationError as exc:
        raise PoisonRecord(_invalid("usage", exc, prefix="usage")) from exc
