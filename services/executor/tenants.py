"""The executor's view of the compacted ``tenants`` topic: who may run, and where their events may go.

Read from the beginning at start (and tailed), like the status view. A request of a tenant the view
does not know yet may be one created a moment ago: ``lookup`` then reads up to the topic's current
end before answering (concurrent lookups share one catch-up; a record naming an unknown tenant
costs one end-offsets request, the tail is live and already there in the common case).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from pydantic import ValidationError

from schemas.tenants import TenantRecord
from services.common.errors import PoisonRecord
from services.common.reader import Reader, start_tail_reader
from services.common.settings import KafkaSettings
from services.common.sources import Batches, KafkaSource, Record

log = logging.getLogger(__name__)


class TenantsView:
    def __init__(self, settings: KafkaSettings, *, dlq: AIOKafkaProducer | None = None, name: str = "tenants-view") -> None:
        self._settings = settings
        self._dlq = dlq
        self._name = name
        self._items: dict[str, TenantRecord] = {}
        self.reader: Reader | None = None
        self._read = asyncio.Condition()
        self._sync: asyncio.Task[None] | None = None

    def get(self, tenant_id: str) -> TenantRecord | None:
        return self._items.get(tenant_id)

    def __len__(self) -> int:
        return len(self._items)

    def apply(self, tenant_id: str, record: TenantRecord | None) -> None:
        """A tenant record (None: its tombstone)."""
        if record is None:
            self._items.pop(tenant_id, None)
        else:
            self._items[tenant_id] = record

    async def lookup(self, tenant_id: str, *, timeout: float = 5.0) -> TenantRecord | None:
        """The tenant's record; if unknown, after reading the topic up to its end as of now."""
        found = self._items.get(tenant_id)
        if found is not None or self.reader is None:
            return found
        if self._sync is None or self._sync.done():
            self._sync = asyncio.create_task(self._read_to_end(timeout))
        with contextlib.suppress(Exception):
            await asyncio.shield(self._sync)
        return self._items.get(tenant_id)

    async def start(self) -> None:
        topics = [self._settings.topics.tenants]
        self.reader = await start_tail_reader(
            self._settings, topics, self._handle, name=self._name, dlq=self._dlq, from_beginning=True, after_batch=self._after_batch
        )
        await self._read_to_end(60)

    async def _read_to_end(self, timeout: float) -> None:
        reader = self.reader
        if reader is None or not isinstance(reader.source, KafkaSource):
            return
        consumer = reader.source.consumer  # the reader's current one (a restart opens another)
        deadline = time.monotonic() + timeout
        tps = list(consumer.assignment())
        while True:
            try:
                end: dict[TopicPartition, int] = await consumer.end_offsets(tps) if tps else {}
                break
            except KafkaError as exc:  # transient: an unknown tenant is a verdict, not a guess during an outage
                if time.monotonic() > deadline:
                    log.warning("%s: could not read the tenants topic's end: %s", self._name, exc)
                    return
                await asyncio.sleep(0.2)
        while [tp for tp, offset in end.items() if await reader.position(tp) < offset]:
            if time.monotonic() > deadline:
                log.warning("%s: not caught up with the tenants topic after %gs", self._name, timeout)
                return
            async with self._read:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._read.wait(), 0.2)

    def _handle(self, record: Record) -> None:
        try:
            tenant_id = (record.key or b"").decode()
            if not tenant_id:
                raise ValueError("a tenant record without a key (tenant_id)")
            value = None if record.value is None else TenantRecord.model_validate_json(record.value)
            if value is not None and value.tenant_id != tenant_id:
                raise ValueError(f"a tenant record for {value.tenant_id!r} under the key {tenant_id!r}")
        except (UnicodeDecodeError, ValueError, ValidationError) as exc:
            raise PoisonRecord(f"invalid tenant record: {exc}") from exc
        self.apply(tenant_id, value)

    async def _after_batch(self, batches: Batches) -> None:
        async with self._read:
            self._read.notify_all()

    async def stop(self) -> None:
        reader, self.reader = self.reader, None
        if self._sync is not None:
            self._sync.cancel()
        if reader is not None:
            await reader.stop()
