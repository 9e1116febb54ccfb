"""Task updates shared by every orchestrator replica (``/v1/tasks/stream``).

The replica that applies an end (the events follower group gives each end to one replica) publishes
the update on the ``tasks.updates`` topic (key tenant_id); every replica tails that topic without a
group, from its end, and hands each update to its own ``TaskHub``. So a client sees every update
of its tenant on whichever replica it is connected to, its own replica's included (one path for all).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from services.common.errors import PoisonRecord
from services.common.kafka import snapshot_headers
from services.common.reader import Reader, start_tail_reader
from services.common.settings import KafkaSettings
from services.common.sources import Record
from services.common.taskset import TaskSet
from services.orchestrator.hub import TaskHub

log = logging.getLogger(__name__)


class TaskFeed:
    def __init__(self, settings: KafkaSettings, *, hub: TaskHub, producer: AIOKafkaProducer, name: str = "orchestrator-task-feed") -> None:
        self._settings = settings
        self._topic = settings.topics.task_updates
        self._hub = hub
        self._producer = producer
        self._name = name
        self.reader: Reader | None = None
        self._sends = TaskSet("taskfeed", log=log)

    async def start(self) -> None:
        self.reader = await start_tail_reader(self._settings, [self._topic], self._deliver, name=self._name, dlq=self._producer)

    async def stop(self) -> None:
        await self._sends.stop(grace_s=5)  # what is still in flight after 5 s is only a live feed's update
        reader, self.reader = self.reader, None
        if reader is not None:
            await reader.stop()

    def publish(self, tenant_id: str, update: dict[str, Any]) -> None:
        """Same signature as ``TaskHub.publish``: what ``Lifecycle`` calls when it applied an update."""
        self._sends.spawn(self._send(tenant_id, update))

    async def _send(self, tenant_id: str, update: dict[str, Any]) -> None:
        try:
            subject = str(update.get("task_id", ""))
            headers = snapshot_headers("task.updated", service="orchestrator", subject=subject, time=datetime.now(UTC), tenant_id=tenant_id)
            await self._producer.send_and_wait(self._topic, value=orjson.dumps(update), key=tenant_id.encode(), headers=headers)
        except KafkaError as exc:  # a live feed, not a record of truth: the task row has the state
            log.warning("task update of %s not shared with the other replicas: %s", update.get("task_id"), exc)
            self._hub.publish(tenant_id, update)  # at least this replica's clients see it

    def _deliver(self, record: Record) -> None:
        try:
            tenant_id = (record.key or b"").decode()
            update = orjson.loads(record.value or b"")
        except (UnicodeDecodeError, orjson.JSONDecodeError) as exc:
            raise PoisonRecord(f"malformed task update: {exc}") from exc
        if not tenant_id or not isinstance(update, dict):
            raise PoisonRecord("malformed task update: it needs a tenant key and a JSON object value")
        self._hub.publish(tenant_id, update)
