"""The orchestrator writes what executors must know of its tenants onto the compacted ``tenants`` topic.

Tenants live in the orchestrator's store (and its settings: bootstrap keys, ``reply_topics``); the
log is how executors learn them (schemas/tenants.py). One record per tenant when it is created, and
all of them again at start (settings may have changed, a record may have been lost to a failed
write): compaction keeps the latest per tenant.
"""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaProducer

from schemas.tenants import TenantRecord
from services.common.kafka import encode, snapshot_headers
from services.orchestrator.settings import OrchestratorSettings
from services.orchestrator.store import Store, tenants
from services.orchestrator.store.tenants import Tenant


def tenant_record(tenant: Tenant, settings: OrchestratorSettings) -> TenantRecord:
    return TenantRecord(tenant_id=tenant.id, disabled=tenant.disabled, reply_topics=tuple(settings.reply_topics.get(tenant.id, ())))


async def publish(producer: AIOKafkaProducer, settings: OrchestratorSettings, tenant: Tenant) -> None:
    record = tenant_record(tenant, settings)
    headers = snapshot_headers("tenant.record", service="orchestrator", subject=tenant.id, time=record.updated_at, tenant_id=tenant.id)
    await producer.send_and_wait(settings.kafka.topics.tenants, key=tenant.id.encode(), value=encode(record), headers=headers)


async def publish_all(producer: AIOKafkaProducer, settings: OrchestratorSettings, store: Store) -> int:
    async with store.begin() as conn:
        every = await tenants.list_tenants(conn)
    await asyncio.gather(*(publish(producer, settings, t) for t in every))
    return len(every)
