"""A partition's batch holds a burst of intake requests (kafka.MAX_BATCH_BYTES): aiokafka keeps one
open batch per partition while a request is in flight, and sends waiting for a full one's drain
starved for seconds at ~2,300 POSTs/s with its 16 KiB default (docs/performance.md)."""

from __future__ import annotations

import asyncio

from services.common.kafka import MAX_BATCH_BYTES, make_producer
from services.common.settings import KafkaSettings


def test_every_producer_buffers_a_burst_of_requests_per_partition() -> None:
    async def build() -> int:
        producer = make_producer(KafkaSettings(), client_id="t")
        try:
            return int(producer._message_accumulator._batch_size)
        finally:
            await producer.client.close()

    size = asyncio.run(build())
    assert size == MAX_BATCH_BYTES
    # A request record with its queued snapshot is ~1 KiB: a round trip's worth at several thousand a second.
    assert 256 * 1024 <= size <= 1024 * 1024  # and below the broker's message.max.bytes
