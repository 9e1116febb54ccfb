"""Per-tenant result cache invalidations shared by every orchestrator replica.

The admin API drops the tenant's entries where it runs (Redis: for everyone) and publishes a
``cache.invalidated`` record on ``cache.invalidations`` (key tenant_id). Every replica tails that
topic without a group, from its end, and drops the tenant's entries from its own in-process store:
so an invalidation reaches replicas whose caches share nothing (``result_cache=memory``). A shared
store (Redis) was cleared once by the admin call; its replicas do nothing more.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from schemas.bounds import MAX_ID_LENGTH
from services.common.errors import PoisonRecord, Unavailable
from services.common.kafka import snapshot_headers
from services.common.reader import Reader, start_tail_reader
from services.common.settings import KafkaSettings
from services.common.sources import Record
from services.orchestrator.servicecache import ServiceCache

log = logging.getLogger(__name__)


class CacheInvalidations:
    def __init__(
        self, settings: KafkaSettings, *, cache: ServiceCache, producer: AIOKafkaProducer, name: str = "orchestrator-cache-feed"
    ) -> None:
        self._settings = settings
        self._topic = settings.topics.cache_invalidations
        self._cache = cache
        self._producer = producer
        self._name = name
        self.reader: Reader | None = None

    async def start(self) -> None:
        self.reader = await start_tail_reader(self._settings, [self._topic], self._deliver, name=self._name, dlq=self._producer)

    async def stop(self) -> None:
        reader, self.reader = self.reader, None
        if reader is not None:
            await reader.stop()

    async def publish(self, tenant_id: str) -> None:
        """Tell every replica; ``Unavailable`` if Kafka does not acknowledge (the admin may retry)."""
        value = orjson.dumps({"type": "cache.invalidated", "tenant_id": tenant_id, "at": time.time()})
        headers = snapshot_headers(
            "cache.invalidated", service="orchestrator", subject=tenant_id, time=datetime.now(UTC), tenant_id=tenant_id
        )
        try:
            await self._producer.send_and_wait(self._topic, value=value, key=tenant_id.encode(), headers=headers)
        except KafkaError as exc:
            raise Unavailable(f"the invalidation was not shared with the other replicas ({type(exc).__name__}); retry") from exc

    async def _deliver(self, record: Record) -> None:
        try:
            message = orjson.loads(record.value or b"")
        except orjson.JSONDecodeError as exc:
            raise PoisonRecord(f"malformed cache invalidation: {exc}") from exc
        if not isinstance(message, dict) or message.get("type") != "cache.invalidated":
            raise PoisonRecord("malformed cache invalidation: expected {type: cache.invalidated, tenant_id}")
        tenant_id = message.get("tenant_id")
        if not isinstance(tenant_id, str) or not 0 < len(tenant_id) <= MAX_ID_LENGTH:
            raise PoisonRecord("malformed cache invalidation: tenant_id must be a tenant id")
        if not self._cache.shared:
            dropped = await self._cache.invalidate(tenant_id)
            log.info("result cache of tenant %s invalidated on this replica (%d entries)", tenant_id, dropped)
