"""The Kafka floor: a raw aiokafka produce -> consume round trip on the same broker, no agentstream."""

from __future__ import annotations

import asyncio
import struct
import time
import uuid
from typing import Any

import uvloop
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from services.common.kafka import client_options
from services.common.settings import KafkaSettings


async def _round_trip(bootstrap: str, rate: float, seconds: float) -> dict[str, Any]:
    topic = f"bench-floor-{uuid.uuid4().hex[:8]}"
    # Security from AGENTSTREAM_KAFKA_* like the services: the floor is measured on the same connection.
    options = client_options(KafkaSettings(bootstrap=bootstrap))
    admin = AIOKafkaAdminClient(**options)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()
    # The same producer settings as agentstream's (services/common/kafka.py): acks=all, idempotent, linger 2 ms.
    producer = AIOKafkaProducer(**options, acks="all", enable_idempotence=True, linger_ms=2)
    consumer = AIOKafkaConsumer(**options, enable_auto_commit=False)
    await producer.start()
    await consumer.start()
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    await consumer.seek_to_end(tp)
    await consumer.position(tp)
    latencies: list[float] = []
    total = int(rate * seconds)

    async def consume() -> None:
        while len(latencies) < total:
            batch = await consumer.getmany(tp, timeout_ms=1000)
            now = time.time()
            for record in batch.get(tp, ()):
                latencies.append((now - struct.unpack("d", record.value[:8])[0]) * 1000)

    reader = asyncio.create_task(consume())
    cpu0 = time.process_time()
    started = time.monotonic()
    pad = b"x" * 192  # ~200-byte records, like a small token.delta
    for i in range(total):
        await asyncio.sleep(max(0.0, started + i / rate - time.monotonic()))
        await producer.send(topic, struct.pack("d", time.time()) + pad, key=b"k")
    try:
        await asyncio.wait_for(reader, 10)
    finally:
        await producer.stop()
        await consumer.stop()
        admin = AIOKafkaAdminClient(**options)
        await admin.start()
        try:
            await admin.delete_topics([topic])
        finally:
            await admin.close()
    return {"latencies_ms": latencies, "records": total, "rate": rate, "client_cpu_s": time.process_time() - cpu0}


def run_kafka_floor(bootstrap: str, rate: float, seconds: float) -> dict[str, Any]:
    return uvloop.run(_round_trip(bootstrap, rate, seconds))
