"""The consumer of ``jobs.requested``: one consumer group for every orchestrator replica; a record
that is not a ``job.requested`` goes to the DLQ, every other goes to the coordinator."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiokafka import ConsumerRecord
from pydantic import ValidationError

from schemas.events import JobRequested
from services.common.errors import PoisonRecord
from services.orchestrator.completions import _Follower
from services.orchestrator.lifecycle import Lifecycle
from services.orchestrator.validation import first_error

if TYPE_CHECKING:
    from services.orchestrator.coordinator import ServiceCoordinator


class JobRequests(_Follower):
    """``jobs.requested``, one consumer group for every orchestrator replica."""

    name = "coordinator"

    def __init__(self, lifecycle: Lifecycle, coordinator: ServiceCoordinator) -> None:
        kafka = lifecycle.settings.kafka
        super().__init__(lifecycle, kafka.topics.jobs_requested, f"{kafka.topic_prefix}orchestrator-delegate")
        self._coordinator = coordinator

    async def handle(self, record: ConsumerRecord[bytes, bytes]) -> None:
        try:
            request = JobRequested.model_validate_json(record.value or b"")
        except ValidationError as exc:
            raise PoisonRecord(f"invalid job.requested: {first_error(exc)}") from exc
        await self._coordinator.accept(request)
