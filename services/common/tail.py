"""Readers without a consumer group: every partition of some topics, each instance sees everything.

Status views, the executors' control and jobs.updates tails, and the bridge all read this way; this
is the one place that opens such a reader and keeps it fetching through broker trouble.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from services.common.kafka import client_options, partitions_of
from services.common.settings import KafkaSettings

log = logging.getLogger(__name__)

Batches = dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]


async def open_tail(
    settings: KafkaSettings, topics: Sequence[str], *, client_id: str, from_beginning: bool = False
) -> tuple[AIOKafkaConsumer, dict[TopicPartition, int]]:
    """A started consumer assigned every partition of ``topics``, positioned at their beginning or
    end; returns it with each partition's start position (resolved now, so nothing produced after
    this returns is missed)."""
    consumer = AIOKafkaConsumer(**client_options(settings), enable_auto_commit=False, client_id=client_id)
    await consumer.start()
    try:
        tps = [tp for topic in topics for tp in await partitions_of(consumer, topic)]
        consumer.assign(tps)
        if from_beginning:
            await consumer.seek_to_beginning(*tps)
        else:
            await consumer.seek_to_end(*tps)
        return consumer, {tp: await consumer.position(tp) for tp in tps}
    except BaseException:
        await consumer.stop()
        raise


async def run_tail(consumer: AIOKafkaConsumer, handle: Callable[[Batches], Awaitable[None]], *, name: str, max_records: int = 2000) -> None:
    """Fetch and hand over batches until cancelled; broker trouble is logged and retried, never fatal."""
    while True:
        try:
            batches = await consumer.getmany(timeout_ms=200, max_records=max_records)
        except KafkaError as exc:
            log.warning("%s: %s; retrying", name, exc)
            await asyncio.sleep(1)
            continue
        await handle(batches)


async def close_tail(task: asyncio.Task[None] | None, consumer: AIOKafkaConsumer | None) -> None:
    """Stop a reader: its fetch task first, then its consumer. Safe to call with either already gone."""
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    if consumer is not None:
        await consumer.stop()
