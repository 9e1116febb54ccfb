"""Reading the DLQ topic in broker tests."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaConsumer, ConsumerRecord

from services.common.kafka import header
from services.common.settings import KafkaSettings


async def parked_records(kafka: KafkaSettings, consumer: str, count: int, *, timeout: float = 20) -> list[ConsumerRecord[bytes, bytes]]:
    """The first ``count`` DLQ records that reader ``consumer`` parked (``dlq.consumer``)."""
    found: list[ConsumerRecord[bytes, bytes]] = []
    reader = AIOKafkaConsumer(kafka.topics.dlq, bootstrap_servers=kafka.bootstrap, auto_offset_reset="earliest", fetch_max_bytes=8 << 20)
    await reader.start()
    try:
        async with asyncio.timeout(timeout):
            while len(found) < count:
                for records in (await reader.getmany(timeout_ms=500)).values():
                    found += [r for r in records if header(r.headers, "dlq.consumer") == consumer]
    finally:
        await reader.stop()
    return found[:count]


async def parked(kafka: KafkaSettings, consumer: str, count: int, *, timeout: float = 20) -> dict[str, str]:
    """key -> reason of the first ``count`` DLQ records of ``consumer``."""
    records = await parked_records(kafka, consumer, count, timeout=timeout)
    return {(r.key or b"").decode(errors="replace"): header(r.headers, "dlq.reason") or "" for r in records}
